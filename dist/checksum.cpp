#include "dist/checksum.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/autograd.h"

namespace flame::dist {
namespace {

constexpr size_t kDescriptionBytes = 192;  // one entry's description, gathered when ranks differ

std::string describe_entry(const nn::NamedTensors& tensors, size_t index) {
  if (index >= tensors.size()) return fmt::format("nothing (it has only {} entries)", tensors.size());
  const auto& [name, t] = tensors[index];
  return fmt::format("'{}' {} {}{}", name, shape_str(t.shape()), dtype_name(t.dtype()),
                     t.requires_grad() ? "" : " (frozen)");
}

/// All-gathers one fixed-size string per rank.
std::vector<std::string> gather_strings(const std::string& mine, Communicator& communicator, Device device) {
  const int world = communicator.group().world_size;
  std::vector<uint8_t> bytes(kDescriptionBytes, 0);  // [kDescriptionBytes], NUL-padded
  std::memcpy(bytes.data(), mine.data(), std::min(mine.size(), kDescriptionBytes - 1));
  Tensor input = from_vector(bytes, {static_cast<int64_t>(kDescriptionBytes)}, TensorOptions(DType::U8, device));
  Tensor output = zeros({world * static_cast<int64_t>(kDescriptionBytes)}, TensorOptions(DType::U8, device));
  communicator.all_gather(input, output, "DDP signature description");
  communicator.synchronize();
  const std::vector<uint8_t> all = output.to_vector<uint8_t>();  // [W * kDescriptionBytes]
  std::vector<std::string> out;
  for (int r = 0; r < world; ++r) out.emplace_back(reinterpret_cast<const char*>(all.data() + r * kDescriptionBytes));
  return out;
}

std::vector<int64_t> gather_i64(const std::vector<int64_t>& mine, Communicator& communicator, Device device,
                                const std::string& what) {
  const int64_t n = static_cast<int64_t>(mine.size());
  Tensor input = from_vector(mine, {n}, TensorOptions(DType::I64, device));
  Tensor output = zeros({communicator.group().world_size * n}, TensorOptions(DType::I64, device));
  communicator.all_gather(input, output, what);
  communicator.synchronize();
  return output.to_vector<int64_t>();  // [W * n]
}

/// Whether checksums a and b agree within rtol of the larger of |a|, |b| and `scale` (the size the
/// statistic would have without cancellation: a zero-mean tensor's sum is near 0, yet a rounding
/// difference in it is as large as in any other tensor of its magnitude).
bool agree(double a, double b, double rtol, double scale = 0.0) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (a == b) return true;
  if (!std::isfinite(a) || !std::isfinite(b)) return false;  // rtol * inf would accept anything
  return std::abs(a - b) <= rtol * std::max({std::abs(a), std::abs(b), scale});
}

}  // namespace

uint64_t parameter_signature(const std::string& name, const Tensor& tensor) {
  // Whether it requires grad too: DDP buckets only the parameters that do, so the ranks' buckets
  // (and collectives) match only when they agree on it.
  const std::string text = fmt::format("{}|{}|{}|{}", name, shape_str(tensor.shape()), dtype_name(tensor.dtype()),
                                       tensor.requires_grad() ? "trained" : "frozen");
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

void verify_same_signatures(const nn::NamedTensors& tensors, Communicator& communicator, Device device,
                            const std::string& what) {
  const int world = communicator.group().world_size;
  std::vector<int64_t> hashes;  // [P]
  uint64_t combined = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t h = parameter_signature(name, t);
    hashes.push_back(static_cast<int64_t>(h));
    combined = combined * 31 + h;
  }
  const std::vector<int64_t> summary =  // [W * 2]: (count, combined hash) per rank
      gather_i64({static_cast<int64_t>(tensors.size()), static_cast<int64_t>(combined)}, communicator, device,
                 "DDP " + what + " signature");
  bool same = true;
  int64_t max_count = 0;
  std::string counts;
  for (int r = 0; r < world; ++r) {
    same = same && summary[2 * r] == summary[0] && summary[2 * r + 1] == summary[1];
    max_count = std::max(max_count, summary[2 * r]);
    counts += fmt::format("{}{}", r ? ", " : "", summary[2 * r]);
  }
  if (same) return;

  hashes.resize(static_cast<size_t>(max_count), 0);
  const std::vector<int64_t> all = gather_i64(hashes, communicator, device, "DDP " + what + " signatures");
  size_t index = 0;
  int rank = 0;
  for (size_t i = 0; i < static_cast<size_t>(max_count) && rank == 0; ++i) {
    for (int r = 1; r < world; ++r) {
      if (all[r * max_count + i] != all[i]) {
        index = i;
        rank = r;
        break;
      }
    }
  }
  const std::vector<std::string> descriptions = gather_strings(describe_entry(tensors, index), communicator, device);
  FLAME_CHECK(
      false,
      "DistributedDataParallel: the ranks hold different {}s. {} #{} (registration order) is {} on rank 0 but {} "
      "on rank {} ({} counts per rank: [{}]). Every rank must construct the same model with the same "
      "configuration before wrapping it",
      what, what, index, descriptions[0], descriptions[rank], rank, what, counts);
}

namespace {

constexpr int64_t kPeriod = 1021;  // of the position weights: a prime, so no layout stride lines up with it
/// Values converted to f64 at a time: a multiple of kPeriod (each chunk starts at weight 1), and
/// small enough that the f64 copies and products stay near 400 MB whatever the parameter's size.
constexpr int64_t kChunk = kPeriod * 16384;

/// sum_i w_i x_i over the flat f64 `x`, with w_i = (i mod 1021) + 1: unlike the plain sums it changes
/// when values move within the tensor (two entries swapped), unless they move by a multiple of 1021.
Tensor position_weighted_sum(const Tensor& x) {
  const Tensor flat = x.reshape({-1});
  const int64_t n = flat.numel(), rows = n / kPeriod, tail = n % kPeriod;
  const Tensor weights = arange(1.0, static_cast<double>(kPeriod + 1), 1.0, TensorOptions(DType::F64, x.device()));
  Tensor total = zeros({}, TensorOptions(DType::F64, x.device()));
  if (rows > 0) total = add(total, sum(flat.narrow(0, 0, rows * kPeriod).reshape({rows, kPeriod}) * weights));
  if (tail > 0) total = add(total, sum(flat.narrow(0, rows * kPeriod, tail) * weights.narrow(0, 0, tail)));
  return total;
}

}  // namespace

Tensor parameter_checksums(const nn::NamedTensors& tensors) {
  FLAME_CHECK(!tensors.empty(), "parameter_checksums: no tensors");
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> rows;
  for (const auto& [name, t] : tensors) {
    const Tensor flat = t.detach().reshape({-1});
    const int64_t n = flat.numel();
    Tensor total = zeros({3}, TensorOptions(DType::F64, t.device()));
    for (int64_t start = 0; start < n; start += kChunk) {  // chunk by chunk: bounded f64 temporaries
      const Tensor x = flat.narrow(0, start, std::min(kChunk, n - start)).to(DType::F64);
      total = add(total, stack({sum(x), sum(x * x), position_weighted_sum(x)}));
    }
    rows.push_back(total);
  }
  return stack(rows);  // [P, 3]
}

void check_in_sync(const nn::NamedTensors& tensors, Communicator& communicator, const std::string& when, double rtol) {
  constexpr int64_t kStats = 3;  // sum, sum of squares, position-weighted sum
  const int world = communicator.group().world_size;
  const int64_t count = static_cast<int64_t>(tensors.size());
  const Tensor local = parameter_checksums(tensors);
  Tensor gathered = zeros({world * count, kStats}, TensorOptions(DType::F64, local.device()));
  communicator.all_gather(local, gathered, "DDP parameter checksums");
  communicator.synchronize();
  const std::vector<double> all = gathered.to_vector<double>();  // [W * P * kStats]
  const auto stats = [&](int r, int64_t i) { return &all[static_cast<size_t>((r * count + i) * kStats)]; };
  const auto describe = [](const double* v) {
    return fmt::format("(sum {:.17g}, sum of squares {:.17g}, position-weighted sum {:.17g})", v[0], v[1], v[2]);
  };
  for (int64_t i = 0; i < count; ++i) {
    const double* first = stats(0, i);
    std::string diverging;
    for (int r = 1; r < world; ++r) {
      const double* other = stats(r, i);
      // |sum x| <= sqrt(n * sum x^2), and the position-weighted sum at most 1021 times that.
      const double squares = std::max(first[1], other[1]);
      const double scale =
          std::isfinite(squares) ? std::sqrt(static_cast<double>(tensors[i].second.numel()) * squares) : 0.0;
      if (agree(other[0], first[0], rtol, scale) && agree(other[1], first[1], rtol) &&
          agree(other[2], first[2], rtol, kPeriod * scale))
        continue;
      diverging += fmt::format("{}rank {} has {}", diverging.empty() ? "" : "; ", r, describe(other));
    }
    FLAME_CHECK(diverging.empty(),
                "DistributedDataParallel: parameters diverged across ranks {}: '{}' has {} on rank 0 but {}. Every "
                "rank must apply the same update: look for a rank-dependent random draw, an optimizer step skipped "
                "or repeated on some rank, or a gradient or parameter changed outside DDP",
                when, tensors[i].first, describe(first), diverging);
  }
}

}  // namespace flame::dist
