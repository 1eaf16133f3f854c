// The NVRTC disk cache (core/cuda/nvrtc.h): a source compiled once is read back from
// $FLAME_KERNEL_CACHE after the in-memory cache is cleared, without compiling again; the target
// architecture and the source are part of the key. compile_to_cubin needs no GPU, so this runs in
// every build with the CUDA toolkit (label cpu).
#include <gtest/gtest.h>

#ifdef FLAME_WITH_CUDA

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/cuda/nvrtc.h"
#include "support/test_support.h"

namespace flame {
namespace {

/// A fresh directory, set as $FLAME_KERNEL_CACHE during static initialisation: before any test
/// (or FLAME itself) can look the cache directory up.
std::string make_cache_dir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "flame_kernel_cache_XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "nvrtc_cache_test: mkdtemp failed\n");
    std::abort();
  }
  setenv("FLAME_KERNEL_CACHE", pattern.c_str(), 1);
  return pattern;
}

const std::string& cache_dir() {
  static const std::string dir = make_cache_dir();
  return dir;
}

class RemoveCacheDir : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(cache_dir(), ignored);
  }
};

[[maybe_unused]] const std::string& kCacheDirAtStartup = cache_dir();
[[maybe_unused]] ::testing::Environment* const kCleanup =
    ::testing::AddGlobalTestEnvironment(new RemoveCacheDir);

size_t files_under(const std::string& dir) {
  size_t n = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) ++n;
  }
  return n;
}

/// Source no other run or test has compiled: the kernel name carries the seed, pid and a tag.
std::string unique_source(const std::string& tag) {
  return fmt::format(
      "extern \"C\" __global__ void flame_cache_probe_{}_{}_{}(float* out, int n) {{\n"
      "  const int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
      "  if (i < n) out[i] = out[i] * 3.0f + 1.0f;\n"
      "}}\n",
      tag, test::test_seed(), static_cast<long>(getpid()));
}

TEST(NvrtcCache, EnvironmentPointsAtTheFreshDirectory) {
  const char* env = std::getenv("FLAME_KERNEL_CACHE");
  ASSERT_NE(env, nullptr);
  EXPECT_EQ(std::string(env), cache_dir());
  EXPECT_TRUE(std::filesystem::is_directory(cache_dir()));
}

TEST(NvrtcCache, SecondCompileAfterClearingMemoryIsADiskHit) {
  const std::string source = unique_source("twice");
  cuda::clear_memory_kernel_cache();
  const cuda::NvrtcStats before = cuda::nvrtc_stats();
  const std::vector<char> first = cuda::compile_to_cubin(source, 90);
  const cuda::NvrtcStats after_first = cuda::nvrtc_stats();
  EXPECT_EQ(after_first.compiles, before.compiles + 1) << "a new source must be compiled";
  EXPECT_EQ(after_first.disk_hits, before.disk_hits);
  EXPECT_GE(files_under(cache_dir()), 1u) << "the cubin must be written to " << cache_dir();

  cuda::clear_memory_kernel_cache();
  const std::vector<char> second = cuda::compile_to_cubin(source, 90);
  const cuda::NvrtcStats after_second = cuda::nvrtc_stats();
  EXPECT_EQ(after_second.compiles, after_first.compiles) << "the disk cache must answer";
  EXPECT_EQ(after_second.disk_hits, after_first.disk_hits + 1);
  EXPECT_EQ(second, first);
}

TEST(NvrtcCache, ArchitectureIsPartOfTheKey) {
  const std::string source = unique_source("arch");
  cuda::clear_memory_kernel_cache();
  (void)cuda::compile_to_cubin(source, 90);
  const cuda::NvrtcStats after_90 = cuda::nvrtc_stats();
  cuda::clear_memory_kernel_cache();
  const std::vector<char> sm80 = cuda::compile_to_cubin(source, 80);
  const cuda::NvrtcStats after_80 = cuda::nvrtc_stats();
  EXPECT_EQ(after_80.compiles, after_90.compiles + 1) << "sm_80 must not reuse the sm_90 cubin";
  ASSERT_GE(sm80.size(), 4u);
  EXPECT_EQ(std::string(sm80.begin(), sm80.begin() + 4),
            "\x7f"
            "ELF");
}

TEST(NvrtcCache, SourceIsPartOfTheKey) {
  const std::string source = unique_source("source");
  cuda::clear_memory_kernel_cache();
  (void)cuda::compile_to_cubin(source, 90);
  const cuda::NvrtcStats after_first = cuda::nvrtc_stats();
  cuda::clear_memory_kernel_cache();
  (void)cuda::compile_to_cubin(source + "// one more line\n", 90);
  const cuda::NvrtcStats after_second = cuda::nvrtc_stats();
  EXPECT_EQ(after_second.compiles, after_first.compiles + 1);
  EXPECT_EQ(after_second.disk_hits, after_first.disk_hits);
}

}  // namespace
}  // namespace flame

#endif  // FLAME_WITH_CUDA (without CUDA there is no NVRTC and this suite is empty)
