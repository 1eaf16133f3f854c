// Frontends of the fused training ops (core/fused.h): argument checks, output allocation,
// dispatch and the cross-entropy backward.
#include "core/fused.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/op_checks.h"

namespace flame {

Tensor cross_entropy_rows(const Tensor& logits, const Tensor& target, int64_t ignore_index, double label_smoothing) {
  const char* op = "cross_entropy_rows";
  FLAME_CHECK(logits.defined() && target.defined(), "{}: logits and target must be defined", op);
  FLAME_CHECK(logits.dim() == 2 && is_floating(logits.dtype()),
              "{}: logits {} must be a 2-D [N, C] floating-point tensor (f32, f64, f16, bf16)", op, logits.describe());
  FLAME_CHECK(target.dtype() == DType::I64 && target.dim() == 1 && target.size(0) == logits.size(0),
              "{}: target {} must be 1-D i64 holding one class index per row of logits {} (shape [{}])", op,
              target.describe(), logits.describe(), logits.size(0));
  detail::check_same_device(op, {&logits, &target});
  const int64_t n = logits.size(0), c = logits.size(1);
  FLAME_CHECK(c > 0 || n == 0, "{}: logits {} have no classes", op, logits.describe());
  FLAME_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "{}: label_smoothing must be in [0, 1], got {}", op,
              label_smoothing);

  const Device device = logits.device();
  const Tensor x = logits.contiguous();
  const Tensor t = target.contiguous();
  const DType stats_dtype = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  Tensor losses = Tensor::empty({n}, TensorOptions(logits.dtype(), device));
  const Tensor row_stats = Tensor::empty({n, 2}, TensorOptions(stats_dtype, device));  // [N, {max, log-sum}]
  if (n > 0) backend_for(device).cross_entropy_forward(x, t, losses, row_stats, ignore_index, label_smoothing);
  if (autograd::needs_grad({&logits})) {
    autograd::record(losses, "CrossEntropyBackward", {logits},
                     [x = autograd::SavedTensor(x), t = autograd::SavedTensor(t),
                      row_stats = autograd::SavedTensor(row_stats), ignore_index, label_smoothing](const Tensor& g) {
                       const Tensor& logits = x.get();
                       Tensor grad = Tensor::empty(logits.shape(), TensorOptions(logits.dtype(), logits.device()));
                       if (grad.numel() > 0)
                         backend_for(logits.device())
                             .cross_entropy_backward(logits, t.get(), row_stats.get(), g.contiguous(), grad,
                                                     ignore_index, label_smoothing);
                       return std::vector<Tensor>{grad};
                     });
  }
  return losses;
}

namespace {

void check_adam_args(const AdamStepArgs& a) {
  const auto finite_at_least = [](double value, double lo) { return std::isfinite(value) && value >= lo; };
  FLAME_CHECK(finite_at_least(a.lr, 0.0) && finite_at_least(a.eps, 0.0) && finite_at_least(a.weight_decay, 0.0),
              "adam_step_: lr ({}), eps ({}) and weight_decay ({}) must be finite and >= 0", a.lr, a.eps,
              a.weight_decay);
  FLAME_CHECK(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0,
              "adam_step_: betas must be in [0, 1), got ({}, {})", a.beta1, a.beta2);
  FLAME_CHECK(
      a.bias_correction1 > 0.0 && a.bias_correction1 <= 1.0 && a.bias_correction2 > 0.0 && a.bias_correction2 <= 1.0,
      "adam_step_: bias corrections must be in (0, 1] (1 - beta^t for a step t >= 1), got {} and {}",
      a.bias_correction1, a.bias_correction2);
}

/// The bytes [begin, end) of a contiguous tensor in its storage.
std::pair<int64_t, int64_t> byte_range(const Tensor& t) {
  const int64_t begin = t.offset() * static_cast<int64_t>(t.element_size());
  return {begin, begin + static_cast<int64_t>(t.nbytes())};
}

/// True when contiguous a and b share a byte; they may be views of one storage in different dtypes.
bool contiguous_overlap(const Tensor& a, const Tensor& b) {
  if (a.storage() != b.storage() || a.numel() == 0 || b.numel() == 0) return false;
  const auto [a0, a1] = byte_range(a);
  const auto [b0, b1] = byte_range(b);
  return a0 < b1 && b0 < a1;
}

/// True when a row of `slots` [W, n] (stride(1) == 1) shares a byte with contiguous `t`. Row by
/// row, so that a tensor lying between rows of the same buffer is not refused.
bool slot_rows_overlap(const Tensor& slots, const Tensor& t) {
  if (slots.storage() != t.storage() || slots.numel() == 0 || t.numel() == 0) return false;
  const auto [t0, t1] = byte_range(t);
  const int64_t element = static_cast<int64_t>(slots.element_size());
  for (int64_t w = 0; w < slots.size(0); ++w) {
    const int64_t row0 = (slots.offset() + w * slots.stride(0)) * element;
    if (row0 < t1 && t0 < row0 + slots.size(1) * element) return true;
  }
  return false;
}

/// One entry's bytes in a storage, as adam_step_'s backends touch them.
struct EntrySpan {
  const Storage* storage;
  int64_t begin, end;
  size_t entry;
  const char* role;        // "param", "grad", ...
  const Tensor* tensor;    // for messages (gradient slots: the whole slots tensor)
  bool written;
};

/// Raises when a byte that one tensor of the update writes (a param, exp_avg, exp_avg_sq, or a grad
/// that receives the slots' mean) is read or written through another tensor of the same call, in
/// the same entry or another: the backends update entries in parallel. The common case, every
/// written tensor in a storage of its own that nothing else uses, costs one sort of the written
/// storages.
void check_entries_apart(const char* op, const std::vector<EntrySpan>& spans) {
  std::vector<const Storage*> written;
  for (const EntrySpan& s : spans)
    if (s.written && s.end > s.begin) written.push_back(s.storage);
  std::sort(written.begin(), written.end(), std::less<const Storage*>());
  bool shared = std::adjacent_find(written.begin(), written.end()) != written.end();
  for (size_t k = 0; k < spans.size() && !shared; ++k)
    shared = !spans[k].written && spans[k].end > spans[k].begin &&
             std::binary_search(written.begin(), written.end(), spans[k].storage, std::less<const Storage*>());
  if (!shared) return;
  std::vector<const EntrySpan*> sorted;
  for (const EntrySpan& s : spans)
    if (s.end > s.begin) sorted.push_back(&s);
  std::sort(sorted.begin(), sorted.end(), [](const EntrySpan* a, const EntrySpan* b) {
    return a->storage != b->storage ? std::less<const Storage*>()(a->storage, b->storage) : a->begin < b->begin;
  });
  // Sweep each storage: a span overlaps an earlier one that is written when it starts before the
  // furthest written end so far, and (being written) any earlier one when it starts before the
  // furthest end so far.
  const EntrySpan *furthest = nullptr, *furthest_written = nullptr;
  for (const EntrySpan* s : sorted) {
    if (furthest != nullptr && furthest->storage != s->storage) furthest = furthest_written = nullptr;
    const EntrySpan* other = furthest_written != nullptr && s->begin < furthest_written->end ? furthest_written
                             : s->written && furthest != nullptr && s->begin < furthest->end ? furthest
                                                                                               : nullptr;
    if (other != nullptr)
      FLAME_FAIL(
          "{}: the {} of entry {} ({}) and the {} of entry {} ({}) share memory, and one of them is written (entries "
          "are updated in parallel); give every entry tensors of its own",
          op, other->role, other->entry, other->tensor->describe(), s->role, s->entry, s->tensor->describe());
    if (furthest == nullptr || s->end > furthest->end) furthest = s;
    if (s->written && (furthest_written == nullptr || s->end > furthest_written->end)) furthest_written = s;
  }
}

}  // namespace

void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args) {
  adam_step_(params, grads, exp_avg, exp_avg_sq, args, {});
}

void adam_step_(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const AdamStepArgs& args,
                const std::vector<GradientSlots>& grad_slots) {
  const char* op = "adam_step_";
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size(),
              "{}: got {} params, {} grads, {} exp_avg and {} exp_avg_sq; the lists must have one length", op,
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size());
  FLAME_CHECK(grad_slots.empty() || grad_slots.size() == params.size(),
              "{}: got {} grad_slots for {} params; pass none, or one per param (undefined slots where the grad is "
              "given as a tensor)",
              op, grad_slots.size(), params.size());
  check_adam_args(args);
  if (params.empty()) return;
  // One entry per param from here on (Note [gradient slots]); undefined slots: read grads[i].
  const std::vector<GradientSlots> no_slots(grad_slots.empty() ? params.size() : 0);
  const std::vector<GradientSlots>& slots_per_entry = grad_slots.empty() ? no_slots : grad_slots;
  std::vector<Tensor> backend_grads;
  backend_grads.reserve(grads.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor &p = params[i], &g = grads[i], &m = exp_avg[i], &v = exp_avg_sq[i];
    FLAME_CHECK(p.defined() && g.defined() && m.defined() && v.defined(), "{}: entry {} has an undefined tensor", op,
                i);
    detail::check_same_device(op, {&params[0], &p, &g, &m, &v});
    FLAME_CHECK(is_floating(p.dtype()) && g.dtype() == p.dtype() && m.dtype() == p.dtype() && v.dtype() == p.dtype(),
                "{}: entry {} (param {}, grad {}, exp_avg {}, exp_avg_sq {}) must share one floating-point dtype", op,
                i, p.describe(), g.describe(), m.describe(), v.describe());
    FLAME_CHECK(g.shape() == p.shape() && m.shape() == p.shape() && v.shape() == p.shape(),
                "{}: entry {} (param {}, grad {}, exp_avg {}, exp_avg_sq {}) must share one shape", op, i, p.describe(),
                g.describe(), m.describe(), v.describe());
    FLAME_CHECK(p.is_contiguous() && m.is_contiguous() && v.is_contiguous(),
                "{}: entry {}: param {}, exp_avg {} and exp_avg_sq {} must be contiguous (they are updated in place)",
                op, i, p.describe(), m.describe(), v.describe());
    const Tensor& s = slots_per_entry[i].slots;
    if (!s.defined()) {
      backend_grads.push_back(g.contiguous());
      continue;
    }
    detail::check_same_device(op, {&p, &s});
    FLAME_CHECK(p.dtype() == DType::F32, "{}: entry {}: gradient slots need an f32 param, got param {}", op, i,
                p.describe());
    FLAME_CHECK(g.is_contiguous(),
                "{}: entry {}: grad {} must be contiguous when the entry has gradient slots (the mean of the slots is "
                "written into it)",
                op, i, g.describe());
    FLAME_CHECK(s.dtype() == DType::BF16, "{}: entry {}: gradient slots {} must be bf16", op, i, s.describe());
    FLAME_CHECK(s.dim() == 2 && s.size(0) >= 1 && s.size(1) == p.numel(),
                "{}: entry {}: gradient slots {} must have shape [W, {}] with W >= 1 (one row of the param's {} "
                "elements per rank)",
                op, i, s.describe(), p.numel(), p.numel());
    FLAME_CHECK(s.stride(1) == 1, "{}: entry {}: each row of gradient slots {} must be contiguous (stride(1) == 1)", op,
                i, s.describe());
    for (const Tensor* t : {&p, &g, &m, &v})
      FLAME_CHECK(!slot_rows_overlap(s, *t), "{}: entry {}: gradient slots {} overlap {} in memory", op, i,
                  s.describe(), t->describe());
    for (const Tensor* t : {&p, &m, &v})
      FLAME_CHECK(!contiguous_overlap(g, *t),
                  "{}: entry {}: grad {} overlaps {} in memory; with gradient slots the grad is written", op, i,
                  g.describe(), t->describe());
    backend_grads.push_back(g);  // written by the backend: the caller's tensor itself
  }
  std::vector<EntrySpan> spans;
  spans.reserve(4 * params.size());
  const auto add = [&](const Tensor& t, size_t entry, const char* role, bool written) {
    const auto [begin, end] = byte_range(t);
    spans.push_back({t.storage().get(), begin, end, entry, role, &t, written});
  };
  for (size_t i = 0; i < params.size(); ++i) {
    add(params[i], i, "param", true);
    add(exp_avg[i], i, "exp_avg", true);
    add(exp_avg_sq[i], i, "exp_avg_sq", true);
    const GradientSlots& slots = slots_per_entry[i];
    if (!slots.slots.defined()) {
      add(backend_grads[i], i, "grad", false);
      continue;
    }
    if (slots.write_mean) add(grads[i], i, "grad", true);
    const int64_t element = static_cast<int64_t>(slots.slots.element_size());
    for (int64_t w = 0; w < slots.slots.size(0); ++w) {  // row by row (stride(1) == 1, checked above)
      const int64_t row = (slots.slots.offset() + w * slots.slots.stride(0)) * element;
      spans.push_back({slots.slots.storage().get(), row, row + slots.slots.size(1) * element, i, "gradient slots",
                       &slots.slots, false});
    }
  }
  check_entries_apart(op, spans);
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& s = slots_per_entry[i].slots;
    detail::check_inplace_allowed(op, params[i], {&grads[i], &s});
    detail::check_inplace_allowed(op, exp_avg[i]);
    detail::check_inplace_allowed(op, exp_avg_sq[i]);
    if (s.defined()) detail::check_inplace_allowed(op, grads[i], {&s});
  }
  backend_for(params[0].device()).adam_step(params, backend_grads, exp_avg, exp_avg_sq, args, slots_per_entry);
  for (size_t i = 0; i < params.size(); ++i) {
    for (const Tensor* written : {&params[i], &exp_avg[i], &exp_avg_sq[i]}) detail::mark_written(*written);
    if (slots_per_entry[i].slots.defined() && slots_per_entry[i].write_mean) detail::mark_written(grads[i]);
  }
}

}  // namespace flame
