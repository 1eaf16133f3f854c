// flame-prep: converts sources into sharded HDF5 datasets (docs/datasets.md) and checks them.
//
//   flame-prep fashion-mnist --source DIR --out DIR [--shard-samples N] [--compression 0-9]
//   flame-prep text --input FILE --out DIR --window T [--shard-tokens N] [--token-dtype u16|u32]
//   flame-prep synthetic --out DIR --kind images|tokens (--samples N | --tokens N) [--seed S]
//                        [--shard-samples N | --shard-tokens N] [--window T] [--vocab V]
//   flame-prep verify DIR
// Exit status: 0 success, 1 a conversion or verification error, CLI11's codes for bad arguments.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "launch/prep/fashion_mnist.h"
#include "launch/prep/synthetic.h"
#include "launch/prep/text_tokens.h"
#include "launch/prep/verify.h"

namespace {

using flame::data::Manifest;

void print_manifest(const std::string& what, const std::string& dir, const Manifest& manifest) {
  int64_t tokens = 0;
  for (const auto& shard : manifest.shards) tokens += shard.tokens;
  if (manifest.kind == flame::data::DatasetKind::TokenStream)
    fmt::print("{}: {} windows of {} + 1 tokens ({} tokens) in {} shards -> {}\n", what, manifest.total_samples(),
               manifest.window, tokens, manifest.shards.size(), dir);
  else
    fmt::print("{}: {} samples in {} shards -> {}\n", what, manifest.total_samples(), manifest.shards.size(), dir);
}

CLI::Option* add_shard_samples(CLI::App* app, int64_t* value) {
  return app->add_option("--shard-samples", *value, "samples per shard")->check(CLI::PositiveNumber);
}
CLI::Option* add_shard_tokens(CLI::App* app, int64_t* value) {
  return app->add_option("--shard-tokens", *value, "tokens per shard")->check(CLI::PositiveNumber);
}
void add_compression(CLI::App* app, int* value) {
  app->add_option("--compression", *value, "gzip level, 0 = none")->check(CLI::Range(0, 9));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("flame-prep: converts sources into sharded HDF5 datasets and verifies them", "flame-prep");
  app.require_subcommand(1);

  flame::prep::FashionMnistOptions mnist;
  CLI::App* mnist_cmd = app.add_subcommand("fashion-mnist", "Fashion-MNIST idx .gz files -> OUT/train, OUT/test");
  mnist_cmd->add_option("--source", mnist.source, "directory of the *-idx?-ubyte.gz files")
      ->required()
      ->check(CLI::ExistingDirectory);
  mnist_cmd->add_option("--out", mnist.out, "output directory")->required();
  add_shard_samples(mnist_cmd, &mnist.shard_samples);
  add_compression(mnist_cmd, &mnist.compression);

  flame::prep::TextOptions text;
  std::string token_dtype = "u16";
  CLI::App* text_cmd = app.add_subcommand("text", "a UTF-8 text file -> byte-level token shards");
  text_cmd->add_option("--input", text.input, "UTF-8 text file")->required()->check(CLI::ExistingFile);
  text_cmd->add_option("--out", text.out, "output directory")->required();
  text_cmd->add_option("--window", text.window, "tokens per window (samples hold window + 1)")
      ->required()
      ->check(CLI::PositiveNumber);
  add_shard_tokens(text_cmd, &text.shard_tokens);
  text_cmd->add_option("--token-dtype", token_dtype, "u16 or u32")->check(CLI::IsMember({"u16", "u32"}));
  add_compression(text_cmd, &text.compression);

  flame::prep::SyntheticOptions synth;
  std::string kind;
  CLI::App* synth_cmd = app.add_subcommand("synthetic", "Philox-random images or u16 tokens, any size");
  synth_cmd->add_option("--out", synth.out, "output directory")->required();
  synth_cmd->add_option("--kind", kind, "images or tokens")->required()->check(CLI::IsMember({"images", "tokens"}));
  CLI::Option* samples_opt =
      synth_cmd->add_option("--samples", synth.samples, "images: number of samples")->check(CLI::PositiveNumber);
  CLI::Option* tokens_opt =
      synth_cmd->add_option("--tokens", synth.tokens, "tokens: number of tokens")->check(CLI::PositiveNumber);
  samples_opt->excludes(tokens_opt);
  synth_cmd->add_option("--seed", synth.seed, "Philox seed");
  CLI::Option* shard_samples_opt = add_shard_samples(synth_cmd, &synth.shard_samples);
  CLI::Option* shard_tokens_opt = add_shard_tokens(synth_cmd, &synth.shard_tokens);
  shard_samples_opt->excludes(shard_tokens_opt);
  CLI::Option* window_opt =
      synth_cmd->add_option("--window", synth.window, "tokens: tokens per window")->check(CLI::PositiveNumber);
  CLI::Option* vocab_opt =
      synth_cmd->add_option("--vocab", synth.vocab, "tokens: values drawn in [0, vocab), at most 65536")
          ->check(CLI::Range(1, 65536));
  add_compression(synth_cmd, &synth.compression);

  std::string verify_dir;
  CLI::App* verify_cmd = app.add_subcommand("verify", "check a dataset: checksums, counts, schema, every sample");
  verify_cmd->add_option("DIR", verify_dir, "dataset directory")->required();

  CLI11_PARSE(app, argc, argv);

  try {
    if (mnist_cmd->parsed()) {
      const auto manifests = flame::prep::convert_fashion_mnist(mnist);
      const auto splits = flame::prep::fashion_mnist_splits();
      for (size_t i = 0; i < splits.size(); ++i)
        print_manifest("fashion-mnist " + splits[i].name, mnist.out + "/" + splits[i].name, manifests[i]);
    } else if (text_cmd->parsed()) {
      text.token_width = flame::prep::parse_token_width(token_dtype, "--token-dtype");
      print_manifest("text " + text.input, text.out, flame::prep::convert_text(text));
    } else if (synth_cmd->parsed()) {
      if (kind == "images") {
        synth.kind = flame::prep::SyntheticKind::Images;
        FLAME_CHECK(*samples_opt, "synthetic: --kind images needs --samples N");
        FLAME_CHECK(!*shard_tokens_opt && !*window_opt && !*vocab_opt,
                    "synthetic: --shard-tokens, --window and --vocab apply to --kind tokens, not images");
      } else {
        synth.kind = flame::prep::SyntheticKind::Tokens;
        FLAME_CHECK(*tokens_opt, "synthetic: --kind tokens needs --tokens N");
        FLAME_CHECK(*window_opt, "synthetic: --kind tokens needs --window T");
        FLAME_CHECK(!*shard_samples_opt, "synthetic: --shard-samples applies to --kind images; use --shard-tokens");
      }
      print_manifest("synthetic " + kind, synth.out, flame::prep::make_synthetic(synth));
    } else if (verify_cmd->parsed()) {
      const flame::prep::VerifySummary summary = flame::prep::verify_dataset(verify_dir);
      fmt::print("verify {}: {} samples, {} shards, {} bytes: OK\n", verify_dir, summary.samples, summary.shards,
                 summary.bytes);
    }
  } catch (const flame::Error& error) {
    fmt::print(stderr, "flame-prep: error: {}\n", error.what());
    return 1;
  } catch (const std::exception& error) {
    fmt::print(stderr, "flame-prep: error: {}\n", error.what());
    return 1;
  }
  return 0;
}
