// Where a Tensor's storage lives.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace flame {

enum class DeviceType : uint8_t { CPU, CUDA };

/// A device: the host, or CUDA device `index`.
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device&) const = default;
  /// "cpu" or "cuda:N".
  std::string str() const;
  /// Parses "cpu", "cuda" (device 0) or "cuda:N"; anything else raises flame::Error.
  static Device parse(std::string_view text);
};

inline constexpr Device kCPU{DeviceType::CPU, 0};
/// CUDA device `index`.
inline Device cuda_device(int index = 0) { return Device{DeviceType::CUDA, index}; }

}  // namespace flame
