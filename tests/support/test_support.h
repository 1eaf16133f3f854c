// Helpers shared by the GoogleTest suites of FLAME: replayable seeds, random host data, tensors in
// chosen (non-contiguous) layouts, float64 index math for references, tolerance-aware comparisons,
// and the tables of elementwise ops that both the CPU and the CUDA suites run.
//
// References are computed on the host in double from plain std::vector<double> data; nothing here
// calls a FLAME op to compute an expected value (FLAME is only used to build the inputs and to
// read results back).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "core/cuda_device.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace flame::test {

// --- seeds and random host data ---------------------------------------------------------------

/// The seed of the running test: $FLAME_TEST_SEED when set, else a fresh value from
/// std::random_device. The first call in each test prints it with the test's name (and records it
/// as the test property "seed"), so a failure can be replayed with
/// FLAME_TEST_SEED=<seed> <binary> --gtest_filter=<Suite.Test>.
uint64_t test_seed();

/// Random host data (std::mt19937_64) seeded, by default, with test_seed().
class HostRng {
 public:
  HostRng();
  explicit HostRng(uint64_t seed);

  /// n values uniform on [low, high).
  std::vector<double> uniform(int64_t n, double low, double high);
  /// n integers uniform on [low, high] (inclusive), as doubles.
  std::vector<double> integers(int64_t n, int64_t low, int64_t high);
  /// One integer uniform on [low, high] (inclusive).
  int64_t integer(int64_t low, int64_t high);
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
};

// --- tensors from host data ---------------------------------------------------------------------

/// How make_tensor lays out the values in memory. Every layout except Contiguous gives a view
/// into a larger or differently ordered buffer; the logical values are the same in all of them.
enum class Layout {
  Contiguous,  // from_vector
  Transposed,  // last two dims stored swapped, then .transpose(-1, -2) (Strided for < 2 dims)
  Permuted,    // last dim stored first, then .permute(...) (Transposed for < 3 dims)
  Strided,     // every other element of a wider last dim: .slice(-1, 1, 2n+1, 2) (0-d: .select)
  Offset,      // rows 1..n of a buffer two rows taller: .narrow(0, 1, n) (0-d: .select)
};
/// Every Layout, Contiguous first.
const std::vector<Layout>& all_layouts();
std::string_view layout_name(Layout layout);

/// A tensor of `shape` holding `values` (row-major) converted to `dtype`, on `device`, laid out as
/// `layout`. Buffer elements the view does not cover hold NaN (floating) or a sentinel (integers),
/// so an op reading outside the view shows up in the results.
Tensor make_tensor(const std::vector<double>& values, const Shape& shape, DType dtype, Device device = kCPU,
                   Layout layout = Layout::Contiguous);

/// `values` as they read back after storing them in `dtype` (rounded to nearest even for
/// f32/f16/bf16, truncated toward zero for integers, != 0 for bool).
std::vector<double> round_to_dtype(const std::vector<double>& values, DType dtype);

/// The elements of `t` in row-major order, as double, on the host.
std::vector<double> host_values(const Tensor& t);

// --- index math for references (row-major, NumPy broadcasting) -------------------------------------

std::vector<int64_t> unravel_index(int64_t flat, const Shape& shape);
int64_t ravel_index(const std::vector<int64_t>& index, const Shape& shape);
int64_t numel_of(const Shape& shape);
/// The broadcast shape of a and b; fails the current test (and returns {}) when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b);
/// `values` of shape `from` broadcast to shape `to` (row-major).
std::vector<double> broadcast_to(const std::vector<double>& values, const Shape& from, const Shape& to);

// --- comparisons ---------------------------------------------------------------------------------

/// |actual - expected| <= atol + rtol * |expected| elementwise; NaN matches NaN only.
struct Tolerance {
  double rtol = 0.0;
  double atol = 0.0;
  Tolerance scaled(double factor) const { return Tolerance{rtol * factor, atol * factor}; }
};
/// f64 1e-12, f32 1e-5, f16 1e-3, bf16 1e-2 (rel and abs); exact for integers and bool.
Tolerance tolerance_for(DType dtype);

/// Compares value lists; on failure names the count of mismatches and the worst element (its
/// multi-index in `shape` when given) with actual, expected and difference.
::testing::AssertionResult values_close(const std::vector<double>& actual, const std::vector<double>& expected,
                                        Tolerance tol, const Shape& shape = {});
/// Checks actual's shape and then its values (read back to the host).
::testing::AssertionResult all_close(const Tensor& actual, const Shape& expected_shape,
                                     const std::vector<double>& expected, Tolerance tol);
/// Same shape, same dtype and close values; either tensor may live on any device.
::testing::AssertionResult tensors_close(const Tensor& actual, const Tensor& expected, Tolerance tol);
/// Bit-identical element patterns (same shape and dtype); for RNG comparisons across devices.
::testing::AssertionResult tensors_identical(const Tensor& actual, const Tensor& expected);

/// Runs one sub-case of a loop: an exception fails the test (with the SCOPED_TRACE context in
/// effect) instead of ending it, so the remaining sub-cases still run and report.
void guarded(const std::function<void()>& body);

/// A fresh directory for one test (under the system's temporary directory, named after the
/// running test), removed with everything in it when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// `name` inside the directory.
  std::string file(const std::string& name) const;
  /// The directory itself.
  const std::string& path() const { return path_; }
  /// The names of its entries, sorted.
  std::vector<std::string> entries() const;

 private:
  std::string path_;
};

/// The whole content of the file at `path`, byte for byte. A file that cannot be opened or read
/// fails the running test ("cannot read <path>: <reason>") and gives what was read ("" if nothing).
std::string read_file(const std::string& path);
/// Replaces the file at `path` with `bytes`, byte for byte (created if missing). A file that cannot
/// be opened, written or closed fails the running test (fatally: "cannot write <path>: <reason>").
void write_file(const std::string& path, const std::string& bytes);

/// Success when `fn` throws flame::Error whose message contains every fragment.
::testing::AssertionResult raises_error(const std::function<void()>& fn,
                                        const std::vector<std::string>& fragments = {});

// --- dtypes and devices --------------------------------------------------------------------------

/// f64, f32, f16, bf16.
const std::vector<DType>& floating_dtypes();
/// i32, i64.
const std::vector<DType>& integer_dtypes();
/// Why no CUDA device can be used ("FLAME was built without CUDA", ...).
std::string cuda_unavailable_reason();

// --- op tables shared by the CPU (vs float64) and CUDA (vs CPU) suites ---------------------------

/// An elementwise op of one tensor (scalar variants bind their scalar here).
struct UnaryCase {
  std::string name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> reference;
  double low = -3.0, high = 3.0;  // input range, chosen where the op is well conditioned
  bool integer_ok = false;        // also defined on i32 / i64 (integer inputs drawn from the range)
  bool bool_result = false;       // returns bool (comparisons)
  bool small_integers = false;    // inputs drawn from the integers of the range, so ties occur
};
const std::vector<UnaryCase>& unary_cases();
/// gtest prints parameters by name.
void PrintTo(const UnaryCase& c, std::ostream* os);

/// A broadcasting elementwise op of two tensors.
struct BinaryCase {
  std::string name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> reference;
  double a_low = -3.0, a_high = 3.0, b_low = -3.0, b_high = 3.0;
  bool integer_ok = false;
  bool bool_result = false;
  bool small_integers = false;
};
const std::vector<BinaryCase>& binary_cases();
void PrintTo(const BinaryCase& c, std::ostream* os);

/// Pairs of operand shapes that broadcast (equal, trailing, size-1 on both sides, 0-d, rank mix).
const std::vector<std::pair<Shape, Shape>>& broadcast_shape_pairs();

/// Input values for a case: uniform on [low, high) or, for integer dtypes / small_integers,
/// integers in [ceil(low), floor(high)].
std::vector<double> case_inputs(HostRng& rng, int64_t n, double low, double high, DType dtype, bool small_integers);

}  // namespace flame::test

/// Skips the current test, with the reason, when no CUDA device is usable.
#define FLAME_SKIP_WITHOUT_CUDA()                                                     \
  do {                                                                                \
    if (!::flame::cuda::is_available()) {                                             \
      GTEST_SKIP() << "no CUDA device: " << ::flame::test::cuda_unavailable_reason(); \
    }                                                                                 \
  } while (0)

namespace flame::test {

/// Fixture of the CUDA suites: skips each test, with the reason, when no CUDA device is usable.
/// Value-parameterised suites derive from it and from ::testing::WithParamInterface<Param>.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override { FLAME_SKIP_WITHOUT_CUDA(); }
};

}  // namespace flame::test
