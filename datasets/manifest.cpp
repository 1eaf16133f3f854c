#include <fcntl.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "core/file_io.h"
#include "datasets/dataset.h"
#include "datasets/format.h"

namespace flame::data {

using nlohmann::json;

namespace format {

int token_bytes(DType memory_dtype, const std::string& context) {
  FLAME_CHECK(memory_dtype == DType::I32 || memory_dtype == DType::I64,
              "{}: token dtype must be i32 (stored as u16) or i64 (stored as u32), got {} (Note [token dtypes])",
              context, dtype_name(memory_dtype));
  return memory_dtype == DType::I32 ? 2 : 4;
}

std::string token_disk_name(DType memory_dtype) { return memory_dtype == DType::I32 ? "u16" : "u32"; }

int64_t sample_bytes(const FieldSpec& field) {
  return shape_numel(field.sample_shape) * static_cast<int64_t>(dtype_size(field.dtype));
}

std::string shard_file_name(int64_t index) { return fmt::format("shard-{:05d}.h5", index); }

std::string join(const std::string& dir, const std::string& file) {
  return dir.empty() || dir.back() == '/' ? dir + file : dir + "/" + file;
}

}  // namespace format

namespace {

constexpr DType kSampleDTypes[] = {DType::U8,   DType::I32, DType::I64, DType::F16,
                                   DType::BF16, DType::F32, DType::F64, DType::Bool};

const char* kind_name(DatasetKind kind) { return kind == DatasetKind::Samples ? "samples" : "token_stream"; }

// Reads keys of one JSON object, naming the manifest and the object in every error.
class Reader {
 public:
  Reader(const json& object, std::string path, std::string where)
      : object_(object), path_(std::move(path)), where_(std::move(where)) {
    FLAME_CHECK(object_.is_object(), "manifest '{}': {} must be a JSON object", path_, where_);
  }
  const json& at(const char* key) const {
    FLAME_CHECK(object_.contains(key), "manifest '{}': {} is missing key '{}'", path_, where_, key);
    return object_.at(key);
  }
  int64_t integer(const char* key, int64_t min) const {
    const json& value = at(key);
    FLAME_CHECK(value.is_number_integer(), "manifest '{}': {}: '{}' must be an integer, got {}", path_, where_, key,
                value.dump());
    int64_t result = value.get<int64_t>();
    FLAME_CHECK(result >= min, "manifest '{}': {}: '{}' must be >= {}, got {}", path_, where_, key, min, result);
    return result;
  }
  std::string string(const char* key) const {
    const json& value = at(key);
    FLAME_CHECK(value.is_string(), "manifest '{}': {}: '{}' must be a string, got {}", path_, where_, key,
                value.dump());
    return value.get<std::string>();
  }
  const json& array(const char* key) const {
    const json& value = at(key);
    FLAME_CHECK(value.is_array(), "manifest '{}': {}: '{}' must be an array", path_, where_, key);
    return value;
  }

 private:
  const json& object_;
  std::string path_;
  std::string where_;
};

std::string read_text(const std::string& path) {
  const io::File file(path, O_RDONLY | O_CLOEXEC);
  FLAME_CHECK(file.is_open(),
              "manifest '{}' cannot be opened ({}): is this a dataset directory written by "
              "ShardWriter or flame-prep?",
              path, io::errno_text());
  return io::read_to_end(file, path, "manifest: ");
}

FieldSpec parse_field(const json& object, DatasetKind kind, const std::string& path, size_t index) {
  Reader reader(object, path, fmt::format("fields[{}]", index));
  FieldSpec field;
  field.name = reader.string("name");
  FLAME_CHECK(!field.name.empty() && field.name.find('/') == std::string::npos,
              "manifest '{}': fields[{}]: name '{}' must be non-empty and contain no '/'", path, index, field.name);
  std::string dtype = reader.string("dtype");
  bool known = false;
  if (kind == DatasetKind::TokenStream) {
    known = dtype == "u16" || dtype == "u32";
    field.dtype = dtype == "u16" ? DType::I32 : DType::I64;  // Note [token dtypes]
  } else {
    for (DType candidate : kSampleDTypes)
      if (dtype == dtype_name(candidate)) known = true, field.dtype = candidate;
  }
  FLAME_CHECK(known, "manifest '{}': field '{}': unknown dtype '{}' (a {} dataset takes {})", path, field.name, dtype,
              kind_name(kind),
              kind == DatasetKind::TokenStream ? "u16 or u32" : "u8, i32, i64, f16, bf16, f32, f64 or bool");
  const json& shape = reader.array("shape");
  for (const json& dim : shape) {
    FLAME_CHECK(dim.is_number_integer() && dim.get<int64_t>() > 0,
                "manifest '{}': field '{}': shape {} must list positive integers", path, field.name, shape.dump());
    field.sample_shape.push_back(dim.get<int64_t>());
  }
  return field;
}

void check_token_stream(const Manifest& manifest, const std::string& path) {
  FLAME_CHECK(manifest.fields.size() == 1 && manifest.fields[0].name == format::kTokensField,
              "manifest '{}': a token_stream dataset has exactly one field named 'tokens'", path);
  const FieldSpec& field = manifest.fields[0];
  FLAME_CHECK(field.sample_shape == Shape{manifest.window + 1},
              "manifest '{}': field 'tokens' has shape {}, expected [window + 1] = [{}]", path,
              shape_str(field.sample_shape), manifest.window + 1);
  for (const ShardInfo& shard : manifest.shards) {
    int64_t windows = format::windows_in(shard.tokens, manifest.window);
    FLAME_CHECK(shard.samples == windows,
                "manifest '{}': shard '{}' lists {} samples but its {} tokens make {} windows of {} + 1", path,
                shard.file, shard.samples, shard.tokens, windows, manifest.window);
  }
}

}  // namespace

int64_t Manifest::total_samples() const {
  int64_t total = 0;
  for (const ShardInfo& shard : shards) total += shard.samples;
  return total;
}

Manifest Manifest::read(const std::string& dir) {
  const std::string path = format::join(dir, format::kManifestName);
  json root;
  try {
    root = json::parse(read_text(path));
  } catch (const json::parse_error& error) {
    FLAME_FAIL("manifest '{}' is not valid JSON: {}", path, error.what());
  }
  Reader top(root, path, "the top level");
  Manifest manifest;
  manifest.version = static_cast<int>(top.integer("version", 0));
  FLAME_CHECK(manifest.version == 1, "manifest '{}': version {} is not supported (this build reads version 1)", path,
              manifest.version);
  std::string kind = top.string("kind");
  FLAME_CHECK(kind == "samples" || kind == "token_stream",
              "manifest '{}': unknown kind '{}' (expected 'samples' or 'token_stream')", path, kind);
  manifest.kind = kind == "samples" ? DatasetKind::Samples : DatasetKind::TokenStream;
  if (manifest.kind == DatasetKind::TokenStream) manifest.window = top.integer("window", 1);

  const json& fields = top.array("fields");
  FLAME_CHECK(!fields.empty(), "manifest '{}': 'fields' is empty; a dataset needs at least one field", path);
  std::set<std::string> names;
  for (size_t i = 0; i < fields.size(); ++i) {
    manifest.fields.push_back(parse_field(fields[i], manifest.kind, path, i));
    FLAME_CHECK(names.insert(manifest.fields.back().name).second, "manifest '{}': field '{}' is listed twice", path,
                manifest.fields.back().name);
  }

  const json& shards = top.array("shards");
  FLAME_CHECK(!shards.empty(), "manifest '{}': the dataset is empty ('shards' lists no shard)", path);
  std::set<std::string> files;
  for (size_t i = 0; i < shards.size(); ++i) {
    Reader reader(shards[i], path, fmt::format("shards[{}]", i));
    ShardInfo shard;
    shard.file = reader.string("file");
    FLAME_CHECK(!shard.file.empty() && shard.file.find('/') == std::string::npos,
                "manifest '{}': shards[{}]: file '{}' must be a plain file name inside the dataset directory", path, i,
                shard.file);
    FLAME_CHECK(files.insert(shard.file).second, "manifest '{}': shard file '{}' is listed twice", path, shard.file);
    shard.samples = reader.integer("samples", 1);
    if (manifest.kind == DatasetKind::TokenStream) shard.tokens = reader.integer("tokens", 1);
    shard.sha256 = reader.string("sha256");
    FLAME_CHECK(shard.sha256.size() == 64 && shard.sha256.find_first_not_of("0123456789abcdef") == std::string::npos,
                "manifest '{}': shard '{}': sha256 '{}' is not 64 lower-case hex digits", path, shard.file,
                shard.sha256);
    manifest.shards.push_back(std::move(shard));
  }
  if (manifest.kind == DatasetKind::TokenStream) check_token_stream(manifest, path);
  return manifest;
}

void Manifest::write(const std::string& dir) const {
  json root;
  root["format"] = "flame-dataset";
  root["version"] = version;
  root["kind"] = kind_name(kind);
  if (kind == DatasetKind::TokenStream) root["window"] = window;
  root["fields"] = json::array();
  for (const FieldSpec& field : fields) {
    std::string dtype =
        kind == DatasetKind::TokenStream ? format::token_disk_name(field.dtype) : std::string(dtype_name(field.dtype));
    root["fields"].push_back({{"name", field.name}, {"dtype", dtype}, {"shape", field.sample_shape}});
  }
  root["shards"] = json::array();
  for (const ShardInfo& shard : shards) {
    json entry = {{"file", shard.file}, {"samples", shard.samples}, {"sha256", shard.sha256}};
    if (kind == DatasetKind::TokenStream) entry["tokens"] = shard.tokens;
    root["shards"].push_back(std::move(entry));
  }
  const std::string text = root.dump(2) + "\n";

  const std::string path = format::join(dir, format::kManifestName);
  const std::string temp = path + ".tmp";
  io::File file(temp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  FLAME_CHECK(file.is_open(), "manifest: cannot create '{}': {}", temp, io::errno_text());
  io::write_all(file.get(), text.data(), text.size(), temp, "manifest: ");
  io::sync_and_close(file, temp, "manifest: ");
  FLAME_CHECK(std::rename(temp.c_str(), path.c_str()) == 0, "manifest: renaming '{}' to '{}' failed: {}", temp, path,
              io::errno_text());
  (void)io::try_fsync_directory(dir.empty() ? "." : dir);  // best effort: the manifest is written
}

}  // namespace flame::data
