// DistributedDataParallel on CUDA with the NCCL communicator, run under mpirun -np 2 on a machine
// with two GPUs (skipped, with the reason, on fewer): each rank trains on group.cuda_device() and
// must end where one process training on the whole global batch on its GPU ends (the CPU suite,
// tests/dist/ddp_test.cpp, checks the same with MPI).
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "dist/ddp_test_support.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "support/test_support.h"

namespace flame::dist {
namespace {

using namespace ddp_testing;

class DdpNccl : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const ProcessGroup& group = ProcessGroup::init();
    if (cuda::device_count() < group.world_size || cuda::device_count() < group.local_world_size) return;
    comm_ = make_nccl_communicator(group, {std::chrono::seconds(30)}).release();
  }
  static void TearDownTestSuite() {
    delete comm_;
    comm_ = nullptr;
  }
  void SetUp() override {
    if (comm_ == nullptr) {
      GTEST_SKIP() << "needs one CUDA device per rank (" << ProcessGroup::init().world_size << "), found "
                   << cuda::device_count()
                   << (cuda::device_count() == 0 ? " (" + test::cuda_unavailable_reason() + ")" : "");
    }
  }
  static Communicator& comm() { return *comm_; }
  static int rank() { return ProcessGroup::init().rank; }
  static int world() { return ProcessGroup::init().world_size; }
  static Device device() { return ProcessGroup::init().cuda_device(); }
  /// A communicator of its own whose overlapped all-reduces all go through the copy engines
  /// (threshold 0: every bucket; Note [copy-engine all-reduce]).
  static std::unique_ptr<Communicator> copy_engine_communicator() {
    CommunicatorOptions options;
    options.timeout = std::chrono::seconds(30);
    options.overlap_all_reduce = OverlapAllReduce::CopyEngineGather;
    options.overlap_carveout_min_bytes = 0;
    return make_nccl_communicator(ProcessGroup::init(), options);
  }
  static Communicator* comm_;
};
Communicator* DdpNccl::comm_ = nullptr;

TEST_F(DdpNccl, MatchesSingleProcessTrainingOnTheGlobalBatch) {
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world();
  auto model = make_mlp(200 + rank(), kHidden, device());  // every rank starts different
  DistributedDataParallel ddp(model, comm(), small_buckets());
  expect_same_parameters(*model, *make_mlp(200, kHidden, device()), 0.0, "after construction");
  auto reference = clone_mlp(*model, device());
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});
  const size_t n_buckets = ddp.reducer().buckets().size();
  ASSERT_GE(n_buckets, 3u);

  for (int step = 0; step < 3; ++step) {
    const Batch batch = global_batch(global, 7 + step, device());
    const Batch mine = batch.slice(rank() * kLocal, kLocal);
    opt.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.synchronize_gradients();
    ref_opt.zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    expect_same_grads(*model, *reference, 2e-6, "step " + std::to_string(step));
    opt.step();
    ref_opt.step();
    ddp.after_step();

    ASSERT_EQ(ddp.reducer().launches(), (step + 1) * n_buckets);
    const std::vector<size_t>& order = ddp.reducer().last_round_launches();
    ASSERT_EQ(order.size(), n_buckets);
    for (size_t b = 0; b < n_buckets; ++b) EXPECT_EQ(order[b], b);
  }
  expect_same_parameters(*model, *reference, 1e-5, "after 3 AdamW steps");
  ddp.check_parameters_in_sync("after the equivalence test");
  const Tensor& last_bias = model->named_parameters().back().second;
  EXPECT_TRUE(last_bias.grad().device() == device());
  EXPECT_EQ(last_bias.grad().storage(), ddp.reducer().buckets()[0].flat.storage());
}

TEST_F(DdpNccl, BucketByBucketStepEqualsSynchronizeThenStep) {
  // ddp.step(opt) waits for each bucket's all-reduce separately; the result must be the same bits
  // as synchronize_gradients() + opt.step(), and still match one process on the global batch.
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world();
  auto model = make_mlp(250, kHidden, device());
  auto twin = clone_mlp(*model, device());
  auto reference = clone_mlp(*model, device());
  DistributedDataParallel ddp(model, comm(), small_buckets());
  DistributedDataParallel twin_ddp(twin, comm(), small_buckets());
  ASSERT_GE(ddp.reducer().buckets().size(), 3u);
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW twin_opt(twin_ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});
  for (int step = 0; step < 3; ++step) {
    const Batch batch = global_batch(global, 60 + step, device());
    const Batch mine = batch.slice(rank() * kLocal, kLocal);
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.step(opt);
    twin_ddp.zero_grad();
    nn::mse_loss(twin_ddp.forward(mine.x), mine.y).backward();
    twin_ddp.synchronize_gradients();
    twin_opt.step();
    ref_opt.zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    ref_opt.step();
  }
  expect_same_parameters(*model, *twin, 0.0, "bucket-by-bucket step vs synchronize + step");
  expect_same_parameters(*model, *reference, 1e-5, "after 3 AdamW steps");
  ddp.check_parameters_in_sync("after the bucket-by-bucket steps");
}

TEST_F(DdpNccl, CopyEngineAllReduceTrainsAsTheRing) {
  // Note [copy-engine all-reduce] with every bucket through the copy engines (threshold 0): the
  // replicas must stay identical and end where the ring-reduced twin and one process end.
  auto gather = copy_engine_communicator();
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world();
  auto model = make_mlp(270, kHidden, device());
  auto twin = clone_mlp(*model, device());
  auto reference = clone_mlp(*model, device());
  DistributedDataParallel ddp(model, *gather, small_buckets());
  DistributedDataParallel twin_ddp(twin, comm(), small_buckets());
  ASSERT_GE(ddp.reducer().buckets().size(), 3u);
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW twin_opt(twin_ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});
  for (int step = 0; step < 3; ++step) {
    const Batch batch = global_batch(global, 80 + step, device());
    const Batch mine = batch.slice(rank() * kLocal, kLocal);
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.step(opt);
    twin_ddp.zero_grad();
    nn::mse_loss(twin_ddp.forward(mine.x), mine.y).backward();
    twin_ddp.step(twin_opt);
    ref_opt.zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    ref_opt.step();
  }
  expect_same_parameters(*model, *twin, 1e-6, "copy-engine all-reduce vs ring");
  expect_same_parameters(*model, *reference, 1e-5, "after 3 AdamW steps");
  ddp.check_parameters_in_sync("after the copy-engine steps");
}

/// reduce_dtype bf16 on `communicator`: after check_buckets(ddp's reducer), 3 steps where each rank's
/// .grad (synchronize_gradients on a twin) is a bf16 value near the global-batch gradient, and
/// ddp.step gives the same bits as the twin's synchronize + step; the replicas stay in sync. ddp
/// issues its last bucket at high priority (the default) and the twin does not (Note [last bucket
/// priority]): the priority must not change a bit. `ddp_mean` and `twin_mean` set each one's
/// step_mean (Note [deferred mean]): Reduced and InUpdate must not change a bit either.
void expect_bf16_reduced_training(Communicator& communicator, const std::function<void(const Reducer&)>& check_buckets,
                                  StepMean ddp_mean = StepMean::Reduced, StepMean twin_mean = StepMean::Reduced) {
  const int rank = ProcessGroup::init().rank, world = ProcessGroup::init().world_size;
  const Device device = ProcessGroup::init().cuda_device();
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world;
  auto model = make_mlp(270, kHidden, device);
  auto twin = clone_mlp(*model, device);
  auto reference = clone_mlp(*model, device);
  DdpOptions fused = small_buckets(DType::BF16);
  fused.step_mean = ddp_mean;
  DistributedDataParallel ddp(model, communicator, fused);
  DdpOptions normal = small_buckets(DType::BF16);
  normal.last_bucket_high_priority = false;
  normal.step_mean = twin_mean;
  DistributedDataParallel twin_ddp(twin, communicator, normal);
  ASSERT_GE(ddp.reducer().buckets().size(), 3u);
  check_buckets(ddp.reducer());
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW twin_opt(twin_ddp.parameters(), {.lr = 1e-2});
  for (int step = 0; step < 3; ++step) {
    const std::string at = "step " + std::to_string(step);
    const Batch batch = global_batch(global, 80 + step, device);
    const Batch mine = batch.slice(rank * kLocal, kLocal);
    twin_ddp.zero_grad();
    nn::mse_loss(twin_ddp.forward(mine.x), mine.y).backward();
    twin_ddp.synchronize_gradients();
    reference->load_state_dict(twin->state_dict());
    reference->zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    expect_bf16_reduced_grads(*twin, *reference, at);
    twin_opt.step();
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.step(opt);
    expect_same_grads(*model, *twin, 0.0, at);
    expect_same_parameters(*model, *twin, 0.0, at);
  }
  ddp.check_parameters_in_sync("after the bf16-reduced steps");
  twin_ddp.check_parameters_in_sync("after the bf16-reduced synchronize + step");
}

TEST_F(DdpNccl, Bf16ReductionGivesTheMeanRoundedToBf16AndStepEqualsSynchronizeThenStep) {
  // reduce_dtype bf16: NCCL all-reduces bf16 buckets; each rank's .grad is the mean rounded to bf16,
  // and ddp.step (conversion back per bucket) gives the same bits as synchronize + step.
  expect_bf16_reduced_training(comm(), [](const Reducer& reducer) {
    ASSERT_TRUE(reducer.buckets()[0].reduced.defined());
    EXPECT_EQ(reducer.buckets()[0].reduced.dtype(), DType::BF16);
  });
}

TEST_F(DdpNccl, CopyEngineBf16ReductionConvertsOnTheCommunicationStream) {
  // reduce_dtype bf16 with the copy-engine all-reduce (threshold 0: every bucket): the communicator
  // converts (Bucket::converted_by_communicator, no `reduced` buffer); .grad is still the mean
  // rounded to bf16, every rank the same bits, and step() equals synchronize + step.
  auto gather = copy_engine_communicator();
  expect_bf16_reduced_training(*gather, [&](const Reducer& reducer) {
    for (const Bucket& bucket : reducer.buckets()) {
      EXPECT_FALSE(bucket.reduced.defined()) << bucket.label;
      EXPECT_EQ(bucket.converted_by_communicator, world() == 2 ? std::optional<DType>(DType::BF16) : std::nullopt)
          << bucket.label;
    }
  });
}

TEST_F(DdpNccl, CopyEngineMeanFusedIntoAdamWGivesTheSameBits) {
  // StepMean::InUpdate (Note [deferred mean]): the buckets stop after the all-gather and AdamW's
  // kernel computes each mean. Against a twin that reduces as before, then against a twin that
  // defers too and has the communicator write its means at synchronize_gradients(); then
  // InUpdateNoGrad against InUpdate.
  auto gather = copy_engine_communicator();
  for (const StepMean twin_mean : {StepMean::Reduced, StepMean::InUpdate}) {
    SCOPED_TRACE(twin_mean == StepMean::InUpdate ? "twin defers and writes its means" : "twin reduces as before");
    expect_bf16_reduced_training(
        *gather,
        [&](const Reducer& reducer) {
          for (const Bucket& bucket : reducer.buckets()) EXPECT_EQ(bucket.mean_deferred, world() == 2) << bucket.label;
        },
        StepMean::InUpdate, twin_mean);
  }
  expect_no_grad_step_matches_in_update(*gather, /*deferred=*/world() == 2);
}

TEST_F(DdpNccl, DeferredMeansOfTwoInterleavedDdpsStayApart) {
  // Two DDPs on one copy-engine communicator, both backpropagating before either steps (Note
  // [deferred mean]: each reducer's buckets keep slots of their own): the same bits as the same two
  // run one after the other. Their buckets differ in size, so shared slots would also be regrown.
  auto gather = copy_engine_communicator();
  DdpOptions in_update = small_buckets(DType::BF16);
  in_update.step_mean = StepMean::InUpdate;
  constexpr int64_t kLocal = 4;
  std::vector<std::shared_ptr<nn::Sequential>> models;  // interleaved a, b; then one after the other a, b
  for (int copy = 0; copy < 2; ++copy)
    for (const int64_t hidden : {kHidden, int64_t{24}}) models.push_back(make_mlp(290 + hidden, hidden, device()));
  std::vector<std::unique_ptr<DistributedDataParallel>> ddps;
  std::vector<std::unique_ptr<optim::AdamW>> opts;
  for (const auto& model : models) {
    ddps.push_back(std::make_unique<DistributedDataParallel>(model, *gather, in_update));
    opts.push_back(std::make_unique<optim::AdamW>(ddps.back()->parameters(), optim::AdamWOptions{.lr = 1e-2}));
  }
  const auto backward = [&](size_t k, const Batch& mine) {
    ddps[k]->zero_grad();
    nn::mse_loss(ddps[k]->forward(mine.x), mine.y).backward();
  };
  for (int step = 0; step < 3; ++step) {
    const Batch mine = global_batch(kLocal * world(), 300 + step, device()).slice(rank() * kLocal, kLocal);
    backward(0, mine);
    backward(1, mine);
    ddps[0]->step(*opts[0]);
    ddps[1]->step(*opts[1]);
    backward(2, mine);
    ddps[2]->step(*opts[2]);
    backward(3, mine);
    ddps[3]->step(*opts[3]);
    const std::string at = "step " + std::to_string(step);
    expect_same_parameters(*models[0], *models[2], 0.0, at);
    expect_same_parameters(*models[1], *models[3], 0.0, at);
    expect_same_grads(*models[0], *models[2], 0.0, at);
    expect_same_grads(*models[1], *models[3], 0.0, at);
  }
}

TEST_F(DdpNccl, NoSyncAccumulatesLocallyThenReducesTheSum) {
  constexpr int64_t kMicro = 3, kMicroBatch = 4;
  const int64_t global = kMicro * kMicroBatch * world();
  auto model = make_mlp(300 + rank(), kHidden, device());
  DistributedDataParallel ddp(model, comm(), small_buckets());
  auto reference = clone_mlp(*model, device());
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});

  for (int step = 0; step < 2; ++step) {
    const Batch batch = global_batch(global, 40 + step, device());
    ddp.zero_grad();
    for (const auto& [name, p] : model->named_parameters())
      ASSERT_EQ(p.grad().to_vector<float>(), std::vector<float>(p.numel(), 0.0f)) << name;
    const uint64_t launched = ddp.reducer().launches();
    for (int64_t m = 0; m < kMicro; ++m) {
      const Batch mine = batch.slice((rank() * kMicro + m) * kMicroBatch, kMicroBatch);
      auto run = [&] { (nn::mse_loss(ddp.forward(mine.x), mine.y) * (1.0 / kMicro)).backward(); };
      if (m + 1 < kMicro) {
        auto guard = ddp.no_sync();
        run();
        ddp.synchronize_gradients();  // a no-op inside no_sync()
        EXPECT_EQ(ddp.reducer().launches(), launched) << "no_sync() must not communicate";
      } else {
        run();
      }
    }
    ddp.synchronize_gradients();
    EXPECT_GT(ddp.reducer().launches(), launched);
    ref_opt.zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    expect_same_grads(*model, *reference, 2e-6, "accumulated step " + std::to_string(step));
    opt.step();
    ref_opt.step();
  }
  expect_same_parameters(*model, *reference, 1e-5, "after 2 accumulated AdamW steps");
}

TEST_F(DdpNccl, DesyncCheckNamesTheDivergingParameterOnEveryRank) {
  auto model = make_mlp(400, kHidden, device());
  DdpOptions options;
  options.check_every_n_steps = 2;
  DistributedDataParallel ddp(model, comm(), options);
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("before perturbing"));
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  if (rank() == world() - 1) perturb_parameter(*model, 3);  // "2.bias"
  EXPECT_NO_THROW(ddp.after_step());                        // step 1: no check
  const std::string message = error_of([&] { ddp.after_step(); });
  EXPECT_NE(message.find("'2.bias'"), std::string::npos) << message;
  EXPECT_NE(message.find("after step 2"), std::string::npos) << message;
  EXPECT_NE(message.find("rank " + std::to_string(world() - 1)), std::string::npos) << message;
  EXPECT_EQ(message.find("'2.weight'"), std::string::npos) << message;
}

}  // namespace
}  // namespace flame::dist
