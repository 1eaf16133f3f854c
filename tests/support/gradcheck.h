// Finite-difference gradient checks for the autograd suites (header-only: the test support library
// builds only test_support.cpp).
//
// gradcheck(fn, inputs) compares the backward of fn at `inputs` with central finite differences of
// a random projection L = sum(fn(inputs) * r): the analytic side runs fn with grad mode on and calls
// out.backward(r), so dL/dx lands in each input's .grad; the numeric side perturbs one element at a
// time by +-eps (written straight into the input's storage, which keeps its layout) and evaluates
// L on the host in double under NoGradGuard. Every float64 CPU input is differentiated (through a
// detached copy sharing its storage, so the caller's tensors are left as they were); other inputs
// (integer indices, bool conditions) are passed through unchanged.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "support/test_support.h"

namespace flame::test {

/// Step and tolerance: an element passes when |analytic - numeric| <= atol + rtol * |numeric|.
struct GradcheckOptions {
  double eps = 1e-6;
  double rtol = 1e-6;
  double atol = 1e-6;
};

/// The function whose gradient is checked: inputs -> one output.
using GradcheckFn = std::function<Tensor(const std::vector<Tensor>&)>;

namespace gradcheck_detail {

/// Element `flat` (row-major over the logical shape) of a CPU float64 tensor, in place.
inline double& element(const Tensor& t, int64_t flat) {
  const std::vector<int64_t> index = unravel_index(flat, t.shape());
  int64_t offset = 0;
  for (size_t d = 0; d < index.size(); ++d) offset += index[d] * t.strides()[d];
  return t.data<double>()[offset];
}

/// sum(out * r) on the host, in double.
inline double projection(const Tensor& out, const std::vector<double>& r) {
  const std::vector<double> values = host_values(out);
  double total = 0.0;
  for (size_t i = 0; i < values.size(); ++i) total += values[i] * r[i];
  return total;
}

/// True when two logical elements of `t` share memory (stride 0 on a dimension of size > 1).
inline bool has_broadcast_dims(const Tensor& t) {
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1 && t.stride(d) == 0) return true;
  return false;
}

}  // namespace gradcheck_detail

/// Checks the gradient of `fn` with respect to every float64 input (see the file comment).
/// Inputs must live on the CPU and must not be expanded views. The projection r is drawn from `rng`.
inline ::testing::AssertionResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, HostRng& rng,
                                            GradcheckOptions options = {}) {
  using gradcheck_detail::element;
  using gradcheck_detail::projection;
  std::vector<Tensor> leaves;
  std::vector<size_t> checked;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& input = inputs[i];
    if (!input.defined() || input.dtype() != DType::F64) {
      leaves.push_back(input);
      continue;
    }
    if (input.device() != kCPU)
      return ::testing::AssertionFailure() << "gradcheck: input " << i << " is not on the CPU";
    if (gradcheck_detail::has_broadcast_dims(input))
      return ::testing::AssertionFailure() << "gradcheck: input " << i << " is an expanded view; pass a real buffer";
    Tensor leaf = input.detach();
    leaf.requires_grad_();
    leaves.push_back(leaf);
    checked.push_back(i);
  }
  if (checked.empty()) return ::testing::AssertionFailure() << "gradcheck: no float64 input to differentiate";

  // Analytic side.
  Tensor out;
  std::vector<double> r;
  try {
    out = fn(leaves);
    if (!out.defined()) return ::testing::AssertionFailure() << "the function returned an undefined tensor";
    if (!out.requires_grad())
      return ::testing::AssertionFailure()
             << "the output " << out.describe() << " does not require grad: no op recorded a backward";
    r = rng.uniform(out.numel(), -1.0, 1.0);
    out.backward(make_tensor(r, out.shape(), out.dtype()));
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "forward/backward threw: " << error.what();
  }
  std::vector<std::vector<double>> analytic;
  for (size_t i : checked) {
    const Tensor grad = leaves[i].grad();
    if (!grad.defined()) {  // no gradient reached the input: it must not influence the output
      analytic.emplace_back(static_cast<size_t>(leaves[i].numel()), 0.0);
      continue;
    }
    if (grad.shape() != leaves[i].shape() || grad.dtype() != DType::F64 || grad.device() != kCPU)
      return ::testing::AssertionFailure()
             << "gradient of input " << i << " is " << grad.describe() << ", the input is " << leaves[i].describe();
    analytic.push_back(host_values(grad));
  }

  // Numeric side, and the comparison.
  autograd::NoGradGuard no_grad;
  int mismatches = 0;
  double worst_excess = -1.0;
  std::string worst;
  try {
    for (size_t c = 0; c < checked.size(); ++c) {
      const Tensor& leaf = leaves[checked[c]];
      for (int64_t flat = 0; flat < leaf.numel(); ++flat) {
        double& x = element(leaf, flat);
        const double original = x;
        struct Restore {  // puts the element back even when fn throws (the caller's storage is shared)
          double& x;
          double value;
          ~Restore() { x = value; }
        } restore{x, original};
        const double plus = original + options.eps, minus = original - options.eps;
        x = plus;
        const double l_plus = projection(fn(leaves), r);
        x = minus;
        const double l_minus = projection(fn(leaves), r);
        x = original;
        const double numeric = (l_plus - l_minus) / (plus - minus);
        const double got = analytic[c][static_cast<size_t>(flat)];
        const double excess = std::abs(got - numeric) - (options.atol + options.rtol * std::abs(numeric));
        if (excess > 0.0 || std::isnan(got) != std::isnan(numeric)) {
          ++mismatches;
          if (excess > worst_excess || std::isnan(got)) {
            worst_excess = excess;
            worst =
                fmt::format("input {} {} element {}: analytic {:.12g}, numeric {:.12g} (difference {:.3g})", checked[c],
                            leaf.describe(), shape_str(unravel_index(flat, leaf.shape())), got, numeric, got - numeric);
          }
        }
      }
    }
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "a finite-difference evaluation threw: " << error.what();
  }
  if (mismatches > 0)
    return ::testing::AssertionFailure() << mismatches << " gradient element(s) differ from finite differences "
                                         << "(output " << out.describe() << "); worst: " << worst;
  return ::testing::AssertionSuccess();
}

// --- inputs for gradient checks ------------------------------------------------------------------

/// A float64 CPU tensor of `shape`, uniform on [low, high), laid out as `layout`.
inline Tensor random_f64(HostRng& rng, const Shape& shape, double low, double high,
                         Layout layout = Layout::Contiguous) {
  return make_tensor(rng.uniform(numel_of(shape), low, high), shape, DType::F64, kCPU, layout);
}

/// Magnitudes uniform on [low, high) with random signs (keeps values away from 0 for abs, relu, div).
inline std::vector<double> signed_away_from_zero(HostRng& rng, int64_t n, double low, double high) {
  std::vector<double> v = rng.uniform(n, low, high);
  const std::vector<double> signs = rng.integers(n, 0, 1);
  for (size_t i = 0; i < v.size(); ++i) v[i] = signs[i] > 0.5 ? v[i] : -v[i];
  return v;
}

/// n values at least `gap` apart (a shuffled grid with small jitter): no ties for max/min.
inline std::vector<double> distinct_values(HostRng& rng, int64_t n, double gap = 0.25) {
  std::vector<double> v(static_cast<size_t>(n));
  const std::vector<double> jitter = rng.uniform(n, 0.0, 0.2 * gap);
  for (int64_t i = 0; i < n; ++i)
    v[static_cast<size_t>(i)] = (static_cast<double>(i) - 0.5 * static_cast<double>(n)) * gap + jitter[i];
  std::shuffle(v.begin(), v.end(), rng.engine());
  return v;
}

}  // namespace flame::test
