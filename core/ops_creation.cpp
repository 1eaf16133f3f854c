// Creation ops: constant fills, ranges, host data, and Philox random draws.
#include <climits>
#include <cmath>
#include <utility>
#include <cstring>

#include "core/backend.h"
#include "core/ops.h"

namespace flame {

Tensor empty(const Shape& shape, TensorOptions options) { return Tensor::empty(shape, options); }
Tensor zeros(const Shape& shape, TensorOptions options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, TensorOptions options) { return full(shape, 1.0, options); }

Tensor full(const Shape& shape, double value, TensorOptions options) {
  return Tensor::empty(shape, options).fill_(value);
}

Tensor arange(double start, double end, double step, TensorOptions options) {
  FLAME_CHECK(step != 0 && std::isfinite(step) && std::isfinite(start) && std::isfinite(end),
              "arange: need finite start, end and a non-zero step, got ({}, {}, {})", start, end, step);
  FLAME_CHECK((end - start) / step >= 0, "arange: step {} goes away from end ({} -> {})", step, start, end);
  const auto n = static_cast<int64_t>(std::ceil((end - start) / step));
  Tensor out = Tensor::empty({n}, options);
  if (n > 0) backend_for(options.device).arange(out, start, step);
  return out;
}

Tensor arange(double end, TensorOptions options) { return arange(0.0, end, 1.0, options); }

template <class T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions options) {
  FLAME_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
              "from_vector: {} values given for shape {} ({} elements)", values.size(), shape_str(shape),
              shape_numel(shape));
  Tensor host = Tensor::empty(shape, TensorOptions(dtype_of<T>(), kCPU));
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  return host.to(options.dtype).to(options.device);
}

template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&, TensorOptions);

namespace {

/// Draws per Note [random stream layout]: `per_counter` elements use one Philox counter.
Tensor draw(RandomKind kind, const Shape& shape, TensorOptions options, Generator* gen, int64_t per_counter,
            int64_t low = 0, int64_t high = 0) {
  Tensor out = Tensor::empty(shape, options);
  const int64_t n = out.numel();
  Generator& g = gen ? *gen : default_generator(options.device);
  const uint64_t offset = g.advance(static_cast<uint64_t>((n + per_counter - 1) / per_counter));
  if (n > 0) backend_for(options.device).random(out, kind, g.seed(), offset, low, high);
  return out;
}

}  // namespace

Tensor rand(const Shape& shape, TensorOptions options, Generator* gen) {
  FLAME_CHECK(is_floating(options.dtype), "rand: expects a floating-point dtype, got {}", dtype_name(options.dtype));
  return draw(RandomKind::Uniform, shape, options, gen, 4);
}

Tensor randn(const Shape& shape, TensorOptions options, Generator* gen) {
  FLAME_CHECK(is_floating(options.dtype), "randn: expects a floating-point dtype, got {}", dtype_name(options.dtype));
  return draw(RandomKind::Normal, shape, options, gen, 2);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions options, Generator* gen) {
  FLAME_CHECK(high > low, "randint: empty range [{}, {})", low, high);
  FLAME_CHECK(static_cast<uint64_t>(high - low) <= (uint64_t{1} << 32),
              "randint: range [{}, {}) is wider than 2^32, which one Philox word cannot cover", low, high);
  FLAME_CHECK(options.dtype != kBool, "randint: bool output is not supported; use u8");
  // Every value of [low, high) must be stored exactly: no wrap (u8 of 300) and no rounding up to
  // `high` (f16 above 2048).
  const auto [least, most] = [&]() -> std::pair<int64_t, int64_t> {
    switch (options.dtype) {
      case DType::U8: return {0, 255};
      case DType::I32: return {INT32_MIN, INT32_MAX};
      case DType::F16: return {-(int64_t{1} << 11), int64_t{1} << 11};
      case DType::BF16: return {-(int64_t{1} << 8), int64_t{1} << 8};
      case DType::F32: return {-(int64_t{1} << 24), int64_t{1} << 24};
      case DType::F64: return {-(int64_t{1} << 53), int64_t{1} << 53};
      default: return {INT64_MIN, INT64_MAX};
    }
  }();
  FLAME_CHECK(low >= least && high - 1 <= most,
              "randint: range [{}, {}) does not fit {} exactly (its exact integers run from {} to {})", low, high,
              dtype_name(options.dtype), least, most);
  return draw(RandomKind::Integer, shape, options, gen, 4, low, high);
}

}  // namespace flame
