// max_pool2d, max_pool2d_with_indices and avg_pool2d on CUDA against the CPU reference backend
// (core/pool.h): outputs, indices and input gradients for many window geometries in f32, f16,
// bf16 and f64, from the same inputs (ties included: f16/bf16 rounding makes them common, and
// both backends must pick the same first maximum); NaN and infinite windows; non-contiguous and
// unbatched inputs; run-to-run determinism of the backward kernels. Skips without a CUDA device.
#include <fmt/format.h>

#include <utility>

#include "core/autograd.h"
#include "core/pool.h"
#include "nn/pool2d.h"
#include "support/conv_pool_reference.h"

namespace flame {
namespace {

using test::HostRng;
using test::Layout;
using test::Pool;
using test::pool_name;
using test::PoolCase;
using test::run_pool;
using test::Tolerance;

const Device kGpu = cuda_device(0);

class CudaPool2d : public test::CudaTest {};

const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = [] {
    std::vector<PoolCase> c = test::shared_pool_cases();
    c.push_back({{4, 16, 33, 31}, {{3, 3}, {2, 2}, {1, 1}}});  // a ResNet stem pooling, odd sizes
    c.push_back({{8, 32, 28, 28}, {{2, 2}}});
    c.push_back({{2, 8, 17, 19}, {{4, 3}, {1, 1}, {2, 1}}});  // heavy overlap: up to 12 windows per input element
    return c;
  }();
  return cases;
}

/// CUDA computes f16/bf16/f32 in float, the CPU in double (each rounded once to the dtype): the
/// results may differ by an ulp of the dtype, and f32 sums by a few f32 ulps.
Tolerance tolerance(DType dtype) {
  return dtype == kF32 ? test::tolerance_for(dtype).scaled(4) : test::tolerance_for(dtype);
}

struct Result {
  Tensor out, indices, grad;
};

/// Forward (and, for max, the indices) and the input gradient for projection `r`, on `device`.
Result run_on(Device device, Pool pool, const std::vector<double>& values, const PoolCase& c, DType dtype,
              Layout layout, const std::vector<double>& r) {
  Tensor x = test::make_tensor(values, c.input, dtype, device, layout);
  x.requires_grad_();
  Result result;
  result.out = run_pool(pool, x, c.options, &result.indices);
  result.out.backward(test::make_tensor(r, result.out.shape(), dtype, device));
  result.grad = x.grad();
  return result;
}

/// Runs `pool` on the same random inputs and projection on both devices: the CPU with a contiguous
/// input, CUDA with one laid out as `gpu_layout`.
std::pair<Result, Result> run_on_both(HostRng& rng, Pool pool, const PoolCase& c, DType dtype, Layout gpu_layout) {
  const std::vector<double> values = rng.uniform(test::numel_of(c.input), -3.0, 3.0);
  Shape out_shape;
  {
    autograd::NoGradGuard no_grad;
    out_shape = run_pool(pool, test::make_tensor(values, c.input, dtype), c.options).shape();
  }
  const std::vector<double> r = rng.uniform(test::numel_of(out_shape), -1.0, 1.0);
  return {run_on(kCPU, pool, values, c, dtype, Layout::Contiguous, r),
          run_on(kGpu, pool, values, c, dtype, gpu_layout, r)};
}

TEST_F(CudaPool2d, MatchesCpuForwardIndicesAndGradients) {
  HostRng rng;
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad, Pool::AvgExcludePad}) {
    for (const PoolCase& c : pool_cases()) {
      for (DType dtype : test::floating_dtypes()) {
        SCOPED_TRACE(fmt::format("{} {} {}", pool_name(pool), test::case_str(c), dtype_name(dtype)));
        test::guarded([&] {
          const auto [cpu, gpu] = run_on_both(rng, pool, c, dtype, Layout::Contiguous);
          cuda::synchronize();
          EXPECT_EQ(gpu.out.device(), kGpu);
          ASSERT_TRUE(gpu.grad.defined());
          EXPECT_EQ(gpu.grad.device(), kGpu);
          if (pool == Pool::Max) {
            // The same element is selected, so values and indices agree exactly.
            EXPECT_TRUE(test::tensors_identical(gpu.out, cpu.out));
            EXPECT_TRUE(test::tensors_identical(gpu.indices, cpu.indices));
          } else {
            EXPECT_TRUE(test::tensors_close(gpu.out, cpu.out, tolerance(dtype)));
          }
          EXPECT_TRUE(test::tensors_close(gpu.grad, cpu.grad, tolerance(dtype)));
        });
      }
    }
  }
}

TEST_F(CudaPool2d, NonContiguousAndUnbatchedInputs) {
  HostRng rng;
  const std::vector<PoolCase> cases{{{2, 3, 9, 8}, {{3, 3}, {2, 1}, {1, 1}}}, {{5, 7, 6}, {{2, 3}, {2, 2}, {1, 0}}}};
  for (Pool pool : {Pool::Max, Pool::AvgExcludePad}) {
    for (const PoolCase& c : cases) {
      for (Layout layout : {Layout::Transposed, Layout::Permuted, Layout::Strided}) {
        for (DType dtype : {kF32, kBF16}) {
          SCOPED_TRACE(fmt::format("{} {} {} {}", pool_name(pool), test::case_str(c), test::layout_name(layout),
                                   dtype_name(dtype)));
          test::guarded([&] {
            const auto [cpu, gpu] = run_on_both(rng, pool, c, dtype, layout);
            EXPECT_TRUE(test::tensors_close(gpu.out, cpu.out, tolerance(dtype)));
            if (pool == Pool::Max) EXPECT_TRUE(test::tensors_identical(gpu.indices, cpu.indices));
            EXPECT_TRUE(test::tensors_close(gpu.grad, cpu.grad, tolerance(dtype)));
          });
        }
      }
    }
  }
}

TEST_F(CudaPool2d, NaNAndInfinityWindowsMatchCpu) {
  const std::vector<double> values = test::nan_and_inf_plane();
  for (DType dtype : test::floating_dtypes()) {
    for (const Pool2dOptions& o : {Pool2dOptions{{2, 2}}, Pool2dOptions{{3, 3}, {1, 1}, {1, 1}}}) {
      SCOPED_TRACE(fmt::format("{} kernel {}", dtype_name(dtype), o.kernel[0]));
      test::guarded([&] {
        const Tensor x_cpu = test::make_tensor(values, {1, 1, 4, 4}, dtype);
        const Tensor x_gpu = test::make_tensor(values, {1, 1, 4, 4}, dtype, kGpu);
        const MaxPool2dResult cpu = max_pool2d_with_indices(x_cpu, o);
        const MaxPool2dResult gpu = max_pool2d_with_indices(x_gpu, o);
        EXPECT_TRUE(test::tensors_close(gpu.output, cpu.output, {}));
        EXPECT_TRUE(test::tensors_identical(gpu.indices, cpu.indices));
        EXPECT_TRUE(test::tensors_close(avg_pool2d(x_gpu, o), avg_pool2d(x_cpu, o), {}));
        EXPECT_TRUE(test::tensors_close(avg_pool2d(x_gpu, o, false), avg_pool2d(x_cpu, o, false), {}));
      });
    }
  }
}

TEST_F(CudaPool2d, BackwardIsDeterministic) {
  HostRng rng;
  const PoolCase c{{4, 8, 21, 23}, {{3, 3}, {1, 1}, {1, 1}}};
  for (Pool pool : {Pool::Max, Pool::AvgIncludePad}) {
    SCOPED_TRACE(pool_name(pool));
    const std::vector<double> values = rng.uniform(test::numel_of(c.input), -3.0, 3.0);
    const std::vector<double> r = rng.uniform(4 * 8 * 21 * 23, -1.0, 1.0);
    const Result first = run_on(kGpu, pool, values, c, kF32, Layout::Contiguous, r);
    const Result second = run_on(kGpu, pool, values, c, kF32, Layout::Contiguous, r);
    EXPECT_TRUE(test::tensors_identical(first.grad, second.grad));
  }
}

TEST_F(CudaPool2d, ModulesRunOnTheGpu) {
  HostRng rng;
  const std::vector<double> values = rng.uniform(2 * 3 * 10 * 10, -1.0, 1.0);
  nn::MaxPool2d max_layer(Pool2dOptions{{3, 3}, {2, 2}, {1, 1}});
  nn::AvgPool2d avg_layer(Pool2dOptions{{2, 2}});
  Tensor x_gpu = test::make_tensor(values, {2, 3, 10, 10}, kF32, kGpu);
  Tensor x_cpu = test::make_tensor(values, {2, 3, 10, 10}, kF32);
  x_gpu.requires_grad_();
  x_cpu.requires_grad_();
  const Tensor y_gpu = avg_layer(max_layer(x_gpu));
  const Tensor y_cpu = avg_layer(max_layer(x_cpu));
  EXPECT_EQ(y_gpu.device(), kGpu);
  EXPECT_TRUE(test::tensors_close(y_gpu, y_cpu, tolerance(kF32)));
  y_gpu.sum().backward();
  y_cpu.sum().backward();
  EXPECT_EQ(x_gpu.grad().device(), kGpu);
  EXPECT_TRUE(test::tensors_close(x_gpu.grad(), x_cpu.grad(), tolerance(kF32)));
}

}  // namespace
}  // namespace flame
