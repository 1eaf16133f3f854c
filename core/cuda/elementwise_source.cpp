#include "core/cuda/elementwise_source.h"

#include <fmt/format.h>

#include "core/error.h"

namespace flame::cuda {

namespace {

const char* storage_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float";
    case DType::F64: return "double";
    case DType::F16:
    case DType::BF16: return "unsigned short";
    case DType::I32: return "int";
    case DType::I64: return "long long";
    case DType::U8:
    case DType::Bool: return "unsigned char";
  }
  FLAME_FAIL("elementwise: unknown dtype {}", static_cast<int>(dtype));
}

/// The dtype whose storage type is `dtype`'s compute type.
DType compute_dtype(DType dtype) {
  switch (dtype) {
    case DType::F16:
    case DType::BF16: return DType::F32;
    case DType::U8:
    case DType::Bool: return DType::I32;
    default: return dtype;
  }
}

/// The compute dtype of `key`'s data inputs (see Note [elementwise kernels]).
DType compute_dtype(const EwKernelKey& key) {
  if (key.kind == EwKind::BinaryScalar && !is_floating(key.in)) return key.scalar_f64 ? DType::F64 : DType::I64;
  return compute_dtype(key.in);
}

/// Storage value `s` of `dtype` as the compute type `c_t`.
std::string load(DType dtype, const std::string& s) {
  switch (dtype) {
    case DType::F16: return fmt::format("(c_t)f16_to_f32({})", s);
    case DType::BF16: return fmt::format("(c_t)bf16_to_f32({})", s);
    case DType::Bool: return fmt::format("(c_t)(({}) != 0)", s);
    default: return fmt::format("(c_t)({})", s);
  }
}

/// Value `v` converted and stored as `dtype`; `from_floating` says whether v is float or double.
/// float -> int truncates toward zero and saturates, NaN -> 0 (explicitly: the conversion
/// instructions give the type's minimum for NaN from some source types).
std::string store(DType dtype, const std::string& v, bool from_floating) {
  switch (dtype) {
    case DType::F16: return fmt::format("f32_to_f16(flame_odd_f32({}))", v);
    case DType::BF16: return fmt::format("f32_to_bf16(flame_odd_f32({}))", v);
    case DType::Bool: return fmt::format("(unsigned char)(({}) != 0)", v);
    case DType::U8:
      if (from_floating) return fmt::format("flame_saturate_u8((double)({}))", v);
      return fmt::format("(unsigned char)({})", v);
    case DType::I32:
      if (from_floating) return fmt::format("flame_saturate_i32((double)({}))", v);
      return fmt::format("(int)({})", v);
    case DType::I64:
      if (from_floating) return fmt::format("flame_saturate_i64((double)({}))", v);
      return fmt::format("(long long)({})", v);
    default: return fmt::format("({})({})", storage_type(dtype), v);
  }
}

/// Spelling helpers for float (suffix f) or double math.
struct Math {
  bool is_double;
  std::string fn(const char* name) const { return is_double ? name : std::string(name) + "f"; }
  std::string lit(const char* value) const { return is_double ? value : std::string(value) + "f"; }
};

std::string unary_expr(UnaryOp op, DType dtype) {
  const DType c = compute_dtype(dtype);
  if (c == DType::F32 || c == DType::F64) {
    const Math m{c == DType::F64};
    const std::string one = m.lit("1.0"), zero = m.lit("0.0"), half = m.lit("0.5");
    switch (op) {
      case UnaryOp::Neg: return "-x";
      case UnaryOp::Exp: return m.fn("exp") + "(x)";
      case UnaryOp::Log: return m.fn("log") + "(x)";
      case UnaryOp::Sqrt: return m.fn("sqrt") + "(x)";
      case UnaryOp::Rsqrt: return fmt::format("{} / {}(x)", one, m.fn("sqrt"));
      case UnaryOp::Abs: return m.fn("fabs") + "(x)";
      case UnaryOp::Relu: return fmt::format("((x > {0} || x != x) ? x : {0})", zero);  // NaN stays NaN
      case UnaryOp::Sigmoid: return fmt::format("{0} / ({0} + {1}(-x))", one, m.fn("exp"));
      case UnaryOp::Tanh: return m.fn("tanh") + "(x)";
      case UnaryOp::Gelu:
        return fmt::format("{} * x * ({} + {}(x * {}))", half, one, m.fn("erf"),
                           m.lit("0.70710678118654752440"));
      case UnaryOp::GeluTanh:
        return fmt::format("{} * x * ({} + {}({} * (x + {} * x * x * x)))", half, one, m.fn("tanh"),
                           m.lit("0.79788456080286535588"), m.lit("0.044715"));
      case UnaryOp::Silu: return fmt::format("x / ({} + {}(-x))", one, m.fn("exp"));
      case UnaryOp::Pow: return m.fn("pow") + "(x, p0)";
      case UnaryOp::Clamp: return "flame_clamp(x, p0, p1)";
    }
  } else {
    switch (op) {
      case UnaryOp::Neg: return "-x";
      case UnaryOp::Abs: return "(x < 0 ? -x : x)";
      case UnaryOp::Relu: return "(x > 0 ? x : 0)";
      case UnaryOp::Pow: return "flame_ipow(x, p0)";
      case UnaryOp::Clamp: return "flame_clamp(x, p0, p1)";
      default: break;
    }
  }
  FLAME_FAIL("elementwise unary op #{} is not supported for {} tensors: it needs a floating-point "
             "dtype (f32, f64, f16, bf16); convert with to()", static_cast<int>(op), dtype_name(dtype));
}

std::string binary_expr(BinaryOp op, DType dtype) {
  const DType c = compute_dtype(dtype);
  const bool floating = c == DType::F32 || c == DType::F64;
  const Math m{c == DType::F64};
  switch (op) {
    case BinaryOp::Add: return "a + b";
    case BinaryOp::Sub: return "a - b";
    case BinaryOp::Mul: return "a * b";
    case BinaryOp::Div:
      if (floating) return "a / b";
      break;
    case BinaryOp::Pow: return floating ? m.fn("pow") + "(a, b)" : "flame_ipow(a, b)";
    // NaN propagates: a NaN `a` is taken by a != a, a NaN `b` because the comparison is false.
    case BinaryOp::Maximum: return floating ? "((a > b || a != a) ? a : b)" : "(a > b ? a : b)";
    case BinaryOp::Minimum: return floating ? "((a < b || a != a) ? a : b)" : "(a < b ? a : b)";
    case BinaryOp::Eq: return "a == b";
    case BinaryOp::Ne: return "a != b";
    case BinaryOp::Lt: return "a < b";
    case BinaryOp::Le: return "a <= b";
    case BinaryOp::Gt: return "a > b";
    case BinaryOp::Ge: return "a >= b";
  }
  FLAME_FAIL("elementwise binary op #{} is not supported for {} tensors: it needs a floating-point "
             "dtype (f32, f64, f16, bf16); convert with to()", static_cast<int>(op), dtype_name(dtype));
}

std::string prelude(int arch) {
  std::string src = R"(// FLAME generated elementwise kernel; see Note [elementwise kernels].
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
  return __uint_as_float(((unsigned int)h) << 16);
}
)";
  if (arch >= 80) {
    src += R"(__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
)";
  } else {
    src += R"(__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
  unsigned int x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (unsigned short)(x >> 16);
}
)";
  }
  // float_rounded_to_odd (core/dtype.h) for each compute type: what f16 and bf16 are rounded from.
  src += R"(__device__ __forceinline__ float flame_odd_f32(float v) { return v; }
__device__ __forceinline__ float flame_odd_f32(double v) {
  float r = __double2float_rz(v);
  if (v == v && (double)r != v) r = __uint_as_float(__float_as_uint(r) | 1u);
  return r;
}
__device__ __forceinline__ float flame_odd_f32(long long v) {
  const unsigned long long m = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  const int width = 64 - __clzll(m);
  if (width <= 24) return (float)v;
  const int shift = width - 24;
  unsigned long long kept = m >> shift;
  if ((m & ((1ull << shift) - 1ull)) != 0ull) kept |= 1ull;
  const float r = ldexpf((float)kept, shift);
  return v < 0 ? -r : r;
}
__device__ __forceinline__ float flame_odd_f32(int v) { return flame_odd_f32((long long)v); }
__device__ __forceinline__ float flame_odd_f32(unsigned char v) { return (float)v; }
)";
  src += R"(// Integer power by squaring, wrapping like repeated multiplication; negative exponents give
// the truncated real result (0 unless the base is 1 or -1).
__device__ __forceinline__ long long flame_ipow(long long base, long long e) {
  if (e < 0) return base == 1 ? 1 : (base == -1 ? ((e & 1) ? -1 : 1) : 0);
  unsigned long long result = 1, b = (unsigned long long)base;
  while (e != 0) {
    if (e & 1) result *= b;
    b *= b;
    e >>= 1;
  }
  return (long long)result;
}
// NaN when x or a bound is NaN, else min(max(x, lo), hi).
template <class T>
__device__ __forceinline__ T flame_clamp(T x, T lo, T hi) {
  if (x != x || lo != lo || hi != hi) return x + lo + hi;
  const T r = x < lo ? lo : x;
  return r > hi ? hi : r;
}
// Float -> integer: truncate toward zero, saturate to the type's range, NaN -> 0.
__device__ __forceinline__ unsigned char flame_saturate_u8(double v) {
  if (!(v > 0.0)) return 0;
  return v >= 255.0 ? 255 : (unsigned char)v;
}
__device__ __forceinline__ int flame_saturate_i32(double v) {
  if (v != v) return 0;
  if (v <= -2147483648.0) return (int)0x80000000u;
  return v >= 2147483647.0 ? 2147483647 : (int)v;
}
__device__ __forceinline__ long long flame_saturate_i64(double v) {
  if (v != v) return 0;
  if (v <= -9223372036854775808.0) return (long long)0x8000000000000000ull;
  return v >= 9223372036854775808.0 ? 9223372036854775807ll : (long long)v;
}
template <class T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };
)";
  return src;
}

/// `apply(in0_t s0, ..., p_t p0, p_t p1, idx_t idx)`: one output element from storage inputs.
std::string apply_function(const EwKernelKey& key) {
  const int nin = ew_num_inputs(key.kind);
  std::string params;
  for (int i = 0; i < nin; ++i) params += fmt::format("in{0}_t s{0}, ", i);
  const bool floating = is_floating(compute_dtype(key));
  std::string body;
  switch (key.kind) {
    case EwKind::Unary:
      body = fmt::format("  const c_t x = {};\n  return {};\n", load(key.in, "s0"),
                         store(key.out, unary_expr(static_cast<UnaryOp>(key.op), key.in), floating));
      break;
    case EwKind::Binary:
    case EwKind::BinaryScalar: {
      const auto op = static_cast<BinaryOp>(key.op);
      FLAME_CHECK(!key.scalar_f64 || is_comparison(op), "elementwise: a double scalar is only used "
                  "by comparisons (op #{})", key.op);
      body = fmt::format("  const c_t a = {};\n  const c_t b = {};\n  return {};\n", load(key.in, "s0"),
                         key.kind == EwKind::Binary ? load(key.in, "s1") : "p0",
                         store(key.out, binary_expr(op, key.scalar_f64 ? DType::F64 : key.in), floating));
      break;
    }
    case EwKind::Where: body = "  return s0 ? s1 : s2;\n"; break;
    case EwKind::Copy:
      body = key.in == key.out ? "  return s0;\n"
                               : fmt::format("  return {};\n", store(key.out, load(key.in, "s0"), floating));
      break;
    case EwKind::Fill: body = "  return p0;\n"; break;
    case EwKind::Arange:
      body = fmt::format("  return {};\n", store(key.out, "p0 + (double)idx * p1", true));
      break;
  }
  return fmt::format("__device__ __forceinline__ out_t apply({}p_t p0, p_t p1, idx_t idx) {{\n{}}}\n",
                     params, body);
}

std::string signature(int nin, bool strided) {
  (void)nin;
  return fmt::format(
      "extern \"C\" __global__ void __launch_bounds__({}) {}(out_t* out, const in0_t* in0, "
      "const in1_t* in1, const in2_t* in2, p_t p0, p_t p1, idx_t n{}) {{\n",
      kEwThreads, kEwKernelName, strided ? ", Layout layout" : "");
}

std::string contiguous_frame(const EwKernelKey& key) {
  const int nin = ew_num_inputs(key.kind);
  std::string src = fmt::format("constexpr int VEC = {};\n", key.vec);
  src += signature(nin, false);
  src += "  const idx_t step = (idx_t)gridDim.x * blockDim.x;\n";
  src += "  const idx_t first = (idx_t)blockIdx.x * blockDim.x + threadIdx.x;\n";
  src += "  const idx_t nvec = n / VEC;\n";
  src += "  for (idx_t v = first; v < nvec; v += step) {\n";
  std::string vec_args, scalar_args;
  for (int i = 0; i < nin; ++i) {
    src += fmt::format("    const Pack<in{0}_t, VEC> v{0} = reinterpret_cast<const Pack<in{0}_t, VEC>*>(in{0})[v];\n",
                       i);
    vec_args += fmt::format("v{}.v[j], ", i);
    scalar_args += fmt::format("in{}[i], ", i);
  }
  src += "    Pack<out_t, VEC> r;\n";
  src += "#pragma unroll\n";
  src += fmt::format("    for (int j = 0; j < VEC; ++j) r.v[j] = apply({}p0, p1, v * VEC + j);\n", vec_args);
  src += "    reinterpret_cast<Pack<out_t, VEC>*>(out)[v] = r;\n";
  src += "  }\n";
  src += "  for (idx_t i = nvec * VEC + first; i < n; i += step) ";
  src += fmt::format("out[i] = apply({}p0, p1, i);\n", scalar_args);
  src += "}\n";
  return src;
}

std::string strided_frame(const EwKernelKey& key) {
  const int nin = ew_num_inputs(key.kind);
  const int nops = 1 + nin;
  std::string src = fmt::format("constexpr int NDIM = {};\nconstexpr int NOPS = {};\n", key.ndim, nops);
  src += "struct Layout {\n  idx_t size[NDIM];\n";
  if (!key.wide_index) src += "  unsigned int magic[NDIM];\n  unsigned int shift[NDIM];\n";
  src += "  idx_t stride[NOPS][NDIM];\n};\n";
  src += signature(nin, true);
  src += "  const idx_t step = (idx_t)gridDim.x * blockDim.x;\n";
  src += "  for (idx_t i = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {\n";
  src += "    idx_t rem = i;\n";
  src += "    idx_t off[NOPS];\n";
  src += "#pragma unroll\n    for (int k = 0; k < NOPS; ++k) off[k] = 0;\n";
  src += "#pragma unroll\n    for (int d = NDIM - 1; d > 0; --d) {\n";
  src += key.wide_index ? "      const idx_t q = rem / layout.size[d];\n"
                        : "      const idx_t q = (__umulhi(rem, layout.magic[d]) + rem) >> layout.shift[d];\n";
  src += "      const idx_t c = rem - q * layout.size[d];\n";
  src += "      rem = q;\n";
  src += "#pragma unroll\n      for (int k = 0; k < NOPS; ++k) off[k] += c * layout.stride[k][d];\n";
  src += "    }\n";
  src += "#pragma unroll\n    for (int k = 0; k < NOPS; ++k) off[k] += rem * layout.stride[k][0];\n";
  std::string args;
  for (int i = 0; i < nin; ++i) args += fmt::format("in{}[off[{}]], ", i, i + 1);
  src += fmt::format("    out[off[0]] = apply({}p0, p1, i);\n", args);
  src += "  }\n}\n";
  return src;
}

/// Dtypes of the storage inputs of `key`, in order.
void input_dtypes(const EwKernelKey& key, DType* dtypes) {
  switch (key.kind) {
    case EwKind::Where:
      dtypes[0] = DType::Bool;
      dtypes[1] = dtypes[2] = key.in;
      break;
    default:
      for (int i = 0; i < 3; ++i) dtypes[i] = key.in;
  }
}

}  // namespace

int ew_num_inputs(EwKind kind) {
  switch (kind) {
    case EwKind::Unary:
    case EwKind::BinaryScalar:
    case EwKind::Copy: return 1;
    case EwKind::Binary: return 2;
    case EwKind::Where: return 3;
    case EwKind::Fill:
    case EwKind::Arange: return 0;
  }
  return 0;
}

DType ew_param_dtype(const EwKernelKey& key) {
  switch (key.kind) {
    case EwKind::Unary:
    case EwKind::BinaryScalar: return compute_dtype(key);
    case EwKind::Fill: return key.out;
    default: return DType::F64;
  }
}

std::string ew_kernel_source(const EwKernelKey& key, int arch) {
  FLAME_CHECK(key.ndim <= 8, "elementwise kernel over {} dims: at most 8 are supported", key.ndim);
  FLAME_CHECK(key.ndim != 0 || (key.vec >= 1 && key.vec <= 16 && (key.vec & (key.vec - 1)) == 0),
              "elementwise kernel: vector width {} is not a power of two up to 16", key.vec);
  const int nin = ew_num_inputs(key.kind);
  DType in_dtypes[3];
  input_dtypes(key, in_dtypes);
  std::string src = prelude(arch);
  src += fmt::format("typedef {} idx_t;\n", key.wide_index ? "long long" : "unsigned int");
  src += fmt::format("typedef {} out_t;\n", storage_type(key.out));
  for (int i = 0; i < 3; ++i)
    src += fmt::format("typedef {} in{}_t;\n", i < nin ? storage_type(in_dtypes[i]) : "unsigned char", i);
  src += fmt::format("typedef {} c_t;\n", storage_type(compute_dtype(key)));
  src += fmt::format("typedef {} p_t;\n", storage_type(ew_param_dtype(key)));
  src += apply_function(key);
  src += key.ndim == 0 ? contiguous_frame(key) : strided_frame(key);
  return src;
}

FastDivider ew_fast_divider(uint32_t divisor) {
  FLAME_CHECK(divisor >= 1 && divisor < (1u << 31), "fast divider: divisor {} out of [1, 2^31)", divisor);
  uint32_t shift = 0;
  while ((uint64_t{1} << shift) < divisor) ++shift;
  const uint64_t magic = ((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1;
  return FastDivider{static_cast<uint32_t>(magic), shift};
}

}  // namespace flame::cuda
