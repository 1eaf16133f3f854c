// safetensors: round trips of every dtype with metadata, hand-written files, every kind of corrupt
// file raising an error that names the file and the tensor, atomic writes, Module weights, and
// interop with the Python safetensors library (tests/nn/safetensors_python_check.py).
#include "nn/safetensors.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "support/test_support.h"

namespace flame::nn {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;
using test::raises_error;

using test::read_file;
using test::TempDir;
using test::write_file;

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

/// A file with `header` as its JSON and `data` as its buffer; the length field is the header's
/// size unless given.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               std::optional<uint64_t> length = std::nullopt) {
  write_file(path, le64(length.value_or(header.size())) + header + data);
}

template <class T>
std::string bytes_of(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

/// A random tensor of `dtype`, laid out as `layout`, and its values.
Tensor random_tensor(test::HostRng& rng, const Shape& shape, DType dtype, test::Layout layout) {
  const int64_t n = test::numel_of(shape);
  std::vector<double> values;
  switch (dtype) {
    case kI32:
      values = rng.integers(n, -100000, 100000);
      break;
    case kI64:
      values = rng.integers(n, -(int64_t{1} << 50), int64_t{1} << 50);
      break;
    case kU8:
      values = rng.integers(n, 0, 255);
      break;
    case kBool:
      values = rng.integers(n, 0, 1);
      break;
    default:
      values = rng.uniform(n, -10.0, 10.0);
  }
  return test::make_tensor(values, shape, dtype, kCPU, layout);
}

const std::vector<DType> kAllDTypes = {kF32, kF64, kF16, kBF16, kI32, kI64, kU8, kBool};

TEST(Safetensors, RoundTripsEveryDtypeShapeAndLayout) {
  TempDir dir;
  test::HostRng rng;
  NamedTensors tensors;
  for (DType dtype : kAllDTypes) {
    const std::string name(dtype_name(dtype));
    tensors.emplace_back(name + ".matrix", random_tensor(rng, {3, 5}, dtype, test::Layout::Contiguous));
    tensors.emplace_back(name + ".transposed", random_tensor(rng, {4, 2, 3}, dtype, test::Layout::Transposed));
    tensors.emplace_back(name + ".strided", random_tensor(rng, {7}, dtype, test::Layout::Strided));
    tensors.emplace_back(name + ".scalar", random_tensor(rng, {}, dtype, test::Layout::Contiguous));
    tensors.emplace_back(name + ".empty", random_tensor(rng, {0, 3}, dtype, test::Layout::Contiguous));
  }
  const SafetensorsMetadata metadata = {{"format", "pt"}, {"quote\"and\\slash", "ünïcode ✓"}, {"empty", ""}};
  const std::string path = dir.file("all.safetensors");
  save_safetensors(path, tensors, metadata);

  const SafetensorsContents loaded = read_safetensors(path);
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    EXPECT_EQ(loaded.tensors[i].first, tensors[i].first) << "tensors come back in file order";
    const Tensor& t = loaded.tensors[i].second;
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_TRUE(test::tensors_identical(t, tensors[i].second));
  }
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"}) << "no temporary file is left";

  // The layout of the file: the header is padded to 8 bytes so the data is aligned.
  const std::string bytes = read_file(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
}

TEST(Safetensors, EmptyFileAndNoMetadata) {
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  save_safetensors(path, {});
  const SafetensorsContents loaded = read_safetensors(path);
  EXPECT_TRUE(loaded.tensors.empty());
  EXPECT_TRUE(loaded.metadata.empty());
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  // No padding, entries listed out of offset order, metadata last: all valid.
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  const std::string header = R"({"b": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},)"
                             R"( "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                             R"( "flag": {"dtype": "BOOL", "shape": [1, 2], "data_offsets": [16, 18]},)"
                             R"( "__metadata__": {"format": "np"}})";
  write_raw(path, header, bytes_of<float>({1.5f, -2.0f}) + bytes_of<int64_t>({-(int64_t{1} << 40)}) + "\x01\x00"s);
  const SafetensorsContents loaded = read_safetensors(path);
  EXPECT_EQ(loaded.metadata, (SafetensorsMetadata{{"format", "np"}}));
  ASSERT_EQ(loaded.tensors.size(), 3u);
  EXPECT_EQ(loaded.tensors[0].first, "a");
  EXPECT_TRUE(test::all_close(loaded.tensors[0].second, {2}, {1.5, -2.0}, {}));
  EXPECT_EQ(loaded.tensors[1].first, "b");
  EXPECT_EQ(loaded.tensors[1].second.dtype(), kI64);
  EXPECT_EQ(loaded.tensors[1].second.to_vector<int64_t>(), std::vector<int64_t>{-(int64_t{1} << 40)});
  EXPECT_EQ(loaded.tensors[2].first, "flag");
  EXPECT_EQ(loaded.tensors[2].second.dtype(), kBool);
  EXPECT_TRUE(test::all_close(loaded.tensors[2].second, {1, 2}, {1.0, 0.0}, {}));
}

/// A corrupt file: `header` and `data` (and optionally a wrong length) must raise an error whose
/// message names the file and holds every fragment.
void expect_corrupt(const TempDir& dir, const std::string& header, const std::string& data,
                    const std::vector<std::string>& fragments, std::optional<uint64_t> length = std::nullopt) {
  const std::string path = dir.file("corrupt.safetensors");
  write_raw(path, header, data, length);
  std::vector<std::string> all = fragments;
  all.push_back(path);
  EXPECT_TRUE(raises_error([&] { load_safetensors(path); }, all)) << "header: " << header;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t begin,
                  uint64_t end) {
  return fmt::format(R"("{}": {{"dtype": "{}", "shape": {}, "data_offsets": [{}, {}]}})", name, dtype, shape, begin,
                     end);
}

TEST(Safetensors, CorruptFilesRaiseClearErrors) {
  TempDir dir;
  const std::string eight(8, '\0');
  const std::string ok = "{" + entry("w", "F32", "[2]", 0, 8) + "}";

  expect_corrupt(dir, "{\"w\": ", eight, {"not valid JSON"});
  expect_corrupt(dir, "[1, 2]", "", {"must be a JSON object"});
  expect_corrupt(dir, ok, eight, {"header length 1000 runs past the end"}, 1000);
  expect_corrupt(dir, "{" + entry("w", "F32", "[4]", 0, 16) + "}", eight, {"'w'", "past the end of the data"});
  expect_corrupt(dir, "{" + entry("w", "F32", "[3]", 0, 8) + "}", eight, {"'w'", "cover 8 bytes", "needs 12"});
  expect_corrupt(dir, "{" + entry("w", "F32", "[2]", 8, 0) + "}", eight, {"'w'", "end before they begin"});
  expect_corrupt(dir, "{" + entry("w", "Q7", "[2]", 0, 8) + "}", eight, {"'w'", "unsupported dtype 'Q7'"});
  expect_corrupt(dir, "{" + entry("w", "I8", "[8]", 0, 8) + "}", eight, {"'w'", "unsupported dtype 'I8'"});
  // 2^62 f64 elements: 2^65 bytes, which would wrap to 0 and match [0, 0].
  expect_corrupt(dir, "{" + entry("w", "F64", "[4611686018427387904]", 0, 0) + "}", "",
                 {"'w'", "more than 2^64 bytes"});
  expect_corrupt(dir, "{" + entry("w", "F32", "[-2]", 0, 8) + "}", eight, {"'w'", "non-negative"});
  expect_corrupt(dir, "{" + entry("w", "F32", "[2.5]", 0, 8) + "}", eight, {"'w'", "non-negative integers"});
  expect_corrupt(dir, R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", eight, {"'w'", "\"dtype\""});
  expect_corrupt(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", eight, {"'w'", "data_offsets"});
  expect_corrupt(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", eight,
                 {"'w'", "non-negative"});
  expect_corrupt(dir, R"({"w": [1]})", eight, {"'w'", "must be an object"});
  expect_corrupt(dir, "{" + entry("a", "F32", "[2]", 0, 8) + ", " + entry("b", "F32", "[2]", 4, 12) + "}",
                 std::string(12, '\0'), {"'b'", "overlapping"});
  expect_corrupt(dir, "{" + entry("a", "F32", "[1]", 0, 4) + ", " + entry("b", "F32", "[1]", 8, 12) + "}",
                 std::string(12, '\0'), {"'b'", "gap"});
  expect_corrupt(dir, "{" + entry("a", "F32", "[1]", 0, 4) + "}", eight, {"cover 4 bytes", "holds 8"});
  expect_corrupt(dir, "{" + entry("flag", "BOOL", "[2]", 0, 2) + "}", "\x01\x02", {"'flag'", "byte 2"});
  expect_corrupt(dir, R"({"__metadata__": {"k": 3}})", "", {"metadata 'k' must be a string"});
  expect_corrupt(dir, R"({"__metadata__": [1]})", "", {"__metadata__"});
  expect_corrupt(dir, "", "", {"not valid JSON"});
}

TEST(Safetensors, TruncatedFilesRaiseClearErrors) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"first", ones({4}, kF32)}, {"last", ones({2, 2}, kF64)}});
  const std::string bytes = read_file(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);

  write_file(path, bytes.substr(0, bytes.size() - 3));  // data cut short
  EXPECT_TRUE(raises_error([&] { load_safetensors(path); }, {path, "'last'", "past the end of the data"}));
  write_file(path, bytes.substr(0, 8 + header_size / 2));  // header cut short
  EXPECT_TRUE(raises_error([&] { load_safetensors(path); }, {path, "runs past the end of the file"}));
  write_file(path, bytes.substr(0, 5));  // not even a length
  EXPECT_TRUE(raises_error([&] { load_safetensors(path); }, {path, "fewer than the 8-byte header length"}));
  EXPECT_TRUE(
      raises_error([&] { load_safetensors(dir.file("missing.safetensors")); }, {"cannot open", "missing.safetensors"}));
}

TEST(Safetensors, RejectsBadNames) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const Tensor t = zeros({2}, kF32);
  EXPECT_TRUE(raises_error([&] { save_safetensors(path, {{"a", t}, {"a", t}}); }, {"'a' appears twice"}));
  EXPECT_TRUE(raises_error([&] { save_safetensors(path, {{"__metadata__", t}}); }, {"invalid tensor name"}));
  EXPECT_TRUE(raises_error([&] { save_safetensors(path, {{"", t}}); }, {"invalid tensor name"}));
  EXPECT_TRUE(raises_error([&] { save_safetensors(path, {{"u", Tensor()}}); }, {"'u' is undefined"}));
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Safetensors, WritesAtomically) {
  TempDir dir;
  const NamedTensors tensors = {{"w", full({3}, 2.0, kF32)}};

  // An unwritable destination (here: a directory that does not exist) raises and leaves nothing.
  const std::string nowhere = dir.file("no_such_dir/w.safetensors");
  EXPECT_TRUE(raises_error([&] { save_safetensors(nowhere, tensors); }, {"save_safetensors", "no_such_dir"}));
  EXPECT_FALSE(fs::exists(nowhere));
  EXPECT_TRUE(dir.entries().empty());

  // A failure after the data was written (the rename onto a directory fails) leaves no temporary file.
  fs::create_directory(dir.file("occupied"));
  EXPECT_TRUE(raises_error([&] { save_safetensors(dir.file("occupied"), tensors); }, {"renaming", "occupied"}));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"occupied"});
  EXPECT_TRUE(fs::is_directory(dir.file("occupied")));

  // Overwriting an existing file replaces it whole.
  const std::string path = dir.file("w.safetensors");
  save_safetensors(path, {{"old", zeros({100}, kF64)}});
  save_safetensors(path, tensors);
  const NamedTensors loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].first, "w");
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"occupied", "w.safetensors"}));

  // Without write permission (meaningless for root, who may write anywhere).
  if (::geteuid() != 0) {
    fs::create_directory(dir.file("readonly"));
    fs::permissions(dir.file("readonly"), fs::perms::owner_read | fs::perms::owner_exec);
    const std::string denied = dir.file("readonly/w.safetensors");
    EXPECT_TRUE(raises_error([&] { save_safetensors(denied, tensors); }, {"cannot create a temporary file"}));
    EXPECT_TRUE(fs::is_empty(dir.file("readonly")));
    fs::permissions(dir.file("readonly"), fs::perms::owner_all);
  }
}

// --- Module weights --------------------------------------------------------------------------------

/// y = x W^T + b, with a step counter buffer (an integer buffer in the state dict).
class Affine : public Module {
 public:
  Affine(int64_t in, int64_t out, DType dtype, double fill) {
    weight_ =
        register_parameter("weight", arange(0.0, static_cast<double>(in * out), 1.0, dtype).view({out, in}) * fill);
    bias_ = register_parameter("bias", full({out}, fill, dtype));
    register_buffer("count", full({1}, fill, kI64));
  }
  Tensor forward(const Tensor& x) override { return matmul(x, weight_.t()) + bias_; }
  std::string type_name() const override { return "Affine"; }

 private:
  Tensor weight_;
  Tensor bias_;
};

std::shared_ptr<Sequential> make_model(int64_t in, DType dtype, double fill) {
  return std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Affine>(in, 3, dtype, fill), std::make_shared<Affine>(3, 2, dtype, fill)});
}

TEST(Weights, SaveAndLoadAModule) {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const auto source = make_model(4, kF32, 2.0);
  save_weights(*source, path, {{"model", "two affines"}});
  EXPECT_EQ(read_safetensors(path).metadata.at("model"), "two affines");

  const auto target = make_model(4, kF32, -1.0);
  const Tensor weight_handle = target->parameters()[0];
  load_weights(*target, path);
  const NamedTensors want = source->state_dict(), got = target->state_dict();
  ASSERT_EQ(got.size(), 6u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    EXPECT_TRUE(test::tensors_identical(got[i].second, want[i].second)) << got[i].first;
  }
  EXPECT_TRUE(test::tensors_identical(weight_handle, want[0].second)) << "loaded in place";
  EXPECT_TRUE(target->parameters()[0].requires_grad());
}

TEST(Weights, LoadRejectsMismatchesNamingTheTensor) {
  TempDir dir;
  const auto target = make_model(4, kF32, -1.0);

  const std::string wrong_shape = dir.file("shape.safetensors");
  save_weights(*make_model(5, kF32, 1.0), wrong_shape);
  EXPECT_TRUE(raises_error([&] { load_weights(*target, wrong_shape); }, {wrong_shape, "'0.weight'", "shape"}));

  const std::string wrong_dtype = dir.file("dtype.safetensors");
  save_weights(*make_model(4, kF64, 1.0), wrong_dtype);
  EXPECT_TRUE(raises_error([&] { load_weights(*target, wrong_dtype); }, {wrong_dtype, "'0.weight'", "f64"}));

  NamedTensors state = make_model(4, kF32, 1.0)->state_dict();
  state.emplace_back("2.weight", zeros({1}, kF32));
  const std::string extra = dir.file("extra.safetensors");
  save_safetensors(extra, state);
  EXPECT_TRUE(raises_error([&] { load_weights(*target, extra); }, {extra, "unexpected '2.weight'"}));

  state.pop_back();
  state.erase(state.begin() + 1);  // drop 0.bias
  const std::string missing = dir.file("missing.safetensors");
  save_safetensors(missing, state);
  EXPECT_TRUE(raises_error([&] { load_weights(*target, missing); }, {missing, "'0.bias' is missing"}));

  // Nothing was loaded by the failed attempts.
  EXPECT_TRUE(test::all_close(target->state_dict()[1].second, {3}, {-1.0, -1.0, -1.0}, {}));
}

// --- interop with Python's safetensors --------------------------------------------------------------

/// The tensors tests/nn/safetensors_python_check.py expects (see expected_numpy() there).
NamedTensors interop_tensors(bool with_bf16) {
  std::vector<double> f32, f64, f16, i32;
  for (int k = 0; k < 6; ++k) f32.push_back(k * 0.5 - 1.0);
  for (int k = 0; k < 4; ++k) f64.push_back(k / 3.0);
  for (int k = 0; k < 5; ++k) f16.push_back(k * 0.25 - 0.5);
  for (int k = 0; k < 6; ++k) i32.push_back(k - 3);
  NamedTensors out = {
      {"f32", from_vector<double>(f32, {2, 3}, kF32)},
      {"f64", from_vector<double>(f64, {4}, kF64)},
      {"f16", from_vector<double>(f16, {5}, kF16)},
      {"i32", from_vector<double>(i32, {3, 2}, kI32)},
      {"i64", from_vector<int64_t>({-(int64_t{1} << 40), 0, (int64_t{1} << 40) + 7}, {3}, kI64)},
      {"u8", from_vector<double>({250, 251, 252, 253, 254, 255}, {6}, kU8)},
      {"bool", from_vector<uint8_t>({1, 0, 1}, {3}, kBool)},
      {"scalar", from_vector<double>({2.5}, {}, kF32)},
      {"empty", zeros({0, 3}, kF32)},
  };
  if (with_bf16) out.emplace_back("bf16", from_vector<double>({1.5, -2.0, 0.09375}, {3}, kBF16));
  return out;
}

int run_command(const std::string& command) {
  std::cout << "+ " << command << std::endl;
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void expect_interop_tensors(const SafetensorsContents& loaded, bool with_bf16, const std::string& writer) {
  EXPECT_EQ(loaded.metadata, (SafetensorsMetadata{{"writer", writer}, {"note", "interop"}}));
  const NamedTensors want = interop_tensors(with_bf16);
  ASSERT_EQ(loaded.tensors.size(), want.size());
  for (const auto& [name, expected] : want) {
    SCOPED_TRACE(name);
    auto it =
        std::find_if(loaded.tensors.begin(), loaded.tensors.end(), [&](const auto& e) { return e.first == name; });
    ASSERT_NE(it, loaded.tensors.end());
    EXPECT_TRUE(test::tensors_identical(it->second, expected));
  }
}

TEST(SafetensorsPython, InteropWithThePythonLibrary) {
  if (run_command("python3 -c 'import safetensors, numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 cannot import safetensors and numpy (scripts/setup.sh installs them)";
  const char* source_dir = std::getenv("FLAME_SOURCE_DIR");
  const fs::path script = source_dir ? fs::path(source_dir) / "tests/nn/safetensors_python_check.py"
                                     : fs::path(__FILE__).parent_path() / "safetensors_python_check.py";
  ASSERT_TRUE(fs::exists(script)) << script << " not found; set FLAME_SOURCE_DIR to the source tree";
  TempDir dir;

  // Python writes, FLAME reads.
  const std::string from_numpy = dir.file("numpy.safetensors"), from_torch = dir.file("torch.safetensors");
  ASSERT_EQ(run_command(fmt::format("python3 '{}' write '{}' '{}'", script.string(), from_numpy, from_torch)), 0);
  expect_interop_tensors(read_safetensors(from_numpy), false, "safetensors.numpy");
  if (fs::exists(from_torch)) expect_interop_tensors(read_safetensors(from_torch), true, "safetensors.torch");

  // FLAME writes, Python reads.
  const std::string from_flame = dir.file("flame.safetensors");
  save_safetensors(from_flame, interop_tensors(true), {{"writer", "flame"}, {"note", "interop"}});
  EXPECT_EQ(run_command(fmt::format("python3 '{}' read '{}'", script.string(), from_flame)), 0);
}

}  // namespace
}  // namespace flame::nn
