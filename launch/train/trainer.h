// flame-train's training loop (DESIGN.md launch/): one call trains the configured model with
// DistributedDataParallel on every rank of the process group, evaluates, logs, checkpoints and
// resumes. The same code runs as one plain process (the single-GPU / CPU debug mode), under
// `mpirun -np N` and under Slurm (`srun`), picked up by dist::ProcessGroup::init().
//
// Note [training loop]
// A step is grad_accum micro-steps (all but the last inside ddp.no_sync()), each on the next batch
// of this rank's DataLoader (epochs roll over as the loader runs out), loss = cross_entropy / accum;
// the learning rate is set (optimizer.set_lr(schedule(step))) before them. Then ddp.step(optimizer)
// (each bucket's parameters updated as soon as the bucket is reduced), or, with clipping,
// synchronize_gradients, clip_grad_norm_ and optimizer.step(); then ddp.after_step() (desync check
// every ddp.check_every steps and at the end).
// Inputs are the u8 "image" field scaled to [0, 1] and normalised with Fashion-MNIST's mean and
// standard deviation (0.2860, 0.3530); the target is the i64 "label" field.
// Host synchronisation happens only where a number is needed on the host: on log steps (the
// loss and one tiny MPI all-reduce of the stop flag, Note [stop requests]), at evaluation and at
// checkpoints.
//
// Note [exact resume]
// A checkpoint (launch/train/checkpoint.h) holds the weights, the optimizer state (step counts and
// moments), the step, the loader position (epoch, next batch), every rank's generator states
// (CPU and device: seed and offset), the world size, the config, the training seconds so far and
// the run's numbers at that step (its loss, the last evaluation), which a resumed run that has no
// step left to do reports as they were. Resuming restores all of it,
// so the run goes on with the same parameters, the same batches in the same order, the same
// learning rates and the same random streams as an uninterrupted run, which makes every later loss
// bit-identical (tested on the CPU with 1 and 2 ranks). A checkpoint resumes only with the world
// size that wrote it (the data order depends on it), and with the same model, data order and
// optimizer keys of the config (model.name, data.train, data.shuffle, train.batch_size,
// train.grad_accum, train.seed, optimizer.name); another is a clear error, other config changes
// are logged. A run that starts from scratch moves an earlier run's checkpoints and metrics.jsonl
// aside (.earlier-<time>), so that a later --resume auto cannot pick the earlier run's steps.
//
// Note [stop requests]
// SIGTERM and SIGUSR1 set a flag (async-signal-safe). After every log step (log.every_steps) and
// every periodic checkpoint step the ranks all-reduce it (and whether it was SIGUSR1) through the
// MPI control communicator, so
// they stop after the same step even when the signal reached them at different times (and no step
// pays a host collective for it otherwise); then a checkpoint of that step is written and train()
// returns with stopped = true (flame-train exits with kExitStopped). Under Slurm (SLURM_JOB_ID set), SIGUSR1 —
// the warning `#SBATCH --signal=USR1@90` sends before the time limit — on any rank also makes rank 0 run
// `scontrol requeue $SLURM_JOB_ID`, so the job comes back and resumes with `--resume auto`;
// SIGTERM (scancel, or the time limit itself) does not requeue.
#pragma once

#include <csignal>
#include <cstdint>
#include <optional>
#include <string>

#include "launch/train/config.h"

namespace flame::train {

/// flame-train's exit statuses.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
/// Stopped by SIGTERM or SIGUSR1 after writing a checkpoint (Note [stop requests]).
constexpr int kExitStopped = 85;

enum class ResumeMode {
  None,  // start from scratch (an earlier run's checkpoints and metrics are moved aside first)
  Auto,  // continue from the newest complete checkpoint in checkpoint.dir, if there is one
};

struct RunOptions {
  ResumeMode resume = ResumeMode::None;
  /// Stop (as a signal would) once this many steps have run in this call; for tests. 0: never.
  int64_t stop_after_steps = 0;
};

struct RunResult {
  bool stopped = false;                 // stopped by a request (Note [stop requests])
  int64_t steps = 0;                    // optimizer steps completed, in total
  int64_t resumed_from_step = 0;        // 0 when the run started from scratch
  double final_loss = 0.0;              // the last step's training loss, mean over ranks
  std::optional<double> test_loss;      // the last evaluation (none without data.test)
  std::optional<double> test_accuracy;  // in [0, 1]
  std::optional<double> time_to_90_s;   // training seconds (resumed calls included) to a first >= 90% evaluation
  double samples_per_s = 0.0;           // training samples per second, all ranks, this call
  std::string last_checkpoint;          // the directory written last ("" if none)
  int world_size = 1;
  std::string device;  // "cpu" or "cuda:N" (this rank's)
};

/// Trains as configured (Note [training loop]); collective over the process group. Raises
/// flame::Error on bad data, a failed collective, a failed checkpoint write, ... (flame-train then
/// brings the job down with dist::abort_job). Writes under config.log.dir: logs/rank-<r>.log
/// (every rank), metrics.jsonl and tensorboard/ (rank 0), summary.json (rank 0, at the end).
RunResult train(const Config& config, const RunOptions& options = {});

/// Asks a running train() to stop after its current step, as SIGTERM does (async-signal-safe).
void request_stop(int signal_number);

/// The stop signal that stands after `earlier` (0: none yet) and then `later` arrived: SIGUSR1
/// (Slurm's warning before the time limit: save and requeue) wins over any other, so the time
/// limit's SIGTERM right after it still requeues the job; otherwise the later one. Async-signal-safe.
constexpr int combined_stop_signal(int earlier, int later) { return earlier == SIGUSR1 ? SIGUSR1 : later; }

}  // namespace flame::train
