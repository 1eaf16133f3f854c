// Bad input raises flame::Error with a message naming the op and what was wrong: shapes that do
// not broadcast or multiply, dtype mixes, integer inputs to floating-point ops, out-of-range dims
// and indices, bad layouts, bad random ranges, undefined tensors, unusable devices, and an NVRTC
// compile failure (whose message carries the NVRTC log; needs no GPU).
#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/fused.h"
#include "support/test_support.h"
#ifdef FLAME_WITH_CUDA
#include "core/cuda/nvrtc.h"
#endif

namespace flame {
namespace {

struct ErrorCase {
  std::string name;
  std::function<void()> fn;
  std::vector<std::string> fragments;  // each must appear in the message
};

Tensor f32(const Shape& shape) { return zeros(shape, kF32); }
Tensor f64(const Shape& shape) { return zeros(shape, kF64); }
Tensor i32(const Shape& shape) { return zeros(shape, kI32); }
Tensor i64(const Shape& shape) { return zeros(shape, kI64); }
Tensor index_of(const std::vector<double>& values) {
  return test::make_tensor(values, {static_cast<int64_t>(values.size())}, kI64);
}

std::vector<ErrorCase> shape_cases() {
  return {
      {"add_does_not_broadcast",
       [] {
         add(f32({2, 3}), f32({4, 3}));
       },
       {"add", "[2, 3]", "[4, 3]"}},
      {"mul_does_not_broadcast", [] { mul(f32({3}), f32({4})); }, {"mul", "[3]", "[4]"}},
      {"where_does_not_broadcast",
       [] { where(zeros({2}, kBool), f32({3}), f32({3})); },
       {"where", "[2]", "[3]"}},
      {"inplace_cannot_grow_target",
       [] {
         f32({4}).add_(f32({3, 4}));
       },
       {"[4]", "[3, 4]"}},
      {"copy_does_not_broadcast",
       [] {
         f32({2, 3}).copy_(f32({3, 2}));
       },
       {"[2, 3]", "[3, 2]"}},
      {"matmul_inner_mismatch",
       [] {
         matmul(f32({2, 3}), f32({4, 5}));
       },
       {"matmul", "[2, 3]", "[4, 5]"}},
      {"matmul_batch_mismatch",
       [] {
         matmul(f32({2, 3, 4}), f32({3, 4, 5}));
       },
       {"matmul"}},
      {"matmul_zero_dim_operand", [] { matmul(f32({}), f32({3})); }, {"matmul"}},
      {"cat_other_dims_differ",
       [] {
         cat({f32({2, 3}), f32({2, 4})}, 0);
       },
       {"cat", "[2, 3]", "[2, 4]"}},
      {"cat_rank_differs",
       [] {
         cat({f32({2, 3}), f32({3})}, 0);
       },
       {"cat"}},
      {"cat_no_tensors", [] { cat({}, 0); }, {"cat"}},
      {"stack_shapes_differ",
       [] {
         stack({f32({2, 3}), f32({3, 2})});
       },
       {"stack", "[2, 3]", "[3, 2]"}},
      {"view_numel_mismatch",
       [] {
         f32({2, 3}).view({5});
       },
       {"view", "[5]", "6"}},
      {"view_two_inferred_dims",
       [] {
         f32({2, 3}).view({-1, -1});
       },
       {"view"}},
      {"view_incompatible_layout",
       [] {
         f32({2, 3}).t().view({6});
       },
       {"view"}},
      {"reshape_numel_mismatch",
       [] {
         f32({2, 3}).reshape({4});
       },
       {"reshape"}},
      {"expand_non_singleton",
       [] {
         f32({3, 2}).expand({3, 4});
       },
       {"expand", "[3, 2]", "[3, 4]"}},
      {"expand_fewer_dims",
       [] {
         f32({2, 3}).expand({3});
       },
       {"expand"}},
      {"from_vector_size_mismatch",
       [] {
         from_vector(std::vector<double>{1, 2, 3}, {2, 2});
       },
       {"[2, 2]"}},
      {"negative_size",
       [] {
         zeros({2, -1});
       },
       {"[2, -1]"}},
      {"too_many_dims", [] { zeros(Shape(kMaxDims + 1, 1)); }, {}},
      {"index_select_index_not_1d",
       [] {
         index_select(f32({3, 4}), 0, i64({2, 2}));
       },
       {"index_select"}},
      {"gather_rank_mismatch",
       [] {
         gather(f32({3, 4}), 0, i64({3}));
       },
       {"gather"}},
      {"gather_index_too_large_in_other_dim",
       [] {
         gather(f32({3, 4}), 0, i64({2, 5}));
       },
       {"gather"}},
      {"scatter_add_src_shape",
       [] {
         scatter_add(f32({3, 4}), 0, i64({2, 4}), f32({2, 3}));
       },
       {"scatter_add"}},
      {"item_of_many_elements", [] { (void)f32({2}).item(); }, {"item"}},
      {"from_storage_outside_buffer",
       [] { Tensor::from_storage(std::make_shared<Storage>(kCPU, 16), {5}, {1}, 0, kF32); },
       {}},
  };
}

std::vector<ErrorCase> dtype_cases() {
  return {
      {"add_dtype_mix", [] { add(f32({2}), f64({2})); }, {"add", "f32", "f64"}},
      {"sub_dtype_mix", [] { sub(i32({2}), i64({2})); }, {"sub", "i32", "i64"}},
      {"eq_dtype_mix", [] { eq(f32({2}), f64({2})); }, {"eq", "f32", "f64"}},
      {"inplace_dtype_mix", [] { f32({2}).mul_(f64({2})); }, {"f32", "f64"}},
      {"matmul_dtype_mix",
       [] {
         matmul(f32({2, 2}), f64({2, 2}));
       },
       {"matmul", "f32", "f64"}},
      {"matmul_integer",
       [] {
         matmul(i32({2, 2}), i32({2, 2}));
       },
       {"matmul", "i32"}},
      {"where_operand_mix", [] { where(zeros({2}, kBool), f32({2}), f64({2})); }, {"where", "f32", "f64"}},
      {"where_condition_not_bool", [] { where(f32({2}), f32({2}), f32({2})); }, {"where", "f32"}},
      {"cat_dtype_mix",
       [] {
         cat({f32({2}), f64({2})});
       },
       {"cat", "f32", "f64"}},
      {"stack_dtype_mix",
       [] {
         stack({f32({2}), i64({2})});
       },
       {"stack", "f32", "i64"}},
      {"index_select_float_index", [] { index_select(f32({3}), 0, f32({2})); }, {"index_select", "f32"}},
      {"gather_float_index", [] { gather(f32({3}), 0, f32({2})); }, {"gather", "f32"}},
      {"scatter_add_src_dtype", [] { scatter_add(f32({3}), 0, i64({2}), f64({2})); }, {"scatter_add"}},
      {"exp_of_integer", [] { exp(i32({2})); }, {"exp", "i32"}},
      {"log_of_integer", [] { log(i64({2})); }, {"log", "i64"}},
      {"sqrt_of_integer", [] { sqrt(i32({2})); }, {"sqrt", "i32"}},
      {"sigmoid_of_integer", [] { sigmoid(i32({2})); }, {"sigmoid", "i32"}},
      {"tanh_of_bool", [] { tanh(zeros({2}, kBool)); }, {"tanh", "bool"}},
      {"gelu_of_integer", [] { gelu(i64({2})); }, {"gelu", "i64"}},
      {"silu_of_integer", [] { silu(i32({2})); }, {"silu", "i32"}},
      {"div_of_integers", [] { div(i64({2}), i64({2})); }, {"div", "i64"}},
      {"div_scalar_of_integer", [] { div(i32({2}), 2.0); }, {"div", "i32"}},
      {"softmax_of_integer",
       [] {
         softmax(i32({2, 2}), 1);
       },
       {"softmax", "i32"}},
      {"log_softmax_of_integer",
       [] {
         log_softmax(i64({2, 2}), 1);
       },
       {"softmax", "i64"}},
      {"mean_of_integer",
       [] {
         mean(i32({2, 2}));
       },
       {"mean", "i32"}},
      {"rand_integer_dtype", [] { rand({2}, kI32); }, {"rand", "i32"}},
      {"randn_integer_dtype", [] { randn({2}, kI64); }, {"randn", "i64"}},
      {"data_wrong_type", [] { (void)f32({2}).data<double>(); }, {"f32"}},
  };
}

std::vector<ErrorCase> dim_cases() {
  return {
      {"sum_dim_too_large",
       [] {
         sum(f32({2, 3}), {2});
       },
       {"sum"}},
      {"sum_dim_too_negative",
       [] {
         sum(f32({2, 3}), {-3});
       },
       {"sum"}},
      {"mean_dim_out_of_range",
       [] {
         mean(f32({2, 3}), {5});
       },
       {"mean"}},
      {"var_dim_out_of_range",
       [] {
         var(f32({2, 3}), {2});
       },
       {"var"}},
      {"max_dim_out_of_range",
       [] {
         max(f32({2, 3}), 2);
       },
       {"max"}},
      {"min_dim_out_of_range",
       [] {
         min(f32({2, 3}), -3);
       },
       {"min"}},
      {"argmax_dim_out_of_range",
       [] {
         argmax(f32({2, 3}), 2);
       },
       {"argmax"}},
      {"softmax_dim_out_of_range",
       [] {
         softmax(f32({2, 3}), 2);
       },
       {"softmax"}},
      {"log_softmax_dim_out_of_range",
       [] {
         log_softmax(f32({2, 3}), -3);
       },
       {"softmax"}},
      {"transpose_dim_out_of_range",
       [] {
         f32({2, 3}).transpose(0, 2);
       },
       {"transpose"}},
      {"t_of_3d",
       [] {
         f32({2, 3, 4}).t();
       },
       {}},
      {"permute_wrong_length",
       [] {
         f32({2, 3}).permute({0});
       },
       {"permute"}},
      {"permute_repeated_dim",
       [] {
         f32({2, 3}).permute({0, 0});
       },
       {"permute"}},
      {"narrow_past_end",
       [] {
         f32({2, 3}).narrow(1, 2, 2);
       },
       {"narrow"}},
      {"narrow_dim_out_of_range",
       [] {
         f32({2, 3}).narrow(2, 0, 1);
       },
       {"narrow"}},
      {"slice_dim_out_of_range",
       [] {
         f32({2, 3}).slice(2, 0, 1);
       },
       {"slice"}},
      {"slice_zero_step",
       [] {
         f32({2, 3}).slice(1, 0, 3, 0);
       },
       {"slice"}},
      {"select_index_out_of_range",
       [] {
         f32({2, 3}).select(1, 3);
       },
       {"select"}},
      {"select_negative_index_out_of_range",
       [] {
         f32({2, 3}).select(0, -3);
       },
       {"select"}},
      {"squeeze_dim_out_of_range",
       [] {
         f32({2, 1}).squeeze(2);
       },
       {"squeeze"}},
      {"unsqueeze_dim_out_of_range",
       [] {
         f32({2, 3}).unsqueeze(4);
       },
       {"unsqueeze"}},
      {"flatten_dim_out_of_range",
       [] {
         f32({2, 3}).flatten(0, 2);
       },
       {"flatten"}},
      {"size_dim_out_of_range",
       [] {
         (void)f32({2, 3}).size(2);
       },
       {}},
      {"stride_dim_out_of_range",
       [] {
         (void)f32({2, 3}).stride(-3);
       },
       {}},
      {"cat_dim_out_of_range",
       [] {
         cat({f32({2, 3}), f32({2, 3})}, 2);
       },
       {"cat"}},
      {"stack_dim_out_of_range",
       [] {
         stack({f32({2, 3}), f32({2, 3})}, 3);
       },
       {"stack"}},
      {"index_select_dim_out_of_range",
       [] {
         index_select(f32({2, 3}), 2, index_of({0}));
       },
       {"index_select"}},
      {"gather_dim_out_of_range",
       [] {
         gather(f32({2, 3}), 2, i64({2, 3}));
       },
       {"gather"}},
      {"scatter_add_dim_out_of_range",
       [] {
         scatter_add(f32({2, 3}), -3, i64({2, 3}), f32({2, 3}));
       },
       {"scatter_add"}},
  };
}

std::vector<ErrorCase> index_cases() {
  return {
      {"index_select_index_too_large",
       [] {
         index_select(f32({3, 2}), 0, index_of({0, 3}));
       },
       {"index_select"}},
      {"index_select_negative_index",
       [] {
         index_select(f32({3, 2}), 0, index_of({-1}));
       },
       {"index_select"}},
      {"index_select_i32_index_too_large",
       [] {
         index_select(f32({2, 3}), 1, test::make_tensor({5}, {1}, kI32));
       },
       {"index_select"}},
      {"gather_index_too_large",
       [] {
         gather(f32({3}), 0, index_of({1, 3}));
       },
       {"gather"}},
      {"gather_negative_index", [] { gather(f32({3}), 0, index_of({-1})); }, {"gather"}},
      {"scatter_add_index_too_large",
       [] { scatter_add(f32({3}), 0, index_of({3}), f32({1})); },
       {"scatter_add"}},
      {"scatter_add_negative_index",
       [] { scatter_add(f32({3}), 0, index_of({-2}), f32({1})); },
       {"scatter_add"}},
      {"randint_empty_range", [] { randint(3, 3, {2}); }, {"randint"}},
      {"randint_reversed_range", [] { randint(5, 1, {2}); }, {"randint"}},
      {"randint_range_over_2_pow_32", [] { randint(0, (int64_t{1} << 32) + 1, {2}); }, {"randint"}},
      {"undefined_tensor", [] { (void)Tensor().shape(); }, {"undefined"}},
      {"undefined_operand", [] { add(Tensor(), f32({2})); }, {}},
      {"cuda_device_index_out_of_range", [] { zeros({2}, cuda_device(99)); }, {}},
  };
}

/// One test per table (a process per case would cost more than the cases): each case is named in
/// the failure's trace.
void expect_all_raise(const std::vector<ErrorCase>& cases) {
  for (const ErrorCase& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_TRUE(test::raises_error(c.fn, c.fragments));
  }
}

TEST(Errors, ShapesThatDoNotFit) { expect_all_raise(shape_cases()); }
TEST(Errors, DtypeMixesAndFloatingOnlyOps) { expect_all_raise(dtype_cases()); }
TEST(Errors, DimsOutOfRange) { expect_all_raise(dim_cases()); }
TEST(Errors, IndicesAndRangesOutOfBounds) { expect_all_raise(index_cases()); }

TEST(Errors, ATensorStaysUsableAfterAFailedOp) {
  test::HostRng rng;
  const auto v = rng.uniform(6, -1, 1);
  Tensor x = test::make_tensor(v, {2, 3}, kF64);
  EXPECT_TRUE(test::raises_error([&] { x.add_(f64({4})); }));
  EXPECT_TRUE(test::all_close(x, {2, 3}, v, {0, 0}));
  EXPECT_TRUE(test::raises_error([&] { (void)index_select(x, 1, index_of({0, 7})); }));
  EXPECT_TRUE(test::all_close(index_select(x, 1, index_of({2})), {2, 1}, {v[2], v[5]}, {0, 0}));
}

TEST(Errors, ARefusedInPlaceOpLeavesTheVersionAndALaterBackwardAlone) {
  // A tensor saved for backward (w by mul, idx by gather) meets an in-place op that is refused for
  // its argument: nothing is written, so its version must not move, and the backward must run.
  // (A version bumped before the checks made it raise "modified by an in-place operation".)
  test::HostRng rng;
  const auto v = rng.uniform(3, -1, 1);
  Tensor x = test::make_tensor(v, {3}, kF64);
  x.requires_grad_(true);
  Tensor w = test::make_tensor(rng.uniform(3, -1, 1), {3}, kF64);
  Tensor idx = index_of({2, 0, 1});
  Tensor y = add(mul(x, w), gather(x, 0, idx)).sum();
  Tensor frozen = f64({3}), exp_avg = f64({3}), exp_avg_sq = f64({3});
  Tensor trained = f64({3}), trained_avg = f64({3}), trained_avg_sq = f64({3});
  trained.requires_grad_(true);
  const std::vector<std::pair<std::string, std::function<void()>>> refused = {
      {"copy_ of another shape", [&] { w.copy_(f64({5})); }},
      {"copy_ into an expanded view", [&] { w.expand({4, 3}).copy_(f64({4, 3})); }},
      {"fill_ of an integer tensor with NaN", [&] { idx.fill_(std::nan("")); }},
      {"zero_ of an expanded view", [&] { w.expand({2, 3}).zero_(); }},
      {"clamp_ of an integer tensor to a fraction", [&] { idx.clamp_(0.5, 2); }},
      {"add_ of an integer tensor and a scalar beyond i64", [&] { idx.add_(1e19); }},
      {"scatter_add_ out of range", [&] { scatter_add_(w, 0, index_of({7}), f64({1})); }},
      {"adam_step_ with an entry that requires grad",
       [&] {
         adam_step_({frozen, trained}, {f64({3}), f64({3})}, {exp_avg, trained_avg}, {exp_avg_sq, trained_avg_sq},
                    AdamStepArgs{});
       }},
  };
  for (const auto& [name, op] : refused) {
    SCOPED_TRACE(name);
    const uint64_t w_version = w.storage()->version(), idx_version = idx.storage()->version();
    const std::vector<uint64_t> adam_versions = {frozen.storage()->version(), exp_avg.storage()->version(),
                                                 exp_avg_sq.storage()->version()};
    EXPECT_TRUE(test::raises_error(op));
    EXPECT_EQ(w.storage()->version(), w_version);
    EXPECT_EQ(idx.storage()->version(), idx_version);
    EXPECT_EQ((std::vector<uint64_t>{frozen.storage()->version(), exp_avg.storage()->version(),
                                     exp_avg_sq.storage()->version()}),
              adam_versions);
  }
  y.backward();
  ASSERT_TRUE(x.grad().defined());
  // The check still catches a write that happened: an accepted in-place op moves the version.
  Tensor z = mul(x, w).sum();
  const uint64_t before = w.storage()->version();
  w.add_(1.0);
  EXPECT_GT(w.storage()->version(), before);
  EXPECT_TRUE(test::raises_error([&] { z.backward(); }, {"modified"}));
}

TEST(Errors, CudaDeviceWithoutCudaIsAnError) {
  if (cuda::is_available()) {
    EXPECT_EQ(zeros({2}, cuda_device(0)).device(), cuda_device(0));
  } else {
    EXPECT_TRUE(test::raises_error([] { (void)zeros({2}, cuda_device(0)); }));
    EXPECT_TRUE(test::raises_error([] { (void)f32({2}).to(cuda_device(0)); }));
    EXPECT_EQ(cuda::device_count(), 0);
  }
}

#ifdef FLAME_WITH_CUDA
TEST(Errors, NvrtcCompileFailureCarriesTheLog) {
  const std::string source =
      "extern \"C\" __global__ void flame_broken_kernel(float* out) {\n"
      "  out[0] = flame_no_such_symbol;\n"
      "}\n";
  try {
    (void)cuda::compile_to_cubin(source, 90);
    ADD_FAILURE() << "compiling broken source did not throw";
  } catch (const Error& error) {
    const std::string message = error.what();
    // The NVRTC log names the undefined identifier with its diagnostic.
    EXPECT_NE(message.find("identifier \"flame_no_such_symbol\" is undefined"), std::string::npos) << message;
    EXPECT_NE(message.find("flame_broken_kernel"), std::string::npos)
        << "numbered source expected: " << message;
  }
}

TEST(Errors, NvrtcCompilesValidSourceWithoutAGpu) {
  const std::string source = fmt::format(
      "extern \"C\" __global__ void flame_ok_kernel_{}(float* out) {{ out[threadIdx.x] = 2.0f; }}\n",
      test::test_seed());
  const std::vector<char> cubin = cuda::compile_to_cubin(source, 90);
  ASSERT_GE(cubin.size(), 4u);
  EXPECT_EQ(std::string(cubin.begin(), cubin.begin() + 4),
            "\x7f"
            "ELF");
}
#endif

}  // namespace
}  // namespace flame
