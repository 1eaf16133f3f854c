// Learning-rate schedules: pure functions of the step giving the lr. The training loop calls
// optimizer.set_lr(scheduled_lr(schedule, step)) before each optimizer step.
#pragma once

#include <cstdint>

namespace flame::optim {

enum class ScheduleKind {
  Constant,      // lr
  Step,          // lr * gamma^floor(step / step_size)  (torch.optim.lr_scheduler.StepLR)
  WarmupCosine,  // linear warmup to lr, then cosine decay to min_lr (as llm.c)
};

/// A schedule's configuration. `step` below is the 0-based index of the optimizer step about to
/// run (0 for the first step). WarmupCosine:
///   step < warmup_steps:                 lr * (step + 1) / warmup_steps
///   warmup_steps <= step < total_steps:  min_lr + (lr - min_lr) * (1 + cos(pi * r)) / 2,
///                                        r = (step - warmup_steps) / (total_steps - warmup_steps)
///   step >= total_steps:                 min_lr
/// so the first step already gets a non-zero lr and the peak is reached at step warmup_steps - 1.
struct LrSchedule {
  ScheduleKind kind = ScheduleKind::Constant;
  double lr = 1e-3;          // the constant lr, the initial lr of Step, the peak of WarmupCosine
  int64_t step_size = 1;     // Step: steps between decays (>= 1)
  double gamma = 0.1;        // Step: decay factor (>= 0)
  int64_t warmup_steps = 0;  // WarmupCosine: 0 <= warmup_steps <= total_steps
  int64_t total_steps = 0;   // WarmupCosine: the lr is min_lr from this step on
  double min_lr = 0.0;       // WarmupCosine: 0 <= min_lr <= lr
};

LrSchedule constant_schedule(double lr);
LrSchedule step_schedule(double lr, int64_t step_size, double gamma);
LrSchedule warmup_cosine_schedule(double lr, int64_t warmup_steps, int64_t total_steps, double min_lr = 0.0);

/// Raises flame::Error naming the field when `schedule` is inconsistent (ranges above, lr >= 0).
void validate(const LrSchedule& schedule);
/// The lr for `step` (>= 0); validates the schedule.
double scheduled_lr(const LrSchedule& schedule, int64_t step);

}  // namespace flame::optim
