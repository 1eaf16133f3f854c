// index_select, gather and scatter_add. Every index is validated before anything is written.
#include <cstring>
#include <string>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_common.h"

namespace flame {

using namespace cpu;

namespace {

void check_index_dtype(const char* op, const Tensor& index) {
  FLAME_CHECK(index.dtype() == DType::I64 || index.dtype() == DType::I32,
              "{}: index must be i64 or i32, got {}", op, index.describe());
}

// `dim` < 0: the caller's dimension is not known here (index_select sees [outer, size, inner]).
void check_in_range(const char* op, int64_t value, int64_t size, int64_t dim) {
  FLAME_CHECK(value >= 0 && value < size,
              "{}: index {} is out of range for {} of size {} (valid range [0, {}))", op, value,
              dim < 0 ? std::string("the selected dimension") : fmt::format("dimension {}", dim),
              size, size);
}

// A tensor's shape and strides with 0-d tensors seen as [1].
struct Dims {
  Shape shape;
  Strides strides;
  explicit Dims(const Tensor& t)
      : shape(t.dim() == 0 ? Shape{1} : t.shape()),
        strides(t.dim() == 0 ? Strides{1} : t.strides()) {}
  int64_t offset(const std::vector<int64_t>& coords) const {
    int64_t result = 0;
    for (size_t d = 0; d < coords.size(); ++d) result += coords[d] * strides[d];
    return result;
  }
};

// Calls fn(coords) for every multi-index of `shape` in row-major order.
template <class Fn>
void for_each_coord(const Shape& shape, Fn&& fn) {
  if (shape_numel(shape) == 0) return;
  std::vector<int64_t> coords(shape.size(), 0);
  while (true) {
    fn(coords);
    int d = static_cast<int>(shape.size()) - 1;
    for (; d >= 0; --d) {
      if (++coords[d] < shape[d]) break;
      coords[d] = 0;
    }
    if (d < 0) return;
  }
}

// The shape checks torch.gather / scatter_add make: equal ranks, index within `data` (and
// within `src` when given) in every dimension but `dim` (in every dimension for src).
void check_index_shape(const char* op, const Dims& data, const Dims& index, const Dims* src,
                       int64_t dim, const Tensor& data_t, const Tensor& index_t) {
  FLAME_CHECK(data.shape.size() == index.shape.size(),
              "{}: index must have as many dims as the input, got {} and {}", op,
              index_t.describe(), data_t.describe());
  FLAME_CHECK(dim >= 0 && dim < static_cast<int64_t>(data.shape.size()),
              "{}: dim {} out of range for {}", op, dim, data_t.describe());
  for (size_t d = 0; d < index.shape.size(); ++d) {
    FLAME_CHECK(static_cast<int64_t>(d) == dim || index.shape[d] <= data.shape[d],
                "{}: index {} is larger than the input {} in dimension {}", op, index_t.describe(),
                data_t.describe(), d);
    if (src != nullptr) {
      FLAME_CHECK(src->shape.size() == index.shape.size() && index.shape[d] <= src->shape[d],
                  "{}: index {} is larger than src (shape {}) in dimension {}", op,
                  index_t.describe(), shape_str(src->shape), d);
    }
  }
}

}  // namespace

void CpuBackend::index_select(const Tensor& in, const Tensor& index, const Tensor& out,
                              int64_t outer, int64_t in_size, int64_t inner) {
  check_index_dtype("index_select", index);
  FLAME_CHECK(index.dim() == 1, "index_select: index must be 1-D, got {}", index.describe());
  FLAME_CHECK(in.dtype() == out.dtype(),
              "index_select: out must have the input's dtype, got {} and {}", in.describe(),
              out.describe());
  const int64_t n = index.size(0);
  check_contiguous("index_select", "input", in, outer * in_size * inner);
  check_contiguous("index_select", "out", out, outer * n * inner);
  const LoadInt load = int_loader(index.dtype());
  const char* index_data = static_cast<const char*>(index.data_ptr());
  const int64_t index_step = index.stride(0) * static_cast<int64_t>(index.element_size());
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    rows[j] = load(index_data + j * index_step);
    check_in_range("index_select", rows[j], in_size, -1);
  }
  if (outer * n * inner == 0) return;
  const size_t row_bytes = static_cast<size_t>(inner) * in.element_size();
  const char* src = static_cast<const char*>(in.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(dst + static_cast<size_t>(o * n + j) * row_bytes,
                  src + static_cast<size_t>(o * in_size + rows[j]) * row_bytes, row_bytes);
    }
  }
}

void CpuBackend::gather(const Tensor& in, int64_t dim, const Tensor& index, const Tensor& out) {
  check_index_dtype("gather", index);
  FLAME_CHECK(
      out.shape() == index.shape() && out.dtype() == in.dtype(),
      "gather: out must have the index's shape and the input's dtype, got out {}, index {}, "
      "input {}",
      out.describe(), index.describe(), in.describe());
  const Dims in_dims(in), index_dims(index), out_dims(out);
  check_index_shape("gather", in_dims, index_dims, nullptr, dim, in, index);
  const LoadInt load = int_loader(index.dtype());
  const char* index_data = static_cast<const char*>(index.data_ptr());
  const size_t index_size = index.element_size();
  for_each_coord(index_dims.shape, [&](const std::vector<int64_t>& c) {
    check_in_range("gather", load(index_data + index_dims.offset(c) * index_size),
                   in_dims.shape[dim], dim);
  });
  const char* src = static_cast<const char*>(in.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const size_t size = in.element_size();
  std::vector<int64_t> source(index_dims.shape.size());
  for_each_coord(index_dims.shape, [&](const std::vector<int64_t>& c) {
    source = c;
    source[dim] = load(index_data + index_dims.offset(c) * index_size);
    std::memcpy(dst + out_dims.offset(c) * size, src + in_dims.offset(source) * size, size);
  });
}

void CpuBackend::scatter_add(const Tensor& out, int64_t dim, const Tensor& index,
                             const Tensor& src) {
  check_index_dtype("scatter_add", index);
  FLAME_CHECK(src.dtype() == out.dtype(),
              "scatter_add: src must have the input's dtype, got {} and {}", src.describe(),
              out.describe());
  const Dims out_dims(out), index_dims(index), src_dims(src);
  check_index_shape("scatter_add", out_dims, index_dims, &src_dims, dim, out, index);
  const LoadInt load_index = int_loader(index.dtype());
  const char* index_data = static_cast<const char*>(index.data_ptr());
  const size_t index_size = index.element_size();
  for_each_coord(index_dims.shape, [&](const std::vector<int64_t>& c) {
    check_in_range("scatter_add", load_index(index_data + index_dims.offset(c) * index_size),
                   out_dims.shape[dim], dim);
  });
  const char* src_data = static_cast<const char*>(src.data_ptr());
  char* out_data = static_cast<char*>(out.data_ptr());
  const size_t size = out.element_size();
  std::vector<int64_t> target(index_dims.shape.size());
  // Accumulates one element at a time in index order (deterministic), rounding after each add.
  auto scatter = [&](auto load, auto store, auto add) {
    for_each_coord(index_dims.shape, [&](const std::vector<int64_t>& c) {
      target = c;
      target[dim] = load_index(index_data + index_dims.offset(c) * index_size);
      char* p = out_data + out_dims.offset(target) * size;
      store(p, add(load(p), load(src_data + src_dims.offset(c) * size)));
    });
  };
  if (is_floating(out.dtype())) {
    scatter(double_loader(out.dtype()), double_storer(out.dtype()),
            [](double a, double b) { return a + b; });
  } else {
    scatter(int_loader(out.dtype()), int_storer(out.dtype()), [](int64_t a, int64_t b) {
      return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
    });
  }
}

}  // namespace flame
