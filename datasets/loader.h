// Per-rank sampling and batch loading (DESIGN.md, datasets/).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "datasets/dataset.h"

namespace flame::data {

/// What to do with the samples left over when the dataset does not divide evenly among ranks.
enum class Remainder {
  Drop,    // each rank takes floor(N / W) samples; the rest are skipped this epoch
  Pad,     // each rank takes ceil(N / W); the permutation wraps around to fill the last share
  Uneven,  // every sample exactly once: ranks r < N mod W take ceil(N / W), the others floor(N / W).
           // For evaluation: the ranks' batch counts may differ, so not for DDP training steps
};

/// Whether the sampler permutes the dataset each epoch.
enum class Shuffle {
  On,   // a fresh Philox permutation per (seed, epoch) (Note [sampler permutation])
  Off,  // the identity 0, 1, ..., N-1 every epoch
};

/// Note [sampler permutation]
/// The epoch's order is a Fisher-Yates shuffle of [0, N) driven by Philox 4x32-10 (core/random.h):
/// for i = N-1 down to 1, step k = N-1-i swaps position i with position j = u % (i + 1), where u
/// is the 64-bit draw k of the stream philox4x32_10(k / 2, epoch, seed): words (0, 1) for even k,
/// (2, 3) for odd k, low word first. Only 32-bit integer arithmetic and fixed-width 64-bit
/// modulo are involved, so every rank on every platform computes the same permutation (the modulo
/// bias is below (i + 1) / 2^64). With Remainder::Pad the permuted list is extended to
/// ceil(N / W) * W entries by wrapping around (entry p is perm[p % N]); with Remainder::Drop it is
/// cut to floor(N / W) * W entries; with Remainder::Uneven it stays N entries. Rank r then takes
/// entries r, r + W, r + 2W, ... (strided, as PyTorch's DistributedSampler does), so the W shares
/// are disjoint and together cover every kept entry exactly once.

/// One permutation of [0, N) per (seed, epoch), identical on every rank (Philox-based, so it does
/// not depend on the platform); rank r of W takes a disjoint, equal share of it.
class DistributedSampler {
 public:
  /// Raises flame::Error for dataset_size < 0, world_size < 1 or rank outside [0, world_size).
  DistributedSampler(int64_t dataset_size, int rank, int world_size, uint64_t seed, Shuffle shuffle = Shuffle::On,
                     Remainder remainder = Remainder::Pad);
  /// Selects the permutation of `epoch` (>= 0). Call it with the same value on every rank.
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  /// Samples this rank sees per epoch: floor(N / W) with Drop, ceil(N / W) with Pad, and with
  /// Uneven ceil(N / W) for ranks below N mod W, floor(N / W) for the others.
  int64_t size() const;
  int64_t dataset_size() const { return dataset_size_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  uint64_t seed() const { return seed_; }
  Shuffle shuffle() const { return shuffle_; }
  Remainder remainder() const { return remainder_; }
  /// This rank's global indices for the current epoch, in order (size() entries).
  std::vector<int64_t> indices() const;
  /// The whole epoch's order before it is split among ranks: a permutation of [0, N).
  std::vector<int64_t> permutation() const;

 private:
  int64_t dataset_size_;
  int rank_;
  int world_size_;
  uint64_t seed_;
  Shuffle shuffle_;
  Remainder remainder_;
  int64_t epoch_ = 0;
};

/// Whether a final batch smaller than batch_size is delivered.
enum class LastBatch {
  Drop,  // batches_per_epoch = floor(samples / batch_size)
  Keep,  // batches_per_epoch = ceil(samples / batch_size); the last one may be short
};

/// Where workers read samples from.
enum class ReadMode {
  Shards,    // HDF5 reads from the shard files (serialised inside ShardedDataset)
  InMemory,  // the dataset is held in host memory (ShardedDataset::load_into_memory), no HDF5 calls
};

struct DataLoaderOptions {
  int64_t batch_size = 32;
  int workers = 2;       // background threads assembling batches, >= 1
  int prefetch = 4;      // batches assembled ahead of the consumer, >= 1
  Device device = kCPU;  // where batches are delivered
  LastBatch last_batch = LastBatch::Drop;
  ReadMode read_mode = ReadMode::Shards;
};

/// A batch: one tensor per dataset field, [batch, ...sample_shape], on the loader's device.
/// For CUDA devices the copy runs on a copy stream; the compute stream waits on an event, so
/// consuming the tensors with FLAME ops needs no host synchronisation.
struct Batch {
  std::vector<Tensor> fields;
  int64_t epoch = 0;
  int64_t index = 0;  // batch number within the epoch
};

/// Where a loader is: saved in checkpoints so a resumed run sees exactly the batches an
/// uninterrupted run would have.
struct LoaderState {
  int64_t epoch = 0;
  int64_t next_batch = 0;  // the batch next() delivers next; batches_per_epoch() at the end
};

/// Delivers this rank's batches of one epoch at a time, in order: batch b of an epoch holds the
/// samples sampler.indices()[b * batch_size, (b + 1) * batch_size) of that epoch.
///
/// `workers` threads read batches (ShardedDataset::read_into, which serialises HDF5 calls) while
/// the consumer trains; at most `prefetch` batches are assembled ahead of the one next() returns,
/// and a reorder buffer hands them out strictly in batch order whatever thread finished first.
/// A worker's failure (a corrupt or missing shard, ...) is raised as flame::Error by the next()
/// call that reaches that batch, with the dataset's message (which names the file); it is raised
/// again by every later next() until set_epoch() or restore() moves the loader elsewhere.
///
/// CPU device: every batch gets freshly allocated host tensors that the consumer owns.
/// CUDA device: workers fill a pool of `prefetch` page-locked host buffers (Note [loader
/// transfers]); next() copies the batch into new device tensors with cudaMemcpyAsync on the
/// loader's copy stream and makes the device's compute stream wait on an event recorded after the
/// copy. The host never waits for a copy; a worker waits for it (the event) before it refills that
/// buffer.
///
/// In-memory mode: the dataset must be loaded before workers read from it. The constructor taking
/// a non-const dataset calls load_into_memory() itself when ReadMode::InMemory is asked for and
/// the dataset is not loaded yet; the one taking a const dataset requires it to be loaded already
/// (it cannot load a dataset it may only read, possibly shared with other loaders).
///
/// The constructor starts the workers on the sampler's current epoch, batch 0. One thread uses a
/// loader (next, set_epoch, state, restore); the destructor stops and joins the workers, waiting
/// only for the reads in progress, even mid-epoch.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const ShardedDataset> dataset, DistributedSampler sampler, DataLoaderOptions options);
  DataLoader(std::shared_ptr<ShardedDataset> dataset, DistributedSampler sampler, DataLoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  /// The next batch of the current epoch, or nullopt once the epoch is exhausted (and again on
  /// every later call until set_epoch or restore).
  std::optional<Batch> next();
  /// Starts epoch `epoch` (>= 0) at its batch 0: sets the sampler's epoch and discards whatever
  /// was prefetched.
  void set_epoch(int64_t epoch);
  int64_t epoch() const;
  /// Batches per epoch (the same for every epoch): see LastBatch.
  int64_t batches_per_epoch() const;
  /// The position: the epoch and the batch next() delivers next.
  LoaderState state() const;
  /// Moves to `state` (from state() of a loader with the same dataset, sampler and options): the
  /// next batch delivered is exactly the one the saved loader would have delivered next.
  /// Raises flame::Error when state.next_batch is outside [0, batches_per_epoch()] or the epoch < 0.
  void restore(const LoaderState& state);
  const DataLoaderOptions& options() const;
  const DistributedSampler& sampler() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Note [loader transfers]
/// The public Storage API has no constructor over caller-provided memory, so a pinned buffer is a
/// CPU tensor from Tensor::empty whose pages are page-locked with cudaHostRegister (unregistered
/// before the tensor is freed); cudaMemcpyAsync from it is a true asynchronous DMA. Each buffer
/// has an event recorded on the copy stream after the copy that read it; a worker calls
/// cudaEventSynchronize on it before refilling the buffer. Before copying, the copy stream waits on
/// an event recorded on the compute stream, because the device tensors come from the caching
/// allocator, which hands out blocks ordered on the compute stream only (Note [caching allocator
/// streams]); the compute stream then waits on the copy's event, so the device tensors can be used
/// and freed there like any other.

}  // namespace flame::data
