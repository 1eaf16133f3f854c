#include "core/cuda/nvrtc.h"

#include <nvrtc.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <unordered_map>

#include "core/cuda/context.h"
#include "core/cuda/internal.h"
#include "core/error.h"

namespace flame::cuda {

namespace {

namespace fs = std::filesystem;

std::atomic<uint64_t> g_compiles{0};
std::atomic<uint64_t> g_disk_hits{0};
std::atomic<uint64_t> g_generation{0};

constexpr char kCacheMagic[8] = {'F', 'L', 'C', 'U', 'B', 'I', 'N', '1'};

/// On-disk entry: header then the cubin bytes.
struct CacheHeader {
  char magic[8];
  uint64_t key;
  uint64_t payload_bytes;
  uint64_t payload_hash;
};

uint64_t fnv1a(const void* data, size_t bytes, uint64_t hash = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) {
    hash ^= p[i];
    hash *= 0x100000001b3ull;
  }
  return hash;
}

std::string nvrtc_version() {
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  return fmt::format("{}.{}", major, minor);
}

std::string numbered(const std::string& source) {
  std::istringstream lines(source);
  std::string line, out;
  for (int number = 1; std::getline(lines, line); ++number) out += fmt::format("{:4} | {}\n", number, line);
  return out;
}

fs::path cache_directory() {
  if (const char* dir = std::getenv("FLAME_KERNEL_CACHE"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return fs::path(xdg) / "flame" / "kernels";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return fs::path(home) / ".cache" / "flame" / "kernels";
  return {};
}

void warn_cache_once(const std::string& what) {
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true))
    spdlog::warn("FLAME kernel disk cache disabled for this process: {} (set FLAME_KERNEL_CACHE to a "
                 "writable directory to keep compiled kernels between runs)", what);
}

/// The cached cubin for `key`, or empty when absent, unreadable or corrupt.
std::vector<char> read_cache(const fs::path& file, uint64_t key) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return {};
  CacheHeader header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof(header))) return {};
  if (std::memcmp(header.magic, kCacheMagic, sizeof(kCacheMagic)) != 0 || header.key != key ||
      header.payload_bytes == 0 || header.payload_bytes > (size_t{1} << 30))
    return {};
  std::vector<char> cubin(header.payload_bytes);
  if (!in.read(cubin.data(), static_cast<std::streamsize>(cubin.size()))) return {};
  if (fnv1a(cubin.data(), cubin.size()) != header.payload_hash) return {};
  return cubin;
}

void write_cache(const fs::path& dir, const fs::path& file, uint64_t key, const std::vector<char>& cubin) {
  static std::atomic<uint64_t> counter{0};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return warn_cache_once(fmt::format("cannot create {}: {}", dir.string(), ec.message()));
  const fs::path temp = file.string() + fmt::format(".tmp.{}.{}", ::getpid(), counter++);
  CacheHeader header{};
  std::memcpy(header.magic, kCacheMagic, sizeof(kCacheMagic));
  header.key = key;
  header.payload_bytes = cubin.size();
  header.payload_hash = fnv1a(cubin.data(), cubin.size());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&header), sizeof(header));
    out.write(cubin.data(), static_cast<std::streamsize>(cubin.size()));
    out.close();
    if (!out) {
      fs::remove(temp, ec);
      return warn_cache_once(fmt::format("cannot write {}", temp.string()));
    }
  }
  fs::rename(temp, file, ec);  // atomic: readers see the old entry or the whole new one
  if (ec) {
    fs::remove(temp, ec);
    warn_cache_once(fmt::format("cannot rename into {}: {}", file.string(), ec.message()));
  }
}

#define FLAME_NVRTC_CHECK(expr)                                                                 \
  do {                                                                                          \
    const nvrtcResult flame_nvrtc_ = (expr);                                                    \
    if (flame_nvrtc_ != NVRTC_SUCCESS)                                                          \
      ::flame::detail::throw_error(#expr, __FILE__, __LINE__,                                   \
                                   fmt::format("NVRTC error {}", nvrtcGetErrorString(flame_nvrtc_))); \
  } while (0)

std::vector<char> compile(const std::string& source, int arch) {
  nvrtcProgram program = nullptr;
  FLAME_NVRTC_CHECK(nvrtcCreateProgram(&program, source.c_str(), "flame_kernel.cu", 0, nullptr, nullptr));
  std::unique_ptr<nvrtcProgram, void (*)(nvrtcProgram*)> guard(&program, [](nvrtcProgram* p) {
    nvrtcDestroyProgram(p);
  });
  const std::string arch_option = fmt::format("--gpu-architecture=sm_{}", arch);
  // IEEE arithmetic (no --use_fast_math): results must match the CPU reference.
  const char* options[] = {arch_option.c_str(), "-std=c++17", "-default-device"};
  const nvrtcResult result = nvrtcCompileProgram(program, 3, options);
  g_compiles.fetch_add(1, std::memory_order_relaxed);
  if (result != NVRTC_SUCCESS) {
    size_t log_size = 0;
    nvrtcGetProgramLogSize(program, &log_size);
    std::string log(log_size, '\0');
    if (log_size > 0) nvrtcGetProgramLog(program, log.data());
    log.resize(std::strlen(log.c_str()));  // drop the terminating NUL
    FLAME_FAIL("NVRTC failed to compile a generated kernel for sm_{} ({}):\n{}\nsource:\n{}", arch,
               nvrtcGetErrorString(result), log, numbered(source));
  }
  size_t cubin_size = 0;
  FLAME_NVRTC_CHECK(nvrtcGetCUBINSize(program, &cubin_size));
  std::vector<char> cubin(cubin_size);
  FLAME_NVRTC_CHECK(nvrtcGetCUBIN(program, cubin.data()));
  return cubin;
}

struct LoadedKey {
  int device;
  std::string source;
  std::string name;
  bool operator==(const LoadedKey&) const = default;
};

struct LoadedKeyHash {
  size_t operator()(const LoadedKey& key) const {
    return std::hash<std::string>()(key.source) ^ (std::hash<std::string>()(key.name) * 31) ^
           static_cast<size_t>(key.device);
  }
};

struct KernelCache {
  std::mutex mutex;
  std::unordered_map<LoadedKey, cudaKernel_t, LoadedKeyHash> kernels;
};

KernelCache& kernel_cache() {
  static auto* cache = new KernelCache();  // never destroyed: handles stay valid until exit
  return *cache;
}

}  // namespace

std::vector<char> compile_to_cubin(const std::string& source, int arch) {
  static const std::string version = nvrtc_version();
  const std::string target = fmt::format("sm_{}", arch);
  uint64_t key = fnv1a(source.data(), source.size());
  key = fnv1a("", 1, key);
  key = fnv1a(target.data(), target.size(), key);
  key = fnv1a(version.data(), version.size(), key);

  const fs::path dir = cache_directory();
  if (dir.empty()) warn_cache_once("no FLAME_KERNEL_CACHE, XDG_CACHE_HOME or HOME");
  const fs::path file = dir.empty() ? fs::path() : dir / fmt::format("{:016x}.cubin", key);
  if (!dir.empty()) {
    std::vector<char> cached = read_cache(file, key);
    if (!cached.empty()) {
      g_disk_hits.fetch_add(1, std::memory_order_relaxed);
      return cached;
    }
  }
  std::vector<char> cubin = compile(source, arch);
  if (!dir.empty()) write_cache(dir, file, key, cubin);
  return cubin;
}

cudaKernel_t runtime_kernel(const std::string& source, const char* name, int device) {
  KernelCache& cache = kernel_cache();
  LoadedKey key{device, source, name};
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    if (const auto found = cache.kernels.find(key); found != cache.kernels.end()) return found->second;
  }
  DeviceContext& ctx = context(device);
  // Kept alive for the process: the library may read its image when it loads lazily.
  auto* cubin = new std::vector<char>(compile_to_cubin(source, ctx.arch));
  cudaLibrary_t library = nullptr;
  FLAME_CUDA_CHECK(cudaLibraryLoadData(&library, cubin->data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
  cudaKernel_t kernel = nullptr;
  FLAME_CUDA_CHECK(cudaLibraryGetKernel(&kernel, library, name));
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.kernels.emplace(std::move(key), kernel).first->second;
}

NvrtcStats nvrtc_stats() {
  return NvrtcStats{g_compiles.load(std::memory_order_relaxed), g_disk_hits.load(std::memory_order_relaxed)};
}

void clear_memory_kernel_cache() {
  KernelCache& cache = kernel_cache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  cache.kernels.clear();
  g_generation.fetch_add(1, std::memory_order_acq_rel);
}

uint64_t kernel_cache_generation() { return g_generation.load(std::memory_order_acquire); }

}  // namespace flame::cuda
