// Bad input on CUDA: mixing CPU and CUDA tensors in one op is an error (never a silent copy),
// out-of-range indices are caught by the device-side check and raised at the next
// synchronisation (and the device stays usable), and the usual shape / dtype checks still apply.
#include <fmt/format.h>

#include "core/cuda_device.h"
#include "support/test_support.h"

namespace flame {
namespace {

const Device kGpu = cuda_device(0);

class CudaErrors : public ::testing::Test {
 protected:
  void SetUp() override { FLAME_SKIP_WITHOUT_CUDA(); }
  Tensor cpu(const Shape& shape, DType dtype = kF32) { return zeros(shape, dtype); }
  Tensor gpu(const Shape& shape, DType dtype = kF32) { return zeros(shape, TensorOptions(dtype, kGpu)); }
  Tensor gpu_index(const std::vector<double>& values) {
    return test::make_tensor(values, {static_cast<int64_t>(values.size())}, kI64, kGpu);
  }
};

TEST_F(CudaErrors, MixingDevicesIsAnError) {
  const std::vector<std::string> devices{"cpu", "cuda:0"};
  EXPECT_TRUE(test::raises_error([&] { add(cpu({2}), gpu({2})); }, {"add", "cpu", "cuda:0"}));
  EXPECT_TRUE(test::raises_error([&] { mul(gpu({2}), cpu({2})); }, {"mul", "cpu", "cuda:0"}));
  EXPECT_TRUE(test::raises_error([&] { eq(gpu({2}), cpu({2})); }, {"eq"}));
  EXPECT_TRUE(test::raises_error([&] { gpu({2}).add_(cpu({2})); }, devices));
  EXPECT_TRUE(test::raises_error([&] { matmul(cpu({2, 2}), gpu({2, 2})); }, {"matmul", "cpu", "cuda:0"}));
  EXPECT_TRUE(test::raises_error([&] { where(gpu({2}, kBool), cpu({2}), gpu({2})); }, {"where"}));
  EXPECT_TRUE(test::raises_error([&] { cat({cpu({2}), gpu({2})}); }, {"cat"}));
  EXPECT_TRUE(test::raises_error([&] { stack({gpu({2}), cpu({2})}); }, {"stack"}));
  EXPECT_TRUE(test::raises_error([&] { index_select(gpu({3}), 0, test::make_tensor({0}, {1}, kI64)); },
                                 {"index_select"}));
  EXPECT_TRUE(test::raises_error([&] { gather(cpu({3}), 0, gpu_index({0})); }, {"gather"}));
  EXPECT_TRUE(
      test::raises_error([&] { scatter_add(gpu({3}), 0, gpu_index({0}), cpu({1})); }, {"scatter_add"}));
}

TEST_F(CudaErrors, ExplicitCopiesAcrossDevicesAreAllowed) {
  Tensor dst = gpu({3});
  dst.copy_(test::make_tensor({1, 2, 3}, {3}, kF32));
  EXPECT_TRUE(test::all_close(dst, {3}, {1, 2, 3}, {0, 0}));
  Tensor back = cpu({3});
  back.copy_(dst);
  EXPECT_TRUE(test::all_close(back, {3}, {1, 2, 3}, {0, 0}));
}

TEST_F(CudaErrors, ShapeAndDtypeChecksStillApply) {
  EXPECT_TRUE(test::raises_error([&] { add(gpu({2, 3}), gpu({4, 3})); }, {"add", "[2, 3]", "[4, 3]"}));
  EXPECT_TRUE(test::raises_error([&] { add(gpu({2}), gpu({2}, kF64)); }, {"add", "f32", "f64"}));
  EXPECT_TRUE(test::raises_error([&] { matmul(gpu({2, 3}), gpu({4, 5})); }, {"matmul", "[2, 3]", "[4, 5]"}));
  EXPECT_TRUE(test::raises_error([&] { exp(gpu({2}, kI32)); }, {"exp", "i32"}));
  EXPECT_TRUE(test::raises_error([&] { sum(gpu({2, 3}), {2}); }, {"sum"}));
  EXPECT_TRUE(test::raises_error([&] { softmax(gpu({2, 3}), 2); }, {"softmax"}));
}

/// Runs `fn` and synchronises: an out-of-range index may be reported by the op itself or by the
/// device-side check at the synchronisation.
::testing::AssertionResult raises_by_sync(const std::function<void()>& fn, const std::string& op) {
  return test::raises_error(
      [&] {
        fn();
        cuda::synchronize();
      },
      {op});
}

TEST_F(CudaErrors, OutOfRangeIndicesAreReportedAndTheDeviceRecovers) {
  test::HostRng rng;
  const auto v = rng.uniform(12, -1, 1);
  const Tensor x = test::make_tensor(v, {3, 4}, kF32, kGpu);
  EXPECT_TRUE(raises_by_sync([&] { (void)index_select(x, 0, gpu_index({0, 3})); }, "index"));
  EXPECT_TRUE(raises_by_sync([&] { (void)index_select(x, 1, gpu_index({-1})); }, "index"));
  EXPECT_TRUE(raises_by_sync(
      [&] {
        (void)gather(x, 1, test::make_tensor({0, 4}, {1, 2}, kI64, kGpu));
      },
      "index"));
  EXPECT_TRUE(raises_by_sync(
      [&] {
        (void)scatter_add(x, 0, test::make_tensor({5}, {1, 1}, kI64, kGpu), gpu({1, 1}));
      },
      "index"));
  // The error flag was reset: the device keeps working and later syncs are clean.
  EXPECT_NO_THROW(cuda::synchronize());
  const Tensor picked = index_select(x, 0, gpu_index({2, 0}));
  std::vector<double> expected(v.begin() + 8, v.end());
  expected.insert(expected.end(), v.begin(), v.begin() + 4);
  EXPECT_TRUE(test::all_close(picked, {2, 4}, test::round_to_dtype(expected, kF32), {0, 0}));
  EXPECT_NO_THROW(cuda::synchronize());
}

TEST_F(CudaErrors, MissingDeviceIndexIsAnError) {
  const int count = cuda::device_count();
  EXPECT_GE(count, 1);
  EXPECT_TRUE(test::raises_error([&] { (void)zeros({2}, cuda_device(count)); }));
  EXPECT_TRUE(test::raises_error([&] { (void)cpu({2}).to(cuda_device(count)); }));
}

}  // namespace
}  // namespace flame
