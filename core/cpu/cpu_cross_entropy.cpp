// Per-row cross entropy and its gradient (Note [fused cross entropy] in core/fused.h), computed in
// double one row at a time.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

/// Checks the operands shared by forward and backward; returns {N, C}.
std::pair<int64_t, int64_t> check_operands(const char* op, const Tensor& logits, const Tensor& target,
                                           const Tensor& row_stats) {
  FLAME_CHECK(logits.dim() == 2 && is_floating(logits.dtype()), "{}: logits {} must be 2-D [N, C] floating point", op,
              logits.describe());
  const int64_t n = logits.size(0), c = logits.size(1);
  FLAME_CHECK(c > 0 || n == 0, "{}: logits {} have no classes", op, logits.describe());
  check_contiguous(op, "logits", logits, n * c);
  FLAME_CHECK(target.dtype() == DType::I64, "{}: target {} must be i64", op, target.describe());
  check_contiguous(op, "target", target, n);
  const DType stats_dtype = logits.dtype() == DType::F64 ? DType::F64 : DType::F32;
  FLAME_CHECK(row_stats.dtype() == stats_dtype, "{}: row_stats {} must be {} for {} logits", op, row_stats.describe(),
              dtype_name(stats_dtype), dtype_name(logits.dtype()));
  check_contiguous(op, "row_stats", row_stats, 2 * n);
  return {n, c};
}

/// Raises unless target `t` of row `i` is a class of `logits` (ignored rows are not checked).
void check_target(const Tensor& logits, int64_t i, int64_t t, int64_t ignore_index) {
  const int64_t classes = logits.size(1);
  FLAME_CHECK(t >= 0 && t < classes,
              "cross_entropy: target[{}] = {} is not a class of logits {} (expected 0 <= target < {}, or "
              "ignore_index {})",
              i, t, logits.describe(), classes, ignore_index);
}

}  // namespace

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& target, const Tensor& losses,
                                       const Tensor& row_stats, int64_t ignore_index, double label_smoothing) {
  const auto [n, c] = check_operands("cross_entropy_forward", logits, target, row_stats);
  FLAME_CHECK(losses.dtype() == logits.dtype(), "cross_entropy_forward: losses {} must have the logits' dtype {}",
              losses.describe(), dtype_name(logits.dtype()));
  check_contiguous("cross_entropy_forward", "losses", losses, n);
  const LoadDouble load = double_loader(logits.dtype());
  const StoreDouble store = double_storer(losses.dtype());
  const StoreDouble store_stat = double_storer(row_stats.dtype());
  const size_t size = logits.element_size();
  const char* x = static_cast<const char*>(logits.data_ptr());
  const int64_t* t = static_cast<const int64_t*>(target.data_ptr());
  char* out = static_cast<char*>(losses.data_ptr());
  char* stats = static_cast<char*>(row_stats.data_ptr());
  const double eps = label_smoothing;
  for (int64_t i = 0; i < n; ++i) {
    const char* row = x + static_cast<size_t>(i * c) * size;
    const auto at = [&](int64_t j) { return load(row + static_cast<size_t>(j) * size); };
    double m = -std::numeric_limits<double>::infinity();  // NaN when the row holds one
    for (int64_t j = 0; j < c && !std::isnan(m); ++j) m = std::isnan(at(j)) ? at(j) : std::max(m, at(j));
    double s = 0.0, shifted_sum = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      s += std::exp(at(j) - m);
      shifted_sum += at(j) - m;
    }
    const double log_sum = std::log(s);
    store_stat(stats + (2 * i) * row_stats.element_size(), m);
    store_stat(stats + (2 * i + 1) * row_stats.element_size(), log_sum);
    double loss = 0.0;
    if (t[i] != ignore_index) {
      check_target(logits, i, t[i], ignore_index);
      // Terms with weight 0 are left out, so an infinite logit cannot turn them into 0 * inf.
      if (eps != 1.0) loss += (1.0 - eps) * (log_sum - (at(t[i]) - m));
      if (eps != 0.0) loss += eps * (log_sum - shifted_sum / static_cast<double>(c));
    }
    store(out + static_cast<size_t>(i) * losses.element_size(), loss);
  }
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& target, const Tensor& row_stats,
                                        const Tensor& grad_losses, const Tensor& grad_logits, int64_t ignore_index,
                                        double label_smoothing) {
  const auto [n, c] = check_operands("cross_entropy_backward", logits, target, row_stats);
  FLAME_CHECK(grad_losses.dtype() == logits.dtype() && grad_logits.dtype() == logits.dtype(),
              "cross_entropy_backward: grad_losses {} and grad_logits {} must have the logits' dtype {}",
              grad_losses.describe(), grad_logits.describe(), dtype_name(logits.dtype()));
  check_contiguous("cross_entropy_backward", "grad_losses", grad_losses, n);
  check_contiguous("cross_entropy_backward", "grad_logits", grad_logits, n * c);
  const LoadDouble load = double_loader(logits.dtype());
  const LoadDouble load_stat = double_loader(row_stats.dtype());
  const StoreDouble store = double_storer(grad_logits.dtype());
  const size_t size = logits.element_size();
  const char* x = static_cast<const char*>(logits.data_ptr());
  const char* g = static_cast<const char*>(grad_losses.data_ptr());
  const char* stats = static_cast<const char*>(row_stats.data_ptr());
  const int64_t* t = static_cast<const int64_t*>(target.data_ptr());
  char* dx = static_cast<char*>(grad_logits.data_ptr());
  const double eps = label_smoothing;
  for (int64_t i = 0; i < n; ++i) {
    const bool ignored = t[i] == ignore_index;
    if (!ignored) check_target(logits, i, t[i], ignore_index);
    const double gi = load(g + static_cast<size_t>(i) * size);
    const double m = load_stat(stats + (2 * i) * row_stats.element_size());
    const double log_sum = load_stat(stats + (2 * i + 1) * row_stats.element_size());
    for (int64_t j = 0; j < c; ++j) {
      const size_t e = static_cast<size_t>(i * c + j) * size;
      if (ignored) {
        store(dx + e, 0.0);
        continue;
      }
      double q = eps / static_cast<double>(c);
      if (j == t[i]) q += 1.0 - eps;
      store(dx + e, gi * (std::exp((load(x + e) - m) - log_sum) - q));
    }
  }
}

}  // namespace flame
