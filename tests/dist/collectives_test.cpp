// MPI collectives on CPU tensors, run by every rank under mpirun -np 2 and -np 4 (and as a single
// process). Every expected value is a closed form of the rank and the world size W.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "support/test_support.h"

namespace flame::test {
namespace {

using dist::ReduceOp;

class Collectives : public ::testing::Test {
 protected:
  void SetUp() override { comm_ = dist::make_mpi_communicator(group(), {std::chrono::seconds(10)}); }
  static const dist::ProcessGroup& group() { return dist::ProcessGroup::init(); }
  int rank() const { return group().rank; }
  int world() const { return group().world_size; }
  std::unique_ptr<dist::Communicator> comm_;
};

/// n values start, start+1, ... as doubles.
std::vector<double> iota(int64_t n, double start = 0.0) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<double>(i);
  return v;
}

const std::vector<DType>& all_dtypes() {
  static const std::vector<DType> dtypes{kF32, kF64, kI32, kI64, kU8, kF16, kBF16};
  return dtypes;
}

TEST_F(Collectives, ProcessGroupMatchesTheLauncher) {
  EXPECT_GE(rank(), 0);
  EXPECT_LT(rank(), world());
  EXPECT_GE(group().local_rank, 0);
  EXPECT_LT(group().local_rank, group().local_world_size);
  if (const char* size = std::getenv("OMPI_COMM_WORLD_SIZE")) EXPECT_EQ(world(), std::atoi(size));
  if (const char* r = std::getenv("OMPI_COMM_WORLD_RANK")) EXPECT_EQ(rank(), std::atoi(r));
  EXPECT_EQ(group().is_distributed(), world() > 1);
  // Ranks are distinct: gathering them gives 0, 1, ..., W-1.
  Tensor mine = full({1}, rank(), kI32);
  Tensor all = empty({world()}, kI32);
  comm_->all_gather(mine, all, "ranks");
  EXPECT_TRUE(all_close(all, {world()}, iota(world()), tolerance_for(kI32)));
}

TEST_F(Collectives, AllReduceSumIsTriangularNumber) {
  for (DType dtype : all_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = full({3, 5}, rank() + 1, dtype);
    comm_->all_reduce(t, ReduceOp::Sum, "sum");
    const double expected = world() * (world() + 1) / 2.0;
    EXPECT_TRUE(all_close(t, {3, 5}, std::vector<double>(15, expected), tolerance_for(dtype)));
  }
}

TEST_F(Collectives, AllReduceSumOfDistinctValues) {
  // Element i on rank r holds i * (r + 1): the sum is i * W(W+1)/2.
  Tensor t = make_tensor(iota(64), {64}, kF64);
  t.mul_(rank() + 1.0);
  comm_->all_reduce(t, ReduceOp::Sum);
  std::vector<double> expected = iota(64);
  for (double& v : expected) v *= world() * (world() + 1) / 2.0;
  EXPECT_TRUE(all_close(t, {64}, expected, tolerance_for(kF64)));
}

TEST_F(Collectives, AllReduceAvgIsMeanOfRanks) {
  for (DType dtype : floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = full({7}, rank() + 1, dtype);
    comm_->all_reduce(t, ReduceOp::Avg, "avg");
    EXPECT_TRUE(all_close(t, {7}, std::vector<double>(7, (world() + 1) / 2.0), tolerance_for(dtype)));
  }
}

TEST_F(Collectives, AllReduceWritesBackIntoNonContiguousViews) {
  // Even columns of a [4, 6] buffer: they are reduced, the odd columns keep -1.
  Tensor base = full({4, 6}, -1.0, kF32);
  Tensor view = base.slice(1, 0, 6, 2);
  ASSERT_FALSE(view.is_contiguous());
  view.fill_(rank() + 1);
  comm_->all_reduce(view, ReduceOp::Sum, "strided");
  std::vector<double> expected(24);
  for (int64_t i = 0; i < 24; ++i) expected[i] = (i % 2 == 0) ? world() * (world() + 1) / 2.0 : -1.0;
  EXPECT_TRUE(all_close(base, {4, 6}, expected, tolerance_for(kF32)));
}

TEST_F(Collectives, BroadcastFromRootOne) {
  const int root = world() > 1 ? 1 : 0;
  for (DType dtype : all_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    // Rank r holds 10r, 10r+1, ...; everyone ends with the root's values.
    Tensor t = make_tensor(iota(6, 10.0 * rank()), {2, 3}, dtype);
    comm_->broadcast(t, root, "weights");
    EXPECT_TRUE(all_close(t, {2, 3}, round_to_dtype(iota(6, 10.0 * root), dtype), tolerance_for(dtype)));
  }
}

TEST_F(Collectives, BroadcastIntoTransposedView) {
  const int root = world() - 1;
  Tensor t = make_tensor(iota(12, 100.0 * rank()), {3, 4}, kF64, kCPU, Layout::Transposed);
  ASSERT_FALSE(t.is_contiguous());
  comm_->broadcast(t, root);
  EXPECT_TRUE(all_close(t, {3, 4}, iota(12, 100.0 * root), tolerance_for(kF64)));
}

TEST_F(Collectives, AllGatherConcatenatesAlongDimZero) {
  for (DType dtype : all_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    // Rank r contributes [2, 3] holding 6r, ..., 6r+5: the gather is 0, 1, ..., 6W-1.
    Tensor input = make_tensor(iota(6, 6.0 * rank()), {2, 3}, dtype);
    Tensor output = full({2 * world(), 3}, -1.0, dtype);
    comm_->all_gather(input, output, "gather");
    EXPECT_TRUE(all_close(output, {2 * world(), 3}, round_to_dtype(iota(6 * world()), dtype), tolerance_for(dtype)));
  }
}

TEST_F(Collectives, ReduceScatterGivesEachRankItsShare) {
  for (DType dtype : {kF32, kF64, kI32, kI64, kBF16}) {
    SCOPED_TRACE(dtype_name(dtype));
    // Element i of the [2W, 3] input on rank r is (r + 1) * (i + 1) (kept small for bf16):
    // rank r receives rows 2r, 2r+1 of the sum, (i + 1) * W(W+1)/2.
    const int64_t n = 6 * world();
    Tensor input = make_tensor(iota(n, 1.0), {2 * world(), 3}, dtype);
    if (dtype == kBF16) input = make_tensor(std::vector<double>(n, 1.0), {2 * world(), 3}, dtype);
    input.mul_(rank() + 1.0);
    Tensor output = full({2, 3}, -1.0, dtype);
    comm_->reduce_scatter(input, output, ReduceOp::Sum, "shard");
    std::vector<double> expected(6);
    for (int64_t i = 0; i < 6; ++i) {
      const double base = dtype == kBF16 ? 1.0 : static_cast<double>(6 * rank() + i + 1);
      expected[i] = base * world() * (world() + 1) / 2.0;
    }
    EXPECT_TRUE(all_close(output, {2, 3}, expected, tolerance_for(dtype)));
  }
}

TEST_F(Collectives, ReduceScatterAvg) {
  Tensor input = full({world(), 4}, rank() + 1, kF32);
  Tensor output = empty({1, 4}, kF32);
  comm_->reduce_scatter(input, output, ReduceOp::Avg, "avg shard");
  EXPECT_TRUE(all_close(output, {1, 4}, std::vector<double>(4, (world() + 1) / 2.0), tolerance_for(kF32)));
}

TEST_F(Collectives, BarrierWaitsForTheLastRank) {
  // Rank 0 arrives 300 ms late; nobody may leave the barrier before it arrives.
  const auto start = std::chrono::steady_clock::now();
  if (rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  comm_->barrier();
  const auto waited = std::chrono::steady_clock::now() - start;
  if (world() > 1) EXPECT_GE(waited, std::chrono::milliseconds(250));
  comm_->synchronize();
}

TEST_F(Collectives, EmptyTensorsAreNoOps) {
  Tensor t = empty({0, 3}, kF32);
  comm_->all_reduce(t, ReduceOp::Sum);
  comm_->broadcast(t, 0);
  EXPECT_EQ(t.numel(), 0);
}

TEST_F(Collectives, SeveralCommunicatorsDoNotInterfere) {
  auto other = dist::make_mpi_communicator(group(), {std::chrono::seconds(10)});
  Tensor a = full({3}, rank() + 1, kI64);
  Tensor b = full({3}, 2 * (rank() + 1), kI64);
  comm_->all_reduce(a, ReduceOp::Sum);
  other->all_reduce(b, ReduceOp::Sum);
  const double tri = world() * (world() + 1) / 2.0;
  EXPECT_TRUE(all_close(a, {3}, std::vector<double>(3, tri), tolerance_for(kI64)));
  EXPECT_TRUE(all_close(b, {3}, std::vector<double>(3, 2 * tri), tolerance_for(kI64)));
}

// --- misuse raises on every rank alike (no collective is started, so nobody hangs) -------------

TEST_F(Collectives, AvgOfIntegersRaises) {
  Tensor t = full({2}, 1.0, kI32);
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(t, ReduceOp::Avg, "ints"); }, {"all_reduce", "Avg", "i32"}));
  Tensor out = empty({1}, kI64);
  Tensor in = full({world()}, 1.0, kI64);
  EXPECT_TRUE(raises_error([&] { comm_->reduce_scatter(in, out, ReduceOp::Avg); }, {"reduce_scatter", "Avg"}));
}

TEST_F(Collectives, SendingAsAnotherDtypeIsLeftToTheCaller) {
  // The MPI backend converts nothing itself: reduces_as() is false and all_reduce_overlapped_as
  // raises, naming the buffer-and-all_reduce_overlapped way, before any collective (so every rank
  // raises alike and none waits).
  Tensor t = full({1 << 20}, 1.0, kF32);
  EXPECT_FALSE(comm_->reduces_as(t, kBF16));
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce_overlapped_as(t, kBF16, ReduceOp::Avg, "bucket 2"); },
                           {"all_reduce_overlapped_as", "bucket 2", "f32", "bf16", "reduces_as"}));
  EXPECT_EQ(t.to_vector<float>(), std::vector<float>(1 << 20, 1.0f)) << "the tensor must be left as it was";
}

TEST_F(Collectives, BoolCannotBeReduced) {
  Tensor t = full({2}, 1.0, kBool);
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(t, ReduceOp::Sum); }, {"all_reduce", "bool"}));
}

TEST_F(Collectives, MismatchedShapesRaise) {
  Tensor input = full({2, 3}, 1.0, kF32);
  EXPECT_TRUE(raises_error(
      [&] {
        comm_->all_gather(input, empty({2 * world() + 2, 3}, kF32));
      },
      {"all_gather", "output must be", shape_str({2 * world(), 3})}));
  EXPECT_TRUE(raises_error(
      [&] {
        comm_->all_gather(input, empty({2 * world(), 3}, kF64));
      },
      {"all_gather", "f32", "f64"}));
  Tensor odd = full({2 * world() + 1, 3}, 1.0, kF32);
  if (world() > 1) {
    EXPECT_TRUE(raises_error(
        [&] {
          comm_->reduce_scatter(odd, empty({2, 3}, kF32), ReduceOp::Sum);
        },
        {"reduce_scatter", "divisible by the world size"}));
  }
  Tensor big = full({2 * world(), 3}, 1.0, kF32);
  EXPECT_TRUE(raises_error(
      [&] {
        comm_->reduce_scatter(big, empty({3, 2}, kF32), ReduceOp::Sum);
      },
      {"reduce_scatter", "output must be [2, 3]"}));
  EXPECT_TRUE(raises_error([&] { comm_->broadcast(input, world()); }, {"broadcast", "root"}));
  EXPECT_TRUE(raises_error([&] { comm_->broadcast(input, -1); }, {"broadcast", "root"}));
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(Tensor(), ReduceOp::Sum); }, {"all_reduce", "undefined"}));
  // The communicator is still usable after rejected calls.
  Tensor t = full({1}, rank() + 1, kF32);
  comm_->all_reduce(t, ReduceOp::Sum);
  EXPECT_TRUE(all_close(t, {1}, {world() * (world() + 1) / 2.0}, tolerance_for(kF32)));
}

TEST_F(Collectives, CudaTensorsAreRejected) {
  if (!cuda::is_available()) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
  Tensor t = ones({4}, {kF32, cuda_device(0)});
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(t, ReduceOp::Sum, "bucket 0"); },
                           {"all_reduce", "cuda:0", "MPI communicator takes CPU tensors"}));
  EXPECT_TRUE(raises_error([&] { comm_->broadcast(t, 0); }, {"broadcast", "cuda:0"}));
}

TEST_F(Collectives, MakeCommunicatorPicksTheBackend) {
  auto cpu = dist::make_communicator(group(), kCPU, {std::chrono::seconds(10)});
  Tensor t = full({2}, rank() + 1, kF64);
  cpu->all_reduce(t, ReduceOp::Sum);
  EXPECT_TRUE(all_close(t, {2}, std::vector<double>(2, world() * (world() + 1) / 2.0), tolerance_for(kF64)));
  if (cuda::device_count() <= group().local_rank) {
    // No GPU for this rank: asking for NCCL names the missing device.
    EXPECT_TRUE(
        raises_error([&] { dist::make_communicator(group(), cuda_device(0)); }, {"cuda_device", "usable CUDA device"}));
  }
}

}  // namespace
}  // namespace flame::test
