#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"
#include "datasets/loader.h"

#ifdef FLAME_WITH_CUDA
#include "core/cuda/context.h"
#endif

namespace flame::data {
namespace {

Shape batch_shape(int64_t rows, const FieldSpec& field) {
  Shape shape{rows};
  shape.insert(shape.end(), field.sample_shape.begin(), field.sample_shape.end());
  return shape;
}

std::shared_ptr<const ShardedDataset> load_if_asked(std::shared_ptr<ShardedDataset> dataset,
                                                    const DataLoaderOptions& options) {
  if (dataset && options.read_mode == ReadMode::InMemory && !dataset->in_memory()) dataset->load_into_memory();
  return dataset;
}

#ifdef FLAME_WITH_CUDA
/// One pinned host batch: a CPU tensor per field, [batch_size, ...sample_shape], page-locked,
/// and the event recorded after the last copy that read it (Note [loader transfers]).
class PinnedBuffer {
 public:
  PinnedBuffer(const std::vector<FieldSpec>& fields, int64_t batch_size) {
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
    try {
      for (const FieldSpec& field : fields) {
        Tensor host = Tensor::empty(batch_shape(batch_size, field), field.dtype);
        if (host.nbytes() > 0) {
          FLAME_CUDA_CHECK(cudaHostRegister(host.data_ptr(), host.nbytes(), cudaHostRegisterPortable));
        }
        fields_.push_back(std::move(host));  // registered (or empty): release() unregisters it
      }
    } catch (...) {
      release();  // the fields registered before the failure, and the event
      throw;
    }
  }
  ~PinnedBuffer() { release(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  /// Waits (in a worker) until the last copy out of this buffer has finished.
  void wait_reusable() const { FLAME_CUDA_CHECK(cudaEventSynchronize(copied_)); }
  /// The first `rows` samples of each field.
  std::vector<Tensor> rows(int64_t rows) const {
    std::vector<Tensor> views;
    for (const Tensor& host : fields_) views.push_back(host.narrow(0, 0, rows));
    return views;
  }
  cudaEvent_t copied() const { return copied_; }

 private:
  void release() {
    cudaEventSynchronize(copied_);  // no copy may still read pages being unregistered
    for (const Tensor& host : fields_)
      if (host.nbytes() > 0) cudaHostUnregister(host.data_ptr());
    fields_.clear();
    cudaEventDestroy(copied_);
  }
  std::vector<Tensor> fields_;
  cudaEvent_t copied_ = nullptr;
};

/// The loader's copy stream and the event the copy stream waits on before writing into device
/// tensors that the caching allocator ordered on the compute stream.
class CopyStream {
 public:
  explicit CopyStream(int device) : device_(device) {
    cuda::context(device);
    FLAME_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    FLAME_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
  }
  ~CopyStream() {
    cudaEventDestroy(compute_ready_);
    cudaStreamDestroy(stream_);
  }
  CopyStream(const CopyStream&) = delete;
  CopyStream& operator=(const CopyStream&) = delete;

  /// New device tensors holding `host`, copied on this stream; the compute stream waits for them.
  std::vector<Tensor> to_device(const std::vector<Tensor>& host, const PinnedBuffer& buffer) {
    const cudaStream_t compute = cuda::compute_stream(device_);  // also makes device_ current
    std::vector<Tensor> out;
    for (const Tensor& field : host)
      out.push_back(Tensor::empty(field.shape(), TensorOptions(field.dtype(), cuda_device(device_))));
    FLAME_CUDA_CHECK(cudaEventRecord(compute_ready_, compute));
    FLAME_CUDA_CHECK(cudaStreamWaitEvent(stream_, compute_ready_, 0));
    for (size_t f = 0; f < host.size(); ++f) {
      if (host[f].nbytes() == 0) continue;
      FLAME_CUDA_CHECK(
          cudaMemcpyAsync(out[f].data_ptr(), host[f].data_ptr(), host[f].nbytes(), cudaMemcpyHostToDevice, stream_));
    }
    FLAME_CUDA_CHECK(cudaEventRecord(buffer.copied(), stream_));
    FLAME_CUDA_CHECK(cudaStreamWaitEvent(compute, buffer.copied(), 0));
    return out;
  }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_ready_ = nullptr;
};
#endif

}  // namespace

struct DataLoader::Impl {
  /// A batch assembled by a worker: host tensors (views of a pinned buffer when `buffer` >= 0), or
  /// the error that stopped it.
  struct Assembled {
    std::vector<Tensor> fields;
    int buffer = -1;
    std::exception_ptr error;
  };

  Impl(std::shared_ptr<const ShardedDataset> dataset_in, DistributedSampler sampler_in, DataLoaderOptions options_in)
      : dataset(std::move(dataset_in)), sampler(std::move(sampler_in)), options(options_in) {}

  std::shared_ptr<const ShardedDataset> dataset;
  DistributedSampler sampler;  // consumer thread only; workers read `indices`
  DataLoaderOptions options;
  int64_t batches = 0;

  std::mutex mutex;
  std::condition_variable work_cv;   // workers: a batch to claim, or stopping
  std::condition_variable ready_cv;  // consumer: the next batch in order was assembled
  bool stopping = false;
  uint64_t generation = 0;  // bumped by every reposition; results of older generations are dropped
  int64_t epoch = 0;
  std::shared_ptr<const std::vector<int64_t>> indices;  // this rank's order for `epoch`
  int64_t next_claim = 0;
  int64_t next_deliver = 0;
  std::map<int64_t, Assembled> ready;  // the reorder buffer, by batch number
  std::vector<int> free_buffers;       // pinned buffers no batch holds (CUDA only)
  std::vector<std::thread> threads;

#ifdef FLAME_WITH_CUDA
  std::vector<std::unique_ptr<PinnedBuffer>> pinned;
  std::unique_ptr<CopyStream> copy_stream;
#endif

  bool uses_pinned() const { return options.device.is_cuda(); }

  bool can_claim() const {
    return next_claim < batches && next_claim < next_deliver + options.prefetch &&
           (!uses_pinned() || !free_buffers.empty());
  }

  Assembled assemble(int64_t batch, int64_t batch_epoch, const std::vector<int64_t>& order, int buffer) const {
    Assembled result;
    result.buffer = buffer;
    try {
      const int64_t begin = batch * options.batch_size;
      const int64_t rows = std::min<int64_t>(options.batch_size, static_cast<int64_t>(order.size()) - begin);
      const std::vector<int64_t> batch_indices(order.begin() + begin, order.begin() + begin + rows);
#ifdef FLAME_WITH_CUDA
      if (buffer >= 0) {
        pinned[static_cast<size_t>(buffer)]->wait_reusable();
        result.fields = pinned[static_cast<size_t>(buffer)]->rows(rows);
      }
#endif
      if (buffer < 0)
        for (const FieldSpec& field : dataset->fields())
          result.fields.push_back(Tensor::empty(batch_shape(rows, field), field.dtype));
      dataset->read_into(batch_indices, result.fields);
    } catch (const std::exception& e) {
      result.error = std::make_exception_ptr(
          Error(fmt::format("DataLoader: batch {} of epoch {} (rank {} of {}, dataset {}) could not be read: {}", batch,
                            batch_epoch, sampler.rank(), sampler.world_size(), dataset->dir(), e.what())));
    }
    return result;
  }

  void worker_loop() {
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      work_cv.wait(lock, [this] { return stopping || can_claim(); });
      if (stopping) return;
      const uint64_t claimed_generation = generation;
      const int64_t batch = next_claim++;
      const int64_t batch_epoch = epoch;
      const std::shared_ptr<const std::vector<int64_t>> order = indices;
      int buffer = -1;
      if (uses_pinned()) {
        buffer = free_buffers.back();
        free_buffers.pop_back();
      }
      lock.unlock();
      Assembled result = assemble(batch, batch_epoch, *order, buffer);
      lock.lock();
      if (claimed_generation == generation && !stopping) {
        ready.emplace(batch, std::move(result));
        ready_cv.notify_all();
      } else if (buffer >= 0) {
        free_buffers.push_back(buffer);
        work_cv.notify_all();
      }
    }
  }

  /// Discards prefetched batches and restarts the workers at (`new_epoch`, `batch`).
  void reposition(int64_t new_epoch, int64_t batch) {
    sampler.set_epoch(new_epoch);
    auto order = std::make_shared<const std::vector<int64_t>>(sampler.indices());
    std::lock_guard<std::mutex> lock(mutex);
    ++generation;
    for (auto& [number, assembled] : ready)
      if (assembled.buffer >= 0) free_buffers.push_back(assembled.buffer);
    ready.clear();
    epoch = new_epoch;
    indices = std::move(order);
    next_claim = next_deliver = batch;
    work_cv.notify_all();
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
    }
    work_cv.notify_all();
    for (std::thread& thread : threads)
      if (thread.joinable()) thread.join();
    threads.clear();
  }

  std::optional<Batch> next() {
    std::unique_lock<std::mutex> lock(mutex);
    if (next_deliver >= batches) return std::nullopt;
    ready_cv.wait(lock, [this] { return ready.count(next_deliver) > 0; });
    auto found = ready.find(next_deliver);
    if (found->second.error) std::rethrow_exception(found->second.error);  // stays: raised again next time
    Batch batch;
    batch.epoch = epoch;
    batch.index = next_deliver;
    if (found->second.buffer < 0) {
      batch.fields = std::move(found->second.fields);
      deliver(found);
      return batch;
    }
#ifdef FLAME_WITH_CUDA
    // The batch stays in `ready`, holding its pinned buffer, until the copy to the device has
    // succeeded: a copy that raises (the device out of memory) loses nothing, and the next call
    // tries the same batch again. Only this thread erases from `ready` (workers insert other
    // batches), so the entry stays valid while the lock is released.
    const std::vector<Tensor> host_fields = found->second.fields;
    const int buffer = found->second.buffer;
    lock.unlock();
    batch.fields = copy_stream->to_device(host_fields, *pinned[static_cast<size_t>(buffer)]);
    lock.lock();
    free_buffers.push_back(buffer);
    deliver(ready.find(next_deliver));
#endif
    return batch;
  }

  /// Under the lock: removes the delivered batch `entry` (batch next_deliver) and moves on to the
  /// next one.
  void deliver(std::map<int64_t, Assembled>::iterator entry) {
    ready.erase(entry);
    ++next_deliver;
    work_cv.notify_all();
  }
};

DataLoader::DataLoader(std::shared_ptr<ShardedDataset> dataset, DistributedSampler sampler, DataLoaderOptions options)
    : DataLoader(load_if_asked(std::move(dataset), options), std::move(sampler), options) {}

DataLoader::DataLoader(std::shared_ptr<const ShardedDataset> dataset, DistributedSampler sampler,
                       DataLoaderOptions options) {
  FLAME_CHECK(dataset != nullptr, "DataLoader: the dataset is null");
  FLAME_CHECK(options.batch_size >= 1, "DataLoader: batch_size {} must be at least 1", options.batch_size);
  FLAME_CHECK(options.workers >= 1, "DataLoader: workers {} must be at least 1", options.workers);
  FLAME_CHECK(options.prefetch >= 1, "DataLoader: prefetch {} must be at least 1", options.prefetch);
  FLAME_CHECK(sampler.dataset_size() == dataset->size(),
              "DataLoader: the sampler was built for {} samples but dataset {} has {}; construct the "
              "DistributedSampler with dataset->size()",
              sampler.dataset_size(), dataset->dir(), dataset->size());
  FLAME_CHECK(options.read_mode != ReadMode::InMemory || dataset->in_memory(),
              "DataLoader: ReadMode::InMemory asked for but dataset {} is not in memory; call "
              "load_into_memory() first or pass the dataset as a non-const shared_ptr",
              dataset->dir());
#ifndef FLAME_WITH_CUDA
  FLAME_CHECK(!options.device.is_cuda(), "DataLoader: device {} asked for but FLAME was built without CUDA",
              options.device.str());
#endif
  const int64_t epoch = sampler.epoch();
  impl_ = std::make_unique<Impl>(std::move(dataset), std::move(sampler), options);
  const int64_t samples = impl_->sampler.size();
  impl_->batches = options.last_batch == LastBatch::Drop ? samples / options.batch_size
                                                         : (samples + options.batch_size - 1) / options.batch_size;
#ifdef FLAME_WITH_CUDA
  if (options.device.is_cuda()) {
    impl_->copy_stream = std::make_unique<CopyStream>(options.device.index);
    for (int b = 0; b < options.prefetch; ++b) {
      impl_->pinned.push_back(std::make_unique<PinnedBuffer>(impl_->dataset->fields(), options.batch_size));
      impl_->free_buffers.push_back(b);
    }
  }
#endif
  impl_->reposition(epoch, 0);
  try {
    for (int w = 0; w < options.workers; ++w)
      impl_->threads.emplace_back([impl = impl_.get()] { impl->worker_loop(); });
  } catch (...) {
    impl_->shutdown();
    throw;
  }
}

DataLoader::~DataLoader() {
  if (impl_) impl_->shutdown();
}

std::optional<Batch> DataLoader::next() { return impl_->next(); }

void DataLoader::set_epoch(int64_t epoch) {
  FLAME_CHECK(epoch >= 0, "DataLoader::set_epoch: epoch {} is negative", epoch);
  impl_->reposition(epoch, 0);
}

int64_t DataLoader::epoch() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->epoch;
}

int64_t DataLoader::batches_per_epoch() const { return impl_->batches; }

LoaderState DataLoader::state() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return LoaderState{impl_->epoch, impl_->next_deliver};
}

void DataLoader::restore(const LoaderState& state) {
  FLAME_CHECK(state.epoch >= 0, "DataLoader::restore: epoch {} is negative", state.epoch);
  FLAME_CHECK(state.next_batch >= 0 && state.next_batch <= impl_->batches,
              "DataLoader::restore: next_batch {} is outside [0, {}] (batches per epoch of this loader); was the "
              "state saved by a loader with another dataset, world size or batch size?",
              state.next_batch, impl_->batches);
  impl_->reposition(state.epoch, state.next_batch);
}

const DataLoaderOptions& DataLoader::options() const { return impl_->options; }

const DistributedSampler& DataLoader::sampler() const { return impl_->sampler; }

}  // namespace flame::data
