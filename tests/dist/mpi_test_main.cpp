// main() of the MPI GoogleTest suites (tests/dist/*_test.cpp, linked by flame_add_mpi_test in
// tests/CMakeLists.txt): initialises the process group (MPI under mpirun, a single rank otherwise),
// runs every test on every rank, finalises MPI and exits non-zero when any test failed on this rank
// (mpirun then exits non-zero too). Rank 0 prints the usual gtest report; other ranks print only
// their failures, prefixed with the rank.
#include <gtest/gtest.h>

#include <cstdio>

#include "dist/communicator.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, result.file_name() ? result.file_name() : "?",
                 result.line_number(), result.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const auto& group = flame::dist::ProcessGroup::init();
  if (group.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(group.rank));
  }
  const int result = RUN_ALL_TESTS();
  flame::dist::finalize();
  return result;
}
