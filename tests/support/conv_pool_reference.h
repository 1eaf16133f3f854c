// Cases shared by the conv2d and pool2d suites, which run them on the CPU (against float64
// references) and on CUDA (against the CPU): how a case is described and named in traces, the
// geometries both backends check (each suite adds its own), the pooling kinds and how to run them
// through the public ops, a plane of NaN and infinite windows, and the bar images the small CNNs
// learn from. Header-only: the test support library builds only test_support.cpp.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/conv.h"
#include "core/pool.h"
#include "support/test_support.h"

namespace flame::test {

// --- conv2d ----------------------------------------------------------------------------------------

/// One convolution: input [N, C, H, W], weight [O, C/groups, kh, kw], options, bias or not.
struct ConvCase {
  std::string name;
  Shape input;
  Shape weight;
  Conv2dOptions options;
  bool bias = true;
};

inline std::string case_str(const ConvCase& c) {
  const Conv2dOptions& o = c.options;
  return fmt::format("{}: input {} weight {} stride [{}, {}] padding [{}, {}] dilation [{}, {}] groups {} bias {}",
                     c.name, shape_str(c.input), shape_str(c.weight), o.stride[0], o.stride[1], o.padding[0],
                     o.padding[1], o.dilation[0], o.dilation[1], o.groups, c.bias);
}

/// The stride / padding / dilation / groups / bias combinations both the CPU and the CUDA suites run.
inline std::vector<ConvCase> shared_conv_cases() {
  return {
      {"plain 3x3", {2, 3, 6, 5}, {4, 3, 3, 3}, {}, true},
      {"no bias", {2, 3, 6, 5}, {4, 3, 3, 3}, {}, false},
      {"1x1", {2, 4, 3, 5}, {3, 4, 1, 1}, {}, true},
      {"1x1 stride 2", {1, 4, 5, 5}, {3, 4, 1, 1}, {.stride = {2, 2}}, true},
      {"stride 2 padding 1", {2, 2, 7, 6}, {3, 2, 3, 3}, {.stride = {2, 2}, .padding = {1, 1}}, true},
      {"uneven stride and padding", {1, 2, 7, 8}, {2, 2, 3, 2}, {.stride = {2, 3}, .padding = {2, 1}}, true},
      {"dilation 2", {2, 2, 7, 7}, {3, 2, 3, 3}, {.dilation = {2, 2}}, true},
      {"dilation with padding", {1, 3, 6, 7}, {2, 3, 2, 3}, {.padding = {1, 2}, .dilation = {3, 2}}, true},
      {"groups 2", {2, 4, 5, 5}, {6, 2, 3, 3}, {.padding = {1, 1}, .groups = 2}, true},
      {"depthwise", {2, 3, 5, 6}, {3, 1, 3, 3}, {.stride = {1, 2}, .padding = {1, 1}, .groups = 3}, true},
      {"everything",
       {2, 4, 8, 7},
       {4, 2, 3, 2},
       {.stride = {2, 1}, .padding = {1, 2}, .dilation = {2, 2}, .groups = 2},
       true},
      {"kernel covers the padded input", {1, 2, 3, 3}, {2, 2, 5, 5}, {.padding = {1, 1}}, true},
  };
}

/// A small classification task for CNNs: `n` side x side images, each holding one bright bar (1.0)
/// plus noise on [-0.3, 0.3), horizontal (label 0, even images) or vertical (label 1, odd images) at
/// a random row or column in [1, side - 2].
struct BarImages {
  std::vector<double> pixels;   // [n, side, side]
  std::vector<int64_t> labels;  // [n]
};

inline BarImages bar_images(HostRng& rng, int64_t n, int64_t side) {
  BarImages data{std::vector<double>(static_cast<size_t>(n * side * side)),
                 std::vector<int64_t>(static_cast<size_t>(n))};
  const auto noise = rng.uniform(n * side * side, -0.3, 0.3);
  for (int64_t k = 0; k < n; ++k) {
    data.labels[k] = k % 2;
    const int64_t line = rng.integer(1, side - 2);
    for (int64_t y = 0; y < side; ++y)
      for (int64_t x = 0; x < side; ++x) {
        const bool on = data.labels[k] == 0 ? y == line : x == line;
        data.pixels[(k * side + y) * side + x] = (on ? 1.0 : 0.0) + noise[(k * side + y) * side + x];
      }
  }
  return data;
}

// --- pooling ---------------------------------------------------------------------------------------

enum class Pool { Max, AvgIncludePad, AvgExcludePad };

inline const char* pool_name(Pool pool) {
  switch (pool) {
    case Pool::Max:
      return "max";
    case Pool::AvgIncludePad:
      return "avg (count_include_pad)";
    default:
      return "avg (exclude pad)";
  }
}

struct PoolCase {
  Shape input;  // [N, C, H, W] or [C, H, W]
  Pool2dOptions options;
};

inline std::string case_str(const PoolCase& c) {
  const Pool2dOptions& o = c.options;
  return fmt::format("input {} kernel {}x{} stride {}x{} padding {}x{}", shape_str(c.input), o.kernel[0], o.kernel[1],
                     o.stride[0], o.stride[1], o.padding[0], o.padding[1]);
}

/// The window geometries both the CPU and the CUDA suites run.
inline std::vector<PoolCase> shared_pool_cases() {
  return {
      {{1, 1, 4, 4}, {{2, 2}}},                  // stride defaults to the kernel
      {{2, 3, 5, 7}, {{3, 3}, {2, 2}, {1, 1}}},  // padded, odd sizes
      {{2, 2, 6, 5}, {{3, 2}, {1, 2}, {1, 0}}},  // rectangular, overlapping rows
      {{1, 2, 7, 7}, {{2, 3}, {3, 1}, {1, 1}}},  // stride larger than the kernel in h
      {{3, 4, 4}, {{2, 2}, {1, 1}, {0, 0}}},     // unbatched
      {{1, 1, 3, 3}, {{3, 3}, {1, 1}, {1, 1}}},  // every window padded
      {{1, 2, 5, 5}, {{5, 5}, {1, 1}, {2, 2}}},  // padding = kernel / 2
      {{2, 1, 1, 1}, {{1, 1}}},                  // 1x1
  };
}

/// Runs `pool` through the public ops; for max, `indices` receives the indices.
inline Tensor run_pool(Pool pool, const Tensor& x, const Pool2dOptions& o, Tensor* indices = nullptr) {
  if (pool == Pool::Max) {
    MaxPool2dResult r = max_pool2d_with_indices(x, o);
    if (indices != nullptr) *indices = r.indices;
    return r.output;
  }
  return avg_pool2d(x, o, pool == Pool::AvgIncludePad);
}

/// A 4x4 plane (row-major) whose 2x2 windows with stride 2 hold: window 0 two NaNs, window 1 only
/// -inf, window 2 a +inf, window 3 ordinary values.
inline std::vector<double> nan_and_inf_plane() {
  constexpr double inf = std::numeric_limits<double>::infinity();
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  return {1.0, nan, -inf, -inf,  //
          nan, 2.0, -inf, -inf,  //
          0.5, inf, 3.0,  -1.0,  //
          7.0, 0.0, 4.0,  -2.0};
}

}  // namespace flame::test
