#include "nn/optim/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace flame::optim {

LrSchedule constant_schedule(double lr) {
  LrSchedule s;
  s.lr = lr;
  validate(s);
  return s;
}

LrSchedule step_schedule(double lr, int64_t step_size, double gamma) {
  LrSchedule s;
  s.kind = ScheduleKind::Step;
  s.lr = lr;
  s.step_size = step_size;
  s.gamma = gamma;
  validate(s);
  return s;
}

LrSchedule warmup_cosine_schedule(double lr, int64_t warmup_steps, int64_t total_steps, double min_lr) {
  LrSchedule s;
  s.kind = ScheduleKind::WarmupCosine;
  s.lr = lr;
  s.warmup_steps = warmup_steps;
  s.total_steps = total_steps;
  s.min_lr = min_lr;
  validate(s);
  return s;
}

void validate(const LrSchedule& s) {
  FLAME_CHECK(std::isfinite(s.lr) && s.lr >= 0.0, "lr schedule: lr must be finite and >= 0, got {}", s.lr);
  switch (s.kind) {
    case ScheduleKind::Constant:
      return;
    case ScheduleKind::Step:
      FLAME_CHECK(s.step_size >= 1, "step lr schedule: step_size must be >= 1, got {}", s.step_size);
      FLAME_CHECK(std::isfinite(s.gamma) && s.gamma >= 0.0, "step lr schedule: gamma must be finite and >= 0, got {}",
                  s.gamma);
      return;
    case ScheduleKind::WarmupCosine:
      FLAME_CHECK(s.warmup_steps >= 0 && s.warmup_steps <= s.total_steps,
                  "warmup-cosine lr schedule: need 0 <= "
                  "warmup_steps <= total_steps, got warmup_steps {} and total_steps {}",
                  s.warmup_steps, s.total_steps);
      FLAME_CHECK(std::isfinite(s.min_lr) && s.min_lr >= 0.0 && s.min_lr <= s.lr,
                  "warmup-cosine lr schedule: need "
                  "0 <= min_lr <= lr, got min_lr {} and lr {}",
                  s.min_lr, s.lr);
      return;
  }
  FLAME_FAIL("lr schedule: unknown kind {}", static_cast<int>(s.kind));
}

double scheduled_lr(const LrSchedule& s, int64_t step) {
  validate(s);
  FLAME_CHECK(step >= 0, "scheduled_lr: step must be >= 0, got {}", step);
  switch (s.kind) {
    case ScheduleKind::Constant:
      return s.lr;
    case ScheduleKind::Step:
      return s.lr * std::pow(s.gamma, static_cast<double>(step / s.step_size));
    case ScheduleKind::WarmupCosine: {
      if (step < s.warmup_steps) return s.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
      if (step >= s.total_steps) return s.min_lr;
      const double ratio =
          static_cast<double>(step - s.warmup_steps) / static_cast<double>(s.total_steps - s.warmup_steps);
      return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * ratio));
    }
  }
  FLAME_FAIL("scheduled_lr: unknown schedule kind {}", static_cast<int>(s.kind));
}

}  // namespace flame::optim
