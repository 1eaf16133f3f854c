// FLAME's one error idiom: every failure raises flame::Error through these macros.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace flame {

/// The exception every FLAME failure raises. The message names what failed, where, what was
/// expected and, where it helps, how to fix it.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
/// Throws flame::Error for a failed check: `what` is the checked expression or the failing call,
/// `message` the explanation. Never returns.
[[noreturn]] void throw_error(const char* what, const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace flame

/// FLAME_CHECK(cond, fmt, args...): throws flame::Error with the formatted message when cond is false.
#define FLAME_CHECK(cond, ...)                                                            \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      ::flame::detail::throw_error(#cond, __FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    }                                                                                     \
  } while (0)

/// FLAME_FAIL(fmt, args...): throws flame::Error unconditionally (an unsupported case, a timeout, a
/// failed call); the message ends "[raised at file:line]".
#define FLAME_FAIL(...) ::flame::detail::throw_error("raised", __FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
