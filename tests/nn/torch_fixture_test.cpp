// FLAME's MLP and CNN against PyTorch on the CPU (tests/nn/torch_fixture.h): forward, loss, every
// gradient, and the parameters after 5 AdamW and 5 SGD-momentum steps, in f64 and in f32. The
// relative error of each tensor must be at most 1e-5 against PyTorch's f64 result from the same f32
// inputs (f64 measures ~1e-15, f32 ~4e-7).
#include "torch_fixture.h"

namespace flame {
namespace {

constexpr double kF64Bound = 1e-5;
constexpr double kF32Bound = 1e-5;

class TorchFixtureCpu : public ::testing::TestWithParam<test::FixtureModel> {};

TEST_P(TorchFixtureCpu, ForwardAndGradientsF64) { test::check_forward_backward(GetParam(), kF64, kCPU, kF64Bound); }
TEST_P(TorchFixtureCpu, ForwardAndGradientsF32) { test::check_forward_backward(GetParam(), kF32, kCPU, kF32Bound); }
TEST_P(TorchFixtureCpu, AdamWStepsF64) { test::check_adamw_steps(GetParam(), kF64, kCPU, kF64Bound); }
TEST_P(TorchFixtureCpu, AdamWStepsF32) { test::check_adamw_steps(GetParam(), kF32, kCPU, kF32Bound); }
TEST_P(TorchFixtureCpu, SgdStepsF64) { test::check_sgd_steps(GetParam(), kF64, kCPU, kF64Bound); }
TEST_P(TorchFixtureCpu, SgdStepsF32) { test::check_sgd_steps(GetParam(), kF32, kCPU, kF32Bound); }

INSTANTIATE_TEST_SUITE_P(Models, TorchFixtureCpu, ::testing::ValuesIn(test::fixture_models()),
                         [](const auto& info) { return info.param.file.substr(0, info.param.file.find('.')); });

}  // namespace
}  // namespace flame
