#include "nn/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

#include "core/autograd.h"
#include "core/file_io.h"

namespace flame::nn {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; FLAME writes and reads host memory as is");

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the Python library's limit

struct DTypeName {
  DType dtype;
  std::string_view name;
};
constexpr DTypeName kDTypeNames[] = {{kF32, "F32"}, {kF64, "F64"}, {kF16, "F16"}, {kBF16, "BF16"},
                                     {kI32, "I32"}, {kI64, "I64"}, {kU8, "U8"},   {kBool, "BOOL"}};

std::string_view safetensors_dtype(DType dtype) {
  for (const auto& entry : kDTypeNames)
    if (entry.dtype == dtype) return entry.name;
  FLAME_FAIL("safetensors: no dtype name for {}", dtype_name(dtype));
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& entry : kDTypeNames)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

using io::errno_text;

/// The file being written by save_safetensors: a temporary file next to `target`, renamed over it
/// by commit(); removed on destruction unless committed.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& target) : target_(target) {
    const std::filesystem::path target_path(target);
    FLAME_CHECK(target_path.has_filename(), "save_safetensors: '{}' does not name a file", target);
    dir_ = target_path.has_parent_path() ? target_path.parent_path().string() : ".";
    std::string pattern = std::filesystem::path(dir_) / fmt::format(".{}.tmp.XXXXXX", target_path.filename().string());
    file_ = io::File(::mkstemp(pattern.data()));
    FLAME_CHECK(file_.is_open(), "save_safetensors: cannot create a temporary file in '{}' to write '{}': {}", dir_,
                target, errno_text());
    temp_ = pattern;
    ::fchmod(file_.get(), 0644);
  }
  ~AtomicFile() {
    if (!committed_) {
      file_.close();
      ::unlink(temp_.c_str());
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size) { io::write_all(file_.get(), data, size, temp_, "save_safetensors: "); }

  void commit() {
    io::sync_and_close(file_, temp_, "save_safetensors: ");
    FLAME_CHECK(::rename(temp_.c_str(), target_.c_str()) == 0, "save_safetensors: renaming '{}' to '{}' failed: {}",
                temp_, target_, errno_text());
    committed_ = true;
    FLAME_CHECK(io::try_fsync_directory(dir_),
                "save_safetensors: wrote '{}' but could not fsync its directory '{}': {}", target_, dir_, errno_text());
  }

 private:
  std::string target_;
  std::string dir_;
  std::string temp_;
  io::File file_;
  bool committed_ = false;
};

std::string build_header(const NamedTensors& tensors, const SafetensorsMetadata& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t end = offset + t.nbytes();
    header[name] = {{"dtype", safetensors_dtype(t.dtype())}, {"shape", t.shape()}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors, const SafetensorsMetadata& metadata) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    FLAME_CHECK(!name.empty() && name != "__metadata__", "save_safetensors('{}'): invalid tensor name '{}'", path,
                name);
    FLAME_CHECK(t.defined(), "save_safetensors('{}'): tensor '{}' is undefined", path, name);
    for (size_t j = 0; j < i; ++j)
      FLAME_CHECK(tensors[j].first != name, "save_safetensors('{}'): tensor name '{}' appears twice", path, name);
  }
  const std::string header = build_header(tensors, metadata);
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<uint64_t>(header.size()) >> (8 * i));

  autograd::NoGradGuard no_grad;
  AtomicFile file(path);
  file.write(length, sizeof(length));
  file.write(header.data(), header.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    const Tensor host = t.detach().to(kCPU).contiguous();
    file.write(host.data_ptr(), host.nbytes());
  }
  file.commit();
}

namespace {

/// One tensor entry of a header, checked against the file.
struct Entry {
  std::string name;
  DType dtype = kF32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

uint64_t read_offset(const json& value, const std::string& where) {
  FLAME_CHECK(value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0),
              "{}: data_offsets must be non-negative integers, got {}", where, value.dump());
  return value.get<uint64_t>();
}

Entry parse_entry(const std::string& name, const json& value, const std::string& file) {
  const std::string where = fmt::format("load_safetensors('{}'): tensor '{}'", file, name);
  FLAME_CHECK(value.is_object(), "{}: the header entry must be an object, got {}", where, value.dump());
  Entry entry;
  entry.name = name;
  FLAME_CHECK(value.contains("dtype") && value["dtype"].is_string(), "{}: missing or non-string \"dtype\"", where);
  const std::string dtype = value["dtype"].get<std::string>();
  const auto parsed = parse_dtype(dtype);
  FLAME_CHECK(parsed.has_value(), "{}: unsupported dtype '{}' (FLAME reads F32, F64, F16, BF16, I32, I64, U8, BOOL)",
              where, dtype);
  entry.dtype = *parsed;

  FLAME_CHECK(value.contains("shape") && value["shape"].is_array(), "{}: missing or non-array \"shape\"", where);
  const json& shape = value["shape"];
  FLAME_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), "{}: shape {} has more than {} dimensions", where,
              shape.dump(), kMaxDims);
  uint64_t numel = 1;
  for (const json& d : shape) {
    FLAME_CHECK(d.is_number_integer() && d.get<int64_t>() >= 0, "{}: shape {} must hold non-negative integers", where,
                shape.dump());
    const uint64_t size = d.get<uint64_t>();
    FLAME_CHECK(!__builtin_mul_overflow(numel, size, &numel) && numel <= (uint64_t{1} << 62),
                "{}: shape {} has too many elements", where, shape.dump());
    entry.shape.push_back(static_cast<int64_t>(size));
  }

  FLAME_CHECK(value.contains("data_offsets") && value["data_offsets"].is_array() && value["data_offsets"].size() == 2,
              "{}: \"data_offsets\" must be an array [begin, end]", where);
  entry.begin = read_offset(value["data_offsets"][0], where);
  entry.end = read_offset(value["data_offsets"][1], where);
  FLAME_CHECK(entry.begin <= entry.end, "{}: data_offsets [{}, {}] end before they begin", where, entry.begin,
              entry.end);
  uint64_t nbytes = 0;
  FLAME_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(entry.dtype)), &nbytes),
              "{}: shape {} of {} needs more than 2^64 bytes", where, shape.dump(), dtype);
  FLAME_CHECK(entry.end - entry.begin == nbytes,
              "{}: data_offsets [{}, {}] cover {} bytes, but {} of shape {} "
              "needs {}",
              where, entry.begin, entry.end, entry.end - entry.begin, dtype, shape.dump(), nbytes);
  return entry;
}

void read_exact(int fd, void* out, uint64_t size, uint64_t offset, const std::string& file) {
  char* bytes = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t n = ::pread(fd, bytes, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    FLAME_CHECK(n >= 0, "load_safetensors('{}'): read failed: {}", file, errno_text());
    FLAME_CHECK(n > 0, "load_safetensors('{}'): the file ended early (it changed while being read?)", file);
    bytes += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
}

}  // namespace

SafetensorsContents read_safetensors(const std::string& path) {
  const io::File fd(path, O_RDONLY | O_CLOEXEC);
  FLAME_CHECK(fd.is_open(), "load_safetensors: cannot open '{}': {}", path, errno_text());
  struct stat info {};
  FLAME_CHECK(::fstat(fd.get(), &info) == 0, "load_safetensors: cannot stat '{}': {}", path, errno_text());
  const auto file_size = static_cast<uint64_t>(info.st_size);
  FLAME_CHECK(file_size >= 8,
              "load_safetensors('{}'): the file has {} bytes, fewer than the 8-byte header length; "
              "it is truncated or not a safetensors file",
              path, file_size);

  unsigned char length_bytes[8];
  read_exact(fd.get(), length_bytes, 8, 0, path);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(length_bytes[i]) << (8 * i);
  FLAME_CHECK(header_size <= file_size - 8,
              "load_safetensors('{}'): the header length {} runs past the end of the "
              "file ({} bytes); the file is truncated or not a safetensors file",
              path, header_size, file_size);
  FLAME_CHECK(header_size <= kMaxHeaderBytes,
              "load_safetensors('{}'): the header length {} exceeds the {}-byte "
              "limit",
              path, header_size, kMaxHeaderBytes);
  std::string text(header_size, '\0');
  read_exact(fd.get(), text.data(), header_size, 8, path);

  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& error) {
    FLAME_FAIL("load_safetensors('{}'): the header is not valid JSON: {}", path, error.what());
  }
  FLAME_CHECK(header.is_object(), "load_safetensors('{}'): the header must be a JSON object, got {}", path,
              header.type_name());

  SafetensorsContents contents;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      FLAME_CHECK(value.is_object(), "load_safetensors('{}'): \"__metadata__\" must be an object of strings", path);
      for (const auto& [key, item] : value.items()) {
        FLAME_CHECK(item.is_string(), "load_safetensors('{}'): metadata '{}' must be a string, got {}", path, key,
                    item.dump());
        contents.metadata.emplace(key, item.get<std::string>());
      }
      continue;
    }
    entries.push_back(parse_entry(name, value, path));
  }

  const uint64_t data_start = 8 + header_size;
  const uint64_t data_size = file_size - data_start;
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t expected_begin = 0;
  for (const Entry& e : entries) {
    FLAME_CHECK(e.end <= data_size,
                "load_safetensors('{}'): tensor '{}' has data_offsets [{}, {}] past the end of "
                "the data ({} bytes after the header); the file is truncated or corrupt",
                path, e.name, e.begin, e.end, data_size);
    FLAME_CHECK(e.begin >= expected_begin,
                "load_safetensors('{}'): tensor '{}' has data_offsets [{}, {}] overlapping "
                "the previous tensor, which ends at {}",
                path, e.name, e.begin, e.end, expected_begin);
    FLAME_CHECK(e.begin == expected_begin,
                "load_safetensors('{}'): tensor '{}' has data_offsets [{}, {}], leaving a "
                "gap after byte {}; tensors must be contiguous",
                path, e.name, e.begin, e.end, expected_begin);
    expected_begin = e.end;
  }
  FLAME_CHECK(expected_begin == data_size,
              "load_safetensors('{}'): the tensors cover {} bytes of data but the file "
              "holds {} after the header",
              path, expected_begin, data_size);

  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, TensorOptions(e.dtype, kCPU));
    if (t.numel() > 0) read_exact(fd.get(), t.data_ptr(), e.end - e.begin, data_start + e.begin, path);
    if (e.dtype == kBool) {
      const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
      for (int64_t i = 0; i < t.numel(); ++i)
        FLAME_CHECK(bytes[i] <= 1,
                    "load_safetensors('{}'): BOOL tensor '{}' holds byte {} at element {} (expected 0 "
                    "or 1)",
                    path, e.name, static_cast<int>(bytes[i]), i);
    }
    contents.tensors.emplace_back(e.name, std::move(t));
  }
  return contents;
}

NamedTensors load_safetensors(const std::string& path) { return read_safetensors(path).tensors; }

void save_weights(const Module& module, const std::string& path, const SafetensorsMetadata& metadata) {
  save_safetensors(path, module.state_dict(), metadata);
}

void load_weights(Module& module, const std::string& path) {
  const NamedTensors tensors = load_safetensors(path);
  try {
    module.load_state_dict(tensors);
  } catch (const Error& error) {
    throw Error(fmt::format("load_weights('{}'): {}", path, error.what()));
  }
}

}  // namespace flame::nn
