// The CUDA caching allocator: after a warm-up, repeating the same op sequence makes no new
// cudaMalloc call and memory_allocated returns to its baseline; the peak counter is at least the
// bytes in use; freed blocks are reused; empty_cache returns unused blocks to the driver.
#include <fmt/format.h>

#include <cmath>

#include "core/cuda_device.h"
#include "support/test_support.h"

namespace flame {
namespace {

const Device kGpu = cuda_device(0);
constexpr size_t kMiB = size_t{1} << 20;

class CudaAllocator : public ::testing::Test {
 protected:
  void SetUp() override { FLAME_SKIP_WITHOUT_CUDA(); }
};

/// One training-like step: random init, matmul, elementwise, reductions, softmax, indexing and a
/// copy back to the host. Every temporary dies when it returns.
double one_step(Generator& gen) {
  const TensorOptions f32(kF32, kGpu);
  const Tensor a = randn({128, 96}, f32, &gen);
  const Tensor b = randn({96, 64}, f32, &gen);
  const Tensor h = relu(matmul(a, b) + 0.5);
  const Tensor p = softmax(h, 1);
  const Tensor idx = randint(0, 128, {32}, TensorOptions(kI64, kGpu), &gen);
  const Tensor rows = index_select(p, 0, idx);
  const Tensor total = sum(rows * rows, {1}).to(kF16).to(kF32);
  return sum(total).to(kCPU).item();
}

TEST_F(CudaAllocator, SteadyStateMakesNoNewMallocs) {
  Generator gen(test::test_seed());
  for (int i = 0; i < 3; ++i) (void)one_step(gen);  // warm-up: kernels compiled, blocks cached
  cuda::synchronize();
  const uint64_t mallocs = cuda::malloc_count();
  const size_t baseline = cuda::memory_allocated();
  for (int i = 0; i < 5; ++i) {
    const double value = one_step(gen);
    EXPECT_TRUE(std::isfinite(value));
    cuda::synchronize();
    EXPECT_EQ(cuda::malloc_count(), mallocs) << "iteration " << i << " called cudaMalloc";
    EXPECT_EQ(cuda::memory_allocated(), baseline) << "iteration " << i << " leaked device memory";
    EXPECT_GE(cuda::max_memory_allocated(), cuda::memory_allocated());
    EXPECT_GE(cuda::memory_reserved(), cuda::memory_allocated());
  }
}

TEST_F(CudaAllocator, AllocatedTracksLiveTensorsAndPeak) {
  cuda::synchronize();
  const size_t baseline = cuda::memory_allocated();
  cuda::reset_peak_memory_stats();
  EXPECT_EQ(cuda::max_memory_allocated(), baseline) << "after a reset the peak is the bytes in use";
  {
    const Tensor t = empty({4 * static_cast<int64_t>(kMiB)}, TensorOptions(kF32, kGpu));  // 16 MiB
    EXPECT_GE(cuda::memory_allocated(), baseline + 16 * kMiB);
    EXPECT_GE(cuda::memory_reserved(), cuda::memory_allocated());
    {
      const Tensor u = empty({static_cast<int64_t>(kMiB)}, TensorOptions(kF64, kGpu));  // 8 MiB more
      EXPECT_GE(cuda::memory_allocated(), baseline + 24 * kMiB);
    }
    cuda::synchronize();
    EXPECT_GE(cuda::memory_allocated(), baseline + 16 * kMiB);
    EXPECT_LT(cuda::memory_allocated(), baseline + 24 * kMiB);
  }
  cuda::synchronize();
  EXPECT_EQ(cuda::memory_allocated(), baseline);
  EXPECT_GE(cuda::max_memory_allocated(), baseline + 24 * kMiB);
  EXPECT_GE(cuda::max_memory_allocated(), cuda::memory_allocated());
  cuda::reset_peak_memory_stats();
  EXPECT_EQ(cuda::max_memory_allocated(), cuda::memory_allocated());
}

TEST_F(CudaAllocator, FreedBlocksAreReused) {
  const TensorOptions options(kF32, kGpu);
  { const Tensor warm = empty({3 * static_cast<int64_t>(kMiB)}, options); }
  cuda::synchronize();
  const uint64_t mallocs = cuda::malloc_count();
  for (int i = 0; i < 10; ++i) {
    Tensor t = empty({3 * static_cast<int64_t>(kMiB)}, options);
    t.fill_(static_cast<double>(i));
    EXPECT_EQ(t.to(kCPU).select(0, 12345).item(), static_cast<double>(i));
  }
  cuda::synchronize();
  EXPECT_EQ(cuda::malloc_count(), mallocs);
}

TEST_F(CudaAllocator, EmptyCacheReturnsUnusedBlocks) {
  const int64_t elements = 16 * static_cast<int64_t>(kMiB);  // 64 MiB of f32
  { const Tensor big = zeros({elements}, TensorOptions(kF32, kGpu)); }
  cuda::synchronize();
  const size_t reserved = cuda::memory_reserved();
  ASSERT_GE(reserved, 64 * kMiB) << "the freed 64 MiB block should still be cached";
  cuda::empty_cache();
  EXPECT_LE(cuda::memory_reserved() + 64 * kMiB, reserved);
  EXPECT_GE(cuda::memory_reserved(), cuda::memory_allocated());
  const uint64_t mallocs = cuda::malloc_count();
  { const Tensor again = zeros({elements}, TensorOptions(kF32, kGpu)); }
  EXPECT_EQ(cuda::malloc_count(), mallocs + 1)
      << "after empty_cache the block must come from cudaMalloc again";
}

}  // namespace
}  // namespace flame
