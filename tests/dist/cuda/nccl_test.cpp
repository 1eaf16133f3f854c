// NCCL collectives on CUDA tensors, run under mpirun -np 2 on a machine with two GPUs (skipped,
// with the reason, on fewer). Closed forms of the rank and world size W, as in collectives_test.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "support/test_support.h"

namespace flame::test {
namespace {

using dist::ReduceOp;

class Nccl : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto& group = dist::ProcessGroup::init();
    if (cuda::device_count() < 2 || cuda::device_count() < group.local_world_size) return;
    comm_ = dist::make_nccl_communicator(group, {std::chrono::seconds(30)}).release();
  }
  static void TearDownTestSuite() {
    delete comm_;
    comm_ = nullptr;
  }
  void SetUp() override {
    if (comm_ == nullptr) {
      GTEST_SKIP() << "needs at least 2 CUDA devices and one per local rank, found " << cuda::device_count()
                   << (cuda::device_count() == 0 ? " (" + cuda_unavailable_reason() + ")" : "");
    }
  }
  static const dist::ProcessGroup& group() { return dist::ProcessGroup::init(); }
  int rank() const { return group().rank; }
  int world() const { return group().world_size; }
  Device device() const { return group().cuda_device(); }
  static dist::Communicator* comm_;
};
dist::Communicator* Nccl::comm_ = nullptr;

/// A copy of 1-D `input`; with `offset`, a view one element into a buffer of its own (off the
/// 16-byte grid, so the kernels that need it take their scalar form).
Tensor copy_of(const Tensor& input, bool offset) {
  if (!offset) return input.clone();
  return empty({input.numel() + 1}, {input.dtype(), input.device()}).narrow(0, 1, input.numel()).copy_(input);
}

std::vector<double> iota(int64_t n, double start = 0.0) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<double>(i);
  return v;
}

TEST_F(Nccl, AllReduceSumIsTriangularNumber) {
  for (DType dtype : {kF32, kF64, kF16, kBF16, kI32, kI64, kU8}) {
    SCOPED_TRACE(dtype_name(dtype));
    // Computed on the compute stream right before the collective, consumed right after it.
    Tensor t = full({1000}, rank() + 1, {dtype, device()});
    comm_->all_reduce(t, ReduceOp::Sum, "sum");
    Tensor doubled = t.to(kF64).mul_(2.0);
    EXPECT_TRUE(all_close(doubled, {1000}, std::vector<double>(1000, world() * (world() + 1.0)), tolerance_for(dtype)));
  }
}

TEST_F(Nccl, AllReduceAvg) {
  for (DType dtype : floating_dtypes()) {
    SCOPED_TRACE(dtype_name(dtype));
    Tensor t = full({33}, rank() + 1, {dtype, device()});
    comm_->all_reduce(t, ReduceOp::Avg);
    EXPECT_TRUE(all_close(t, {33}, std::vector<double>(33, (world() + 1) / 2.0), tolerance_for(dtype)));
  }
}

TEST_F(Nccl, AllReduceNonContiguousView) {
  Tensor base = full({4, 6}, -1.0, {kF32, device()});
  Tensor view = base.slice(1, 0, 6, 2);
  view.fill_(rank() + 1);
  comm_->all_reduce(view, ReduceOp::Sum);
  std::vector<double> expected(24);
  for (int64_t i = 0; i < 24; ++i) expected[i] = (i % 2 == 0) ? world() * (world() + 1) / 2.0 : -1.0;
  EXPECT_TRUE(all_close(base, {4, 6}, expected, tolerance_for(kF32)));
}

TEST_F(Nccl, BroadcastFromRootOne) {
  Tensor t = make_tensor(iota(6, 10.0 * rank()), {2, 3}, kF32, device());
  comm_->broadcast(t, 1, "weights");
  EXPECT_TRUE(all_close(t, {2, 3}, iota(6, 10.0), tolerance_for(kF32)));
}

TEST_F(Nccl, AllGatherAndReduceScatter) {
  Tensor input = make_tensor(iota(6, 6.0 * rank()), {2, 3}, kI64, device());
  Tensor output = full({2 * world(), 3}, -1.0, {kI64, device()});
  comm_->all_gather(input, output);
  EXPECT_TRUE(all_close(output, {2 * world(), 3}, iota(6 * world()), tolerance_for(kI64)));

  Tensor big = make_tensor(iota(6 * world(), 1.0), {2 * world(), 3}, kF64, device());
  big.mul_(rank() + 1.0);
  Tensor share = empty({2, 3}, {kF64, device()});
  comm_->reduce_scatter(big, share, ReduceOp::Sum);
  std::vector<double> expected(6);
  for (int64_t i = 0; i < 6; ++i) expected[i] = (6.0 * rank() + i + 1) * world() * (world() + 1) / 2.0;
  EXPECT_TRUE(all_close(share, {2, 3}, expected, tolerance_for(kF64)));
}

TEST_F(Nccl, BarrierAndSynchronize) {
  comm_->barrier();
  comm_->synchronize();
  SUCCEED();
}

TEST_F(Nccl, OverlappedAllReduceIsVisibleAfterComputeWait) {
  // Several buckets in flight while the compute stream keeps working, then one compute_wait().
  std::vector<Tensor> buckets;
  for (int b = 0; b < 4; ++b) {
    buckets.push_back(full({(b + 1) * 100000}, rank() + b, {kF32, device()}));
    comm_->all_reduce_overlapped(buckets.back(), ReduceOp::Sum, "bucket " + std::to_string(b));
  }
  Tensor unrelated = matmul(ones({256, 256}, {kF32, device()}), ones({256, 256}, {kF32, device()}));
  comm_->compute_wait();
  for (int b = 0; b < 4; ++b) {
    SCOPED_TRACE(b);
    const double expected = world() * (world() - 1) / 2.0 + static_cast<double>(world()) * b;
    EXPECT_TRUE(
        all_close(buckets[b], {(b + 1) * 100000}, std::vector<double>((b + 1) * 100000, expected), Tolerance{}));
  }
  EXPECT_EQ(unrelated.to_vector<float>()[0], 256.0f);
  Tensor strided = full({4, 6}, 1.0, {kF32, device()}).slice(1, 0, 6, 2);
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce_overlapped(strided, ReduceOp::Sum, "bucket 9"); },
                           {"contiguous", "bucket 9"}));
}

TEST_F(Nccl, ComputeWaitForOneCollectiveCoversItAndEarlierOnes) {
  Tensor first = full({300000}, rank() + 1, {kF32, device()});
  Tensor second = full({200000}, rank() + 2, {kF32, device()});
  Tensor third = full({100000}, rank() + 3, {kF32, device()});
  const uint64_t n1 = comm_->all_reduce_overlapped(first, ReduceOp::Sum, "bucket 0");
  const uint64_t n2 = comm_->all_reduce_overlapped(second, ReduceOp::Sum, "bucket 1");
  const uint64_t n3 = comm_->all_reduce_overlapped(third, ReduceOp::Sum, "bucket 2");
  EXPECT_LT(n1, n2);
  EXPECT_LT(n2, n3);
  comm_->compute_wait(n2);  // the compute stream may now read first and second, not third
  const double w = world();
  EXPECT_TRUE(all_close(first, {300000}, std::vector<double>(300000, w * (w + 1) / 2), Tolerance{}));
  EXPECT_TRUE(all_close(second, {200000}, std::vector<double>(200000, w * (w + 3) / 2), Tolerance{}));
  comm_->compute_wait(n3);
  EXPECT_TRUE(all_close(third, {100000}, std::vector<double>(100000, w * (w + 5) / 2), Tolerance{}));
  comm_->compute_wait(n1);  // long finished: nothing to wait for
  EXPECT_TRUE(raises_error([&] { comm_->compute_wait(n3 + 1); }, {"compute_wait", "never issued"}));
  EXPECT_TRUE(raises_error([&] { comm_->compute_wait(0); }, {"compute_wait", "never issued"}));
}

TEST_F(Nccl, SmCarveOutAndCtaLimitKeepResultsAndCheckTheirRange) {
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  options.nccl_max_ctas = 4;
  options.overlap_sm_carveout = 32;
  options.overlap_carveout_min_bytes = 2 << 20;
  options.high_priority_stream = true;
  auto limited = dist::make_nccl_communicator(group(), options);
  const int sms = cuda::multiprocessor_count(device().index);
  manual_seed(5);
  const Tensor a = randn({192, 160}, {kF32, device()});
  const Tensor b = randn({160, 96}, {kF32, device()});
  const std::vector<float> before = matmul(a, b).to_vector<float>();
  // Below overlap_carveout_min_bytes: no carve-out yet.
  Tensor small = full({1 << 18}, rank(), {kF32, device()});  // 1 MiB
  const uint64_t first = limited->all_reduce_overlapped(small, ReduceOp::Sum, "small bucket");
  EXPECT_EQ(cuda::gemm_sm_target(device().index), 0);
  // The first one of at least 2 MiB starts it, later in the round.
  Tensor bucket = full({1 << 20}, rank(), {kF32, device()});  // 4 MiB
  const uint64_t n = limited->all_reduce_overlapped(bucket, ReduceOp::Avg, "bucket 0");
  EXPECT_EQ(cuda::gemm_sm_target(device().index), world() > 1 ? sms - 32 : 0);
  // A matmul issued while the carve-out is on gives the same product (to f32 rounding).
  const Tensor during = matmul(a, b);
  limited->compute_wait(first);  // not the last collective: the carve-out stays
  EXPECT_EQ(cuda::gemm_sm_target(device().index), world() > 1 ? sms - 32 : 0);
  limited->compute_wait(n);
  EXPECT_EQ(cuda::gemm_sm_target(device().index), 0);  // the last collective waited for: all SMs
  EXPECT_TRUE(
      all_close(small, {1 << 18}, std::vector<double>(1 << 18, world() * (world() - 1) / 2.0), tolerance_for(kF32)));
  EXPECT_TRUE(all_close(during, {192, 96}, std::vector<double>(before.begin(), before.end()), tolerance_for(kF32)));
  EXPECT_TRUE(all_close(bucket, {1 << 20}, std::vector<double>(1 << 20, (world() - 1) / 2.0), tolerance_for(kF32)));
  limited->barrier();

  dist::CommunicatorOptions bad;
  bad.overlap_sm_carveout = sms;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), bad); }, {"overlap_sm_carveout"}));
  bad.overlap_sm_carveout = 0;
  bad.nccl_max_ctas = -1;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), bad); }, {"nccl_max_ctas"}));
  EXPECT_TRUE(raises_error([&] { cuda::set_gemm_sm_target(device().index, sms + 1); }, {"set_gemm_sm_target"}));
  EXPECT_TRUE(raises_error([&] { cuda::set_gemm_sm_target(device().index, -1); }, {"set_gemm_sm_target"}));
}

TEST_F(Nccl, CopyEngineGatherMatchesTheRingAndLeavesEveryRankTheSameBits) {
  // Note [copy-engine all-reduce]: overlapped f32 all-reduces of at least 1 MiB go through the
  // copy-engine all-gather and the rank-order sum; smaller ones and other dtypes through the ring.
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  options.overlap_all_reduce = dist::OverlapAllReduce::CopyEngineGather;
  options.overlap_carveout_min_bytes = 1 << 20;
  auto gather = dist::make_nccl_communicator(group(), options);
  manual_seed(40 + rank());  // every rank its own values
  struct Case {
    int64_t numel;
    DType dtype;
    ReduceOp op;
    dist::OverlapPriority priority = dist::OverlapPriority::Normal;
  };
  const std::vector<Case> cases = {
      {1 << 20, kF32, ReduceOp::Avg},        // 4 MiB: vector kernel
      {(1 << 18) + 3, kF32, ReduceOp::Sum},  // just over 1 MiB, not a multiple of 4: scalar kernel
      {1 << 21, kF32, ReduceOp::Avg, dist::OverlapPriority::High},  // 8 MiB: the buffer grows; urgent sum kernel
      {1 << 20, kF32, ReduceOp::Sum},        // back to 4 MiB in the grown buffer
      {1000, kF32, ReduceOp::Avg},           // below the threshold: ring
      {1 << 20, kF64, ReduceOp::Sum},        // f64: ring
      {1 << 18, kF32, ReduceOp::Avg},        // 1 MiB at a 4-byte offset: the scalar kernel despite n % 4 == 0
  };
  std::vector<Tensor> inputs, results;
  std::vector<uint64_t> numbers;
  const int sms = cuda::multiprocessor_count(device().index);
  bool ring_carved = false;
  for (const Case& c : cases) {
    inputs.push_back(randn({c.numel}, {c.dtype, device()}));
    const bool offset = &c == &cases.back();
    results.push_back(copy_of(inputs.back(), offset));
    numbers.push_back(gather->all_reduce_overlapped(results.back(), c.op, "bucket", c.priority));
    // The copy engines need no carve-out; the 8 MiB f64 one, through the ring, starts it, and it
    // lasts until the compute_wait() that covers the last collective.
    ring_carved = ring_carved || (c.dtype == kF64 && world() > 1);
    EXPECT_EQ(cuda::gemm_sm_target(device().index), ring_carved ? sms - std::min(32, sms / 4) : 0);
  }
  gather->compute_wait(numbers[2]);  // covers the first three
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    if (i == 3) gather->compute_wait();  // covers the rest
    Tensor ring = inputs[i].clone();
    comm_->all_reduce(ring, cases[i].op, "ring");
    EXPECT_TRUE(all_close(results[i], {cases[i].numel}, ring.to(kF64).to_vector<double>(), Tolerance{1e-6, 1e-6}));
    // Both ranks hold the same bits: gather every rank's result and compare them exactly.
    Tensor all = empty({world() * cases[i].numel}, {cases[i].dtype, device()});
    comm_->all_gather(results[i], all, "results");
    const std::vector<double> values = all.to(kF64).to_vector<double>();
    for (int r = 1; r < world(); ++r)
      EXPECT_TRUE(std::equal(values.begin(), values.begin() + cases[i].numel, values.begin() + r * cases[i].numel))
          << "rank " << r << " differs from rank 0";
  }
  gather->barrier();

  // Rejected at construction: non-blocking calls, and ranks that disagree.
  dist::CommunicatorOptions nonblocking = options;
  nonblocking.nccl_calls = dist::NcclCalls::NonBlocking;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), nonblocking); },
                           {"CopyEngineGather", "NcclCalls::Blocking"}));
  dist::CommunicatorOptions mixed = options;
  if (rank() == 1) mixed.overlap_all_reduce = dist::OverlapAllReduce::Ring;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), mixed); },
                           {"ranks disagree", "overlap_all_reduce", "Ring", "CopyEngineGather"}));
}

TEST_F(Nccl, CopyEngineGatherSendsF32AsBf16AndWritesTheRoundedMean) {
  // all_reduce_overlapped_as(tensor, bf16): every rank's values rounded to bf16, summed in rank
  // order in f32, scaled, rounded to bf16 again; checked bit for bit against the same on the host.
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  options.overlap_all_reduce = dist::OverlapAllReduce::CopyEngineGather;
  options.overlap_carveout_min_bytes = 1 << 20;  // bytes sent: 2 per value
  auto gather = dist::make_nccl_communicator(group(), options);
  if (world() != 2) {
    Tensor t = zeros({1 << 20}, {kF32, device()});
    EXPECT_FALSE(gather->reduces_as(t, kBF16)) << "the copy engines serve 2 ranks only";
    return;
  }
  manual_seed(60 + rank());
  struct Case {
    int64_t numel;
    ReduceOp op;
    bool offset;  // the output 4 bytes into its allocation: the scalar kernels
    dist::OverlapPriority priority = dist::OverlapPriority::Normal;
  };
  const std::vector<Case> cases = {
      {1 << 20, ReduceOp::Avg, false},        // 2 MiB sent: vector kernels
      {(1 << 19) + 3, ReduceOp::Sum, false},  // just over 1 MiB, not a multiple of 4: scalar kernels
      {1 << 21, ReduceOp::Avg, false},        // 4 MiB sent: the staging buffer grows
      {1 << 19, ReduceOp::Avg, true},         // 1 MiB sent at a 4-byte offset
      // The rounding and sum kernels launched at high priority (a DDP job's last bucket).
      {1 << 20, ReduceOp::Avg, false, dist::OverlapPriority::High},
      {(1 << 19) + 3, ReduceOp::Sum, true, dist::OverlapPriority::High},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.numel);
    Tensor input = randn({c.numel}, {kF32, device()}).mul_(100.0);
    Tensor result = copy_of(input, c.offset);
    ASSERT_TRUE(gather->reduces_as(result, kBF16));
    gather->all_reduce_overlapped_as(result, kBF16, c.op, "bucket", c.priority);
    gather->compute_wait();
    Tensor inputs = empty({2 * c.numel}, {kF32, device()});
    comm_->all_gather(input, inputs, "inputs");
    const Tensor rounded = inputs.to(kCPU).to(kBF16).to(kF32);
    Tensor expected = rounded.narrow(0, 0, c.numel).clone().add_(rounded.narrow(0, c.numel, c.numel));
    if (c.op == ReduceOp::Avg) expected.mul_(0.5);
    const std::vector<float> want = expected.to(kBF16).to(kF32).to_vector<float>();
    const std::vector<float> got = result.to(kCPU).to_vector<float>();
    ASSERT_EQ(got.size(), want.size());
    const auto [g, w] = std::mismatch(got.begin(), got.end(), want.begin());
    EXPECT_TRUE(g == got.end()) << "first difference at " << (g - got.begin()) << ": " << *g << " against " << *w;
  }
  gather->barrier();

  // Not for it: a tensor below the threshold, an f16 wire, an f64 tensor, the ring communicator.
  // all_reduce_overlapped_as then raises, naming the way out (DDP converts itself there).
  Tensor small = zeros({1000}, {kF32, device()});
  Tensor f64 = zeros({1 << 20}, {kF64, device()});
  Tensor large = zeros({1 << 20}, {kF32, device()});
  EXPECT_FALSE(gather->reduces_as(small, kBF16));
  EXPECT_FALSE(gather->reduces_as(large, kF16));
  EXPECT_FALSE(gather->reduces_as(f64, kBF16));
  EXPECT_FALSE(comm_->reduces_as(large, kBF16)) << "the ring communicator converts nothing itself";
  EXPECT_TRUE(raises_error([&] { gather->all_reduce_overlapped_as(small, kBF16, ReduceOp::Avg, "bucket 9"); },
                           {"bucket 9", "reduces_as", "all_reduce_overlapped"}));
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce_overlapped_as(large, kBF16, ReduceOp::Avg, "bucket 8"); },
                           {"bucket 8", "reduces_as"}));
}

// Note [collective timeline]: FLAME_NCCL_TIMELINE makes a communicator write its marks per rank
// when it is destroyed; without it, nothing is written.
TEST_F(Nccl, TimelineWritesEachCollectivesMarksWhenAsked) {
  const TempDir dir;  // one per rank (mkdtemp)
  const std::string path = dir.file("tl");
  const std::string file = path + ".rank" + std::to_string(rank());
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  if (world() == 2) {  // the copy engines too: their staged and gathered marks
    options.overlap_all_reduce = dist::OverlapAllReduce::CopyEngineGather;
    options.overlap_carveout_min_bytes = 1 << 20;
  }
  struct TimelineVariable {  // set for the communicator's construction only, even when it throws
    explicit TimelineVariable(const std::string& value) { setenv("FLAME_NCCL_TIMELINE", value.c_str(), 1); }
    ~TimelineVariable() { unsetenv("FLAME_NCCL_TIMELINE"); }
  };
  std::unique_ptr<dist::Communicator> timed;
  {
    const TimelineVariable variable(path);
    timed = dist::make_nccl_communicator(group(), options);
  }
  Tensor large = full({1 << 20}, rank() + 1.0, {kF32, device()});  // 4 MiB: the copy engines at W=2
  Tensor small = full({10}, 1.0, {kF32, device()});
  const uint64_t first = timed->all_reduce_overlapped(large, ReduceOp::Sum, "bucket A");
  timed->all_reduce_overlapped(small, ReduceOp::Sum, "bucket B");
  timed->compute_wait(first);
  timed->compute_wait();
  timed->synchronize();
  EXPECT_TRUE(all_close(large, {1 << 20}, std::vector<double>(1 << 20, world() * (world() + 1) / 2.0),
                        tolerance_for(kF32)));
  EXPECT_FALSE(std::filesystem::exists(file)) << "written before the communicator is destroyed";
  timed.reset();

  // "<ms>\t<stream>\t<mark>\t<what>" lines; every time >= 0, the first 0.
  std::ifstream in(file);
  ASSERT_TRUE(in) << file;
  std::map<std::string, double> at;  // "<mark> <what>" -> ms
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    double ms = -1.0;
    std::string stream, mark, what;
    fields >> ms >> stream >> mark;
    std::getline(fields >> std::ws, what);
    if (lines++ == 0) EXPECT_EQ(ms, 0.0) << line;
    EXPECT_GE(ms, 0.0) << line;
    EXPECT_EQ(stream, mark == "issue" || mark == "wait" ? "compute" : "comm") << line;
    at[mark + " " + what] = ms;
  }
  for (const char* key : {"issue bucket A", "begin bucket A", "end bucket A", "wait bucket A", "issue bucket B",
                          "begin bucket B", "end bucket B", "wait all"})
    EXPECT_TRUE(at.count(key)) << "no mark '" << key << "' in " << file;
  EXPECT_LE(at["begin bucket A"], at["end bucket A"]);
  EXPECT_LE(at["end bucket A"], at["wait bucket A"]);
  EXPECT_LE(at["end bucket A"], at["begin bucket B"]);
  if (world() == 2) {
    EXPECT_LE(at["begin bucket A"], at["staged bucket A"]);
    EXPECT_LE(at["staged bucket A"], at["gathered bucket A"]);
    EXPECT_LE(at["gathered bucket A"], at["end bucket A"]);
    EXPECT_FALSE(at.count("staged bucket B")) << "bucket B is below the copy engines' threshold";
  }
  // Without the variable: no file, though collectives ran.
  std::filesystem::remove(file);
  auto plain = dist::make_nccl_communicator(group(), {std::chrono::seconds(30)});
  plain->barrier();
  plain.reset();
  EXPECT_FALSE(std::filesystem::exists(file));
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
    ADD_FAILURE() << "unexpected file " << entry.path();
}

TEST_F(Nccl, NonBlockingCallsGiveTheSameResults) {
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  options.nccl_calls = dist::NcclCalls::NonBlocking;
  auto nonblocking = dist::make_nccl_communicator(group(), options);
  Tensor t = full({1000}, rank() + 1, {kF32, device()});
  nonblocking->all_reduce(t, ReduceOp::Sum, "sum");
  EXPECT_TRUE(all_close(t, {1000}, std::vector<double>(1000, world() * (world() + 1) / 2.0), Tolerance{}));
  Tensor u = full({1000}, rank(), {kF32, device()});
  nonblocking->all_reduce_overlapped(u, ReduceOp::Avg, "bucket 0");
  nonblocking->synchronize();
  EXPECT_TRUE(all_close(u, {1000}, std::vector<double>(1000, (world() - 1) / 2.0), tolerance_for(kF32)));
  nonblocking->barrier();
}

// Note [one-shot all-reduce]: on the 2-GPU machine, f32 all-reduces of at most one_shot_max_bytes
// (2 MiB by default, as comm_ has) take FLAME's own kernel; a communicator with it off takes NCCL.
// Both give the same bits (one sum of two values, commutative; Avg halves it exactly), and every
// rank holds the same bits.
TEST_F(Nccl, OneShotAllReduceGivesNcclsBitsOnEveryRank) {
  if (world() != 2) GTEST_SKIP() << "the one-shot all-reduce is for 2 ranks";
  dist::CommunicatorOptions off;
  off.timeout = std::chrono::seconds(30);
  off.one_shot_max_bytes = 0;
  auto nccl = dist::make_nccl_communicator(group(), off);
  manual_seed(60 + rank());  // every rank its own values
  struct Case {
    int64_t numel;
    ReduceOp op;
    bool overlapped;
    int misaligned_rank = -1;  // that rank takes the scalar form, the other the vector one
  };
  const int64_t max_numel = (int64_t{2} << 20) / 4;
  const std::vector<Case> cases = {
      {1, ReduceOp::Sum, false},       {3, ReduceOp::Avg, true},
      {4, ReduceOp::Sum, true, 0},     {1000, ReduceOp::Avg, true},  // this one at high priority
      {0, ReduceOp::Sum, true},        {8192, ReduceOp::Sum, true},
      {8193, ReduceOp::Avg, true},     {65541, ReduceOp::Sum, false, 1},
      {max_numel, ReduceOp::Avg, true},
      {max_numel + 1, ReduceOp::Sum, true},  // one value over: NCCL
      {420224, ReduceOp::Avg, true, 0},      // the cnn's last bucket
  };
  const uint64_t before = comm_->one_shot_all_reduces();
  std::vector<Tensor> inputs, results;
  uint64_t expected_one_shots = 0;
  for (const Case& c : cases) {
    inputs.push_back(randn({c.numel}, {kF32, device()}));
    const bool offset = c.misaligned_rank == rank();
    results.push_back(copy_of(inputs.back(), offset));
    if (c.overlapped) {
      comm_->all_reduce_overlapped(results.back(), c.op, "bucket",
                                   c.numel == 1000 ? dist::OverlapPriority::High : dist::OverlapPriority::Normal);
    } else {
      comm_->all_reduce(results.back(), c.op, "tensor");
    }
    expected_one_shots += c.numel <= max_numel ? 1 : 0;
  }
  comm_->compute_wait();
  EXPECT_EQ(comm_->one_shot_all_reduces() - before, expected_one_shots);
  EXPECT_EQ(nccl->one_shot_all_reduces(), 0u);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    if (cases[i].numel == 0) continue;  // nothing to compare: it only had to finish
    Tensor reference = inputs[i].clone();
    nccl->all_reduce(reference, cases[i].op, "reference");
    EXPECT_EQ(results[i].to_vector<float>(), reference.to_vector<float>());
    Tensor all = empty({2 * cases[i].numel}, {kF32, device()});
    nccl->all_gather(results[i], all, "results");
    const std::vector<float> values = all.to_vector<float>();
    EXPECT_TRUE(std::equal(values.begin(), values.begin() + cases[i].numel, values.begin() + cases[i].numel))
        << "rank 1 differs from rank 0";
  }
}

// Many one-shot all-reduces in flight at once, of changing sizes (each kernel reuses the slot of
// the one two before it, and flags of blocks that the previous one did not have).
TEST_F(Nccl, OneShotAllReducesQueuedBackToBackKeepTheirOwnValues) {
  if (world() != 2) GTEST_SKIP() << "the one-shot all-reduce is for 2 ranks";
  const std::vector<int64_t> sizes = {100000, 7, 16384, 300000, 1, 8192 * 3 + 5};
  std::vector<Tensor> tensors;
  std::vector<uint64_t> numbers;
  if (rank() == 1) {  // rank 1's kernels start some milliseconds after rank 0's, which wait for them
    Tensor a = randn({4096, 4096}, {kF32, device()});
    for (int k = 0; k < 4; ++k) a = a.matmul(a).mul_(1e-2);
  }
  const uint64_t before = comm_->one_shot_all_reduces();
  for (int k = 0; k < 120; ++k) {
    const int64_t n = sizes[k % sizes.size()];
    tensors.push_back(full({n}, (rank() + 1) * (k + 1), {kF32, device()}));
    numbers.push_back(comm_->all_reduce_overlapped(tensors.back(), ReduceOp::Sum, "bucket"));
  }
  comm_->compute_wait(numbers.back());
  EXPECT_EQ(comm_->one_shot_all_reduces() - before, 120u);
  for (int k = 0; k < 120; ++k) {
    const std::vector<float> values = tensors[k].to_vector<float>();
    const float expected = 3.0f * static_cast<float>(k + 1);
    EXPECT_TRUE(std::all_of(values.begin(), values.end(), [&](float v) { return v == expected; }))
        << "all-reduce " << k << " (" << values.size() << " values): first value " << values.front() << ", expected "
        << expected;
  }
}

TEST_F(Nccl, OneShotLimitIsCheckedAndAgreedOn) {
  dist::CommunicatorOptions options;
  options.timeout = std::chrono::seconds(30);
  options.one_shot_max_bytes = (size_t{4} << 20) + 1;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), options); },
                           {"one_shot_max_bytes", "4 MiB"}));
  if (world() == 1) return;
  options.one_shot_max_bytes = rank() == 0 ? 1024 : 2048;
  EXPECT_TRUE(raises_error([&] { dist::make_nccl_communicator(group(), options); },
                           {"ranks disagree", "one_shot_max_bytes", "1024", "2048"}));
}

TEST_F(Nccl, WrongDeviceRaises) {
  Tensor cpu = ones({4});
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(cpu, ReduceOp::Sum, "bucket 1"); },
                           {"all_reduce", "cpu", "make_mpi_communicator"}));
  Tensor ints = ones({4}, {kI32, device()});
  EXPECT_TRUE(raises_error([&] { comm_->all_reduce(ints, ReduceOp::Avg); }, {"all_reduce", "Avg"}));
}

}  // namespace
}  // namespace flame::test
