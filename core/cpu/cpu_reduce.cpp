// reduce and softmax over the middle dim of a contiguous [outer, reduced, inner] input.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

template <class T>
bool is_nan(T value) {
  if constexpr (std::is_floating_point_v<T>) {
    return std::isnan(value);
  } else {
    return false;
  }
}

// Largest (or smallest when `smallest`) of a non-empty column; NaN wins.
template <class T>
T extreme(const std::vector<T>& column, bool smallest) {
  T best = column[0];
  for (const T v : column) {
    if (is_nan(v)) return v;
    if (smallest ? v < best : v > best) best = v;
  }
  return best;
}

// Index of the first largest entry of a non-empty column; NaN counts as the largest.
template <class T>
int64_t first_argmax(const std::vector<T>& column) {
  int64_t best = 0;
  for (size_t j = 0; j < column.size(); ++j) {
    if (is_nan(column[j])) return static_cast<int64_t>(j);
    if (column[j] > column[best]) best = static_cast<int64_t>(j);
  }
  return best;
}

double float_reduce(ReduceOp op, const std::vector<double>& column, int64_t correction) {
  const double n = static_cast<double>(column.size());
  switch (op) {
    case ReduceOp::Sum: {
      double sum = 0.0;
      for (const double v : column) sum += v;
      return sum;
    }
    case ReduceOp::Mean: {
      double sum = 0.0;
      for (const double v : column) sum += v;
      return sum / n;
    }
    case ReduceOp::Var: {
      double sum = 0.0;
      for (const double v : column) sum += v;
      const double mean = sum / n;
      double squares = 0.0;
      for (const double v : column) squares += (v - mean) * (v - mean);
      return squares / std::max(0.0, n - static_cast<double>(correction));
    }
    case ReduceOp::Max: return extreme(column, false);
    case ReduceOp::Min: return extreme(column, true);
    case ReduceOp::ArgMax: return static_cast<double>(first_argmax(column));
  }
  FLAME_FAIL("reduce: unknown op {}", static_cast<int>(op));
}

int64_t int_reduce(ReduceOp op, const std::vector<int64_t>& column) {
  switch (op) {
    case ReduceOp::Sum: {
      uint64_t sum = 0;  // wraps like the integer dtypes
      for (const int64_t v : column) sum += static_cast<uint64_t>(v);
      return static_cast<int64_t>(sum);
    }
    case ReduceOp::Max: return extreme(column, false);
    case ReduceOp::Min: return extreme(column, true);
    case ReduceOp::ArgMax: return first_argmax(column);
    default: FLAME_FAIL("reduce {}: needs a floating-point input", op_name(op));
  }
}

// Calls fn(o * inner + i, column) with column = in[o, :, i] loaded through `load`, for every (o,
// i).
template <class T, class Load, class Fn>
void for_each_column(const Tensor& in, int64_t outer, int64_t reduced, int64_t inner, Load load,
                     Fn&& fn) {
  const char* data = static_cast<const char*>(in.data_ptr());
  const size_t size = in.element_size();
  std::vector<T> column(static_cast<size_t>(reduced));
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      for (int64_t r = 0; r < reduced; ++r) {
        column[r] = load(data + static_cast<size_t>((o * reduced + r) * inner + i) * size);
      }
      fn(o * inner + i, column);
    }
  }
}

}  // namespace

void CpuBackend::reduce(ReduceOp op, const Tensor& in, const Tensor& out, int64_t outer,
                        int64_t reduced, int64_t inner, int64_t correction) {
  const char* name = op_name(op);
  check_contiguous(name, "input", in, outer * reduced * inner);
  check_contiguous(name, "out", out, outer * inner);
  if (outer * inner == 0) return;
  const bool index_result = op == ReduceOp::ArgMax;
  if (index_result) {
    FLAME_CHECK(out.dtype() == DType::I64, "argmax: out must be i64, got {}", out.describe());
  }
  if (op == ReduceOp::Max || op == ReduceOp::Min || op == ReduceOp::ArgMax) {
    FLAME_CHECK(reduced > 0,
                "{}: cannot reduce over a dimension of size 0 (input {} viewed as [{}, {}, {}]); "
                "the reduction has no identity",
                name, in.describe(), outer, reduced, inner);
  }
  char* out_data = static_cast<char*>(out.data_ptr());
  const size_t out_size = out.element_size();

  if (is_floating(in.dtype())) {
    const StoreDouble store = double_storer(out.dtype());
    for_each_column<double>(in, outer, reduced, inner, double_loader(in.dtype()),
                            [&](int64_t out_index, const std::vector<double>& column) {
                              char* p = out_data + static_cast<size_t>(out_index) * out_size;
                              if (index_result) {
                                *reinterpret_cast<int64_t*>(p) = first_argmax(column);
                              } else {
                                store(p, float_reduce(op, column, correction));
                              }
                            });
    return;
  }
  FLAME_CHECK(op != ReduceOp::Mean && op != ReduceOp::Var,
              "{}: needs a floating-point input, got {}; convert with to() first", name,
              in.describe());
  const StoreInt store = int_storer(out.dtype());
  for_each_column<int64_t>(in, outer, reduced, inner, int_loader(in.dtype()),
                           [&](int64_t out_index, const std::vector<int64_t>& column) {
                             store(out_data + static_cast<size_t>(out_index) * out_size,
                                   int_reduce(op, column));
                           });
}

void CpuBackend::softmax(const Tensor& in, const Tensor& out, int64_t outer, int64_t reduced,
                         int64_t inner, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_contiguous(name, "input", in, outer * reduced * inner);
  check_contiguous(name, "out", out, outer * reduced * inner);
  FLAME_CHECK(is_floating(in.dtype()) && out.dtype() == in.dtype(),
              "{}: needs a floating-point input and an out of the same dtype, got {} and {}", name,
              in.describe(), out.describe());
  if (reduced == 0) return;
  const StoreDouble store = double_storer(out.dtype());
  char* out_data = static_cast<char*>(out.data_ptr());
  const size_t size = out.element_size();
  std::vector<double> shifted(static_cast<size_t>(reduced));
  for_each_column<double>(
      in, outer, reduced, inner, double_loader(in.dtype()),
      [&](int64_t oi, const std::vector<double>& column) {
        const int64_t o = oi / inner, i = oi % inner;
        const double max = extreme(column, false);
        double sum = 0.0;
        for (int64_t r = 0; r < reduced; ++r) {
          shifted[r] = column[r] - max;
          sum += std::exp(shifted[r]);
        }
        const double log_sum = std::log(sum);
        for (int64_t r = 0; r < reduced; ++r) {
          const double y = log ? shifted[r] - log_sum : std::exp(shifted[r]) / sum;
          store(out_data + static_cast<size_t>((o * reduced + r) * inner + i) * size, y);
        }
      });
}

}  // namespace flame
