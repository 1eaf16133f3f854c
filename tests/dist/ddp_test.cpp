// DistributedDataParallel on the CPU with the MPI communicator (run under mpirun -np 2 / -np 4; also
// runs as one process, world size 1). Every rank also trains the single-process reference on the
// whole global batch and compares: data parallelism must not change the result.
#include "dist/ddp.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "dist/checksum.h"
#include "dist/communicator.h"
#include "dist/ddp_test_support.h"
#include "nn/activation.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/module.h"
#include "nn/optim/adam.h"
#include "nn/optim/sgd.h"

namespace flame::dist {
namespace {

using namespace ddp_testing;

/// One communicator for the whole test program, released before main() (tests/dist/mpi_test_main.cpp)
/// finalises MPI.
class MpiEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { communicator.reset(); }
  std::unique_ptr<Communicator> communicator;
};
MpiEnvironment* const g_env = static_cast<MpiEnvironment*>(::testing::AddGlobalTestEnvironment(new MpiEnvironment));

Communicator& comm() {
  if (!g_env->communicator) g_env->communicator = make_mpi_communicator(ProcessGroup::init());
  return *g_env->communicator;
}
int rank() { return comm().group().rank; }
int world() { return comm().group().world_size; }

TEST(Ddp, BroadcastsRankZerosParametersAndBucketsInReverseOrder) {
  auto model = make_mlp(100 + rank());  // every rank starts different
  DistributedDataParallel ddp(model, comm(), small_buckets());
  auto expected = make_mlp(100);  // rank 0's initialisation
  expect_same_parameters(*model, *expected, 0.0, "after construction");

  const auto& buckets = ddp.reducer().buckets();
  ASSERT_GE(buckets.size(), 3u);
  // Reverse registration order across buckets: the flattened bucket order is P-1, ..., 0.
  size_t expect = model->named_parameters().size();
  for (const Bucket& bucket : buckets) {
    for (size_t k : bucket.params) EXPECT_EQ(k, --expect);
    EXPECT_EQ(bucket.flat.numel(), [&] {
      int64_t n = 0;
      for (const Tensor& v : bucket.views) n += v.numel();
      return n;
    }());
  }
  EXPECT_EQ(expect, 0u);
  EXPECT_LE(buckets[0].flat.nbytes(), 64u);
}

TEST(Ddp, MatchesSingleProcessTrainingOnTheGlobalBatch) {
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world();
  auto model = make_mlp(200 + rank());
  DistributedDataParallel ddp(model, comm(), small_buckets());
  auto reference = clone_mlp(*model);
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});
  const size_t n_buckets = ddp.reducer().buckets().size();

  for (int step = 0; step < 3; ++step) {
    const Batch batch = global_batch(global, 7 + step);
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

    // Every bucket was all-reduced exactly once, in index order.
    ASSERT_EQ(ddp.reducer().launches(), (step + 1) * n_buckets);
    const std::vector<size_t>& order = ddp.reducer().last_round_launches();
    ASSERT_EQ(order.size(), n_buckets);
    for (size_t b = 0; b < n_buckets; ++b) EXPECT_EQ(order[b], b);
  }
  expect_same_parameters(*model, *reference, 1e-5, "after 3 AdamW steps");
  ddp.check_parameters_in_sync("after the equivalence test");
  // The gradient is the bucket's view: accumulation happens in the bucket.
  const Tensor& last_bias = model->named_parameters().back().second;
  EXPECT_EQ(last_bias.grad().storage(), ddp.reducer().buckets()[0].flat.storage());
}

/// Trains two identically initialised replicas on the same data for 3 AdamW steps, one with
/// synchronize_gradients() + optimizer.step(), the other with ddp.step(optimizer), and expects the
/// same parameters and optimizer state bit for bit. With `extra`, each optimizer also holds a
/// parameter outside the module (updated after every bucket); with `reduce_dtype`, both reduce in
/// that dtype.
void check_ddp_step_matches_separate_step(uint64_t seed, bool extra, std::optional<DType> reduce_dtype = std::nullopt,
                                          StepMean step_mean = StepMean::Reduced) {
  constexpr int64_t kLocal = 4;
  const int64_t global = kLocal * world();
  auto separate_model = make_mlp(seed + rank());  // each rank different: DDP broadcasts rank 0's
  auto fused_model = make_mlp(seed + rank());
  DdpOptions options = small_buckets(reduce_dtype);
  options.step_mean = step_mean;
  DistributedDataParallel separate(separate_model, comm(), options);
  DistributedDataParallel fused(fused_model, comm(), options);
  for (const Bucket& bucket : fused.reducer().buckets())
    EXPECT_EQ(bucket.mean_deferred, step_mean != StepMean::Reduced) << bucket.label;
  ASSERT_GE(fused.reducer().buckets().size(), 3u) << "the test wants several buckets";
  expect_same_parameters(*fused_model, *separate_model, 0.0, "after construction");

  std::vector<Tensor> separate_params = separate.parameters(), fused_params = fused.parameters();
  Tensor separate_extra, fused_extra;
  if (extra) {
    separate_extra = full({3}, 0.5, TensorOptions(DType::F32));
    fused_extra = full({3}, 0.5, TensorOptions(DType::F32));
    separate_extra.requires_grad_(true);
    fused_extra.requires_grad_(true);
    separate_params.insert(separate_params.begin(), separate_extra);  // an index apart from the module's
    fused_params.insert(fused_params.begin(), fused_extra);
  }
  optim::AdamW separate_opt(separate_params, {.lr = 1e-2});
  optim::AdamW fused_opt(fused_params, {.lr = 1e-2});

  for (int step = 0; step < 3; ++step) {
    const std::string at = "step " + std::to_string(step);
    const Batch mine = global_batch(global, 170 + step).slice(rank() * kLocal, kLocal);
    const bool bucket_views = step == 2;  // the last step starts from ddp.zero_grad()'s bucket views
    if (bucket_views) {
      separate.zero_grad();
      fused.zero_grad();
    } else {
      separate_opt.zero_grad();
      fused_opt.zero_grad();
    }
    if (extra) {
      const Tensor g = full({3}, 0.25 * (step + 1), TensorOptions(DType::F32));
      separate_extra.set_grad(g.clone());
      fused_extra.set_grad(g.clone());
    }
    nn::mse_loss(separate.forward(mine.x), mine.y).backward();
    separate.synchronize_gradients();
    separate_opt.step();
    separate.after_step();

    const uint64_t launched = fused.reducer().launches();
    nn::mse_loss(fused.forward(mine.x), mine.y).backward();
    fused.step(fused_opt);
    fused.after_step();
    EXPECT_EQ(fused.reducer().launches(), launched + fused.reducer().buckets().size()) << at;
    EXPECT_FALSE(fused.reducer().round_in_progress()) << at;

    expect_same_grads(*fused_model, *separate_model, 0.0, at);
    expect_same_parameters(*fused_model, *separate_model, 0.0, at);
  }
  // Bit for bit: the values themselves, not only their difference.
  const nn::NamedTensors f = fused_model->named_parameters(), s = separate_model->named_parameters();
  ASSERT_EQ(f.size(), s.size());
  for (size_t i = 0; i < f.size(); ++i)
    EXPECT_EQ(f[i].second.to_vector<float>(), s[i].second.to_vector<float>()) << f[i].first << " rank " << rank();
  if (extra) EXPECT_EQ(fused_extra.to_vector<float>(), separate_extra.to_vector<float>()) << "rank " << rank();
  EXPECT_EQ(fused_opt.step_count(), 3);
  EXPECT_EQ(fused_opt.step_count(), separate_opt.step_count());
  const nn::NamedTensors fs = fused_opt.state_dict(), ss = separate_opt.state_dict();
  ASSERT_EQ(fs.size(), ss.size());
  for (size_t i = 0; i < fs.size(); ++i) {
    ASSERT_EQ(fs[i].first, ss[i].first);
    if (fs[i].second.dtype() == DType::F32) {
      EXPECT_EQ(fs[i].second.to_vector<float>(), ss[i].second.to_vector<float>()) << fs[i].first;
    } else {
      EXPECT_EQ(fs[i].second.item(), ss[i].second.item()) << fs[i].first;
    }
  }
  fused.check_parameters_in_sync("after DDP::step");
}

/// Marks the first layer's weight and bias of `model` frozen (requires_grad false).
void freeze_first_layer(nn::Module& model) {
  for (size_t i : {size_t{0}, size_t{1}}) {
    Tensor p = model.named_parameters()[i].second;
    p.requires_grad_(false);
  }
}

// A frozen first layer (fine-tuning): it is broadcast and checked but gets no bucket; the other
// gradients are the global batch's mean, and ddp.step leaves the frozen layer as it was.
TEST(Ddp, FrozenParametersAreBroadcastButNotReduced) {
  constexpr int64_t kLocal = 4;
  auto model = make_mlp(260 + rank());
  freeze_first_layer(*model);
  DistributedDataParallel ddp(model, comm(), small_buckets());
  auto reference = clone_mlp(*model);
  freeze_first_layer(*reference);
  size_t bucketed = 0;
  for (const Bucket& bucket : ddp.reducer().buckets()) bucketed += bucket.params.size();
  EXPECT_EQ(bucketed, model->named_parameters().size() - 2);
  const Tensor frozen_before = model->named_parameters()[0].second.clone();
  optim::AdamW opt(model->parameters(), {.lr = 1e-2});  // the frozen ones included, as users often pass
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});
  for (int step = 0; step < 2; ++step) {
    const Batch batch = global_batch(kLocal * world(), 31 + step);
    const Batch mine = batch.slice(rank() * kLocal, kLocal);
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.step(opt);
    ref_opt.zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    ref_opt.step();
    ddp.after_step();
  }
  EXPECT_FALSE(model->named_parameters()[0].second.grad().defined());
  EXPECT_EQ(max_abs_diff(model->named_parameters()[0].second, frozen_before), 0.0);
  expect_same_parameters(*model, *reference, 1e-5, "after 2 steps with a frozen first layer");
  ddp.check_parameters_in_sync("with a frozen first layer");
}

// Freezing or unfreezing a parameter after DDP was built would leave it unreduced or update it as
// unused: the next synchronization raises on every rank, naming it.
TEST(Ddp, ChangingWhichParametersTrainAfterConstructionRaises) {
  for (const bool unfreeze : {true, false}) {
    SCOPED_TRACE(unfreeze ? "unfreeze" : "freeze");
    auto model = make_mlp(265);
    if (unfreeze) freeze_first_layer(*model);
    DistributedDataParallel ddp(model, comm(), small_buckets());
    Tensor first = model->named_parameters()[0].second;
    first.requires_grad_(unfreeze);
    const Batch batch = global_batch(4, 36);
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
    optim::AdamW opt(model->parameters(), {.lr = 1e-2});
    for (const bool through_step : {false, true}) {
      const std::string message = error_of([&] { through_step ? ddp.step(opt) : ddp.synchronize_gradients(); });
      EXPECT_NE(message.find("'0.weight'"), std::string::npos) << message;
      EXPECT_NE(message.find(unfreeze ? "was unfrozen" : "was frozen"), std::string::npos) << message;
      EXPECT_NE(message.find("construct a new DistributedDataParallel"), std::string::npos) << message;
    }
    first.requires_grad_(!unfreeze);  // back as at construction
    // Unfrozen and back: every trained parameter's hook fired, so the round finishes. (Frozen and
    // back: that parameter got no gradient in this backward, which the unused check reports.)
    if (unfreeze) EXPECT_NO_THROW(ddp.synchronize_gradients());
  }
}

// Ranks that disagree on which parameters are frozen would bucket differently: an error at
// construction, naming the parameter.
TEST(Ddp, RanksMustAgreeOnFrozenParameters) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  auto model = make_mlp(270);
  if (rank() == 1) freeze_first_layer(*model);
  const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm()); });
  EXPECT_NE(message.find("'0.weight'"), std::string::npos) << message;
  EXPECT_NE(message.find("(frozen)"), std::string::npos) << message;
}

TEST(Ddp, StepMatchesSynchronizeThenOptimizerStepBitForBit) {
  check_ddp_step_matches_separate_step(1100, /*extra=*/false);
}

TEST(Ddp, StepUpdatesParametersOutsideTheModuleToo) { check_ddp_step_matches_separate_step(1200, /*extra=*/true); }

TEST(Ddp, StepWithBf16ReductionMatchesSynchronizeThenOptimizerStepBitForBit) {
  check_ddp_step_matches_separate_step(1250, /*extra=*/false, DType::BF16);
}

// StepMean::InUpdate (Note [deferred mean]): on MPI every bucket's mean is deferred; AdamW's update
// computes it from the slots inside ddp.step, and the communicator writes it for
// synchronize_gradients(). Both must leave the same .grad, parameters and state, bit for bit; the
// extra parameter outside the module (no slots) shares AdamW's update with slotted ones.
TEST(Ddp, MeanFusedIntoAdamWMatchesSynchronizeThenStepBitForBit) {
  check_ddp_step_matches_separate_step(1260, /*extra=*/true, DType::BF16, StepMean::InUpdate);
}

TEST(Ddp, MeanInUpdateWithoutWritingItLeavesNoGradientAfterTheStep) {
  expect_no_grad_step_matches_in_update(comm(), /*deferred=*/true);
}

// The fused mean is the mean the reducer's own bf16 path computes: with two ranks (one sum, so MPI's
// order cannot matter) the same bits as without the option; and with an optimizer that takes no
// slots (SGD), ddp.step has the communicator write the means first.
TEST(Ddp, MeanFusedIntoTheStepEqualsTheUnfusedBf16Mean) {
  constexpr int64_t kLocal = 4;
  const int64_t global = kLocal * world();
  for (const bool adamw : {true, false}) {
    SCOPED_TRACE(adamw ? "AdamW" : "SGD");
    auto fused_model = make_mlp(1270 + rank());
    auto plain_model = make_mlp(1270 + rank());
    DdpOptions fused_options = small_buckets(DType::BF16);
    fused_options.step_mean = StepMean::InUpdate;
    DistributedDataParallel fused(fused_model, comm(), fused_options);
    DistributedDataParallel plain(plain_model, comm(), small_buckets(DType::BF16));
    const auto make_opt = [&](const std::vector<Tensor>& params) -> std::unique_ptr<optim::Optimizer> {
      if (adamw) return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = 1e-2});
      return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
    };
    auto fused_opt = make_opt(fused.parameters());
    auto plain_opt = make_opt(plain.parameters());
    for (int step = 0; step < 3; ++step) {
      const std::string at = "step " + std::to_string(step);
      const Batch batch = global_batch(global, 127 + step);
      const Batch mine = batch.slice(rank() * kLocal, kLocal);
      fused.zero_grad();
      nn::mse_loss(fused.forward(mine.x), mine.y).backward();
      fused.step(*fused_opt);
      plain.zero_grad();
      nn::mse_loss(plain.forward(mine.x), mine.y).backward();
      plain.step(*plain_opt);
      const double tolerance = world() == 2 ? 0.0 : 1e-2;  // more ranks: MPI may sum in another order
      expect_same_grads(*fused_model, *plain_model, tolerance, at);
      expect_same_parameters(*fused_model, *plain_model, world() == 2 ? 0.0 : 1e-3, at);
    }
    fused.check_parameters_in_sync("after the fused steps");
  }
}

TEST(Ddp, Bf16ReduceDtypeGivesEveryRankTheMeanRoundedToBf16) {
  constexpr int64_t kLocal = 5;
  const int64_t global = kLocal * world();
  auto model = make_mlp(1400 + rank());
  DistributedDataParallel ddp(model, comm(), small_buckets(DType::BF16));
  auto reference = clone_mlp(*model);
  for (const Bucket& bucket : ddp.reducer().buckets()) {
    EXPECT_EQ(bucket.flat.dtype(), DType::F32);
    ASSERT_TRUE(bucket.reduced.defined());
    EXPECT_EQ(bucket.reduced.dtype(), DType::BF16);
    EXPECT_EQ(bucket.reduced.numel(), bucket.flat.numel());
    EXPECT_FALSE(bucket.converted_by_communicator) << "MPI converts nothing itself: the reducer does";
  }
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  for (int step = 0; step < 3; ++step) {
    const Batch batch = global_batch(global, 140 + step);
    const Batch mine = batch.slice(rank() * kLocal, kLocal);
    opt.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.synchronize_gradients();
    reference->zero_grad();
    nn::mse_loss(reference->forward(batch.x), batch.y).backward();
    expect_bf16_reduced_grads(*model, *reference, "step " + std::to_string(step));
    opt.step();
    // The reference follows the replicas' parameters, so each step compares one gradient.
    reference->load_state_dict(model->state_dict());
  }
  // Every rank applied the same rounded mean: the replicas are still bitwise equal.
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after 3 steps reduced in bf16"));
}

TEST(Ddp, ReduceDtypeMustBeFloatingAndTheParametersOwnDtypeAddsNoBuffer) {
  auto model = make_mlp(1500 + rank());  // every rank different
  const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm(), small_buckets(DType::I32)); });
  EXPECT_NE(message.find("reduce_dtype"), std::string::npos) << message;
  EXPECT_NE(message.find("i32"), std::string::npos) << message;
  // Raised before any collective: every rank keeps its own initial parameters.
  expect_same_parameters(*model, *make_mlp(1500 + rank()), 0.0, "after the rejected construction");
  DistributedDataParallel same(model, comm(), small_buckets(DType::F32));
  for (const Bucket& bucket : same.reducer().buckets()) EXPECT_FALSE(bucket.reduced.defined());
}

TEST(Ddp, Bf16ReductionOfGradientsAccumulatedUnderNoSync) {
  constexpr int64_t kMicro = 2, kMicroBatch = 3;
  const int64_t global = kMicro * kMicroBatch * world();
  auto model = make_mlp(1600 + rank());
  DistributedDataParallel ddp(model, comm(), small_buckets(DType::BF16));
  auto reference = clone_mlp(*model);
  const Batch batch = global_batch(global, 160);
  ddp.zero_grad();
  for (int64_t m = 0; m < kMicro; ++m) {
    const Batch mine = batch.slice((rank() * kMicro + m) * kMicroBatch, kMicroBatch);
    auto run = [&] { (nn::mse_loss(ddp.forward(mine.x), mine.y) * (1.0 / kMicro)).backward(); };
    if (m + 1 < kMicro) {
      auto guard = ddp.no_sync();
      run();
    } else {
      run();
    }
  }
  ddp.synchronize_gradients();
  nn::mse_loss(reference->forward(batch.x), batch.y).backward();
  expect_bf16_reduced_grads(*model, *reference, "after accumulation under no_sync()");
}

TEST(Ddp, StepInsideNoSyncRaisesOnEveryRank) {
  auto model = make_mlp(1300);
  DistributedDataParallel ddp(model, comm(), small_buckets());
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  const Batch batch = global_batch(2 * world(), 131);
  const Batch mine = batch.slice(2 * rank(), 2);
  std::vector<std::vector<float>> before;
  for (const auto& [name, p] : model->named_parameters()) before.push_back(p.to_vector<float>());
  {
    auto guard = ddp.no_sync();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    const std::string message = error_of([&] { ddp.step(opt); });
    EXPECT_NE(message.find("no_sync()"), std::string::npos) << "rank " << rank() << ": " << message;
    EXPECT_NE(message.find("step()"), std::string::npos) << message;
  }
  EXPECT_EQ(opt.step_count(), 0);
  const nn::NamedTensors params = model->named_parameters();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_EQ(params[i].second.to_vector<float>(), before[i]) << params[i].first;
  // After the block, a reducing backward and step() work (the accumulated gradient is reduced too).
  nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  EXPECT_NO_THROW(ddp.step(opt));
  EXPECT_EQ(opt.step_count(), 1);
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after the step following no_sync()"));
}

TEST(Ddp, NoSyncAccumulatesLocallyThenReducesTheSum) {
  constexpr int64_t kMicro = 3, kMicroBatch = 4;
  const int64_t global = kMicro * kMicroBatch * world();
  auto model = make_mlp(300 + rank());
  DistributedDataParallel ddp(model, comm(), small_buckets());
  auto reference = clone_mlp(*model);
  optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
  optim::AdamW ref_opt(reference->parameters(), {.lr = 1e-2});

  for (int step = 0; step < 2; ++step) {
    const Batch batch = global_batch(global, 40 + step);
    ddp.zero_grad();  // gradients stay bucket views: accumulation happens in the buckets
    for (const auto& [name, p] : model->named_parameters())
      ASSERT_EQ(p.grad().to_vector<float>(), std::vector<float>(p.numel(), 0.0f));
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

TEST(Ddp, DesyncCheckNamesTheDivergingParameterOnEveryRank) {
  auto model = make_mlp(400);
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

// With a tolerance, an infinite checksum still agrees only with the same infinity (rtol * inf
// would accept any value).
TEST(Ddp, DesyncCheckWithATolerancePassesNoInfinity) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  const bool last = rank() == world() - 1;
  const nn::NamedTensors same{{"w", full({3}, 2.0)}};
  EXPECT_NO_THROW(check_in_sync(same, comm(), "identical", 1e-6));
  const nn::NamedTensors inf_vs_finite{{"w", full({3}, last ? INFINITY : 2.0)}};
  EXPECT_NE(error_of([&] { check_in_sync(inf_vs_finite, comm(), "inf vs finite", 1e-6); }).find("'w'"),
            std::string::npos);
  const nn::NamedTensors opposite{{"w", full({3}, last ? -INFINITY : INFINITY)}};
  EXPECT_NE(error_of([&] { check_in_sync(opposite, comm(), "+inf vs -inf", 1e-6); }).find("'w'"), std::string::npos);
  const nn::NamedTensors within{{"w", full({3}, last ? 2.0 * (1 + 1e-9) : 2.0)}};
  EXPECT_NO_THROW(check_in_sync(within, comm(), "within the tolerance", 1e-6));
  // A zero-mean tensor: its sums cancel to about 0, so the tolerance is taken relative to the
  // values' size, not to the sums; a rounding-size difference passes, a real one does not.
  const auto zero_mean = [&](double nudge) {
    return nn::NamedTensors{{"z", from_vector(std::vector<double>{1.0, -1.0, 3.0, -3.0 + (last ? nudge : 0.0)}, {4},
                                              TensorOptions(DType::F64))}};
  };
  EXPECT_NO_THROW(check_in_sync(zero_mean(1e-12), comm(), "zero mean, rounding-size difference", 1e-6));
  EXPECT_NE(error_of([&] { check_in_sync(zero_mean(1e-2), comm(), "zero mean, real difference", 1e-6); }).find("'z'"),
            std::string::npos);
}

// Two values swapped within a tensor keep its sum and sum of squares: the position-weighted sum
// catches it.
TEST(Ddp, DesyncCheckCatchesValuesSwappedWithinATensor) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  auto model = make_mlp(280);
  DistributedDataParallel ddp(model, comm());
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("before swapping"));
  if (rank() == world() - 1) {
    autograd::NoGradGuard no_grad;
    Tensor weight = model->named_parameters()[0].second;  // "0.weight" [16, 6]
    const Tensor first = weight.select(0, 0).select(0, 0).clone(), second = weight.select(0, 3).select(0, 5).clone();
    weight.select(0, 0).select(0, 0).copy_(second);
    weight.select(0, 3).select(0, 5).copy_(first);
  }
  const std::string message = error_of([&] { ddp.check_parameters_in_sync("after swapping"); });
  EXPECT_NE(message.find("'0.weight'"), std::string::npos) << message;
  EXPECT_NE(message.find("position-weighted sum"), std::string::npos) << message;
}

// The checksum converts a large parameter to f64 chunk by chunk: the three sums over a tensor longer
// than one chunk equal the host's, exactly (small integers: every partial sum is exact in f64).
TEST(Ddp, ChecksumOfATensorLongerThanAChunkIsExact) {
  if (rank() != 0) GTEST_SKIP() << "not collective: rank 0 is enough";
  const int64_t n = int64_t{1021} * 16384 + 1030;  // one chunk and a bit
  std::vector<float> values(static_cast<size_t>(n));
  double sum = 0, squares = 0, weighted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(i % 7 - 3);
    values[static_cast<size_t>(i)] = v;
    sum += v;
    squares += double{v} * v;
    weighted += static_cast<double>(i % 1021 + 1) * v;
  }
  const Tensor t = from_vector(values, {n});
  const std::vector<double> got = parameter_checksums({{"big", t}}).to_vector<double>();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], sum);
  EXPECT_EQ(got[1], squares);
  EXPECT_EQ(got[2], weighted);
}

TEST(Ddp, SetStepsKeepsTheCheckCadenceOfAResumedRun) {
  auto model = make_mlp(410);
  DdpOptions options;
  options.check_every_n_steps = 4;
  DistributedDataParallel ddp(model, comm(), options);
  EXPECT_TRUE(error_of([&] { ddp.set_steps(-1); }).find("negative") != std::string::npos);
  ddp.set_steps(6);  // resumed after step 6: the next check is after step 8
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  if (rank() == 0) perturb_parameter(*model, 1);  // "0.bias"
  EXPECT_NO_THROW(ddp.after_step());              // step 7: no check
  const std::string message = error_of([&] { ddp.after_step(); });
  EXPECT_NE(message.find("after step 8"), std::string::npos) << message;
  EXPECT_EQ(ddp.steps(), 8);
}

TEST(Ddp, ParameterMismatchAtConstructionRaisesOnEveryRank) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  auto model = make_mlp(500, rank() == 1 ? kHidden + 1 : kHidden);
  const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm()); });
  EXPECT_NE(message.find("'0.weight' [16, 6]"), std::string::npos) << message;
  EXPECT_NE(message.find("'0.weight' [17, 6] f32 on rank 1"), std::string::npos) << message;

  // A different number of parameters: rank 1 has a bias-free last layer.
  manual_seed(501);
  auto other = std::make_shared<nn::Sequential>(
      std::vector<std::shared_ptr<nn::Module>>{std::make_shared<nn::Linear>(kIn, kOut, /*bias=*/rank() != 1)});
  const std::string count_message = error_of([&] { DistributedDataParallel ddp(other, comm()); });
  EXPECT_NE(count_message.find("nothing (it has only 1 entries) on rank 1"), std::string::npos) << count_message;
}

/// One [3, 4] parameter, stored transposed (not contiguous) where `transposed` says so.
class OddLayout : public nn::Module {
 public:
  explicit OddLayout(bool transposed) {
    Tensor w = transposed ? randn({4, 3}).t() : randn({3, 4});
    w.requires_grad_(true);
    register_parameter("w", w);
  }
  Tensor forward(const Tensor& x) override { return x; }
  std::string type_name() const override { return "OddLayout"; }
};

TEST(Ddp, AModuleOneRankCannotWrapRaisesOnEveryRankAtConstruction) {
  // Rank 1's parameter is not contiguous, which only rank 1 can see (the signatures agree): every
  // rank raises at construction, rank 1 naming the parameter and the others naming rank 1, instead
  // of rank 1 raising alone after the broadcasts while the others go on to wait for it.
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  manual_seed(520);
  auto model = std::make_shared<OddLayout>(rank() == 1);
  const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm()); });
  if (rank() == 1) {
    EXPECT_NE(message.find("parameter 'w'"), std::string::npos) << message;
    EXPECT_NE(message.find("contiguous"), std::string::npos) << message;
  } else {
    EXPECT_NE(message.find("rank(s) 1 cannot wrap the module"), std::string::npos) << message;
  }
  // The ranks are still matched: a module every rank can wrap works next.
  auto fine = std::make_shared<OddLayout>(false);
  EXPECT_NO_THROW(DistributedDataParallel ddp(fine, comm()));
}

/// Two heads; forward uses the second only where `use_second` says so.
class TwoHeads : public nn::Module {
 public:
  explicit TwoHeads(bool use_second) : use_second_(use_second) {
    first_ = register_module("first", std::make_shared<nn::Linear>(kIn, kOut));
    second_ = register_module("second", std::make_shared<nn::Linear>(kIn, kOut));
  }
  Tensor forward(const Tensor& x) override {
    return use_second_ ? first_->forward(x) + second_->forward(x) : first_->forward(x);
  }
  std::string type_name() const override { return "TwoHeads"; }

 private:
  bool use_second_;
  std::shared_ptr<nn::Linear> first_, second_;
};

TEST(Ddp, UnusedParameterRaisesOnEveryRankUnderErrorPolicy) {
  manual_seed(600);
  auto model = std::make_shared<TwoHeads>(/*use_second=*/rank() != 0);
  DistributedDataParallel ddp(model, comm());
  const Batch batch = global_batch(4, 61);
  nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
  const std::string message = error_of([&] { ddp.synchronize_gradients(); });
  EXPECT_NE(message.find("'second.weight' received no gradient on 1 of"), std::string::npos) << message;
  EXPECT_NE(message.find("UnusedParameters::Ignore"), std::string::npos) << message;
  // The reducer starts a fresh round: a next, complete step works.
}

/// TwoHeads whose second head can be switched off after construction.
class SwitchableHeads : public nn::Module {
 public:
  SwitchableHeads() {
    first_ = register_module("first", std::make_shared<nn::Linear>(kIn, kOut));
    second_ = register_module("second", std::make_shared<nn::Linear>(kIn, kOut));
  }
  Tensor forward(const Tensor& x) override {
    return use_second ? first_->forward(x) + second_->forward(x) : first_->forward(x);
  }
  std::string type_name() const override { return "SwitchableHeads"; }
  bool use_second = true;

 private:
  std::shared_ptr<nn::Linear> first_, second_;
};

TEST(Ddp, UnusedParameterInALaterStepRaisesAtTheNextCheckAndReplicasStayEqual) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  manual_seed(650);
  auto model = std::make_shared<SwitchableHeads>();
  DistributedDataParallel ddp(model, comm());
  optim::AdamW optimizer(ddp.parameters(), optim::AdamWOptions{.lr = 1e-2});
  const Batch batch = global_batch(2 * world(), 65);
  const Batch mine = batch.slice(2 * rank(), 2);
  const auto step = [&] {
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
    ddp.synchronize_gradients();  // no host wait and no check after the first round
    optimizer.step();
  };
  step();                           // every parameter used: the first-round check passes
  model->use_second = rank() != 1;  // rank 1 stops using the second head
  step();
  step();
  // The replicas still agree (rank 1 contributed zeros, every rank applied the same mean)...
  EXPECT_NO_THROW(check_in_sync(model->named_parameters(), comm(), "after step 3", 0.0));
  const std::string message = error_of([&] { ddp.check_parameters_in_sync("after step 3"); });
  // ...but the check names the parameter rank 1 left without a gradient, on every rank.
  EXPECT_NE(message.find("'second.weight' received no gradient on 1 of " + std::to_string(world()) + " ranks"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("after step 3"), std::string::npos) << message;
  EXPECT_EQ(message.find("checksum"), std::string::npos) << message;
  EXPECT_EQ(message.find("(including this one)") != std::string::npos, rank() == 1) << message;
  // The flags were reset by the check; with every head used again the next check passes.
  model->use_second = true;
  step();
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after step 4"));
}

/// The gradients of `module`, named, for comparing them across ranks.
nn::NamedTensors named_grads(const nn::Module& module) {
  nn::NamedTensors grads;
  for (const auto& [name, p] : module.named_parameters()) grads.emplace_back(name, p.grad());
  return grads;
}

TEST(Ddp, StepThatRaisesLeavesEveryRankTheMeanGradients) {
  // After ddp.step raises (bf16 reduction, so the means reach .grad only when converted back),
  // every rank must still hold the same mean gradients, and the next step must work.
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  manual_seed(1700);
  auto model = std::make_shared<SwitchableHeads>();
  model->use_second = rank() != 0;  // an unused parameter on rank 0 in the first backward
  DdpOptions options;
  options.reduce_dtype = DType::BF16;
  DistributedDataParallel ddp(model, comm(), options);
  optim::AdamW optimizer(ddp.parameters(), optim::AdamWOptions{.lr = 1e-2});
  const Batch mine = global_batch(2 * world(), 170).slice(2 * rank(), 2);
  nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  const std::string unused = error_of([&] { ddp.step(optimizer); });
  EXPECT_NE(unused.find("'second.weight' received no gradient"), std::string::npos) << unused;
  EXPECT_NO_THROW(check_in_sync(named_grads(*model), comm(), "after the unused-parameter error", 0.0));

  // An optimizer that does not hold the module's parameters: step_in_groups raises.
  model->use_second = true;
  Tensor stranger = full({2}, 1.0, TensorOptions(DType::F32));
  stranger.requires_grad_(true);
  optim::AdamW foreign({stranger}, {.lr = 1e-2});
  nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  EXPECT_NE(error_of([&] { ddp.step(foreign); }), "");
  EXPECT_NO_THROW(check_in_sync(named_grads(*model), comm(), "after the foreign-optimizer error", 0.0));

  nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  EXPECT_NO_THROW(ddp.step(optimizer));
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after a complete step"));
}

TEST(Ddp, GradientTwiceInOneReductionInvalidatesTheStepUntilZeroGrad) {
  // Two forwards, then two backwards: the second adds into buckets already reduced. Every rank must
  // raise, refuse the step until ddp.zero_grad(), and stay equal to the others.
  auto model = make_mlp(1800 + rank());
  DistributedDataParallel ddp(model, comm(), small_buckets());
  optim::AdamW optimizer(ddp.parameters(), optim::AdamWOptions{.lr = 1e-2});
  const Batch batch = global_batch(4 * world(), 180);
  const Batch a = batch.slice(4 * rank(), 2), b = batch.slice(4 * rank() + 2, 2);
  Tensor loss_a = nn::mse_loss(ddp.forward(a.x), a.y);
  Tensor loss_b = nn::mse_loss(ddp.forward(b.x), b.y);
  loss_a.backward();
  const std::string twice = error_of([&] { loss_b.backward(); });
  EXPECT_NE(twice.find("got a gradient twice"), std::string::npos) << twice;
  EXPECT_NE(twice.find("ddp.zero_grad()"), std::string::npos) << twice;
  const std::string invalid = error_of([&] { ddp.step(optimizer); });
  EXPECT_NE(invalid.find("gradients are invalid"), std::string::npos) << invalid;
  EXPECT_EQ(optimizer.step_count(), 0);
  EXPECT_FALSE(ddp.reducer().round_in_progress());
  // Still invalid without ddp.zero_grad(), even after a complete backward.
  nn::mse_loss(ddp.forward(a.x), a.y).backward();
  EXPECT_NE(error_of([&] { ddp.synchronize_gradients(); }).find("gradients are invalid"), std::string::npos);
  ddp.zero_grad();
  nn::mse_loss(ddp.forward(a.x), a.y).backward();
  EXPECT_NO_THROW(ddp.step(optimizer));
  EXPECT_EQ(optimizer.step_count(), 1);
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after the step following the error"));
}

/// A linear layer that registers a buffer when asked to.
class MaybeBuffered : public nn::Module {
 public:
  explicit MaybeBuffered(bool with_buffer) {
    linear_ = register_module("lin", std::make_shared<nn::Linear>(kIn, kOut));
    if (with_buffer) register_buffer("running", zeros({kOut}));
  }
  Tensor forward(const Tensor& x) override { return linear_->forward(x); }
  std::string type_name() const override { return "MaybeBuffered"; }

 private:
  std::shared_ptr<nn::Linear> linear_;
};

TEST(Ddp, BufferOnSomeRanksOnlyRaisesOnEveryRank) {
  if (world() == 1) GTEST_SKIP() << "needs at least two ranks";
  manual_seed(1900);
  auto model = std::make_shared<MaybeBuffered>(/*with_buffer=*/rank() == 1);
  const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm()); });
  EXPECT_NE(message.find("different buffers"), std::string::npos) << message;
  EXPECT_NE(message.find("'running'"), std::string::npos) << message;
  // The communicator is still usable: the ranks' collectives stayed matched.
  auto same = std::make_shared<MaybeBuffered>(/*with_buffer=*/true);
  EXPECT_NO_THROW(DistributedDataParallel ddp(same, comm()));
}

TEST(Ddp, UnusedParameterIsIgnoredUnderIgnorePolicy) {
  manual_seed(700);
  auto model = std::make_shared<TwoHeads>(/*use_second=*/rank() == world() - 1 && world() > 1);
  DdpOptions options;
  options.unused_parameters = UnusedParameters::Ignore;
  DistributedDataParallel ddp(model, comm(), options);
  const Batch batch = global_batch(4, 71);
  nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
  ASSERT_NO_THROW(ddp.synchronize_gradients());
  const nn::NamedTensors params = model->named_parameters();  // first.weight, first.bias, second.*
  for (size_t i = 0; i < 4; ++i) {
    const bool used_somewhere = i < 2 || world() > 1;
    ASSERT_EQ(params[i].second.grad().defined(), used_somewhere) << params[i].first;
  }
  if (world() == 1) return;
  // second.* got a gradient on the last rank only: the mean is that gradient / W, the same everywhere.
  const std::vector<double> grad = params[3].second.grad().to(DType::F64).to_vector<double>();
  Tensor all = zeros({world() * kOut}, TensorOptions(DType::F64));
  comm().all_gather(params[3].second.grad().to(DType::F64), all);
  const std::vector<double> gathered = all.to_vector<double>();
  for (int r = 0; r < world(); ++r)
    for (int64_t j = 0; j < kOut; ++j) EXPECT_EQ(gathered[r * kOut + j], grad[j]);
  double norm = 0;
  for (double g : grad) norm += std::abs(g);
  EXPECT_GT(norm, 0.0);
}

/// Registers its output layer first, so backward finishes the later buckets first.
class OutputFirst : public nn::Module {
 public:
  OutputFirst() {
    out_ = register_module("out", std::make_shared<nn::Linear>(kHidden, kOut));
    in_ = register_module("in", std::make_shared<nn::Linear>(kIn, kHidden));
  }
  Tensor forward(const Tensor& x) override { return out_->forward(tanh(in_->forward(x))); }
  std::string type_name() const override { return "OutputFirst"; }

 private:
  std::shared_ptr<nn::Linear> out_, in_;
};

TEST(Ddp, BucketsReadyOutOfOrderAreLaunchedInIndexOrder) {
  manual_seed(900 + rank());
  auto model = std::make_shared<OutputFirst>();
  DdpOptions options;
  options.first_bucket_bytes = 1;  // one parameter per bucket
  options.bucket_cap_bytes = 1;
  DistributedDataParallel ddp(model, comm(), options);
  auto reference = std::make_shared<OutputFirst>();
  nn::NamedTensors values;
  for (const auto& [name, t] : model->state_dict()) values.emplace_back(name, t.clone());
  reference->load_state_dict(values);
  // Buckets: 0 in.bias, 1 in.weight, 2 out.bias, 3 out.weight; out.* get their gradients first.
  ASSERT_EQ(ddp.reducer().buckets().size(), 4u);
  std::vector<uint64_t> launched_when_out_ready;
  for (const auto& [name, p] : model->named_parameters()) {
    if (name.rfind("out.", 0) != 0) continue;
    p.register_grad_ready_hook([&](const Tensor&) { launched_when_out_ready.push_back(ddp.reducer().launches()); });
  }
  const Batch batch = global_batch(3 * world(), 91);
  const Batch mine = batch.slice(3 * rank(), 3);
  nn::mse_loss(ddp.forward(mine.x), mine.y).backward();
  ddp.synchronize_gradients();
  ASSERT_EQ(launched_when_out_ready.size(), 2u);
  EXPECT_EQ(launched_when_out_ready[0], 0u) << "bucket 3 or 2 was launched before buckets 0 and 1";
  EXPECT_EQ(launched_when_out_ready[1], 0u);
  EXPECT_EQ(ddp.reducer().last_round_launches(), (std::vector<size_t>{0, 1, 2, 3}));
  nn::mse_loss(reference->forward(batch.x), batch.y).backward();
  expect_same_grads(*model, *reference, 2e-6, "out-of-order buckets");
}

// A reduction that no backward fed (synchronize_gradients() twice, or every backward inside
// no_sync()) names that cause, not some parameter, at the check.
TEST(Ddp, AReductionWithNoBackwardNamesTheCause) {
  for (const bool in_no_sync : {false, true}) {
    SCOPED_TRACE(in_no_sync ? "every backward inside no_sync()" : "synchronize_gradients() twice");
    auto model = make_mlp(810);
    DistributedDataParallel ddp(model, comm(), small_buckets());
    const Batch batch = global_batch(4, 82);
    if (in_no_sync) {
      auto guard = ddp.no_sync();
      nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
    } else {
      nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
      ddp.synchronize_gradients();  // the first round, checked: every parameter was used
    }
    const std::string message = error_of([&] {
      ddp.synchronize_gradients();
      ddp.check_parameters_in_sync("now");
    });
    EXPECT_NE(message.find("found no gradient from any backward"), std::string::npos) << message;
    EXPECT_NE(message.find("no_sync()"), std::string::npos) << message;
    EXPECT_NE(message.find("called twice"), std::string::npos) << message;
  }
}

// Under UnusedParameters::Ignore too, the parameter check between backward and synchronization is
// refused (its collective would not match the other ranks' bucket all-reduces).
TEST(Ddp, CheckMidRoundRaisesUnderIgnorePolicy) {
  auto model = make_mlp(820);
  DdpOptions options = small_buckets();
  options.unused_parameters = UnusedParameters::Ignore;
  DistributedDataParallel ddp(model, comm(), options);
  const Batch batch = global_batch(4, 83);
  nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
  const std::string message = error_of([&] { ddp.check_parameters_in_sync("mid-round"); });
  EXPECT_NE(message.find("synchronize_gradients() first"), std::string::npos) << message;
  ddp.synchronize_gradients();
  EXPECT_NO_THROW(ddp.check_parameters_in_sync("after the round"));
}

/// Forwards every collective to `inner` and notes each overlapped all-reduce's label and priority;
/// raises, once and without issuing it, for the overlapped all-reduce labelled `fail_once`.
class PriorityRecorder final : public Communicator {
 public:
  explicit PriorityRecorder(Communicator& inner) : Communicator(inner.group()), inner_(inner) {}
  void all_reduce(const Tensor& t, ReduceOp op, const std::string& what) override { inner_.all_reduce(t, op, what); }
  void broadcast(const Tensor& t, int root, const std::string& what) override { inner_.broadcast(t, root, what); }
  void all_gather(const Tensor& in, const Tensor& out, const std::string& what) override {
    inner_.all_gather(in, out, what);
  }
  void reduce_scatter(const Tensor& in, const Tensor& out, ReduceOp op, const std::string& what) override {
    inner_.reduce_scatter(in, out, op, what);
  }
  void barrier() override { inner_.barrier(); }
  void synchronize() override { inner_.synchronize(); }
  uint64_t all_reduce_overlapped(const Tensor& t, ReduceOp op, const std::string& what,
                                 OverlapPriority priority) override {
    if (!fail_once.empty() && what == fail_once) {
      fail_once.clear();
      FLAME_FAIL("injected: cannot issue '{}'", what);
    }
    issued.emplace_back(what, priority);
    return inner_.all_reduce_overlapped(t, op, what, priority);
  }
  void compute_wait() override { inner_.compute_wait(); }
  void compute_wait(uint64_t collective) override { inner_.compute_wait(collective); }
  Device device() const override { return inner_.device(); }

  std::vector<std::pair<std::string, OverlapPriority>> issued;
  std::string fail_once;

 private:
  Communicator& inner_;
};

// Note [last bucket priority]: with the option (the default), the last bucket of every round, and
// only it, is issued at high priority; without it, every bucket is issued at normal priority.
TEST(Ddp, OnlyTheLastBucketIsIssuedAtHighPriorityUnlessTurnedOff) {
  EXPECT_TRUE(DdpOptions{}.last_bucket_high_priority);
  for (const bool asked : {true, false}) {
    SCOPED_TRACE(asked ? "last_bucket_high_priority" : "turned off");
    PriorityRecorder recorder(comm());
    auto model = make_mlp(830);
    DdpOptions options = small_buckets();
    options.last_bucket_high_priority = asked;
    DistributedDataParallel ddp(model, recorder, options);
    const size_t n_buckets = ddp.reducer().buckets().size();
    ASSERT_GE(n_buckets, 3u);
    optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
    for (int step = 0; step < 2; ++step) {
      recorder.issued.clear();
      const Batch batch = global_batch(4, 84 + step);
      nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
      ddp.synchronize_gradients();
      opt.step();
      ASSERT_EQ(recorder.issued.size(), n_buckets);
      for (size_t b = 0; b < n_buckets; ++b) {
        EXPECT_EQ(recorder.issued[b].first, "DDP bucket " + std::to_string(b));
        const bool high = recorder.issued[b].second == OverlapPriority::High;
        EXPECT_EQ(high, asked && b + 1 == n_buckets) << "bucket " << b << " of " << n_buckets << ", step " << step;
      }
    }
  }
}

// A bucket whose all-reduce cannot be issued in backward's hook (rank 0's communicator raises once,
// for the first or the last bucket): the error ends backward on that rank; synchronize_gradients()
// then issues the bucket, in order, so every rank's collectives match, and raises on that rank
// naming it, since the round's gradients may be incomplete. After zero_grad() training goes on with
// every replica identical.
TEST(Ddp, ABucketThatCouldNotBeIssuedInBackwardIsIssuedBySynchronizeWhichRaises) {
  for (const bool last : {false, true}) {
    SCOPED_TRACE(last ? "last bucket" : "first bucket");
    PriorityRecorder recorder(comm());
    auto model = make_mlp(840);
    DistributedDataParallel ddp(model, recorder, small_buckets());
    optim::AdamW opt(ddp.parameters(), {.lr = 1e-2});
    const size_t n_buckets = ddp.reducer().buckets().size();
    ASSERT_GE(n_buckets, 3u);
    const std::string failing = "DDP bucket " + std::to_string(last ? n_buckets - 1 : 0);
    const Batch batch = global_batch(4, 86);
    // A first step as usual (the first round's unused-parameter check would name the parameters a
    // backward that raised left without gradient, on every rank).
    nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
    ddp.step(opt);
    ddp.zero_grad();
    recorder.issued.clear();
    if (rank() == 0) recorder.fail_once = failing;
    const Tensor loss = nn::mse_loss(ddp.forward(batch.x), batch.y);
    if (rank() == 0) {
      const std::string message = error_of([&] { loss.backward(); });
      EXPECT_NE(message.find("injected: cannot issue '" + failing + "'"), std::string::npos) << message;
      const std::string sync_message = error_of([&] { ddp.synchronize_gradients(); });
      EXPECT_NE(sync_message.find("the all-reduce of '" + failing + "' could not be issued during backward"),
                std::string::npos)
          << sync_message;
    } else {
      loss.backward();
      ddp.synchronize_gradients();
    }
    ASSERT_EQ(recorder.issued.size(), n_buckets);  // every bucket once, in order, on every rank
    for (size_t b = 0; b < n_buckets; ++b) EXPECT_EQ(recorder.issued[b].first, "DDP bucket " + std::to_string(b));
    // The ranks skip this step's update; after zero_grad() the next step trains as usual.
    ddp.zero_grad();
    nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
    ddp.step(opt);
    ddp.after_step();
    EXPECT_NO_THROW(ddp.check_parameters_in_sync("after the failed round"));
  }
}

// Options that decide which collectives DDP issues (or when it raises) must agree: one rank with
// another bucket cap, reduce dtype, step mean or checksum tolerance makes every rank raise at
// construction, naming the option and the ranks' values.
TEST(Ddp, OptionsThatDifferBetweenRanksRaiseOnEveryRank) {
  struct Case {
    std::string field, rank0, rank1;
    std::function<void(DdpOptions&)> change;  // applied on rank 1 only
  };
  const DdpOptions base = small_buckets();
  const std::vector<Case> cases{
      {"bucket_cap_bytes", std::to_string(base.bucket_cap_bytes), std::to_string(2 * base.bucket_cap_bytes),
       [](DdpOptions& o) { o.bucket_cap_bytes *= 2; }},
      {"reduce_dtype", "unset", "bf16", [](DdpOptions& o) { o.reduce_dtype = kBF16; }},
      {"step_mean", "Reduced", "InUpdate", [](DdpOptions& o) { o.step_mean = StepMean::InUpdate; }},
      {"unused_parameters", "Error", "Ignore", [](DdpOptions& o) { o.unused_parameters = UnusedParameters::Ignore; }},
      {"checksum_rtol", "0", "1e-06", [](DdpOptions& o) { o.checksum_rtol = 1e-6; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    DdpOptions options = base;
    if (rank() == 1) c.change(options);
    auto model = make_mlp(850);
    const std::string message = error_of([&] { DistributedDataParallel ddp(model, comm(), options); });
    EXPECT_NE(message.find("DdpOptions::" + c.field + " is " + c.rank0 + " on rank 0 but " + c.rank1 + " on rank 1"),
              std::string::npos)
        << message;
  }
  EXPECT_NO_THROW(DistributedDataParallel(make_mlp(851), comm(), base));
}

TEST(Ddp, ForwardBeforeSynchronizeRaises) {
  auto model = make_mlp(800);
  DistributedDataParallel ddp(model, comm());
  const Batch batch = global_batch(4, 81);
  nn::mse_loss(ddp.forward(batch.x), batch.y).backward();
  const std::string message = error_of([&] { ddp.forward(batch.x); });
  EXPECT_NE(message.find("synchronize_gradients()"), std::string::npos) << message;
  ddp.synchronize_gradients();
  EXPECT_NO_THROW(ddp.forward(batch.x));
}

}  // namespace
}  // namespace flame::dist
