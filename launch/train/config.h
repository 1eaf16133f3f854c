// flame-train's configuration: a TOML file plus `--set key=value` overrides, every key validated
// (docs/config.md lists the keys, their types, defaults and allowed ranges).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace flame::train {

/// train.device: where the model and its training run.
enum class DeviceChoice {
  Auto,  // "auto": cuda:local_rank when a CUDA device is usable, the CPU otherwise
  Cpu,   // "cpu"
  Cuda,  // "cuda": cuda:local_rank; an error when no CUDA device is usable
};

/// optimizer.name.
enum class OptimizerKind {
  Sgd,    // "sgd": momentum, nesterov and weight_decay (L2, added to the gradient)
  Adam,   // "adam": beta1, beta2, eps and weight_decay (L2, added to the gradient)
  AdamW,  // "adamw": beta1, beta2, eps and decoupled weight_decay
};

/// schedule.name: how the learning rate changes over optimizer steps.
enum class ScheduleChoice {
  Constant,      // "constant": optimizer.lr throughout
  Step,          // "step": lr * gamma^floor(step / step_size)
  WarmupCosine,  // "warmup_cosine": linear warmup over warmup_steps, then cosine decay to min_lr
};

/// ddp.reduce_dtype: the dtype the gradients are all-reduced in (dist::DdpOptions::reduce_dtype).
enum class ReduceDtype {
  Param,  // "param": the parameters' own dtype, no conversion
  BF16,   // "bf16": bf16, half the bytes of f32 gradients; every rank gets the mean rounded to bf16
};

/// ddp.all_reduce: how the GPU ranks all-reduce large f32 gradient buckets during backward
/// (dist::CommunicatorOptions::overlap_all_reduce).
enum class AllReduceChoice {
  Ring,        // "ring": NCCL's ring kernels, with the SM carve-out
  CopyEngine,  // "copy_engine": 2 GPU ranks only; the copy engines move the buckets, no SM is held
};

/// ddp.step_mean: where the optimizer step takes each bf16 bucket's mean from
/// (dist::DdpOptions::step_mean).
enum class StepMeanChoice {
  Reduced,         // "reduced": the all-reduce writes it into .grad
  InUpdate,        // "in_update": Adam/AdamW computes it in its update and writes it into .grad
  InUpdateNoGrad,  // "in_update_no_grad": the same without writing it; the gradients are
                   // cleared after each step
};

/// [model]
struct ModelConfig {
  /// model.name: a model registered with the trainer ("mlp", "cnn", ...). The config only checks
  /// that it is a non-empty name of [a-z0-9_]; the trainer checks that it is registered.
  std::string name = "cnn";
  bool operator==(const ModelConfig&) const = default;
};

/// [data]
struct DataConfig {
  std::string train_dir;   // data.train (required, non-empty): a dataset directory (holding manifest.json)
  std::string test_dir;    // data.test: a dataset directory; "" = no evaluation
  int workers = 2;         // data.workers: loader threads per rank, 1..64
  bool in_memory = false;  // data.in_memory: load the whole training set into memory first
  bool shuffle = true;     // data.shuffle: a fresh permutation of the training set each epoch
  bool verify_checksums = false;  // data.verify_checksums: check every shard's SHA-256 on opening
  bool operator==(const DataConfig&) const = default;
};

/// [train]
struct TrainSection {
  int64_t batch_size = 64;                   // train.batch_size: samples per micro-step per rank, 1..1048576
  int64_t grad_accum = 1;                    // train.grad_accum: micro-steps per optimizer step, 1..4096
  int64_t steps = 0;                         // train.steps: optimizer steps, >= 0
  int64_t epochs = 0;                        // train.epochs: >= 0. Exactly one of steps / epochs is > 0.
  uint64_t seed = 0;                         // train.seed: 0..2^63-1 (a TOML integer)
  DeviceChoice device = DeviceChoice::Auto;  // train.device
  double clip_grad_norm = 0.0;               // train.clip_grad_norm: >= 0, 0 = off
  bool operator==(const TrainSection&) const = default;
};

/// [optimizer]
struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::AdamW;  // optimizer.name
  double lr = 1e-3;                           // optimizer.lr: > 0 (the peak rate of the schedule)
  double weight_decay = 0.0;                  // optimizer.weight_decay: >= 0
  double beta1 = 0.9;                         // optimizer.beta1: in [0, 1) (adam, adamw)
  double beta2 = 0.999;                       // optimizer.beta2: in [0, 1) (adam, adamw)
  double eps = 1e-8;                          // optimizer.eps: > 0 (adam, adamw)
  double momentum = 0.0;                      // optimizer.momentum: in [0, 1) (sgd)
  bool nesterov = false;                      // optimizer.nesterov (sgd): requires momentum > 0
  bool operator==(const OptimizerConfig&) const = default;
};

/// [schedule]
struct ScheduleConfig {
  ScheduleChoice kind = ScheduleChoice::Constant;  // schedule.name
  int64_t warmup_steps = 0;  // schedule.warmup_steps: >= 0 (warmup_cosine); <= train.steps when steps is set
  double min_lr = 0.0;       // schedule.min_lr: in [0, optimizer.lr] (warmup_cosine's final rate)
  int64_t step_size = 1;     // schedule.step_size: >= 1 (step)
  double gamma = 0.1;        // schedule.gamma: >= 0 (step)
  bool operator==(const ScheduleConfig&) const = default;
};

/// [eval]
struct EvalConfig {
  int64_t every_steps = 0;    // eval.every_steps: >= 0; 0 = only at the end
  int64_t batch_size = 1000;  // eval.batch_size: per rank, 1..1048576
  bool operator==(const EvalConfig&) const = default;
};

/// [checkpoint]
struct CheckpointConfig {
  /// checkpoint.dir: where checkpoints go. Left empty in the file, parse_config sets it to
  /// "<log.dir>/checkpoints".
  std::string dir;
  int64_t every_steps = 0;  // checkpoint.every_steps: >= 0; 0 = only at the end
  int64_t keep_last = 3;    // checkpoint.keep_last: >= 1 complete checkpoints kept
  bool operator==(const CheckpointConfig&) const = default;
};

/// [log]
struct LogConfig {
  std::string dir = "runs/default";  // log.dir (non-empty): logs, metrics and, by default, checkpoints
  int64_t every_steps = 10;          // log.every_steps: >= 1 (metrics JSONL/TensorBoard and progress)
  bool tensorboard = true;           // log.tensorboard: write TensorBoard event files
  bool progress = true;              // log.progress: a live progress line on rank 0
  bool operator==(const LogConfig&) const = default;
};

/// [ddp]
struct DdpConfig {
  double first_bucket_mb = 1.0;  // ddp.first_bucket_mb: > 0
  double bucket_cap_mb = 25.0;   // ddp.bucket_cap_mb: > 0
  int64_t check_every = 100;     // ddp.check_every: >= 0 steps between desync checksums; 0 = only at the end
  double timeout_s = 300.0;      // ddp.timeout_s: [0.001, 1e9] seconds before a collective is declared hung
  ReduceDtype reduce_dtype = ReduceDtype::Param;       // ddp.reduce_dtype
  AllReduceChoice all_reduce = AllReduceChoice::Ring;  // ddp.all_reduce
  StepMeanChoice step_mean = StepMeanChoice::Reduced;  // ddp.step_mean
  bool operator==(const DdpConfig&) const = default;
};

/// A whole flame-train configuration: one member per TOML section.
struct Config {
  ModelConfig model;
  DataConfig data;
  TrainSection train;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  LogConfig log;
  DdpConfig ddp;
  bool operator==(const Config&) const = default;
};

/// Parses TOML text (`source_name` names it in errors), applies `overrides` in order, validates
/// every key and returns the Config. An override is "section.key=value" ("optimizer.lr=3e-4",
/// "train.device=cpu"): the value is parsed as a TOML value, and text that is not a TOML value is
/// taken as a string (so `train.device=cpu` and `data.train=data/x` need no quotes).
/// Raises flame::Error, naming the source (file:line:column, or the --set text), the full dotted
/// key and what is allowed, for: a TOML syntax error; an unknown section or key (with the closest
/// known key when one is near); a wrong type (integers are accepted for floats, floats are not
/// accepted for integers); an out-of-range value or unknown name; a malformed override; and the
/// cross-key rules (exactly one of train.steps / train.epochs > 0; schedule.min_lr <=
/// optimizer.lr; optimizer.nesterov needs optimizer.momentum > 0; warmup_cosine's warmup_steps <=
/// train.steps when train.steps is set).
Config parse_config(std::string_view toml_text, std::string_view source_name,
                    const std::vector<std::string>& overrides = {});

/// Reads the file at `path` and parses it with parse_config; a missing or unreadable file raises
/// flame::Error naming the path.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// The config as TOML text, every key written (defaults included), in the order of docs/config.md.
/// For a config that parse_config returned, parse_config(to_toml(c), ...) == c.
std::string to_toml(const Config& config);

/// The names used in the config and in logs: "auto" / "cpu" / "cuda", "sgd" / "adam" / "adamw",
/// "constant" / "step" / "warmup_cosine", "param" / "bf16", "ring" / "copy_engine", "reduced" /
/// "in_update" / "in_update_no_grad".
std::string_view to_string(DeviceChoice device);
std::string_view to_string(OptimizerKind kind);
std::string_view to_string(ScheduleChoice kind);
std::string_view to_string(ReduceDtype dtype);
std::string_view to_string(AllReduceChoice choice);
std::string_view to_string(StepMeanChoice choice);

}  // namespace flame::train
