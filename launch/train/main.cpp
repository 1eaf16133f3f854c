// flame-train CONFIG.toml [--set key=value]... [--device auto|cpu|cuda] [--resume auto|none]
//
// Trains the configured model (launch/train/trainer.h) as one process (the single-GPU or CPU
// debug mode), under `mpirun -np N`, or under Slurm (`srun`, `sbatch`; cluster/).
// Exit status: 0 done; 1 error (every rank of a multi-rank job is brought down); 2 bad usage or
// config; 85 stopped by SIGTERM / SIGUSR1 after writing a checkpoint (Note [stop requests]).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "launch/train/config.h"
#include "launch/train/trainer.h"

int main(int argc, char** argv) {
  using namespace flame::train;
  CLI::App app{"flame-train: data-parallel training of a registered model from a TOML config"};
  std::string config_path, resume = "none", device;
  std::vector<std::string> overrides;
  app.add_option("config", config_path, "the TOML config (configs/*.toml; keys in docs/config.md)")->required();
  app.add_option("--set", overrides, "override a config key: --set optimizer.lr=3e-4 (repeatable)");
  app.add_option("--device", device, "shorthand for --set train.device=...")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--resume", resume, "auto: continue from the newest complete checkpoint; none: start afresh")
      ->check(CLI::IsMember({"auto", "none"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (!device.empty()) overrides.push_back("train.device=" + device);

  Config config;
  try {
    config = load_config(config_path, overrides);
  } catch (const flame::Error& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  }
  int status = kExitOk;
  try {
    RunOptions options;
    options.resume = resume == "auto" ? ResumeMode::Auto : ResumeMode::None;
    const RunResult result = train(config, options);
    status = result.stopped ? kExitStopped : kExitOk;
  } catch (const std::exception& e) {
    // One failed rank must not leave the others waiting in a collective.
    if (flame::dist::ProcessGroup::init().is_distributed()) flame::dist::abort_job(e.what(), kExitError);
    spdlog::error("{}", e.what());
    status = kExitError;
  }
  flame::dist::finalize();
  return status;
}
