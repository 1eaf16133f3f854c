// FLAME's MLP and CNN against PyTorch on CUDA in f32 (tests/nn/torch_fixture.h): forward, loss,
// every gradient, and the parameters after 5 AdamW and 5 SGD-momentum steps, each tensor within a
// relative error of 1e-4 of PyTorch's f64 result. Skips without a GPU.
#include "../torch_fixture.h"

namespace flame {
namespace {

constexpr double kCudaBound = 1e-4;

class TorchFixtureCuda : public ::testing::TestWithParam<test::FixtureModel> {};

TEST_P(TorchFixtureCuda, ForwardAndGradientsF32) {
  FLAME_SKIP_WITHOUT_CUDA();
  test::check_forward_backward(GetParam(), kF32, cuda_device(0), kCudaBound);
}
TEST_P(TorchFixtureCuda, AdamWStepsF32) {
  FLAME_SKIP_WITHOUT_CUDA();
  test::check_adamw_steps(GetParam(), kF32, cuda_device(0), kCudaBound);
}
TEST_P(TorchFixtureCuda, SgdStepsF32) {
  FLAME_SKIP_WITHOUT_CUDA();
  test::check_sgd_steps(GetParam(), kF32, cuda_device(0), kCudaBound);
}

INSTANTIATE_TEST_SUITE_P(Models, TorchFixtureCuda, ::testing::ValuesIn(test::fixture_models()),
                         [](const auto& info) { return info.param.file.substr(0, info.param.file.find('.')); });

}  // namespace
}  // namespace flame
