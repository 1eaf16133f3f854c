// Shared pieces of the benchmark programs: the JSON line format, medians, CUDA event timing and
// the GPU-present check. Header-only, used by bench/*_bench.cpp alone.
//
// Output format (one line per measurement, parsed by scripts/bench_summary.py and written in the
// same form by bench/torch_reference.py):
//   {"bench": "matmul", "impl": "flame", "dtype": "bf16", "size": "4096^3", "value": 712.3,
//    "unit": "TFLOP/s", "device": "NVIDIA H100 80GB HBM3"}
#pragma once

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "core/cuda/context.h"
#include "core/cuda_device.h"

namespace flame::bench {

/// One measurement, printed as one JSON line on stdout.
struct Record {
  std::string bench;  // what is measured: "matmul", "add", "copy", "op_overhead", ...
  std::string impl;   // who does it: "flame", "cublas", "cuda_memcpy", "torch", or "a/b" for a ratio
  std::string dtype;  // "bf16", "f32"
  std::string size;   // "4096^3", "256MiB", "16"
  double value = 0.0;
  std::string unit;  // "TFLOP/s", "GB/s", "us/op", "ratio", "rel_l2"
};

inline std::string json_escape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out;
}

/// Name of CUDA device 0 (from its FLAME context).
inline std::string device_name() { return flame::cuda::context(0).properties.name; }

inline void emit(const Record& r) {
  static const std::string device = json_escape(device_name());
  fmt::print(
      "{{\"bench\": \"{}\", \"impl\": \"{}\", \"dtype\": \"{}\", \"size\": \"{}\", \"value\": {:.6g}, "
      "\"unit\": \"{}\", \"device\": \"{}\"}}\n",
      json_escape(r.bench), json_escape(r.impl), json_escape(r.dtype), json_escape(r.size), r.value,
      json_escape(r.unit), device);
  std::fflush(stdout);
}

inline double median(std::vector<double> values) {
  FLAME_CHECK(!values.empty(), "median of no values");
  std::sort(values.begin(), values.end());
  const size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

/// `count` pairs of CUDA events; pair i brackets one timed region on a stream. Read the times
/// after everything was recorded (elapsed_ms synchronises on the last stop event).
class EventTimes {
 public:
  explicit EventTimes(int count) : start_(count), stop_(count) {
    for (int i = 0; i < count; ++i) {
      FLAME_CUDA_CHECK(cudaEventCreate(&start_[i]));
      FLAME_CUDA_CHECK(cudaEventCreate(&stop_[i]));
    }
  }
  ~EventTimes() {
    for (size_t i = 0; i < start_.size(); ++i) {
      cudaEventDestroy(start_[i]);
      cudaEventDestroy(stop_[i]);
    }
  }
  EventTimes(const EventTimes&) = delete;
  EventTimes& operator=(const EventTimes&) = delete;

  void start(int i, cudaStream_t stream) { FLAME_CUDA_CHECK(cudaEventRecord(start_[i], stream)); }
  void stop(int i, cudaStream_t stream) { FLAME_CUDA_CHECK(cudaEventRecord(stop_[i], stream)); }

  /// Milliseconds of each region, in recording order.
  std::vector<double> elapsed_ms() const {
    std::vector<double> ms(start_.size());
    for (size_t i = 0; i < start_.size(); ++i) {
      FLAME_CUDA_CHECK(cudaEventSynchronize(stop_[i]));
      float t = 0.0f;
      FLAME_CUDA_CHECK(cudaEventElapsedTime(&t, start_[i], stop_[i]));
      ms[i] = t;
    }
    return ms;
  }

 private:
  std::vector<cudaEvent_t> start_, stop_;
};

/// Runs a benchmark body: exits 1 with a clear message when no CUDA device is present, and turns
/// any exception into a message on stderr and exit status 1.
template <class Body>
int run_benchmark(const char* program, Body body) {
  try {
    if (!flame::cuda::is_available()) {
      fmt::print(stderr,
                 "{}: no CUDA device is available. This benchmark measures GPU code: run it on a "
                 "machine with an NVIDIA GPU and its driver (scripts/gpu_check.sh does).\n",
                 program);
      return 1;
    }
    return body();
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: failed: {}\n", program, e.what());
    return 1;
  }
}

}  // namespace flame::bench
