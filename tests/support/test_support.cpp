#include "support/test_support.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

namespace flame::test {

uint64_t test_seed() {
  static std::string current_test;
  static uint64_t seed = 0;
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name = info ? fmt::format("{}.{}", info->test_suite_name(), info->name()) : "(outside a test)";
  if (name != current_test || seed == 0) {
    current_test = name;
    if (const char* env = std::getenv("FLAME_TEST_SEED"); env != nullptr && *env != '\0') {
      seed = std::stoull(env);
    } else {
      std::random_device device;
      seed = (static_cast<uint64_t>(device()) << 32) ^ device();
      if (seed == 0) seed = 1;
    }
    std::printf("[   SEED   ] %s: FLAME_TEST_SEED=%llu\n", name.c_str(), static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    if (info != nullptr) ::testing::Test::RecordProperty("seed", std::to_string(seed));
  }
  return seed;
}

HostRng::HostRng() : HostRng(test_seed()) {}
HostRng::HostRng(uint64_t seed) : engine_(seed) {}

std::vector<double> HostRng::uniform(int64_t n, double low, double high) {
  std::uniform_real_distribution<double> dist(low, high);
  std::vector<double> out(static_cast<size_t>(n));
  for (auto& v : out) v = dist(engine_);
  return out;
}

std::vector<double> HostRng::integers(int64_t n, int64_t low, int64_t high) {
  std::uniform_int_distribution<int64_t> dist(low, high);
  std::vector<double> out(static_cast<size_t>(n));
  for (auto& v : out) v = static_cast<double>(dist(engine_));
  return out;
}

int64_t HostRng::integer(int64_t low, int64_t high) {
  return std::uniform_int_distribution<int64_t>(low, high)(engine_);
}

const std::vector<Layout>& all_layouts() {
  static const std::vector<Layout> layouts{Layout::Contiguous, Layout::Transposed, Layout::Permuted, Layout::Strided,
                                           Layout::Offset};
  return layouts;
}

std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::Contiguous:
      return "contiguous";
    case Layout::Transposed:
      return "transposed";
    case Layout::Permuted:
      return "permuted";
    case Layout::Strided:
      return "strided";
    case Layout::Offset:
      return "offset";
  }
  return "unknown";
}

namespace {

double filler_for(DType dtype) {
  if (is_floating(dtype)) return std::numeric_limits<double>::quiet_NaN();
  if (dtype == DType::Bool) return 1.0;
  return 77.0;
}

/// Builds a buffer of `base_shape` whose element at base_index(logical index) holds the logical
/// value; the rest holds the filler.
template <class MapIndex>
Tensor scatter_into_base(const std::vector<double>& values, const Shape& shape, const Shape& base_shape, DType dtype,
                         Device device, MapIndex base_index) {
  std::vector<double> base(static_cast<size_t>(numel_of(base_shape)), filler_for(dtype));
  for (int64_t flat = 0; flat < numel_of(shape); ++flat) {
    base[static_cast<size_t>(ravel_index(base_index(unravel_index(flat, shape)), base_shape))] =
        values[static_cast<size_t>(flat)];
  }
  return from_vector(base, base_shape, TensorOptions(dtype, device));
}

}  // namespace

Tensor make_tensor(const std::vector<double>& values, const Shape& shape, DType dtype, Device device, Layout layout) {
  if (static_cast<int64_t>(values.size()) != numel_of(shape)) {
    throw std::logic_error(fmt::format("make_tensor: {} values for shape {}", values.size(), shape_str(shape)));
  }
  const int64_t nd = static_cast<int64_t>(shape.size());
  switch (layout) {
    case Layout::Contiguous:
      return from_vector(values, shape, TensorOptions(dtype, device));
    case Layout::Permuted: {
      if (nd < 3) return make_tensor(values, shape, dtype, device, Layout::Transposed);
      // base dims: [last, 0, 1, ..., nd-2]; permute({1, ..., nd-1, 0}) restores the order.
      Shape base_shape{shape.back()};
      base_shape.insert(base_shape.end(), shape.begin(), shape.end() - 1);
      Tensor base = scatter_into_base(values, shape, base_shape, dtype, device, [&](std::vector<int64_t> i) {
        std::vector<int64_t> b{i.back()};
        b.insert(b.end(), i.begin(), i.end() - 1);
        return b;
      });
      std::vector<int64_t> perm;
      for (int64_t d = 1; d < nd; ++d) perm.push_back(d);
      perm.push_back(0);
      return base.permute(perm);
    }
    case Layout::Transposed: {
      if (nd < 2) return make_tensor(values, shape, dtype, device, Layout::Strided);
      Shape base_shape = shape;
      std::swap(base_shape[nd - 1], base_shape[nd - 2]);
      Tensor base = scatter_into_base(values, shape, base_shape, dtype, device, [&](std::vector<int64_t> i) {
        std::swap(i[nd - 1], i[nd - 2]);
        return i;
      });
      return base.transpose(nd - 2, nd - 1);
    }
    case Layout::Strided:
    case Layout::Offset: {
      if (nd == 0) {
        std::vector<double> base{filler_for(dtype), values[0], filler_for(dtype)};
        return from_vector(base, Shape{3}, TensorOptions(dtype, device)).select(0, 1);
      }
      if (layout == Layout::Strided) {
        const int64_t n = shape.back();
        Shape base_shape = shape;
        base_shape.back() = 2 * n + 1;
        Tensor base = scatter_into_base(values, shape, base_shape, dtype, device, [&](std::vector<int64_t> i) {
          i.back() = 2 * i.back() + 1;
          return i;
        });
        return base.slice(nd - 1, 1, 2 * n + 1, 2);
      }
      Shape base_shape = shape;
      base_shape[0] += 2;
      Tensor base = scatter_into_base(values, shape, base_shape, dtype, device, [&](std::vector<int64_t> i) {
        i[0] += 1;
        return i;
      });
      return base.narrow(0, 1, shape[0]);
    }
  }
  throw std::logic_error("make_tensor: unknown layout");
}

std::vector<double> round_to_dtype(const std::vector<double>& values, DType dtype) {
  std::vector<double> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    switch (dtype) {
      case DType::F64:
        out[i] = v;
        break;
      case DType::F32:
        out[i] = static_cast<float>(v);
        break;
      case DType::F16:
        out[i] = half_bits_to_float(float_to_half_bits(static_cast<float>(v)));
        break;
      case DType::BF16:
        out[i] = bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(v)));
        break;
      case DType::I32:
        out[i] = static_cast<int32_t>(std::trunc(v));
        break;
      case DType::I64:
        out[i] = static_cast<double>(static_cast<int64_t>(std::trunc(v)));
        break;
      case DType::U8:
        out[i] = static_cast<uint8_t>(static_cast<int64_t>(std::trunc(v)));
        break;
      case DType::Bool:
        out[i] = v != 0.0 ? 1.0 : 0.0;
        break;
    }
  }
  return out;
}

std::vector<double> host_values(const Tensor& t) { return t.to_vector<double>(); }

std::vector<int64_t> unravel_index(int64_t flat, const Shape& shape) {
  std::vector<int64_t> index(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return index;
}

int64_t ravel_index(const std::vector<int64_t>& index, const Shape& shape) {
  int64_t flat = 0;
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + index[d];
  return flat;
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t nd = std::max(a.size(), b.size());
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t sa = i < nd - a.size() ? 1 : a[i - (nd - a.size())];
    const int64_t sb = i < nd - b.size() ? 1 : b[i - (nd - b.size())];
    if (sa != sb && sa != 1 && sb != 1) {
      ADD_FAILURE() << "broadcast_shapes: " << shape_str(a) << " and " << shape_str(b) << " do not broadcast";
      return {};
    }
    out[i] = sa == 1 ? sb : sa;
  }
  return out;
}

std::vector<double> broadcast_to(const std::vector<double>& values, const Shape& from, const Shape& to) {
  const size_t lead = to.size() - from.size();
  std::vector<double> out(static_cast<size_t>(numel_of(to)));
  for (int64_t flat = 0; flat < numel_of(to); ++flat) {
    const std::vector<int64_t> index = unravel_index(flat, to);
    std::vector<int64_t> source(from.size());
    for (size_t d = 0; d < from.size(); ++d) source[d] = from[d] == 1 ? 0 : index[d + lead];
    out[static_cast<size_t>(flat)] = values[static_cast<size_t>(ravel_index(source, from))];
  }
  return out;
}

Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::F64:
      return {1e-12, 1e-12};
    case DType::F32:
      return {1e-5, 1e-5};
    case DType::F16:
      return {1e-3, 1e-3};
    case DType::BF16:
      return {1e-2, 1e-2};
    default:
      return {0.0, 0.0};
  }
}

::testing::AssertionResult values_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                        Tolerance tol, const Shape& shape) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size mismatch: actual has " << actual.size() << " elements, expected "
                                         << expected.size();
  }
  size_t mismatches = 0, worst = 0;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double a = actual[i], e = expected[i];
    double ratio = 0.0;
    if (std::isnan(a) || std::isnan(e)) {
      ratio = std::isnan(a) && std::isnan(e) ? 0.0 : std::numeric_limits<double>::infinity();
    } else if (std::isinf(a) || std::isinf(e)) {
      ratio = a == e ? 0.0 : std::numeric_limits<double>::infinity();
    } else {
      const double bound = tol.atol + tol.rtol * std::fabs(e);
      const double diff = std::fabs(a - e);
      ratio = diff == 0.0 ? 0.0 : (bound == 0.0 ? std::numeric_limits<double>::infinity() : diff / bound);
    }
    if (ratio > 1.0) ++mismatches;
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  const std::string where =
      numel_of(shape) != static_cast<int64_t>(actual.size())
          ? fmt::format("flat index {}", worst)
          : fmt::format("index [{}] (flat {}) of shape {}",
                        fmt::join(unravel_index(static_cast<int64_t>(worst), shape), ", "), worst, shape_str(shape));
  return ::testing::AssertionFailure() << mismatches << " of " << actual.size() << " elements differ "
                                       << fmt::format("(rtol {:.3g}, atol {:.3g})", tol.rtol, tol.atol) << "; worst at "
                                       << where
                                       << fmt::format(": actual {:.17g}, expected {:.17g}, |diff| {:.3g}",
                                                      actual[worst], expected[worst],
                                                      std::fabs(actual[worst] - expected[worst]));
}

::testing::AssertionResult all_close(const Tensor& actual, const Shape& expected_shape,
                                     const std::vector<double>& expected, Tolerance tol) {
  if (!actual.defined()) return ::testing::AssertionFailure() << "result tensor is undefined";
  if (actual.shape() != expected_shape) {
    return ::testing::AssertionFailure() << "shape " << shape_str(actual.shape()) << ", expected "
                                         << shape_str(expected_shape);
  }
  return values_close(host_values(actual), expected, tol, expected_shape);
}

::testing::AssertionResult tensors_close(const Tensor& actual, const Tensor& expected, Tolerance tol) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor";
  }
  if (actual.shape() != expected.shape() || actual.dtype() != expected.dtype()) {
    return ::testing::AssertionFailure() << actual.describe() << " vs expected " << expected.describe();
  }
  return values_close(host_values(actual), host_values(expected), tol, expected.shape());
}

::testing::AssertionResult tensors_identical(const Tensor& actual, const Tensor& expected) {
  if (actual.shape() != expected.shape() || actual.dtype() != expected.dtype()) {
    return ::testing::AssertionFailure() << actual.describe() << " vs expected " << expected.describe();
  }
  const std::vector<double> a = host_values(actual), e = host_values(expected);
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &e[i], sizeof(double)) != 0) {
      return ::testing::AssertionFailure()
             << fmt::format("element {} differs: actual {:.17g}, expected {:.17g}", i, a[i], e[i]);
    }
  }
  return ::testing::AssertionSuccess();
}

void guarded(const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "threw: " << error.what();
  } catch (...) {
    ADD_FAILURE() << "threw something that is not a std::exception";
  }
}

TempDir::TempDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info != nullptr ? fmt::format("flame_{}_{}_", info->test_suite_name(), info->name()) : "flame_";
  std::replace(name.begin(), name.end(), '/', '_');  // parameterised test names hold '/'
  std::string pattern = (std::filesystem::temp_directory_path() / (name + "XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr)
    throw std::runtime_error("TempDir: mkdtemp failed for " + pattern + ": " + std::strerror(errno));
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

std::vector<std::string> TempDir::entries() const {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(path_))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path << ": " << std::strerror(errno);
    return "";
  }
  std::string bytes;
  char chunk[1 << 16];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) bytes.append(chunk, static_cast<size_t>(in.gcount()));
  if (in.bad()) ADD_FAILURE() << "cannot read " << path << ": " << std::strerror(errno);
  return bytes;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) FAIL() << "cannot write " << path << ": " << std::strerror(errno);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) FAIL() << "cannot write " << path << ": " << std::strerror(errno);
}

::testing::AssertionResult raises_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const std::string& fragment : fragments) {
      if (message.find(fragment) == std::string::npos) {
        return ::testing::AssertionFailure() << "flame::Error message lacks \"" << fragment << "\": " << message;
      }
    }
    return ::testing::AssertionSuccess() << "raised: " << message;
  } catch (const std::exception& other) {
    return ::testing::AssertionFailure() << "threw a non-flame exception: " << other.what();
  } catch (...) {
    return ::testing::AssertionFailure() << "threw something that is not a std::exception";
  }
  return ::testing::AssertionFailure() << "did not throw (expected flame::Error)";
}

const std::vector<DType>& floating_dtypes() {
  static const std::vector<DType> dtypes{DType::F64, DType::F32, DType::F16, DType::BF16};
  return dtypes;
}

const std::vector<DType>& integer_dtypes() {
  static const std::vector<DType> dtypes{DType::I32, DType::I64};
  return dtypes;
}

std::string cuda_unavailable_reason() {
#ifdef FLAME_WITH_CUDA
  return fmt::format("FLAME was built with CUDA, but cuda::device_count() is {} (no GPU or driver)",
                     cuda::device_count());
#else
  return "FLAME was built without CUDA (FLAME_WITH_CUDA is off)";
#endif
}

namespace {

double sigmoid_ref(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double gelu_tanh_ref(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}
double clamp_ref(double x, double lo, double hi) { return std::min(std::max(x, lo), hi); }
double as_bool(bool b) { return b ? 1.0 : 0.0; }

UnaryCase unary(std::string name, std::function<Tensor(const Tensor&)> op, std::function<double(double)> reference,
                double low, double high, bool integer_ok) {
  UnaryCase c;
  c.name = std::move(name);
  c.op = std::move(op);
  c.reference = std::move(reference);
  c.low = low;
  c.high = high;
  c.integer_ok = integer_ok;
  return c;
}

UnaryCase compare_scalar(std::string name, std::function<Tensor(const Tensor&)> op,
                         std::function<double(double)> reference) {
  UnaryCase c = unary(std::move(name), std::move(op), std::move(reference), -2.0, 2.0, true);
  c.bool_result = true;
  c.small_integers = true;
  return c;
}

BinaryCase binary(std::string name, std::function<Tensor(const Tensor&, const Tensor&)> op,
                  std::function<double(double, double)> reference, bool integer_ok) {
  BinaryCase c;
  c.name = std::move(name);
  c.op = std::move(op);
  c.reference = std::move(reference);
  c.integer_ok = integer_ok;
  return c;
}

BinaryCase compare(std::string name, std::function<Tensor(const Tensor&, const Tensor&)> op,
                   std::function<double(double, double)> reference) {
  BinaryCase c = binary(std::move(name), std::move(op), std::move(reference), true);
  c.a_low = c.b_low = -2.0;
  c.a_high = c.b_high = 2.0;
  c.bool_result = true;
  c.small_integers = true;
  return c;
}

}  // namespace

const std::vector<UnaryCase>& unary_cases() {
  static const std::vector<UnaryCase> cases = [] {
    std::vector<UnaryCase> c;
    c.push_back(unary(
        "neg", [](const Tensor& x) { return neg(x); }, [](double x) { return -x; }, -3, 3, true));
    c.push_back(unary(
        "operator_minus", [](const Tensor& x) { return -x; }, [](double x) { return -x; }, -3, 3, true));
    c.push_back(unary(
        "exp", [](const Tensor& x) { return exp(x); }, [](double x) { return std::exp(x); }, -3, 3, false));
    c.push_back(unary(
        "log", [](const Tensor& x) { return log(x); }, [](double x) { return std::log(x); }, 0.1, 5, false));
    c.push_back(unary(
        "sqrt", [](const Tensor& x) { return sqrt(x); }, [](double x) { return std::sqrt(x); }, 0.1, 5, false));
    c.push_back(unary(
        "rsqrt", [](const Tensor& x) { return rsqrt(x); }, [](double x) { return 1.0 / std::sqrt(x); }, 0.1, 5, false));
    c.push_back(unary(
        "abs", [](const Tensor& x) { return abs(x); }, [](double x) { return std::fabs(x); }, -3, 3, true));
    c.push_back(unary(
        "relu", [](const Tensor& x) { return relu(x); }, [](double x) { return std::max(x, 0.0); }, -3, 3, true));
    c.push_back(unary(
        "relu_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.relu_();
          return y;
        },
        [](double x) { return std::max(x, 0.0); }, -3, 3, true));
    c.push_back(unary(
        "sigmoid", [](const Tensor& x) { return sigmoid(x); }, sigmoid_ref, -6, 6, false));
    c.push_back(unary(
        "tanh", [](const Tensor& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, -3, 3, false));
    c.push_back(unary(
        "gelu", [](const Tensor& x) { return gelu(x); }, gelu_ref, -4, 4, false));
    c.push_back(unary(
        "gelu_tanh", [](const Tensor& x) { return gelu(x, GeluApproximation::Tanh); }, gelu_tanh_ref, -4, 4, false));
    c.push_back(unary(
        "silu", [](const Tensor& x) { return silu(x); }, [](double x) { return x * sigmoid_ref(x); }, -6, 6, false));
    c.push_back(unary(
        "pow_2", [](const Tensor& x) { return pow(x, 2.0); }, [](double x) { return x * x; }, -3, 3, false));
    c.push_back(unary(
        "pow_3", [](const Tensor& x) { return pow(x, 3.0); }, [](double x) { return x * x * x; }, -2, 2, false));
    c.push_back(unary(
        "pow_0_5", [](const Tensor& x) { return pow(x, 0.5); }, [](double x) { return std::sqrt(x); }, 0.1, 5, false));
    c.push_back(unary(
        "pow_neg_1_5", [](const Tensor& x) { return pow(x, -1.5); }, [](double x) { return std::pow(x, -1.5); }, 0.2, 5,
        false));
    c.push_back(unary(
        "clamp", [](const Tensor& x) { return clamp(x, -1.0, 2.0); }, [](double x) { return clamp_ref(x, -1, 2); }, -3,
        3, true));
    c.push_back(unary(
        "clamp_fraction", [](const Tensor& x) { return clamp(x, -0.75, 1.25); },
        [](double x) { return clamp_ref(x, -0.75, 1.25); }, -3, 3, false));
    c.push_back(unary(
        "clamp_min", [](const Tensor& x) { return clamp_min(x, 0.5); }, [](double x) { return std::max(x, 0.5); }, -3,
        3, false));
    c.push_back(unary(
        "clamp_max", [](const Tensor& x) { return clamp_max(x, -0.5); }, [](double x) { return std::min(x, -0.5); }, -3,
        3, false));
    c.push_back(unary(
        "clamp_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.clamp_(-1.0, 2.0);
          return y;
        },
        [](double x) { return clamp_ref(x, -1, 2); }, -3, 3, true));
    // scalar variants of the binary ops
    c.push_back(unary(
        "add_scalar", [](const Tensor& x) { return add(x, 2.0); }, [](double x) { return x + 2; }, -3, 3, true));
    c.push_back(unary(
        "add_scalar_fraction", [](const Tensor& x) { return add(x, 0.75); }, [](double x) { return x + 0.75; }, -3, 3,
        false));
    c.push_back(unary(
        "sub_scalar", [](const Tensor& x) { return sub(x, 1.5); }, [](double x) { return x - 1.5; }, -3, 3, false));
    c.push_back(unary(
        "mul_scalar", [](const Tensor& x) { return mul(x, -3.0); }, [](double x) { return -3 * x; }, -3, 3, true));
    c.push_back(unary(
        "div_scalar", [](const Tensor& x) { return div(x, 0.8); }, [](double x) { return x / 0.8; }, -3, 3, false));
    c.push_back(unary(
        "maximum_scalar", [](const Tensor& x) { return maximum(x, 1.0); }, [](double x) { return std::max(x, 1.0); },
        -3, 3, true));
    c.push_back(unary(
        "minimum_scalar", [](const Tensor& x) { return minimum(x, -1.0); }, [](double x) { return std::min(x, -1.0); },
        -3, 3, true));
    c.push_back(unary(
        "operator_plus_scalar", [](const Tensor& x) { return x + 2.0; }, [](double x) { return x + 2; }, -3, 3, true));
    c.push_back(unary(
        "operator_minus_scalar", [](const Tensor& x) { return x - 1.0; }, [](double x) { return x - 1; }, -3, 3, true));
    c.push_back(unary(
        "operator_times_scalar", [](const Tensor& x) { return x * 0.5; }, [](double x) { return x * 0.5; }, -3, 3,
        false));
    c.push_back(unary(
        "operator_divide_scalar", [](const Tensor& x) { return x / 4.0; }, [](double x) { return x / 4; }, -3, 3,
        false));
    c.push_back(unary(
        "scalar_times_operator", [](const Tensor& x) { return 2.5 * x; }, [](double x) { return 2.5 * x; }, -3, 3,
        false));
    c.push_back(unary(
        "add_scalar_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.add_(3.0);
          return y;
        },
        [](double x) { return x + 3; }, -3, 3, true));
    c.push_back(unary(
        "sub_scalar_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.sub_(2.0);
          return y;
        },
        [](double x) { return x - 2; }, -3, 3, true));
    c.push_back(unary(
        "mul_scalar_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.mul_(-0.5);
          return y;
        },
        [](double x) { return -0.5 * x; }, -3, 3, false));
    c.push_back(unary(
        "div_scalar_inplace",
        [](const Tensor& x) {
          Tensor y = x;
          y.div_(4.0);
          return y;
        },
        [](double x) { return x / 4; }, -3, 3, false));
    c.push_back(compare_scalar(
        "eq_scalar", [](const Tensor& x) { return eq(x, 1.0); }, [](double x) { return as_bool(x == 1); }));
    c.push_back(compare_scalar(
        "ne_scalar", [](const Tensor& x) { return ne(x, 1.0); }, [](double x) { return as_bool(x != 1); }));
    c.push_back(compare_scalar(
        "lt_scalar", [](const Tensor& x) { return lt(x, 0.0); }, [](double x) { return as_bool(x < 0); }));
    c.push_back(compare_scalar(
        "le_scalar", [](const Tensor& x) { return le(x, 0.0); }, [](double x) { return as_bool(x <= 0); }));
    c.push_back(compare_scalar(
        "gt_scalar", [](const Tensor& x) { return gt(x, -1.0); }, [](double x) { return as_bool(x > -1); }));
    c.push_back(compare_scalar(
        "ge_scalar", [](const Tensor& x) { return ge(x, -1.0); }, [](double x) { return as_bool(x >= -1); }));
    return c;
  }();
  return cases;
}

const std::vector<BinaryCase>& binary_cases() {
  static const std::vector<BinaryCase> cases = [] {
    std::vector<BinaryCase> c;
    using T = const Tensor&;
    c.push_back(binary(
        "add", [](T a, T b) { return add(a, b); }, [](double a, double b) { return a + b; }, true));
    c.push_back(binary(
        "sub", [](T a, T b) { return sub(a, b); }, [](double a, double b) { return a - b; }, true));
    c.push_back(binary(
        "mul", [](T a, T b) { return mul(a, b); }, [](double a, double b) { return a * b; }, true));
    BinaryCase d = binary(
        "div", [](T a, T b) { return div(a, b); }, [](double a, double b) { return a / b; }, false);
    d.b_low = 0.5;
    c.push_back(d);
    BinaryCase p = binary(
        "pow", [](T a, T b) { return pow(a, b); }, [](double a, double b) { return std::pow(a, b); }, false);
    p.a_low = 0.2;
    p.b_low = -2.0;
    p.b_high = 2.0;
    c.push_back(p);
    c.push_back(binary(
        "maximum", [](T a, T b) { return maximum(a, b); }, [](double a, double b) { return std::max(a, b); }, true));
    c.push_back(binary(
        "minimum", [](T a, T b) { return minimum(a, b); }, [](double a, double b) { return std::min(a, b); }, true));
    c.push_back(binary(
        "add_alpha", [](T a, T b) { return add(a, b, -0.75); }, [](double a, double b) { return a - 0.75 * b; },
        false));
    c.push_back(binary(
        "add_alpha_integer", [](T a, T b) { return add(a, b, 2.0); }, [](double a, double b) { return a + 2 * b; },
        true));
    c.push_back(binary(
        "operator_plus", [](T a, T b) { return a + b; }, [](double a, double b) { return a + b; }, true));
    c.push_back(binary(
        "operator_minus", [](T a, T b) { return a - b; }, [](double a, double b) { return a - b; }, true));
    c.push_back(binary(
        "operator_times", [](T a, T b) { return a * b; }, [](double a, double b) { return a * b; }, true));
    BinaryCase q = binary(
        "operator_divide", [](T a, T b) { return a / b; }, [](double a, double b) { return a / b; }, false);
    q.b_low = 0.5;
    c.push_back(q);
    c.push_back(compare(
        "eq", [](T a, T b) { return eq(a, b); }, [](double a, double b) { return as_bool(a == b); }));
    c.push_back(compare(
        "ne", [](T a, T b) { return ne(a, b); }, [](double a, double b) { return as_bool(a != b); }));
    c.push_back(compare(
        "lt", [](T a, T b) { return lt(a, b); }, [](double a, double b) { return as_bool(a < b); }));
    c.push_back(compare(
        "le", [](T a, T b) { return le(a, b); }, [](double a, double b) { return as_bool(a <= b); }));
    c.push_back(compare(
        "gt", [](T a, T b) { return gt(a, b); }, [](double a, double b) { return as_bool(a > b); }));
    c.push_back(compare(
        "ge", [](T a, T b) { return ge(a, b); }, [](double a, double b) { return as_bool(a >= b); }));
    return c;
  }();
  return cases;
}

const std::vector<std::pair<Shape, Shape>>& broadcast_shape_pairs() {
  static const std::vector<std::pair<Shape, Shape>> pairs{
      {{7}, {7}},          {{3, 4}, {3, 4}}, {{3, 4}, {4}}, {{4}, {3, 4}},          {{3, 1}, {1, 4}},
      {{2, 3, 4}, {3, 1}}, {{}, {2, 3}},     {{2, 3}, {}},  {{2, 1, 4}, {2, 3, 1}}, {{5, 1, 3}, {4, 1}},
      {{1}, {5}},          {{17, 33}, {33}},
  };
  return pairs;
}

std::vector<double> case_inputs(HostRng& rng, int64_t n, double low, double high, DType dtype, bool small_integers) {
  if (small_integers || !is_floating(dtype)) {
    return rng.integers(n, static_cast<int64_t>(std::ceil(low)), static_cast<int64_t>(std::floor(high)));
  }
  return round_to_dtype(rng.uniform(n, low, high), dtype);
}

void PrintTo(const UnaryCase& c, std::ostream* os) { *os << c.name; }
void PrintTo(const BinaryCase& c, std::ostream* os) { *os << c.name; }

}  // namespace flame::test
