// Helpers shared by the CPU backend's files: per-dtype element load/store functions (resolved
// once per call, see Note [cpu numerics] in core/cpu/cpu_backend.h) and an N-d strided iterator.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "core/backend.h"
#include "core/tensor.h"

namespace flame::cpu {

/// Reads one element of some dtype as double (exact for every dtype but i64 beyond 2^53).
using LoadDouble = double (*)(const char* p);
/// Writes a double into one element: floats round to nearest even, integers per double_to_int64
/// then saturate to the type's range, bool stores value != 0.
using StoreDouble = void (*)(char* p, double value);
/// Reads one element as int64 (floats through double_to_int64).
using LoadInt = int64_t (*)(const char* p);
/// Writes an int64 into one element: integers wrap to the type's width, bool stores value != 0,
/// floats convert (rounding to nearest).
using StoreInt = void (*)(char* p, int64_t value);

LoadDouble double_loader(DType dtype);
StoreDouble double_storer(DType dtype);
LoadInt int_loader(DType dtype);
StoreInt int_storer(DType dtype);

/// Truncates toward zero, saturating at the int64 range; NaN -> 0.
int64_t double_to_int64(double value);
/// True when `value` is finite, integral and within the int64 range.
bool is_int64_value(double value);

/// Raises flame::Error naming `op` unless `t` is row-major contiguous with `numel` elements.
void check_contiguous(const char* op, const char* what, const Tensor& t, int64_t numel);

/// Dimensions and per-operand byte strides of N same-shaped tensors, with size-1 dimensions
/// dropped and dimensions merged where every operand is contiguous across them.
template <size_t N>
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t byte_strides[N][kMaxDims] = {};
  std::array<char*, N> base{};
};

/// Builds the layout of `tensors` (all of one shape, else flame::Error naming `op`).
template <size_t N>
StridedLayout<N> make_layout(const char* op, const std::array<const Tensor*, N>& tensors) {
  const Shape& shape = tensors[0]->shape();
  StridedLayout<N> layout;
  for (size_t k = 0; k < N; ++k) {
    FLAME_CHECK(tensors[k]->shape() == shape, "{}: operand {} is {} but operand 0 is {}", op, k,
                tensors[k]->describe(), tensors[0]->describe());
    layout.base[k] = static_cast<char*>(tensors[k]->data_ptr());
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = layout.ndim > 0;
    for (size_t k = 0; k < N && merge; ++k) {
      const int64_t stride =
          tensors[k]->strides()[d] * static_cast<int64_t>(tensors[k]->element_size());
      merge = layout.byte_strides[k][layout.ndim - 1] == stride * shape[d];
    }
    if (merge) {
      layout.sizes[layout.ndim - 1] *= shape[d];
      for (size_t k = 0; k < N; ++k) {
        layout.byte_strides[k][layout.ndim - 1] =
            tensors[k]->strides()[d] * static_cast<int64_t>(tensors[k]->element_size());
      }
      continue;
    }
    layout.sizes[layout.ndim] = shape[d];
    for (size_t k = 0; k < N; ++k) {
      layout.byte_strides[k][layout.ndim] =
          tensors[k]->strides()[d] * static_cast<int64_t>(tensors[k]->element_size());
    }
    ++layout.ndim;
  }
  return layout;
}

/// Calls fn(p) for every element in row-major order, where p[k] points at operand k's element.
/// Tensors share one shape; any strides (0 where broadcast). Nothing happens for numel 0.
template <size_t N, class Fn>
void for_each_element(const char* op, const std::array<const Tensor*, N>& tensors, Fn&& fn) {
  if (tensors[0]->numel() == 0) {
    for (size_t k = 1; k < N; ++k) {
      FLAME_CHECK(tensors[k]->shape() == tensors[0]->shape(),
                  "{}: operand {} is {} but operand 0 is {}", op, k, tensors[k]->describe(),
                  tensors[0]->describe());
    }
    return;
  }
  const StridedLayout<N> layout = make_layout<N>(op, tensors);
  std::array<char*, N> p = layout.base;
  if (layout.ndim == 0) {
    fn(p);
    return;
  }
  const int last = layout.ndim - 1;
  int64_t index[kMaxDims] = {};
  std::array<char*, N> row = layout.base;
  while (true) {
    p = row;
    for (int64_t i = 0; i < layout.sizes[last]; ++i) {
      fn(p);
      for (size_t k = 0; k < N; ++k) p[k] += layout.byte_strides[k][last];
    }
    int d = last - 1;
    for (; d >= 0; --d) {
      ++index[d];
      for (size_t k = 0; k < N; ++k) row[k] += layout.byte_strides[k][d];
      if (index[d] < layout.sizes[d]) break;
      for (size_t k = 0; k < N; ++k) row[k] -= layout.byte_strides[k][d] * layout.sizes[d];
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

}  // namespace flame::cpu
