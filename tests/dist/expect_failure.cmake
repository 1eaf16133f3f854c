# Runs a multi-rank program that must fail: `cmake -DMPIEXEC=... -DNP=... -DPROGRAM=... -DSCENARIO=...
# -DEXPECT_REGEX=... -DMAX_SECONDS=... -P expect_failure.cmake`. Passes when the job exits non-zero
# within MAX_SECONDS, no rank reported reaching a point it must not (a "failure_test: FAILED" line),
# and its output matches EXPECT_REGEX (the failing rank's message).
string(TIMESTAMP start "%s" UTC)
execute_process(
  COMMAND ${MPIEXEC} --allow-run-as-root --oversubscribe -np ${NP} ${PROGRAM} ${SCENARIO}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out TIMEOUT ${MAX_SECONDS})
string(TIMESTAMP stop "%s" UTC)
math(EXPR elapsed "${stop} - ${start}")
message("${out}")
message("exit status: ${rc}, ${elapsed} s")
if(rc STREQUAL "0")
  message(FATAL_ERROR "expected the job to fail, but every rank exited 0")
endif()
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the job did not end by itself within ${MAX_SECONDS} s (${rc}): a rank was left hanging")
endif()
if(out MATCHES "failure_test: FAILED")
  message(FATAL_ERROR "a rank got past the point where it must fail (the failure_test: FAILED line above)")
endif()
if(NOT out MATCHES "${EXPECT_REGEX}")
  message(FATAL_ERROR "the output does not contain the expected failure message /${EXPECT_REGEX}/")
endif()
