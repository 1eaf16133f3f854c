#include "core/error.h"

#include <cstring>

namespace flame::detail {

void throw_error(const char* what, const char* file, int line, const std::string& message) {
  const char* base = std::strrchr(file, '/');
  throw Error(fmt::format("{} [{} at {}:{}]", message, what, base ? base + 1 : file, line));
}

}  // namespace flame::detail
