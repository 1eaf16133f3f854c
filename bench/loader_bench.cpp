// DataLoader throughput (issue 4): samples/s and MB/s delivered to a device by a DataLoader (rank 0
// of 1, shuffle on) with 1, 2 and 4 workers, reading the shard files (ReadMode::Shards, "disk") and
// from host memory (ReadMode::InMemory, "memory").
//
//   loader_bench --data DIR [--name NAME] [--batch B] [--device cuda:0|cpu] [--seconds S]
//                [--warmup N] [--prefetch P] [--workers 1,2,4] [--modes disk,memory]
//
// Each measurement builds a fresh loader, takes `warmup` batches, waits for the device, then takes
// batches for `seconds` seconds (wall clock), moving to the next epoch whenever one ends, as a
// training loop does (set_epoch discards the prefetched batches and restarts the workers). So a
// small dataset (Fashion-MNIST: 60000 images) is timed over several epochs and a large one (2 GB
// of tokens) over part of one. At the end the last batch's first field is summed with FLAME ops
// on the device and read back: the compute stream waited on every batch's copy event (Note [loader
// transfers]), so the time includes every copy. "disk" reads go through HDF5 and the page cache;
// files written just before are usually cached, so this is not a cold-disk figure.
//
// Prints one JSON line per measurement:
//   {"bench": "loader", "impl": "flame", "dataset": "fashion-mnist", "workers": 2, "mode": "disk",
//    "batch": 256, "value": 812345, "unit": "samples/s", "mb_per_s": 685.2, "tokens_per_s": ...,
//    "device": "NVIDIA H100 80GB HBM3"}
// mb_per_s counts the bytes of the delivered tensors (10^6 bytes; u16 tokens arrive as i32, 4 bytes
// each: datasets.md). tokens_per_s (token streams only) counts the T input tokens of each window.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/cuda_device.h"
#include "core/error.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"

namespace {

namespace data = flame::data;
using Clock = std::chrono::steady_clock;

struct Config {
  std::string data;
  std::string name;
  int64_t batch = 0;  // 0: 256 samples, or 64 windows of a token stream
  std::string device = "cuda:0";
  double seconds = 2.0;
  int warmup = 8;
  int prefetch = 8;
  std::vector<int> workers{1, 2, 4};
  std::vector<std::string> modes{"disk", "memory"};
};

struct Measurement {
  int64_t samples = 0;
  int64_t bytes = 0;
  double seconds = 0.0;
  double checksum = 0.0;  // sum of the last batch's first field, computed on the device
};

std::string cpu_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) return "cpu: " + line.substr(line.find(':') + 2);
  return "cpu";
}

// The loader's next batch, moving to the next epoch when this one is exhausted.
data::Batch next_batch(data::DataLoader& loader) {
  std::optional<data::Batch> batch = loader.next();
  if (!batch) {
    loader.set_epoch(loader.epoch() + 1);
    batch = loader.next();
    FLAME_CHECK(batch.has_value(), "loader_bench: epoch {} delivered no batch", loader.epoch());
  }
  return std::move(*batch);
}

// Sums a batch's first field on its device and reads the sum back: waits for every copy so far.
double consume(const data::Batch& batch) { return batch.fields.at(0).to(flame::kI64).sum().item(); }

Measurement measure(std::shared_ptr<const data::ShardedDataset> dataset, const data::DataLoaderOptions& options,
                    const Config& config) {
  data::DistributedSampler sampler(dataset->size(), 0, 1, /*seed=*/0, data::Shuffle::On);
  data::DataLoader loader(dataset, sampler, options);
  data::Batch last;
  for (int i = 0; i < config.warmup; ++i) last = next_batch(loader);
  if (config.warmup > 0) consume(last);

  Measurement m;
  const Clock::time_point start = Clock::now();
  const auto limit = std::chrono::duration<double>(config.seconds);
  do {
    last = next_batch(loader);
    m.samples += last.fields.at(0).size(0);
    for (const flame::Tensor& field : last.fields) m.bytes += static_cast<int64_t>(field.nbytes());
  } while (Clock::now() - start < limit);
  m.checksum = consume(last);
  m.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return m;
}

void emit(const Config& config, const std::string& device_name, int workers, const std::string& mode, int64_t batch,
          int64_t window, const Measurement& m) {
  namespace bench = flame::bench;
  const double samples_per_s = static_cast<double>(m.samples) / m.seconds;
  std::string tokens;
  if (window > 0) tokens = fmt::format(", \"tokens_per_s\": {:.6g}", samples_per_s * static_cast<double>(window));
  fmt::print(
      "{{\"bench\": \"loader\", \"impl\": \"flame\", \"dataset\": \"{}\", \"workers\": {}, \"mode\": \"{}\", "
      "\"batch\": {}, \"value\": {:.6g}, \"unit\": \"samples/s\", \"mb_per_s\": {:.6g}{}, \"device\": \"{}\"}}\n",
      bench::json_escape(config.name), workers, mode, batch, samples_per_s,
      static_cast<double>(m.bytes) / 1e6 / m.seconds, tokens, bench::json_escape(device_name));
  std::fflush(stdout);
}

int run(const Config& config) {
  const flame::Device device = flame::Device::parse(config.device);
  if (device.is_cuda())
    FLAME_CHECK(flame::cuda::is_available(),
                "loader_bench: --device {} asked for but no CUDA device is available; use --device cpu",
                device.str());
  for (const std::string& mode : config.modes)
    FLAME_CHECK(mode == "disk" || mode == "memory", "loader_bench: --modes takes disk and memory, got '{}'", mode);
  const std::string device_name = device.is_cuda() ? flame::bench::device_name() : cpu_name();

  auto on_disk = std::make_shared<const data::ShardedDataset>(config.data);
  const data::Manifest& manifest = on_disk->manifest();
  const bool tokens = manifest.kind == data::DatasetKind::TokenStream;
  const int64_t batch = config.batch > 0 ? config.batch : (tokens ? 64 : 256);
  FLAME_CHECK(batch <= on_disk->size(), "loader_bench: batch {} is larger than dataset {} ({} samples)", batch,
              config.data, on_disk->size());
  fmt::print(stderr, "loader_bench: {} ({}): {} samples in {} shards, batch {}, device {}\n", config.data, config.name,
             on_disk->size(), manifest.shards.size(), batch, device_name);

  std::shared_ptr<const data::ShardedDataset> in_memory;
  for (const std::string& mode : config.modes) {
    data::DataLoaderOptions options;
    options.batch_size = batch;
    options.prefetch = config.prefetch;
    options.device = device;
    options.read_mode = mode == "disk" ? data::ReadMode::Shards : data::ReadMode::InMemory;
    std::shared_ptr<const data::ShardedDataset> dataset = on_disk;
    if (mode == "memory") {
      if (!in_memory) {
        const Clock::time_point start = Clock::now();
        auto loaded = std::make_shared<data::ShardedDataset>(config.data);
        loaded->load_into_memory();
        in_memory = loaded;
        fmt::print(stderr, "loader_bench: loaded into memory in {:.2f} s\n",
                   std::chrono::duration<double>(Clock::now() - start).count());
      }
      dataset = in_memory;
    }
    for (const int workers : config.workers) {
      options.workers = workers;
      const Measurement m = measure(dataset, options, config);
      fmt::print(stderr, "loader_bench: {} workers {}: {} samples in {:.2f} s, last batch sum {}\n", mode, workers,
                 m.samples, m.seconds, m.checksum);
      emit(config, device_name, workers, mode, batch, tokens ? manifest.window : 0, m);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  CLI::App app("loader_bench: DataLoader throughput from disk and from memory", "loader_bench");
  app.add_option("--data", config.data, "dataset directory (flame-prep output)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--name", config.name, "dataset label in the JSON lines (default: the directory's name)");
  app.add_option("--batch", config.batch, "batch size (default 256 samples, 64 token windows)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--device", config.device, "cuda:N or cpu");
  app.add_option("--seconds", config.seconds, "timed seconds per measurement")->check(CLI::PositiveNumber);
  app.add_option("--warmup", config.warmup, "untimed batches first")->check(CLI::NonNegativeNumber);
  app.add_option("--prefetch", config.prefetch, "batches in flight")->check(CLI::PositiveNumber);
  app.add_option("--workers", config.workers, "worker counts to measure")->delimiter(',')->check(CLI::PositiveNumber);
  app.add_option("--modes", config.modes, "disk and/or memory")->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  if (config.name.empty()) config.name = std::filesystem::path(config.data).lexically_normal().filename().string();
  if (config.name.empty()) config.name = std::filesystem::path(config.data).parent_path().filename().string();
  try {
    return run(config);
  } catch (const std::exception& e) {
    fmt::print(stderr, "loader_bench: failed: {}\n", e.what());
    return 1;
  }
}
