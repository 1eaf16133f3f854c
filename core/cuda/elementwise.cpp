// Host launchers of the generated elementwise kernels (Note [elementwise kernels]).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "core/cuda/elementwise_source.h"
#include "core/cuda/internal.h"
#include "core/cuda/launchers.h"
#include "core/cuda/nvrtc.h"

namespace flame::cuda {

namespace {

constexpr int kMaxOperands = 4;  // out + up to 3 inputs
constexpr int64_t kNarrowLimit = int64_t{1} << 31;

/// A kernel scalar argument; the kernel reads as many bytes as its p_t has (all members start at
/// the union's address).
union Scalar {
  double f64;
  float f32;
  int64_t i64;
  int32_t i32;
  uint16_t u16;
  uint8_t u8;
};

template <class T>
T saturate(double value) {
  if (std::isnan(value)) return 0;
  if (value <= static_cast<double>(std::numeric_limits<T>::min())) return std::numeric_limits<T>::min();
  if (value >= static_cast<double>(std::numeric_limits<T>::max())) return std::numeric_limits<T>::max();
  return static_cast<T>(value);
}

/// `value` stored as `dtype`: integers truncate and saturate (NaN -> 0), as the CPU reference.
Scalar to_scalar(DType dtype, double value) {
  Scalar s;
  s.i64 = 0;
  switch (dtype) {
    case DType::F32: s.f32 = static_cast<float>(value); break;
    case DType::F64: s.f64 = value; break;
    case DType::F16: s.u16 = float_to_half_bits(float_rounded_to_odd(value)); break;
    case DType::BF16: s.u16 = float_to_bf16_bits(float_rounded_to_odd(value)); break;
    case DType::I32: s.i32 = saturate<int32_t>(value); break;
    case DType::I64: s.i64 = saturate<int64_t>(value); break;
    case DType::U8: s.u8 = saturate<uint8_t>(value); break;
    case DType::Bool: s.u8 = value != 0.0 ? 1 : 0; break;
  }
  return s;
}

/// The iteration space after dropping size-1 dims and merging neighbours that every operand
/// traverses as one (outermost first); strides in elements, operand 0 is out.
struct Geometry {
  int ndim = 0;
  int64_t size[kMaxDims];
  int64_t stride[kMaxOperands][kMaxDims];
};

Geometry collapse(const Shape& shape, int nops, const Tensor* const* operands) {
  int64_t size[kMaxDims];
  int64_t stride[kMaxOperands][kMaxDims];
  int n = 0;  // collected dims, innermost first
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    bool merge = n > 0;
    for (int k = 0; k < nops && merge; ++k)
      merge = operands[k]->strides()[d] == stride[k][n - 1] * size[n - 1];
    if (merge) {
      size[n - 1] *= shape[d];
      continue;
    }
    size[n] = shape[d];
    for (int k = 0; k < nops; ++k) stride[k][n] = operands[k]->strides()[d];
    ++n;
  }
  Geometry g;
  g.ndim = n;
  for (int i = 0; i < n; ++i) {
    g.size[i] = size[n - 1 - i];
    for (int k = 0; k < nops; ++k) g.stride[k][i] = stride[k][n - 1 - i];
  }
  return g;
}

bool all_contiguous(const Geometry& g, int nops) {
  if (g.ndim == 0) return true;
  if (g.ndim > 1) return false;
  for (int k = 0; k < nops; ++k)
    if (g.stride[k][0] != 1) return false;
  return true;
}

struct KernelCache {
  std::mutex mutex;
  uint64_t generation = 0;
  std::unordered_map<uint64_t, cudaKernel_t> kernels;
};

cudaKernel_t kernel_for(const EwKernelKey& key, const DeviceContext& ctx) {
  static auto* cache = new KernelCache();  // never destroyed
  const uint64_t packed = key.pack(ctx.device);
  const uint64_t generation = kernel_cache_generation();
  {
    std::lock_guard<std::mutex> lock(cache->mutex);
    if (cache->generation != generation) {
      cache->kernels.clear();
      cache->generation = generation;
    }
    if (const auto found = cache->kernels.find(packed); found != cache->kernels.end()) return found->second;
  }
  const cudaKernel_t kernel = runtime_kernel(ew_kernel_source(key, ctx.arch), kEwKernelName, ctx.device);
  std::lock_guard<std::mutex> lock(cache->mutex);
  cache->kernels.emplace(packed, kernel);
  return kernel;
}

unsigned int grid_size(const DeviceContext& ctx, int64_t work_items) {
  const int64_t resident = int64_t{ctx.properties.multiProcessorCount} *
                           (ctx.properties.maxThreadsPerMultiProcessor / kEwThreads);
  const int64_t blocks = (work_items + kEwThreads - 1) / kEwThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(blocks, resident * 4)));
}

/// Launches the kernel of `key` (kind, op, in, scalar_f64 set; the rest is filled here) over out and
/// `inputs` (already of out's shape, Note [backend contract]).
void launch(DeviceContext& ctx, const char* name, EwKernelKey key, const Tensor& out,
            std::initializer_list<const Tensor*> inputs, Scalar p0, Scalar p1) {
  const Tensor* operands[kMaxOperands] = {&out, nullptr, nullptr, nullptr};
  int nops = 1;
  const Shape& shape = out.shape();
  FLAME_CHECK(out.device() == cuda_device(ctx.device), "{}: out is on {}, expected cuda:{}", name,
              out.device().str(), ctx.device);
  FLAME_CHECK(out.dim() <= kMaxDims, "{}: {} dims, at most {} are supported", name, out.dim(), kMaxDims);
  for (const Tensor* input : inputs) {
    FLAME_CHECK(input->shape() == shape, "{}: input {} does not have out's shape {} (inputs must be "
                "expanded first)", name, input->describe(), shape_str(shape));
    FLAME_CHECK(input->device() == out.device(), "{}: input {} is not on {}", name, input->describe(),
                out.device().str());
    operands[nops++] = input;
  }
  const int64_t n = out.numel();
  if (n == 0) return;

  const Geometry g = collapse(shape, nops, operands);
  key.out = out.dtype();
  void* pointers[kMaxOperands] = {out.data_ptr(), nullptr, nullptr, nullptr};
  for (int k = 1; k < nops; ++k) pointers[k] = operands[k]->data_ptr();

  // Layout buffer of the strided kernels (see Note [elementwise kernels]); sized for the wide form.
  int64_t layout[kMaxDims * (1 + kMaxOperands)];
  int64_t work_items = n;
  if (all_contiguous(g, nops)) {
    if (key.kind == EwKind::Copy && key.in == out.dtype()) {
      if (pointers[0] == pointers[1]) return;
      FLAME_CUDA_CHECK(cudaMemcpyAsync(pointers[0], pointers[1], out.nbytes(), cudaMemcpyDeviceToDevice,
                                       ctx.stream));
      return;
    }
    size_t widest = 0;
    for (int k = 0; k < nops; ++k) widest = std::max(widest, operands[k]->element_size());
    int vec = static_cast<int>(16 / widest);
    for (bool aligned = false; !aligned && vec > 1;) {
      aligned = true;
      for (int k = 0; k < nops; ++k)
        aligned = aligned && reinterpret_cast<uintptr_t>(pointers[k]) % (operands[k]->element_size() * vec) == 0;
      if (!aligned) vec /= 2;
    }
    key.vec = static_cast<uint8_t>(vec);
    key.wide_index = n >= kNarrowLimit;
    work_items = (n + vec - 1) / vec;
  } else {
    key.ndim = static_cast<uint8_t>(g.ndim);
    bool wide = n >= kNarrowLimit;
    for (int k = 0; k < nops && !wide; ++k) {
      int64_t last = 0;
      for (int d = 0; d < g.ndim; ++d) last += (g.size[d] - 1) * g.stride[k][d];
      wide = last >= kNarrowLimit;
    }
    key.wide_index = wide;
    if (wide) {
      int64_t* p = layout;
      for (int d = 0; d < g.ndim; ++d) *p++ = g.size[d];
      for (int k = 0; k < nops; ++k)
        for (int d = 0; d < g.ndim; ++d) *p++ = g.stride[k][d];
    } else {
      auto* p = reinterpret_cast<uint32_t*>(layout);
      for (int d = 0; d < g.ndim; ++d) p[d] = static_cast<uint32_t>(g.size[d]);
      for (int d = 0; d < g.ndim; ++d) {
        const FastDivider divider = ew_fast_divider(static_cast<uint32_t>(g.size[d]));
        p[g.ndim + d] = divider.magic;
        p[2 * g.ndim + d] = divider.shift;
      }
      p += 3 * g.ndim;
      for (int k = 0; k < nops; ++k)
        for (int d = 0; d < g.ndim; ++d) *p++ = static_cast<uint32_t>(g.stride[k][d]);
    }
  }

  const cudaKernel_t kernel = kernel_for(key, ctx);
  uint32_t n_narrow = static_cast<uint32_t>(n);
  int64_t n_wide = n;
  void* args[] = {&pointers[0], &pointers[1], &pointers[2], &pointers[3], &p0, &p1,
                  key.wide_index ? static_cast<void*>(&n_wide) : static_cast<void*>(&n_narrow), layout};
  FLAME_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(grid_size(ctx, work_items)),
                                    dim3(kEwThreads), args, 0, ctx.stream));
  FLAME_CUDA_LAUNCH_CHECK();
}

EwKernelKey make_key(EwKind kind, uint8_t op, DType in) {
  EwKernelKey key;
  key.kind = kind;
  key.op = op;
  key.in = in;
  return key;
}

Scalar unused() { return to_scalar(DType::F64, 0.0); }

bool is_int64_value(double value) {
  return std::isfinite(value) && value == std::trunc(value) && value >= -9223372036854775808.0 &&
         value < 9223372036854775808.0;
}

/// An integer clamp bound: an integral value, or +-inf for "no bound" (saturates to the type).
void check_int_clamp_bound(double bound, const Tensor& in) {
  FLAME_CHECK(std::isinf(bound) || is_int64_value(bound),
              "clamp: bound {} is not an integer but the input is {}; convert it to a floating dtype "
              "with to() first", bound, in.describe());
}

}  // namespace

void launch_unary(DeviceContext& ctx, UnaryOp op, const Tensor& in, const Tensor& out, double p0, double p1) {
  FLAME_CHECK(in.dtype() == out.dtype(), "unary op: in is {} but out is {}", dtype_name(in.dtype()),
              dtype_name(out.dtype()));
  if (!is_floating(in.dtype())) {
    if (op == UnaryOp::Pow)
      FLAME_CHECK(is_int64_value(p0) && p0 >= 0, "pow: integer tensors ({}) take non-negative integer "
                  "exponents, got {}", in.describe(), p0);
    if (op == UnaryOp::Clamp) {
      check_int_clamp_bound(p0, in);
      check_int_clamp_bound(p1, in);
    }
  }
  const EwKernelKey key = make_key(EwKind::Unary, static_cast<uint8_t>(op), in.dtype());
  const DType param = ew_param_dtype(key);
  launch(ctx, "unary op", key, out, {&in}, to_scalar(param, p0), to_scalar(param, p1));
}

void launch_binary(DeviceContext& ctx, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  FLAME_CHECK(a.dtype() == b.dtype(), "binary op: operands are {} and {}; they must share a dtype",
              dtype_name(a.dtype()), dtype_name(b.dtype()));
  const DType expected = is_comparison(op) ? DType::Bool : a.dtype();
  FLAME_CHECK(out.dtype() == expected, "binary op: out is {}, expected {}", dtype_name(out.dtype()),
              dtype_name(expected));
  launch(ctx, "binary op", make_key(EwKind::Binary, static_cast<uint8_t>(op), a.dtype()), out, {&a, &b},
         unused(), unused());
}

void launch_binary_scalar(DeviceContext& ctx, BinaryOp op, const Tensor& a, double scalar, const Tensor& out) {
  const DType expected = is_comparison(op) ? DType::Bool : a.dtype();
  FLAME_CHECK(out.dtype() == expected, "binary op with a scalar: out is {}, expected {}",
              dtype_name(out.dtype()), dtype_name(expected));
  EwKernelKey key = make_key(EwKind::BinaryScalar, static_cast<uint8_t>(op), a.dtype());
  if (!is_floating(a.dtype()) && !is_int64_value(scalar)) {
    FLAME_CHECK(is_comparison(op), "binary op with a scalar: scalar {} is not an integer but the tensor "
                "is {}; convert it to a floating dtype with to() first", scalar, a.describe());
    key.scalar_f64 = true;
  }
  launch(ctx, "binary op with a scalar", key, out, {&a}, to_scalar(ew_param_dtype(key), scalar), unused());
}

void launch_where(DeviceContext& ctx, const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  FLAME_CHECK(cond.dtype() == DType::Bool, "where: cond is {}, expected bool", dtype_name(cond.dtype()));
  FLAME_CHECK(a.dtype() == b.dtype() && a.dtype() == out.dtype(),
              "where: a, b and out must share a dtype (got {}, {}, {})", dtype_name(a.dtype()),
              dtype_name(b.dtype()), dtype_name(out.dtype()));
  launch(ctx, "where", make_key(EwKind::Where, 0, a.dtype()), out, {&cond, &a, &b}, unused(), unused());
}

void launch_copy(DeviceContext& ctx, const Tensor& src, const Tensor& out) {
  launch(ctx, "copy", make_key(EwKind::Copy, 0, src.dtype()), out, {&src}, unused(), unused());
}

void launch_fill(DeviceContext& ctx, const Tensor& out, double value) {
  const Scalar pattern = to_scalar(out.dtype(), value);
  const size_t element = out.element_size();
  if (out.is_contiguous() && out.numel() > 0) {
    unsigned char bytes[8];
    std::memcpy(bytes, &pattern, element);
    bool uniform = true;
    for (size_t i = 1; i < element; ++i) uniform = uniform && bytes[i] == bytes[0];
    if (uniform) {
      FLAME_CHECK(out.device() == cuda_device(ctx.device), "fill: out is on {}, expected cuda:{}",
                  out.device().str(), ctx.device);
      FLAME_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), bytes[0], out.nbytes(), ctx.stream));
      return;
    }
  }
  launch(ctx, "fill", make_key(EwKind::Fill, 0, out.dtype()), out, {}, pattern, unused());
}

void launch_arange(DeviceContext& ctx, const Tensor& out, double start, double step) {
  FLAME_CHECK(out.dim() == 1 && out.is_contiguous(), "arange: out {} must be 1-D and contiguous",
              out.describe());
  launch(ctx, "arange", make_key(EwKind::Arange, 0, out.dtype()), out, {}, to_scalar(DType::F64, start),
         to_scalar(DType::F64, step));
}

}  // namespace flame::cuda
