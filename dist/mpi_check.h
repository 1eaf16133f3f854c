// Internal to dist/: the MPI error idiom and the deadline-bounded wait on a non-blocking request.
// Included only by dist/*.cpp (it pulls in <mpi.h>, which the public headers never do).
#pragma once

// The C API only: keep Open MPI's / MPICH's deprecated C++ bindings (and their library) out.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <string>

#include "core/error.h"

namespace flame::dist::detail {

/// Raises flame::Error for an MPI call that did not return MPI_SUCCESS, naming the call and MPI's
/// error string.
[[noreturn]] void throw_mpi_error(int code, const char* expr, const char* file, int line);

/// True between MPI_Init and MPI_Finalize.
bool mpi_active();

/// Set once a collective waited for by wait_request() timed out or failed on this rank; finalize()
/// then brings the job down instead of calling MPI_Finalize.
std::atomic<bool>& collective_failed();

/// Polls MPI_Test on `request` until it completes or `timeout` has passed. On timeout raises
/// flame::Error naming `collective`, `what`, the rank and the timeout; the request stays pending
/// (MPI cannot cancel a collective), so the caller must treat its communicator as broken.
void wait_request(MPI_Request& request, std::chrono::milliseconds timeout, const std::string& collective,
                  const std::string& what, int rank);

}  // namespace flame::dist::detail

#define FLAME_MPI_CHECK(expr)                                                               \
  do {                                                                                      \
    const int flame_mpi_status_ = (expr);                                                   \
    if (flame_mpi_status_ != MPI_SUCCESS)                                                   \
      ::flame::dist::detail::throw_mpi_error(flame_mpi_status_, #expr, __FILE__, __LINE__); \
  } while (0)
