#include "core/device.h"

#include <charconv>

#include "core/error.h"

namespace flame {

std::string Device::str() const { return is_cpu() ? "cpu" : fmt::format("cuda:{}", index); }

Device Device::parse(std::string_view text) {
  if (text == "cpu") return kCPU;
  if (text == "cuda") return cuda_device(0);
  if (text.substr(0, 5) == "cuda:") {
    int index = -1;
    const auto digits = text.substr(5);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (ec == std::errc() && end == digits.data() + digits.size() && index >= 0) return cuda_device(index);
  }
  FLAME_FAIL("bad device '{}': expected 'cpu', 'cuda' or 'cuda:N'", text);
}

}  // namespace flame
