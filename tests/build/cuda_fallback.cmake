# Configures FLAME twice with cuDNN's header pointed at a directory that has none (as on a machine
# with the CUDA toolkit but no cuDNN package): `cmake -DSOURCE=... -DWORK=... -DGENERATOR=...
# -DCUDA_COMPILER=... [-DPREFIX_PATH=...] -P cuda_fallback.cmake`. Passes when the plain configure
# succeeds with the CPU backend, naming what is missing, and the one with FLAME_REQUIRE_CUDA fails,
# saying why. Without a CUDA compiler (CUDA_COMPILER empty) the check cannot be reached: it prints
# SKIPPED, which ctest reports as a skip.
if(NOT CUDA_COMPILER)
  message("SKIPPED: this build has no CUDA compiler, so there is no toolkit without cuDNN to configure")
  return()
endif()
string(REPLACE ";" "\\;" prefix_path "${PREFIX_PATH}")  # one argument, however many entries
set(common -S ${SOURCE} -G ${GENERATOR} -DFLAME_BUILD_TESTS=OFF -DFLAME_BUILD_BENCH=OFF -DFLAME_BUILD_EXAMPLES=OFF
           -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER} -DCUDNN_INCLUDE_DIR=${WORK}/no-cudnn-here
           "-DCMAKE_PREFIX_PATH=${prefix_path}")
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/no-cudnn-here)

execute_process(COMMAND ${CMAKE_COMMAND} ${common} -B ${WORK}/fallback
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "configuring without cuDNN failed (${rc}); it must build the CPU backend instead")
endif()
if(NOT out MATCHES "CUDA backend OFF")
  message(FATAL_ERROR "configuring without cuDNN did not fall back to the CPU backend")
endif()
if(NOT out MATCHES "the CUDA toolkit is here but not found: CUDNN_INCLUDE_DIR")
  message(FATAL_ERROR "the fallback warning does not name what is missing (CUDNN_INCLUDE_DIR)")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} ${common} -B ${WORK}/required -DFLAME_REQUIRE_CUDA=ON
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")
if(rc STREQUAL "0")
  message(FATAL_ERROR "configuring with FLAME_REQUIRE_CUDA and without cuDNN succeeded; it must fail")
endif()
if(NOT out MATCHES "FLAME_REQUIRE_CUDA is set, but not found: CUDNN_INCLUDE_DIR")
  message(FATAL_ERROR "the FLAME_REQUIRE_CUDA failure does not say why")
endif()
file(REMOVE_RECURSE ${WORK})
