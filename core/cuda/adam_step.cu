// One Adam / AdamW step over many parameters in one kernel launch (Note [fused adam] in
// core/fused.h), computed in float (f32, f16, bf16) or double (f64).
//
// The launch's tensors are viewed as one concatenation of their elements: the kernel argument
// (a __grid_constant__ struct, read in place from the parameter bank) holds each tensor's four
// pointers and its first element's offset in that concatenation. Block b updates elements
// [b * kChunk, (b + 1) * kChunk), which may span several tensors. Tensors of other dtypes, and
// more than kMaxTensors tensors, go to further launches. A tensor with gradient slots (Note
// [gradient slots]; f32 only, the host refuses others) reads them instead of its grad and writes
// their mean into the grad before using it.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <cmath>

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

// Tensors per launch: the kernel's arguments (about 3.6 KiB) stay under the 4 KiB classic limit.
constexpr int kMaxTensors = 52;
constexpr int kThreads = 256;
constexpr int64_t kChunk = 8 * kThreads;  // elements per block

struct AdamTensor {
  void* param;  // [numel] each, of the launch's dtype
  void* grad;   // read; written with the slots' mean where slots is set
  void* exp_avg;
  void* exp_avg_sq;
  const uint16_t* slots = nullptr;  // [slot_rows, slot_stride] bf16 bits, numel of each row used; or nullptr
  int64_t slot_stride = 0;          // elements from one row of slots to the next
  int slot_rows = 0;                // W
  float slot_scale = 0.0f;
  bool write_mean = true;  // store the slots' mean into grad (GradientSlots::write_mean)
};

struct AdamLaunch {
  AdamTensor tensors[kMaxTensors];
  int64_t starts[kMaxTensors + 1];  // offset of tensor k's first element; starts[count] = total
  int count;
};

template <class C>
struct AdamScalars {
  C beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  C weight_decay;  // L2 only
  C decay_factor;  // Decoupled only: 1 - lr * weight_decay
  C step_size;     // lr / bias_correction1
  C sqrt_bc2;      // sqrt(bias_correction2)
  bool l2, decoupled;
};

// The kernel's arguments, both together, within the classic 4 KiB (double scalars: the larger).
static_assert(sizeof(AdamLaunch) + sizeof(AdamScalars<double>) <= 4096, "lower kMaxTensors");

/// A bf16 bit pattern as float (exact).
__device__ __forceinline__ float float_of_bf16_bits(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

/// `x` rounded to bf16, to nearest even, NaN kept quiet: the bits of float_to_bf16_bits
/// (core/dtype.cpp), on purpose not cuda_bf16.h's conversion, whose NaN differs.
__device__ __forceinline__ float round_to_bf16(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(((u >> 16) | 0x40u) << 16);
  u += 0x7fffu + ((u >> 16) & 1u);
  return __uint_as_float(u & 0xffff0000u);
}

// Products and sums rounded as written (division and sqrt are IEEE-rounded already: no
// --use_fast_math). Left to itself nvcc contracted the update into fmas one way in the loop over
// slots and another in the loop over grads, and the two updates differed in the last bit.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

/// bf16_round(((s_0 + s_1) + ... + s_{W-1}) * scale) of element i (Note [gradient slots]), each
/// add and the multiply a separately rounded float operation.
__device__ __forceinline__ float slot_mean(const AdamTensor& t, int64_t i) {
  const uint16_t* row = t.slots + i;
  float sum = float_of_bf16_bits(row[0]);
  for (int w = 1; w < t.slot_rows; ++w) sum = add_rn(sum, float_of_bf16_bits(row[w * t.slot_stride]));
  return round_to_bf16(mul_rn(sum, t.slot_scale));
}

/// The update of one element from its gradient, in compute type C (Note [fused adam]), given the
/// element's loaded parameter and state, with every rounding spelled out, so that it is the same
/// wherever it is inlined: the update from slots equals bit for bit the one that reads their mean
/// (Note [gradient slots]).
template <class T, class C = compute_t<T>>
__device__ __forceinline__ void update_element(const AdamScalars<C>& s, C param, C m_old, C v_old, C grad, T* p, T* m,
                                               T* v, int64_t i) {
  if (s.l2) grad = fma_rn(s.weight_decay, param, grad);
  if (s.decoupled) param = mul_rn(param, s.decay_factor);
  const C m_new = fma_rn(s.beta1, m_old, mul_rn(s.one_minus_beta1, grad));
  const C v_new = fma_rn(s.beta2, v_old, mul_rn(mul_rn(s.one_minus_beta2, grad), grad));
  param = fma_rn(-s.step_size, m_new / add_rn(sqrt(v_new) / s.sqrt_bc2, s.eps), param);
  m[i] = from_compute<T>(m_new);
  v[i] = from_compute<T>(v_new);
  p[i] = from_compute<T>(param);
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    adam_step_kernel(const __grid_constant__ AdamLaunch launch, const AdamScalars<compute_t<T>> s) {
  using C = compute_t<T>;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, launch.starts[launch.count]);
  int k = 0;
  while (launch.starts[k + 1] <= begin) ++k;  // the first tensor with elements in [begin, end)
  for (; k < launch.count && launch.starts[k] < end; ++k) {
    const AdamTensor& t = launch.tensors[k];
    const int64_t base = launch.starts[k];
    const int64_t first = max(begin, base) - base + threadIdx.x;
    const int64_t hi = min(end, launch.starts[k + 1]) - base;
    T* p = static_cast<T*>(t.param);
    T* g = static_cast<T*>(t.grad);
    T* m = static_cast<T*>(t.exp_avg);
    T* v = static_cast<T*>(t.exp_avg_sq);
    // Every load of an element is issued before any arithmetic on loaded values: warps issue in
    // order, so an add waiting for a load would hold back the loads written after it, and the
    // element would wait for memory twice.
    if (t.slots != nullptr && t.slot_rows == 2) {  // two ranks: straight-line code, one block of loads
      const uint16_t* second = t.slots + t.slot_stride;
      for (int64_t i = first; i < hi; i += kThreads) {
        const uint16_t a = t.slots[i], b = second[i];
        const C param = to_compute(p[i]), m_old = to_compute(m[i]), v_old = to_compute(v[i]);
        // The mean as it is stored (exact: f32 is the only dtype given slots).
        const float mean = round_to_bf16(mul_rn(add_rn(float_of_bf16_bits(a), float_of_bf16_bits(b)), t.slot_scale));
        const C grad = to_compute(from_compute<T>(static_cast<C>(mean)));
        if (t.write_mean) g[i] = from_compute<T>(grad);
        update_element(s, param, m_old, v_old, grad, p, m, v, i);
      }
    } else if (t.slots != nullptr) {
      for (int64_t i = first; i < hi; i += kThreads) {
        const C param = to_compute(p[i]), m_old = to_compute(m[i]), v_old = to_compute(v[i]);
        const C grad = to_compute(from_compute<T>(static_cast<C>(slot_mean(t, i))));
        if (t.write_mean) g[i] = from_compute<T>(grad);
        update_element(s, param, m_old, v_old, grad, p, m, v, i);
      }
    } else {
      for (int64_t i = first; i < hi; i += kThreads) {
        const C grad = to_compute(g[i]);
        update_element(s, to_compute(p[i]), to_compute(m[i]), to_compute(v[i]), grad, p, m, v, i);
      }
    }
  }
}

template <class C>
AdamScalars<C> make_scalars(const AdamStepArgs& a) {
  AdamScalars<C> s{};
  s.beta1 = static_cast<C>(a.beta1);
  s.one_minus_beta1 = static_cast<C>(1.0 - a.beta1);
  s.beta2 = static_cast<C>(a.beta2);
  s.one_minus_beta2 = static_cast<C>(1.0 - a.beta2);
  s.eps = static_cast<C>(a.eps);
  s.weight_decay = static_cast<C>(a.weight_decay);
  s.decay_factor = static_cast<C>(1.0 - a.lr * a.weight_decay);
  s.step_size = static_cast<C>(a.lr / a.bias_correction1);
  s.sqrt_bc2 = static_cast<C>(std::sqrt(a.bias_correction2));
  s.l2 = a.weight_decay != 0.0 && a.decay == AdamWeightDecay::L2;
  s.decoupled = a.weight_decay != 0.0 && a.decay == AdamWeightDecay::Decoupled;
  return s;
}

}  // namespace

void launch_adam_step(DeviceContext& ctx, const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const std::vector<Tensor>& exp_avg, const std::vector<Tensor>& exp_avg_sq,
                      const AdamStepArgs& args, const std::vector<GradientSlots>& grad_slots) {
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size() &&
                  grad_slots.size() == params.size(),
              "adam_step: got {} params, {} grads, {} exp_avg, {} exp_avg_sq and {} grad_slots; the lists must have "
              "one length",
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size(), grad_slots.size());
  std::vector<DType> dtypes;  // in order of first appearance
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    for (const Tensor* t : {&p, &grads[i], &exp_avg[i], &exp_avg_sq[i]}) {
      FLAME_CHECK(t->is_contiguous() && t->numel() == p.numel() && t->dtype() == p.dtype(),
                  "adam_step: entry {}: {} must be contiguous with the {} elements and dtype of param {}", i,
                  t->describe(), p.numel(), p.describe());
      FLAME_CHECK(t->device().is_cuda() && t->device().index == ctx.device, "adam_step: entry {}: {} is not on cuda:{}",
                  i, t->describe(), ctx.device);
    }
    const Tensor& slots = grad_slots[i].slots;
    if (slots.defined()) {
      FLAME_CHECK(p.dtype() == DType::F32 && slots.dtype() == DType::BF16 && slots.dim() == 2 && slots.size(0) >= 1 &&
                      slots.size(1) == p.numel() && slots.stride(1) == 1 && slots.size(0) <= INT32_MAX,
                  "adam_step: entry {}: gradient slots {} must be [W, {}] bf16 with contiguous rows for f32 param {}",
                  i, slots.describe(), p.numel(), p.describe());
      FLAME_CHECK(slots.device().is_cuda() && slots.device().index == ctx.device,
                  "adam_step: entry {}: gradient slots {} are not on cuda:{}", i, slots.describe(), ctx.device);
    }
    if (std::find(dtypes.begin(), dtypes.end(), p.dtype()) == dtypes.end()) dtypes.push_back(p.dtype());
  }
  for (const DType dtype : dtypes) {
    dispatch_dtype<DispatchSet::Floating>(dtype, "adam_step", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const AdamScalars<compute_t<T>> scalars = make_scalars<compute_t<T>>(args);
      AdamLaunch launch{};
      const auto flush = [&] {
        if (launch.count == 0) return;
        const int64_t blocks = ceil_div(launch.starts[launch.count], kChunk);
        FLAME_CHECK(blocks < (int64_t{1} << 31), "adam_step: {} elements in one launch are too many",
                    launch.starts[launch.count]);
        adam_step_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, ctx.stream>>>(launch, scalars);
        FLAME_CUDA_LAUNCH_CHECK();
        launch = AdamLaunch{};
      };
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].dtype() != dtype || params[i].numel() == 0) continue;
        const int k = launch.count;
        const GradientSlots& gs = grad_slots[i];
        launch.tensors[k] = AdamTensor{.param = params[i].data_ptr(),
                                       .grad = grads[i].data_ptr(),
                                       .exp_avg = exp_avg[i].data_ptr(),
                                       .exp_avg_sq = exp_avg_sq[i].data_ptr()};
        if (gs.slots.defined()) {
          launch.tensors[k].slots = static_cast<const uint16_t*>(gs.slots.data_ptr());
          launch.tensors[k].slot_stride = gs.slots.stride(0);
          launch.tensors[k].slot_rows = static_cast<int>(gs.slots.size(0));
          launch.tensors[k].slot_scale = gs.scale;
          launch.tensors[k].write_mean = gs.write_mean;
        }
        launch.starts[k + 1] = launch.starts[k] + params[i].numel();
        launch.count = k + 1;
        if (launch.count == kMaxTensors) flush();
      }
      flush();
    });
  }
}

}  // namespace flame::cuda
