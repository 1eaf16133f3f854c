#include "launch/train/metrics.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace flame::train {

namespace {

/// A JSON value for `value` (Note [metrics jsonl]): a number when finite, else a string.
nlohmann::ordered_json json_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  return value;
}

double unix_seconds() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  return std::chrono::duration_cast<std::chrono::microseconds>(now).count() * 1e-6;
}

}  // namespace

JsonlWriter::JsonlWriter(std::string path) : path_(std::move(path)), file_(nullptr, &std::fclose) {
  FLAME_CHECK(!path_.empty(), "JsonlWriter: the metrics path is empty; give a file name");
  const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    FLAME_CHECK(!error, "JsonlWriter: cannot create the directory '{}' for the metrics file '{}': {}", parent.string(),
                path_, error.message());
  }
  file_.reset(std::fopen(path_.c_str(), "a"));
  FLAME_CHECK(file_ != nullptr, "JsonlWriter: cannot open the metrics file '{}' for appending: {}", path_,
              std::strerror(errno));
}

void JsonlWriter::write(int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  FLAME_CHECK(step >= 0, "JsonlWriter '{}': step {} is negative; steps count from 0", path_, step);
  nlohmann::ordered_json record;
  record["step"] = step;
  record["time"] = unix_seconds();
  for (const auto& [name, value] : scalars) {
    FLAME_CHECK(!name.empty(), "JsonlWriter '{}': a scalar has an empty name; give every scalar a name", path_);
    FLAME_CHECK(name != "step" && name != "time",
                "JsonlWriter '{}': '{}' is a reserved key (every record has 'step' and 'time'); rename the scalar",
                path_, name);
    FLAME_CHECK(!record.contains(name), "JsonlWriter '{}': the scalar '{}' is given twice in one record", path_, name);
    record[name] = json_value(value);
  }
  const std::string line = record.dump() + '\n';
  const bool written = std::fwrite(line.data(), 1, line.size(), file_.get()) == line.size();
  const bool flushed = std::fflush(file_.get()) == 0;
  FLAME_CHECK(written && flushed, "JsonlWriter: cannot write step {} to the metrics file '{}': {}", step, path_,
              std::strerror(errno));
}

int64_t drop_records_after(const std::string& path, int64_t step) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return 0;
  std::ifstream in(path);
  FLAME_CHECK(in.good(), "metrics: cannot read '{}' to drop the records after step {}: {}", path, step,
              std::strerror(errno));
  std::string kept;
  int64_t dropped = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool keep = record.is_object() && record.contains("step") && record["step"].is_number_integer() &&
                      record["step"].get<int64_t>() <= step;
    if (keep) {
      kept += line;
      kept += '\n';
    } else {
      ++dropped;
    }
  }
  FLAME_CHECK(in.eof(), "metrics: reading '{}' failed: {}", path, std::strerror(errno));
  if (dropped == 0) return 0;
  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << kept;
    out.flush();
    FLAME_CHECK(out.good(), "metrics: cannot write '{}': {}", temporary, std::strerror(errno));
  }
  std::filesystem::rename(temporary, path, error);
  FLAME_CHECK(!error, "metrics: cannot replace '{}' with '{}': {}", path, temporary, error.message());
  return dropped;
}

}  // namespace flame::train
