#include "launch/train/trainer.h"

#include <fmt/chrono.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/cuda_device.h"
#include "core/ops.h"
#include "core/random.h"
#include "datasets/loader.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "launch/train/checkpoint.h"
#include "launch/train/metrics.h"
#include "launch/train/models.h"
#include "launch/train/progress.h"
#include "launch/train/tensorboard.h"
#include "nn/loss.h"
#include "nn/optim/adam.h"
#include "nn/optim/clip.h"
#include "nn/optim/schedule.h"
#include "nn/optim/sgd.h"

namespace flame::train {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Note [stop requests]: the signal number that asked to stop (0: none).
volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int signal_number) {
  g_stop_signal = combined_stop_signal(g_stop_signal, signal_number);
}

/// "a/b/" -> "a/b" (a path naming a directory with a trailing separator has an empty filename).
fs::path without_trailing_separator(fs::path path) {
  while (!path.empty() && !path.has_filename() && path.has_parent_path() && path.parent_path() != path)
    path = path.parent_path();
  return path;
}

/// True when `inner` is `outer` or lies inside it (component-wise, after resolving what exists).
bool is_within(const fs::path& inner, const fs::path& outer) {
  std::error_code error;
  const fs::path a = without_trailing_separator(fs::weakly_canonical(inner, error).lexically_normal());
  const fs::path b = without_trailing_separator(fs::weakly_canonical(outer, error).lexically_normal());
  return std::mismatch(b.begin(), b.end(), a.begin(), a.end()).first == b.end();
}

/// Installs the SIGTERM / SIGUSR1 handlers for the lifetime of a train() call.
class StopSignalHandlers {
 public:
  StopSignalHandlers() {
    g_stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, &previous_term_);
    sigaction(SIGUSR1, &action, &previous_usr1_);
  }
  ~StopSignalHandlers() {
    sigaction(SIGTERM, &previous_term_, nullptr);
    sigaction(SIGUSR1, &previous_usr1_, nullptr);
  }
  StopSignalHandlers(const StopSignalHandlers&) = delete;
  StopSignalHandlers& operator=(const StopSignalHandlers&) = delete;

 private:
  struct sigaction previous_term_ {};
  struct sigaction previous_usr1_ {};
};

/// Per-rank log file (every message) and console (rank 0: info and up; others: warnings and up).
std::shared_ptr<spdlog::logger> make_logger(const fs::path& log_dir, int rank) {
  fs::create_directories(log_dir / "logs");
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(rank == 0 ? spdlog::level::info : spdlog::level::warn);
  auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(
      (log_dir / "logs" / fmt::format("rank-{}.log", rank)).string());
  file->set_level(spdlog::level::debug);
  auto logger = std::make_shared<spdlog::logger>("flame-train", spdlog::sinks_init_list{console, file});
  logger->set_pattern(fmt::format("[%Y-%m-%d %H:%M:%S.%e] [rank {}] [%l] %v", rank));
  logger->set_level(spdlog::level::debug);
  logger->flush_on(spdlog::level::info);
  return logger;
}

Device choose_device(DeviceChoice choice, const dist::ProcessGroup& group) {
  const bool gpus_for_every_rank = cuda::is_available() && cuda::device_count() >= group.local_world_size;
  switch (choice) {
    case DeviceChoice::Cpu:
      return kCPU;
    case DeviceChoice::Cuda:
      FLAME_CHECK(cuda::is_available(),
                  "train.device = \"cuda\" but no CUDA device is usable here; use \"cpu\" or \"auto\"");
      return group.cuda_device();  // raises when there are fewer GPUs than local ranks
    case DeviceChoice::Auto:
      return gpus_for_every_rank ? group.cuda_device() : kCPU;
  }
  FLAME_FAIL("train.device: unknown choice");
}

dist::StepMean ddp_step_mean(StepMeanChoice choice) {
  switch (choice) {
    case StepMeanChoice::Reduced:
      return dist::StepMean::Reduced;
    case StepMeanChoice::InUpdate:
      return dist::StepMean::InUpdate;
    case StepMeanChoice::InUpdateNoGrad:
      return dist::StepMean::InUpdateNoGrad;
  }
  FLAME_FAIL("ddp.step_mean: unknown choice {}", static_cast<int>(choice));
}

std::unique_ptr<optim::Optimizer> make_optimizer(const OptimizerConfig& c, std::vector<Tensor> params) {
  switch (c.kind) {
    case OptimizerKind::Sgd: {
      optim::SGDOptions o;
      o.lr = c.lr;
      o.momentum = c.momentum;
      o.weight_decay = c.weight_decay;
      o.kind = c.nesterov ? optim::MomentumKind::Nesterov : optim::MomentumKind::Classic;
      return std::make_unique<optim::SGD>(std::move(params), o);
    }
    case OptimizerKind::Adam:
      return std::make_unique<optim::Adam>(std::move(params),
                                           optim::AdamOptions{c.lr, {c.beta1, c.beta2}, c.eps, c.weight_decay});
    case OptimizerKind::AdamW:
      return std::make_unique<optim::AdamW>(std::move(params),
                                            optim::AdamWOptions{c.lr, {c.beta1, c.beta2}, c.eps, c.weight_decay});
  }
  FLAME_FAIL("optimizer.name: unknown optimizer");
}

optim::LrSchedule make_schedule(const Config& config, int64_t total_steps) {
  const OptimizerConfig& o = config.optimizer;
  const ScheduleConfig& s = config.schedule;
  switch (s.kind) {
    case ScheduleChoice::Constant:
      return optim::constant_schedule(o.lr);
    case ScheduleChoice::Step:
      return optim::step_schedule(o.lr, s.step_size, s.gamma);
    case ScheduleChoice::WarmupCosine:
      FLAME_CHECK(s.warmup_steps <= total_steps,
                  "schedule.warmup_steps ({}) exceeds the run's {} optimizer steps; lower it or train longer",
                  s.warmup_steps, total_steps);
      return optim::warmup_cosine_schedule(o.lr, s.warmup_steps, total_steps, s.min_lr);
  }
  FLAME_FAIL("schedule.name: unknown schedule");
}

/// The dataset's image and label fields: (index of "image", index of "label").
std::pair<size_t, size_t> image_label_fields(const data::ShardedDataset& dataset) {
  std::optional<size_t> image, label;
  const auto& fields = dataset.fields();
  for (size_t i = 0; i < fields.size(); ++i) {
    if (fields[i].name == "image") image = i;
    if (fields[i].name == "label") label = i;
  }
  FLAME_CHECK(image && label && fields[*image].dtype == kU8 && fields[*label].dtype == kI64,
              "dataset '{}': flame-train's image models need a u8 field \"image\" and an i64 field \"label\" "
              "(as `flame-prep fashion-mnist` and `flame-prep synthetic` write)",
              dataset.dir());
  return {*image, *label};
}

/// Puts every module of a model back in the training mode it had at construction, on every path.
class ModesRestored {
 public:
  explicit ModesRestored(nn::Module& model) { collect(model); }
  ~ModesRestored() {
    for (const auto& [module, training] : modes_) module->train(training);  // parents first: children last
  }
  ModesRestored(const ModesRestored&) = delete;
  ModesRestored& operator=(const ModesRestored&) = delete;

 private:
  void collect(nn::Module& module) {
    modes_.emplace_back(&module, module.is_training());
    for (const auto& [name, child] : module.named_children()) collect(*child);
  }
  std::vector<std::pair<nn::Module*, bool>> modes_;
};

/// u8 images -> normalised f32 (Note [training loop]).
Tensor preprocess(const Tensor& image) {
  constexpr double kMean = 0.2860, kStd = 0.3530;
  return (image.to(kF32) * (1.0 / (255.0 * kStd))) - (kMean / kStd);
}

/// state.json's `key` as a T, raising flame::Error naming the file and the key when it is missing
/// or of another type (`what`: what it must be).
template <typename T>
T state_field(const nlohmann::json& state, const char* key, const std::string& dir, const char* what) {
  FLAME_CHECK(state.is_object() && state.contains(key),
              "checkpoint '{}/state.json' has no \"{}\" ({}); it is damaged or was not written by flame-train", dir,
              key, what);
  try {
    return state.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    FLAME_FAIL("checkpoint '{}/state.json': \"{}\" must be {}, got {}", dir, key, what, state.at(key).dump());
  }
}

/// Every rank's generator states, [W, 4] i64: CPU seed, CPU offset, device seed, device offset.
std::vector<int64_t> gather_rng_states(dist::Communicator& control, Device device) {
  const Generator& cpu = default_generator(kCPU);
  const Generator& dev = device.is_cuda() ? default_generator(device) : cpu;
  const std::vector<int64_t> mine = {static_cast<int64_t>(cpu.seed()), static_cast<int64_t>(cpu.offset()),
                                     static_cast<int64_t>(dev.seed()), static_cast<int64_t>(dev.offset())};
  const int world = control.group().world_size;
  Tensor all = zeros({world * 4}, TensorOptions(kI64));
  control.all_gather(from_vector(mine, {4}, TensorOptions(kI64)), all, "generator states");
  return all.to_vector<int64_t>();
}

void restore_rng_states(const nlohmann::json& rng, int rank, Device device, const std::string& dir) {
  std::vector<int64_t> s;
  try {
    s = rng.at(rank).get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception&) {
    s.clear();  // raised below, naming the entry
  }
  FLAME_CHECK(s.size() == 4, "checkpoint '{}/state.json': \"rng\" entry of rank {} must hold 4 integers, got {}", dir,
              rank, rng.at(rank).dump());
  Generator& cpu = default_generator(kCPU);
  cpu.manual_seed(static_cast<uint64_t>(s[0]));
  cpu.set_offset(static_cast<uint64_t>(s[1]));
  if (device.is_cuda()) {
    Generator& dev = default_generator(device);
    dev.manual_seed(static_cast<uint64_t>(s[2]));
    dev.set_offset(static_cast<uint64_t>(s[3]));
  }
}

/// Sum of `values` over ranks, through the MPI control communicator (host numbers).
std::vector<double> sum_over_ranks(dist::Communicator& control, const std::vector<double>& values,
                                   const std::string& what) {
  Tensor t = from_vector(values, {static_cast<int64_t>(values.size())}, TensorOptions(kF64));
  control.all_reduce(t, dist::ReduceOp::Sum, what);
  return t.to_vector<double>();
}

nlohmann::json optional_json(const std::optional<double>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json();
}

/// The numbers of a run so far, as a checkpoint keeps them.
nlohmann::json results_json(const RunResult& r) {
  return {{"final_loss", r.final_loss},
          {"test_loss", optional_json(r.test_loss)},
          {"test_accuracy", optional_json(r.test_accuracy)},
          {"time_to_90_s", optional_json(r.time_to_90_s)}};
}

/// Restores what results_json saved and the checkpoint resumed from.
void restore_results(const nlohmann::json& state, RunResult& r) {
  r.last_checkpoint = state.value("checkpoint", std::string());
  if (!state.contains("results")) return;
  const nlohmann::json& saved = state.at("results");
  const auto optional = [&](const char* key) -> std::optional<double> {
    if (!saved.contains(key) || saved.at(key).is_null()) return std::nullopt;
    return saved.at(key).get<double>();
  };
  r.final_loss = saved.value("final_loss", 0.0);
  r.test_loss = optional("test_loss");
  r.test_accuracy = optional("test_accuracy");
  r.time_to_90_s = optional("time_to_90_s");
}

/// Requeues the Slurm job this process belongs to (Note [stop requests]); logs the outcome.
void requeue_slurm_job(spdlog::logger& log) {
  const char* job = std::getenv("SLURM_JOB_ID");
  if (job == nullptr) return;
  const std::string command = fmt::format("scontrol requeue {}", job);
  const int status = std::system(command.c_str());
  if (status == 0) {
    log.info("requeued Slurm job {} ({}); it resumes from the checkpoint with --resume auto", job, command);
  } else {
    log.warn("'{}' failed (status {}): the job was not requeued (is requeue allowed for it? sbatch --requeue)", command,
             status);
  }
}

/// Everything one train() call holds.
class Trainer {
 public:
  Trainer(const Config& config, const RunOptions& options)
      : config_(config),
        options_(options),
        group_(dist::ProcessGroup::init()),
        log_dir_(config.log.dir),
        log_(make_logger(log_dir_, group_.rank)) {}

  RunResult run();

 private:
  void set_up();
  /// Raises naming the dataset (and the shard) when its images cannot go through the model, or a
  /// label is outside the model's classes; every rank checks the same, so all raise at once.
  void check_data_fits_model() const;
  void resume_if_asked();
  /// Rank 0, a run starting from scratch: moves an earlier run's checkpoints and metrics.jsonl aside.
  void set_aside_earlier_run();
  /// Raises when the checkpoint's config differs from this run's in a key that fixes the model,
  /// the data order or the optimizer; logs the other differences.
  void check_resumed_config(const nlohmann::json& state, const std::string& dir) const;
  /// The next micro-batch of this rank, rolling over to the next epoch when one ends.
  data::Batch next_batch();
  /// One optimizer step; returns the step's loss (this rank, a device scalar).
  Tensor train_step();
  /// Mean loss and accuracy over the test split (collective); nullopt without a test set.
  /// The test set's mean loss and accuracy over every sample, and how many samples that was.
  struct Evaluation {
    double loss = 0.0;
    double accuracy = 0.0;
    int64_t samples = 0;
  };
  std::optional<Evaluation> evaluate();
  /// Writes a checkpoint of the current step (rank 0; collective); `result` holds the numbers a
  /// resumed run that has nothing left to do reports, `trained_s` the training seconds so far.
  std::string save_checkpoint(const RunResult& result, double trained_s);
  void write_summary(const RunResult& result) const;
  bool stop_requested();

  Config config_;
  RunOptions options_;
  const dist::ProcessGroup& group_;
  fs::path log_dir_;
  std::shared_ptr<spdlog::logger> log_;

  Device device_ = kCPU;
  std::unique_ptr<dist::Communicator> control_;    // MPI, CPU tensors: flags, sums, generator states
  std::unique_ptr<dist::Communicator> gradients_;  // NCCL on a GPU; null on the CPU (control_ serves)
  std::shared_ptr<data::ShardedDataset> train_set_, test_set_;
  std::pair<size_t, size_t> fields_{0, 1};
  std::unique_ptr<data::DataLoader> loader_;
  std::unique_ptr<data::DataLoader> test_loader_;  // built by the first evaluate(), restarted by later ones
  std::shared_ptr<nn::Module> model_;
  std::unique_ptr<dist::DistributedDataParallel> ddp_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  optim::LrSchedule schedule_;
  std::unique_ptr<CheckpointStore> store_;
  std::unique_ptr<JsonlWriter> metrics_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  int64_t total_steps_ = 0;
  int64_t step_ = 0;
  int64_t resumed_from_ = 0;
  int stop_signal_ = 0;           // the stop signal the ranks agreed on (SIGUSR1 when any rank got one)
  nlohmann::json resumed_state_;  // state.json of the checkpoint resumed from
  double trained_before_ = 0.0;   // training seconds of the earlier calls (resumed runs)
};

/// A fingerprint of a dataset's content, which a resume compares: FNV-1a (64 bits) over its
/// manifest's shard files and their SHA-256s, in hex. Rebuilding the dataset changes it.
std::string data_fingerprint(const data::Manifest& manifest) {
  uint64_t hash = 14695981039346656037ull;
  for (const data::ShardInfo& shard : manifest.shards) {
    for (const std::string& part : {shard.file, std::string(":"), shard.sha256, std::string(";")}) {
      for (const char c : part) {
        hash ^= static_cast<uint8_t>(c);
        hash *= 1099511628211ull;
      }
    }
  }
  return fmt::format("{:016x}", hash);
}

void Trainer::set_up() {
  // A run from scratch moves checkpoint.dir aside, so it must not hold the run's own logs.
  FLAME_CHECK(!is_within(log_dir_, config_.checkpoint.dir),
              "checkpoint.dir '{}' must not be log.dir '{}' or contain it: a run from scratch moves the earlier "
              "run's checkpoint.dir aside, logs included",
              config_.checkpoint.dir, log_dir_.string());
  device_ = choose_device(config_.train.device, group_);
  const dist::CommunicatorOptions comm_options{
      std::chrono::milliseconds(static_cast<int64_t>(config_.ddp.timeout_s * 1000.0))};
  control_ = dist::make_mpi_communicator(group_, comm_options);
  if (config_.train.device == DeviceChoice::Auto && group_.is_distributed()) {
    // Every rank must choose alike (NCCL or MPI for the gradients): the CPU for all when some node
    // has fewer usable GPUs than ranks.
    Tensor on_cuda = full({1}, device_.is_cuda() ? 1.0 : 0.0, TensorOptions(DType::I32));
    control_->all_reduce(on_cuda, dist::ReduceOp::Sum, "train.device = \"auto\" agreement");
    const int64_t ranks_on_cuda = static_cast<int64_t>(on_cuda.item());
    if (ranks_on_cuda < group_.world_size && device_.is_cuda()) {
      log_->warn("train.device = \"auto\": {} of {} ranks have no GPU of their own, so every rank trains on the CPU",
                 group_.world_size - ranks_on_cuda, group_.world_size);
      device_ = kCPU;
    }
  }
  if (config_.ddp.all_reduce == AllReduceChoice::CopyEngine) {
    FLAME_CHECK(!device_.is_cuda() || group_.world_size <= 2,
                "ddp.all_reduce = \"copy_engine\" is for 2 GPU ranks (an all-gather moves W/2 times the bytes of "
                "a ring all-reduce), this job has {}; use \"ring\"",
                group_.world_size);
    if (!device_.is_cuda())
      log_->warn(
          "ddp.all_reduce = \"copy_engine\" applies to GPU ranks; these ranks train on the CPU and "
          "all-reduce through MPI");
  }
  if (config_.ddp.step_mean != StepMeanChoice::Reduced) {
    // Note [deferred mean]: only bf16 gradients can be deferred (through the copy engines on GPUs),
    // and only the bucket-by-bucket step takes them (clipping synchronizes first).
    const bool deferrable = config_.ddp.reduce_dtype == ReduceDtype::BF16 &&
                            (!device_.is_cuda() || config_.ddp.all_reduce == AllReduceChoice::CopyEngine);
    if (!deferrable || config_.train.clip_grad_norm > 0)
      log_->warn(
          "ddp.step_mean = \"{}\" acts only with ddp.reduce_dtype = \"bf16\", on GPUs with ddp.all_reduce = "
          "\"copy_engine\", and without train.clip_grad_norm; here {}",
          to_string(config_.ddp.step_mean),
          deferrable ? "clipping has every mean written first"
          : config_.ddp.step_mean == StepMeanChoice::InUpdateNoGrad && config_.train.clip_grad_norm <= 0
              ? "the means are written as under \"reduced\", and the gradients are still cleared after each step"
              : "the means are written as under \"reduced\"");
  }
  if (device_.is_cuda()) {
    dist::CommunicatorOptions gradient_options = comm_options;
    if (config_.ddp.all_reduce == AllReduceChoice::CopyEngine)
      gradient_options.overlap_all_reduce = dist::OverlapAllReduce::CopyEngineGather;
    gradients_ = dist::make_nccl_communicator(group_, gradient_options);
  }

  const data::Verification verification =
      config_.data.verify_checksums ? data::Verification::Checksums : data::Verification::Structure;
  train_set_ = std::make_shared<data::ShardedDataset>(config_.data.train_dir, verification);
  fields_ = image_label_fields(*train_set_);
  if (!config_.data.test_dir.empty()) {
    test_set_ = std::make_shared<data::ShardedDataset>(config_.data.test_dir, verification);
    image_label_fields(*test_set_);
  }
  // The model first: the data checks need it, and they are cheaper than building the loader (which
  // may load the whole training set into memory). The datasets draw nothing from the generator.
  manual_seed(config_.train.seed);
  model_ = make_model(config_.model.name);
  check_data_fits_model();  // where make_model built it (the CPU for the built-in models)
  data::DistributedSampler sampler(train_set_->size(), group_.rank, group_.world_size, config_.train.seed,
                                   config_.data.shuffle ? data::Shuffle::On : data::Shuffle::Off,
                                   data::Remainder::Drop);
  data::DataLoaderOptions loader_options;
  loader_options.batch_size = config_.train.batch_size;
  loader_options.workers = config_.data.workers;
  loader_options.device = device_;
  loader_options.last_batch = data::LastBatch::Drop;
  loader_options.read_mode = config_.data.in_memory ? data::ReadMode::InMemory : data::ReadMode::Shards;
  loader_ = std::make_unique<data::DataLoader>(train_set_, sampler, loader_options);
  const int64_t batches = loader_->batches_per_epoch();
  FLAME_CHECK(batches > 0,
              "train.batch_size {} is larger than this rank's share of '{}' ({} samples over {} ranks); lower it",
              config_.train.batch_size, config_.data.train_dir, train_set_->size(), group_.world_size);
  FLAME_CHECK(config_.train.steps > 0 || config_.train.epochs <= std::numeric_limits<int64_t>::max() / batches,
              "train.epochs = {} is too large: with {} batches per epoch the step count overflows",
              config_.train.epochs, batches);
  total_steps_ =
      config_.train.steps > 0 ? config_.train.steps : config_.train.epochs * batches / config_.train.grad_accum;
  FLAME_CHECK(total_steps_ > 0, "train.epochs = {} gives no optimizer step ({} batches per epoch, grad_accum {})",
              config_.train.epochs, batches, config_.train.grad_accum);
  schedule_ = make_schedule(config_, total_steps_);

  model_->to(device_);
  optimizer_ = make_optimizer(config_.optimizer, model_->parameters());
  store_ = std::make_unique<CheckpointStore>(config_.checkpoint.dir, config_.checkpoint.keep_last);
}

void Trainer::check_data_fits_model() const {
  const data::FieldSpec& image = train_set_->fields()[fields_.first];
  int64_t classes = 0;
  {
    // One blank image through the model where it was built (the CPU for the built-in models), in
    // eval mode (no batch statistics move, no dropout) and without a graph; every module's mode is
    // restored afterwards.
    autograd::NoGradGuard no_grad;
    const ModesRestored restored(*model_);
    model_->eval();
    Shape shape = image.sample_shape;
    shape.insert(shape.begin(), 1);
    Tensor logits;
    try {
      const std::vector<Tensor> parameters = model_->parameters();
      const Device built_on = parameters.empty() ? kCPU : parameters.front().device();
      logits = model_->forward(preprocess(zeros(shape, TensorOptions(kU8, built_on))));
    } catch (const std::exception& e) {
      FLAME_FAIL("dataset '{}': its images are {} per sample, which model '{}' cannot take: {}", train_set_->dir(),
                 shape_str(image.sample_shape), config_.model.name, e.what());
    }
    FLAME_CHECK(logits.dim() == 2 && logits.size(0) == 1 && logits.size(1) >= 1,
                "model '{}' returned {} for one image; flame-train's models return logits [batch, classes]",
                config_.model.name, logits.describe());
    classes = logits.size(1);
  }
  for (const auto& dataset : {train_set_, test_set_}) {
    if (dataset == nullptr) continue;
    const auto [image_field, label_field] = image_label_fields(*dataset);
    FLAME_CHECK(dataset->fields()[image_field].sample_shape == image.sample_shape,
                "dataset '{}': its images are {} per sample, those of the training set '{}' {}", dataset->dir(),
                shape_str(dataset->fields()[image_field].sample_shape), train_set_->dir(),
                shape_str(image.sample_shape));
    const std::vector<data::ShardInfo>& shards = dataset->manifest().shards;
    for (size_t k = 0; k < shards.size(); ++k) {
      const Tensor labels = dataset->read_shard_field(k, label_field);
      const int64_t* values = labels.data<int64_t>();
      for (int64_t i = 0; i < labels.numel(); ++i)
        FLAME_CHECK(values[i] >= 0 && values[i] < classes,
                    "dataset '{}': shard '{}' holds label {} (its sample {}), outside the classes [0, {}) of model "
                    "'{}'",
                    dataset->dir(), shards[k].file, values[i], i, classes, config_.model.name);
    }
  }
}

void Trainer::resume_if_asked() {
  // Rank 0 picks the checkpoint so that every rank loads the same one.
  int64_t step = -1;
  if (options_.resume == ResumeMode::Auto && group_.rank == 0) {
    if (const std::optional<int64_t> latest = store_->latest_step()) step = *latest;
  }
  Tensor chosen = full({1}, static_cast<double>(step), TensorOptions(kI64));
  control_->broadcast(chosen, 0, "resume step");
  step = chosen.to_vector<int64_t>()[0];
  if (step < 0) {
    if (options_.resume == ResumeMode::Auto) log_->info("no checkpoint in {}: starting from scratch", store_->root());
    if (group_.rank == 0) set_aside_earlier_run();
    return;
  }
  const std::string dir = (fs::path(store_->root()) / checkpoint_dir_name(step)).string();
  const CheckpointData data = load_checkpoint(dir);
  const nlohmann::json& state = data.state;
  const int saved_world = state_field<int>(state, "world_size", dir, "an integer");
  FLAME_CHECK(saved_world == group_.world_size,
              "checkpoint '{}' was written by {} ranks but this run has {}; resume with {} ranks (the data order "
              "depends on the world size), or start a new run with --resume none",
              dir, saved_world, group_.world_size, saved_world);
  check_resumed_config(state, dir);
  if (state.contains("train_samples")) {  // absent from checkpoints written before it was recorded
    const auto saved_samples = state_field<int64_t>(state, "train_samples", dir, "an integer");
    FLAME_CHECK(saved_samples == train_set_->size(),
                "checkpoint '{}' was written while data.train held {} samples, '{}' now holds {}: the data order, "
                "and so the resumed run, would differ. Resume with the same dataset, or start a new run with "
                "--resume none",
                dir, saved_samples, config_.data.train_dir, train_set_->size());
  }
  if (state.contains("train_data")) {  // absent from checkpoints written before it was recorded
    const auto saved = state_field<std::string>(state, "train_data", dir, "a string");
    FLAME_CHECK(saved == data_fingerprint(train_set_->manifest()),
                "checkpoint '{}' was written for other contents of data.train '{}' (its shards' SHA-256s in "
                "manifest.json differ): the resumed run would train on other data. Resume with the same dataset, "
                "or start a new run with --resume none",
                dir, config_.data.train_dir);
  }
  const auto epoch = state_field<int64_t>(state, "epoch", dir, "an integer");
  const auto next_batch = state_field<int64_t>(state, "next_batch", dir, "an integer");
  const auto rng = state_field<nlohmann::json>(state, "rng", dir, "an array");
  FLAME_CHECK(rng.is_array() && rng.size() == static_cast<size_t>(group_.world_size),
              "checkpoint '{}/state.json': \"rng\" must hold one entry per rank ({}), got {}", dir, group_.world_size,
              rng.dump());
  model_->load_state_dict(data.model);
  optimizer_->load_state_dict(data.optimizer);
  loader_->restore(data::LoaderState{epoch, next_batch});
  restore_rng_states(rng, group_.rank, device_, dir);
  step_ = resumed_from_ = step;
  resumed_state_ = state;
  resumed_state_["checkpoint"] = dir;
  trained_before_ = state.value("trained_s", 0.0);
  log_->info("resumed from {} (step {} of {})", dir, step, total_steps_);
  if (step >= total_steps_)
    log_->warn(
        "the checkpoint's step {} is at or past this run's {} steps: there is nothing left to train (raise "
        "train.steps or train.epochs to train on)",
        step, total_steps_);
  if (group_.rank == 0) {
    // Records of steps after the checkpoint came from the run that stopped without saving them;
    // this run logs those steps again.
    const int64_t dropped = drop_records_after((log_dir_ / "metrics.jsonl").string(), step);
    if (dropped > 0)
      log_->info("metrics.jsonl: dropped {} records of steps after {} (logged again now)", dropped, step);
  }
}

void Trainer::set_aside_earlier_run() {
  const fs::path checkpoints = without_trailing_separator(store_->root());  // "ckpt/": move "ckpt"
  // Only a store of checkpoints moves: a checkpoint.dir that names a folder holding anything else (a
  // project, a dataset, a scratch space) is refused, and nothing is moved.
  std::error_code error;
  if (fs::exists(checkpoints, error)) {
    FLAME_CHECK(fs::is_directory(checkpoints, error), "checkpoint.dir '{}' is not a directory", config_.checkpoint.dir);
    for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints)) {
      const std::string name = entry.path().filename().string();
      FLAME_CHECK(is_checkpoint_entry(name),
                  "checkpoint.dir '{}' holds '{}', which is not a checkpoint: a run from scratch moves checkpoint.dir "
                  "aside (to {}.earlier-<time>), so it must hold checkpoints only. Point checkpoint.dir at a "
                  "directory of its own, or continue the run there with --resume auto",
                  config_.checkpoint.dir, name, checkpoints.string());
    }
  }
  const fs::path metrics = log_dir_ / "metrics.jsonl";
  const auto moves_for = [&](const std::string& stamp) {
    return std::array<std::pair<fs::path, fs::path>, 2>{{
        {checkpoints, fs::path(checkpoints.string() + ".earlier-" + stamp)},
        {metrics, log_dir_ / fmt::format("metrics.earlier-{}.jsonl", stamp)},
    }};
  };
  // Seconds resolution: a run set aside in the same second gets "-2", "-3", ... rather than being
  // overwritten.
  const std::string second = fmt::format("{:%Y%m%dT%H%M%SZ}", fmt::gmtime(std::time(nullptr)));
  std::string stamp = second;
  for (int n = 2; fs::exists(moves_for(stamp)[0].second) || fs::exists(moves_for(stamp)[1].second); ++n)
    stamp = fmt::format("{}-{}", second, n);
  for (const auto& [from, to] : moves_for(stamp)) {
    const bool present = fs::is_directory(from, error) ? !fs::is_empty(from, error) : fs::exists(from, error);
    if (!present) continue;
    fs::rename(from, to, error);
    FLAME_CHECK(!error, "flame-train: cannot move the earlier run's '{}' aside to '{}': {}", from.string(), to.string(),
                error.message());
    log_->warn("starting from scratch: moved the earlier run's {} to {} (--resume auto continues a run)", from.string(),
               to.string());
  }
}

void Trainer::check_resumed_config(const nlohmann::json& state, const std::string& dir) const {
  const Config saved = parse_config(state_field<std::string>(state, "config", dir, "the run's config as TOML"),
                                    dir + "/state.json (config)");
  std::vector<std::string> fixed;  // keys that fix the model, the data order or the optimizer
  const auto compare = [&](const char* key, const auto& was, const auto& now) {
    if (!(was == now)) fixed.push_back(fmt::format("{} = {} (now {})", key, was, now));
  };
  compare("model.name", saved.model.name, config_.model.name);
  if (fs::weakly_canonical(saved.data.train_dir) != fs::weakly_canonical(config_.data.train_dir))
    fixed.push_back(fmt::format("data.train = {} (now {})", saved.data.train_dir, config_.data.train_dir));
  compare("data.shuffle", saved.data.shuffle, config_.data.shuffle);
  compare("train.batch_size", saved.train.batch_size, config_.train.batch_size);
  compare("train.grad_accum", saved.train.grad_accum, config_.train.grad_accum);
  compare("train.seed", saved.train.seed, config_.train.seed);
  if (saved.optimizer.kind != config_.optimizer.kind)
    fixed.push_back(fmt::format("optimizer.name = {} (now {})", to_string(saved.optimizer.kind),
                                to_string(config_.optimizer.kind)));
  FLAME_CHECK(fixed.empty(),
              "checkpoint '{}' was written with {}; a run resumes only with the same model, data order and "
              "optimizer (start a new run in another log.dir, or with --resume none)",
              dir, fmt::join(fixed, ", "));
  // Other changes (a longer train.steps, another learning rate) are allowed, and logged.
  // to_toml writes one "key = value" line per key under its [section]: compare "section.key = value".
  const auto settings = [](const Config& config) {
    std::set<std::string> out;
    std::istringstream text(to_toml(config));
    std::string section;
    for (std::string line; std::getline(text, line);) {
      if (line.empty()) continue;
      if (line.front() == '[') {
        section = line.substr(1, line.find(']') - 1);
      } else {
        out.insert(section.empty() ? line : section + "." + line);
      }
    }
    return out;
  };
  const std::set<std::string> was = settings(saved), now = settings(config_);
  std::vector<std::string> changed;
  for (const std::string& setting : now)
    if (!was.count(setting)) changed.push_back(setting);
  if (!changed.empty()) log_->warn("resuming {} with a changed config: {}", dir, fmt::join(changed, "; "));
}

data::Batch Trainer::next_batch() {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (std::optional<data::Batch> batch = loader_->next()) return std::move(*batch);
    loader_->set_epoch(loader_->epoch() + 1);
  }
  FLAME_FAIL("flame-train: the loader delivered no batch in a whole epoch of '{}'", config_.data.train_dir);
}

Tensor Trainer::train_step() {
  optimizer_->set_lr(optim::scheduled_lr(schedule_, step_));
  ddp_->zero_grad();
  const int64_t accum = config_.train.grad_accum;
  Tensor step_loss;
  for (int64_t micro = 0; micro < accum; ++micro) {
    const data::Batch batch = next_batch();
    const auto forward_backward = [&] {
      Tensor loss =
          nn::cross_entropy(ddp_->forward(preprocess(batch.fields[fields_.first])), batch.fields[fields_.second]);
      if (accum > 1) loss = loss * (1.0 / static_cast<double>(accum));
      loss.backward();
      const Tensor detached = loss.detach();
      step_loss = step_loss.defined() ? step_loss + detached : detached;
    };
    if (micro + 1 < accum) {
      auto no_sync = ddp_->no_sync();
      forward_backward();
    } else {
      forward_backward();
    }
  }
  if (config_.train.clip_grad_norm > 0) {  // clipping needs every mean gradient before any update
    ddp_->synchronize_gradients();
    optim::clip_grad_norm_(model_->parameters(), config_.train.clip_grad_norm);
    optimizer_->step();
  } else {
    ddp_->step(*optimizer_);  // each bucket's update starts once it is reduced
  }
  ddp_->after_step();
  ++step_;
  return step_loss;
}

std::optional<Trainer::Evaluation> Trainer::evaluate() {
  if (!test_set_) return std::nullopt;
  autograd::NoGradGuard no_grad;
  model_->eval();
  if (test_loader_) {
    test_loader_->set_epoch(0);  // the same unshuffled pass again
  } else {
    // Every test sample exactly once, whatever the world size (the loop has no collective, so the
    // ranks' batch counts may differ).
    data::DistributedSampler sampler(test_set_->size(), group_.rank, group_.world_size, 0, data::Shuffle::Off,
                                     data::Remainder::Uneven);
    data::DataLoaderOptions options;
    options.batch_size = config_.eval.batch_size;
    options.workers = config_.data.workers;
    options.device = device_;
    options.last_batch = data::LastBatch::Keep;
    test_loader_ = std::make_unique<data::DataLoader>(test_set_, sampler, options);
  }
  const TensorOptions f64(kF64, device_);
  Tensor loss_sum = zeros({}, f64), correct = zeros({}, f64);
  int64_t count = 0;
  while (std::optional<data::Batch> batch = test_loader_->next()) {
    const Tensor& labels = batch->fields[fields_.second];
    const Tensor logits = model_->forward(preprocess(batch->fields[fields_.first]));
    const int64_t n = labels.size(0);
    loss_sum = loss_sum + nn::cross_entropy(logits, labels).to(kF64) * static_cast<double>(n);
    correct = correct + sum(eq(argmax(logits, 1), labels).to(kF64));
    count += n;
  }
  model_->train();
  const std::vector<double> totals =
      sum_over_ranks(*control_, {loss_sum.item(), correct.item(), static_cast<double>(count)}, "evaluation sums");
  FLAME_CHECK(totals[2] > 0, "data.test '{}' has no sample to evaluate on {} ranks", config_.data.test_dir,
              group_.world_size);
  return Evaluation{totals[0] / totals[2], totals[1] / totals[2], static_cast<int64_t>(totals[2])};
}

std::string Trainer::save_checkpoint(const RunResult& result, double trained_s) {
  const std::vector<int64_t> rng = gather_rng_states(*control_, device_);
  std::string dir;
  if (group_.rank == 0) {
    nlohmann::json rng_json = nlohmann::json::array();
    for (int r = 0; r < group_.world_size; ++r)
      rng_json.push_back(std::vector<int64_t>(rng.begin() + 4 * r, rng.begin() + 4 * r + 4));
    const data::LoaderState position = loader_->state();
    CheckpointData data;
    data.step = step_;
    data.model = model_->state_dict();
    data.optimizer = optimizer_->state_dict();
    data.state = {{"epoch", position.epoch},
                  {"next_batch", position.next_batch},
                  {"world_size", group_.world_size},
                  {"rng", rng_json},
                  {"total_steps", total_steps_},
                  {"config", to_toml(config_)},
                  {"trained_s", trained_s},
                  {"results", results_json(result)},
                  {"train_samples", train_set_->size()},
                  {"train_data", data_fingerprint(train_set_->manifest())}};
    dir = store_->save(data);
    log_->info("checkpoint {} written", dir);
  }
  control_->barrier();  // every rank leaves knowing the checkpoint is complete
  return dir;
}

bool Trainer::stop_requested() {
  // RunOptions::stop_after_steps is the same on every rank: no agreement needed.
  if (options_.stop_after_steps > 0 && step_ - resumed_from_ >= options_.stop_after_steps) return true;
  // Note [stop requests]: signals are agreed on at log and checkpoint steps only.
  const bool agreement_step = step_ % config_.log.every_steps == 0 ||
                              (config_.checkpoint.every_steps > 0 && step_ % config_.checkpoint.every_steps == 0);
  if (!agreement_step) return false;
  // Which signal matters too: SIGUSR1 on any rank makes rank 0 requeue the Slurm job.
  const std::vector<double> got =
      sum_over_ranks(*control_, {g_stop_signal != 0 ? 1.0 : 0.0, g_stop_signal == SIGUSR1 ? 1.0 : 0.0}, "stop flags");
  if (got[0] == 0) return false;
  stop_signal_ = got[1] > 0 ? SIGUSR1 : (g_stop_signal != 0 ? static_cast<int>(g_stop_signal) : SIGTERM);
  return true;
}

void Trainer::write_summary(const RunResult& result) const {
  if (group_.rank != 0) return;
  nlohmann::json summary = {{"final_loss", result.final_loss},
                            {"steps", result.steps},
                            {"stopped", result.stopped},
                            {"resumed_from_step", result.resumed_from_step},
                            {"world_size", result.world_size},
                            {"device", result.device},
                            {"samples_per_s", result.samples_per_s},
                            {"checkpoint", result.last_checkpoint}};
  summary["test_loss"] = optional_json(result.test_loss);
  summary["test_accuracy"] = optional_json(result.test_accuracy);
  summary["time_to_90_s"] = optional_json(result.time_to_90_s);
  const fs::path path = log_dir_ / "summary.json";
  const fs::path temporary = log_dir_ / "summary.json.tmp";
  {
    std::ofstream out(temporary);
    out << summary.dump(2) << "\n";
    out.close();  // a full disk may surface only when the buffer is written out
    FLAME_CHECK(!out.fail(), "cannot write '{}'", temporary.string());
  }
  fs::rename(temporary, path);
}

RunResult Trainer::run() {
  StopSignalHandlers handlers;
  set_up();
  resume_if_asked();
  ddp_ = std::make_unique<dist::DistributedDataParallel>(
      model_, gradients_ ? *gradients_ : *control_,
      dist::DdpOptions{
          .first_bucket_bytes = static_cast<size_t>(config_.ddp.first_bucket_mb * (1 << 20)),
          .bucket_cap_bytes = static_cast<size_t>(config_.ddp.bucket_cap_mb * (1 << 20)),
          .unused_parameters = dist::UnusedParameters::Error,
          .check_every_n_steps = config_.ddp.check_every,
          .checksum_rtol = 0.0,
          .reduce_dtype =
              config_.ddp.reduce_dtype == ReduceDtype::BF16 ? std::optional<DType>(DType::BF16) : std::nullopt,
          .step_mean = ddp_step_mean(config_.ddp.step_mean),
      });
  ddp_->set_steps(step_);  // a resumed run keeps its check cadence (ddp.check_every) and step numbers
  if (group_.rank == 0) {
    metrics_ = std::make_unique<JsonlWriter>((log_dir_ / "metrics.jsonl").string());
    if (config_.log.tensorboard)
      tensorboard_ = std::make_unique<TensorBoardWriter>((log_dir_ / "tensorboard").string());
  }
  const int64_t samples_per_step = config_.train.batch_size * config_.train.grad_accum * group_.world_size;
  log_->info("training {} on {} x {} ({}), {} steps of {} samples, {} per epoch; logs in {}", config_.model.name,
             group_.world_size, device_.str(), dist::ProcessGroup::init().is_distributed() ? "DDP" : "one process",
             total_steps_, samples_per_step, loader_->batches_per_epoch() / config_.train.grad_accum,
             log_dir_.string());

  RunResult result;
  result.world_size = group_.world_size;
  result.device = device_.str();
  result.resumed_from_step = resumed_from_;
  if (resumed_from_ > 0) restore_results(resumed_state_, result);
  Progress progress(total_steps_, resumed_from_, config_.log.progress && group_.rank == 0);
  const auto start = Clock::now();
  const auto seconds_since_start = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  bool stopped = false;
  while (step_ < total_steps_ && !stopped) {
    const Tensor loss = train_step();
    const bool last = step_ == total_steps_;
    stopped = !last && stop_requested();
    const bool checkpoint_now =
        stopped || last || (config_.checkpoint.every_steps > 0 && step_ % config_.checkpoint.every_steps == 0);
    const bool log_now = step_ % config_.log.every_steps == 0 || last || stopped;
    if (log_now || checkpoint_now) {
      // The loss a checkpoint records is its own step's (a resumed run with nothing left to do
      // reports it).
      const double mean_loss = sum_over_ranks(*control_, {loss.item()}, "loss")[0] / group_.world_size;
      result.final_loss = mean_loss;
      if (log_now) {
        const double lr = optimizer_->lr();
        if (metrics_) metrics_->write(step_, {{"loss", mean_loss}, {"lr", lr}, {"epoch", double(loader_->epoch())}});
        if (tensorboard_) {
          tensorboard_->add_scalar("train/loss", mean_loss, step_);
          tensorboard_->add_scalar("train/lr", lr, step_);
        }
        progress.update(step_, loader_->epoch(), mean_loss, lr, samples_per_step);
      }
    }
    if ((config_.eval.every_steps > 0 && step_ % config_.eval.every_steps == 0) || last) {
      if (const auto eval = evaluate()) {
        result.test_loss = eval->loss;
        result.test_accuracy = eval->accuracy;
        if (!result.time_to_90_s && eval->accuracy >= 0.9)
          result.time_to_90_s = trained_before_ + seconds_since_start();
        progress.note(
            fmt::format("step {}: test loss {:.4f}, test accuracy {:.2f}%", step_, eval->loss, 100.0 * eval->accuracy));
        log_->debug("evaluation at step {}: loss {:.6f} accuracy {:.6f} on {} samples", step_, eval->loss,
                    eval->accuracy, eval->samples);
        if (metrics_)
          metrics_->write(step_, {{"test_loss", eval->loss},
                                  {"test_accuracy", eval->accuracy},
                                  {"test_samples", static_cast<double>(eval->samples)}});
        if (tensorboard_) {
          tensorboard_->add_scalar("test/loss", eval->loss, step_);
          tensorboard_->add_scalar("test/accuracy", eval->accuracy, step_);
        }
      }
    }
    if (checkpoint_now) {
      // At the end, unless after_step() just ran the periodic check on this step.
      const bool just_checked = config_.ddp.check_every > 0 && step_ % config_.ddp.check_every == 0;
      if (last && !just_checked) ddp_->check_parameters_in_sync(fmt::format("at the end (step {})", step_));
      result.last_checkpoint = save_checkpoint(result, trained_before_ + seconds_since_start());
    }
    if (tensorboard_) tensorboard_->flush();
  }
  progress.finish();
  const double seconds = seconds_since_start();
  result.steps = step_;
  result.stopped = stopped;
  result.samples_per_s = seconds > 0 ? static_cast<double>((step_ - resumed_from_) * samples_per_step) / seconds : 0.0;
  if (stopped) {
    log_->warn("stopped after step {} by {} (checkpoint {}); resume with --resume auto", step_,
               stop_signal_ == SIGUSR1   ? "SIGUSR1"
               : stop_signal_ == SIGTERM ? "SIGTERM"
                                         : "a stop request",
               result.last_checkpoint);
    if (group_.rank == 0 && stop_signal_ == SIGUSR1) requeue_slurm_job(*log_);
  } else {
    log_->info("done: {} steps, final loss {:.4f}{}, {:.0f} samples/s", step_, result.final_loss,
               result.test_accuracy ? fmt::format(", test accuracy {:.2f}%", 100.0 * *result.test_accuracy) : "",
               result.samples_per_s);
  }
  write_summary(result);
  if (group_.rank == 0) {
    log_->info("metrics: {}{}", (log_dir_ / "metrics.jsonl").string(),
               tensorboard_ ? fmt::format(" and TensorBoard {}", (log_dir_ / "tensorboard").string()) : "");
    log_->info("logs: {}/rank-*.log; summary: {}; checkpoint: {}", (log_dir_ / "logs").string(),
               (log_dir_ / "summary.json").string(), result.last_checkpoint);
  }
  return result;
}

}  // namespace

RunResult train(const Config& config, const RunOptions& options) {
  Config resolved = config;
  if (resolved.checkpoint.dir.empty()) resolved.checkpoint.dir = (fs::path(resolved.log.dir) / "checkpoints").string();
  Trainer trainer(resolved, options);
  return trainer.run();
}

void request_stop(int signal_number) {
  g_stop_signal = combined_stop_signal(g_stop_signal, signal_number == 0 ? SIGTERM : signal_number);
}

}  // namespace flame::train
