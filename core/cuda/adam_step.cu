// One Adam / AdamW step over many parameters in one kernel launch (Note [fused adam] in
// core/fused.h), computed in float (f32, f16, bf16) or double (f64).
//
// The launch's tensors are viewed as one concatenation of their elements: the kernel argument
// (a __grid_constant__ struct, read in place from the parameter bank) holds each tensor's four
// pointers and its first element's offset in that concatenation. Block b updates elements
// [b * kChunk, (b + 1) * kChunk), which may span several tensors. Tensors of other dtypes, and
// more than kMaxTensors tensors, go to further launches.
#include "core/cuda/device_types.cuh"  // first: Note [fmt under nvcc]

#include <cmath>

#include "core/cuda/launchers.h"

namespace flame::cuda {
namespace {

// Tensors per launch: the argument struct (about 2.6 KiB) stays under the 4 KiB classic limit.
constexpr int kMaxTensors = 64;
constexpr int kThreads = 256;
constexpr int64_t kChunk = 8 * kThreads;  // elements per block

struct AdamTensor {
  void* param;  // [numel] each, of the launch's dtype
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
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

template <class T>
__global__ void __launch_bounds__(kThreads)
    adam_step_kernel(const __grid_constant__ AdamLaunch launch, const AdamScalars<compute_t<T>> s) {
  using C = compute_t<T>;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, launch.starts[launch.count]);
  int k = 0;
  while (launch.starts[k + 1] <= begin) ++k;  // the first tensor with elements in [begin, end)
  for (; k < launch.count && launch.starts[k] < end; ++k) {
    const int64_t base = launch.starts[k];
    const int64_t hi = min(end, launch.starts[k + 1]) - base;
    T* p = static_cast<T*>(launch.tensors[k].param);
    const T* g = static_cast<const T*>(launch.tensors[k].grad);
    T* m = static_cast<T*>(launch.tensors[k].exp_avg);
    T* v = static_cast<T*>(launch.tensors[k].exp_avg_sq);
    for (int64_t i = max(begin, base) - base + threadIdx.x; i < hi; i += kThreads) {
      C param = to_compute(p[i]);
      C grad = to_compute(g[i]);
      if (s.l2) grad += s.weight_decay * param;
      if (s.decoupled) param *= s.decay_factor;
      const C m_new = s.beta1 * to_compute(m[i]) + s.one_minus_beta1 * grad;
      const C v_new = s.beta2 * to_compute(v[i]) + s.one_minus_beta2 * grad * grad;
      param -= s.step_size * (m_new / (sqrt(v_new) / s.sqrt_bc2 + s.eps));
      m[i] = from_compute<T>(m_new);
      v[i] = from_compute<T>(v_new);
      p[i] = from_compute<T>(param);
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
                      const AdamStepArgs& args) {
  FLAME_CHECK(grads.size() == params.size() && exp_avg.size() == params.size() && exp_avg_sq.size() == params.size(),
              "adam_step: got {} params, {} grads, {} exp_avg and {} exp_avg_sq; the lists must have one length",
              params.size(), grads.size(), exp_avg.size(), exp_avg_sq.size());
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
        launch.tensors[k] = {params[i].data_ptr(), grads[i].data_ptr(), exp_avg[i].data_ptr(),
                             exp_avg_sq[i].data_ptr()};
        launch.starts[k + 1] = launch.starts[k] + params[i].numel();
        launch.count = k + 1;
        if (launch.count == kMaxTensors) flush();
      }
      flush();
    });
  }
}

}  // namespace flame::cuda
