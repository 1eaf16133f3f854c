// Tensor: a cheap handle to plain metadata (shape, strides, offset, dtype) over shared Storage.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/storage.h"

namespace flame {

/// Sizes of each dimension, outermost first. At most kMaxDims entries.
using Shape = std::vector<int64_t>;
/// Step in elements between neighbours along each dimension (0 for broadcast dimensions).
using Strides = std::vector<int64_t>;

inline constexpr int kMaxDims = 8;

/// Options for creating a tensor: dtype and device (f32 on the CPU by default).
struct TensorOptions {
  DType dtype = DType::F32;
  Device device = kCPU;

  TensorOptions() = default;
  TensorOptions(DType d) : dtype(d) {}  // NOLINT: implicit on purpose, like PyTorch's kFloat
  TensorOptions(Device dev) : device(dev) {}  // NOLINT
  TensorOptions(DType d, Device dev) : dtype(d), device(dev) {}
};

namespace autograd {
class Node;
}
class Tensor;
struct AutogradMeta;
/// Called with the leaf once its gradient is final in a backward pass (Note [autograd engine]).
using GradReadyHook = std::function<void(const Tensor& leaf)>;

/// The metadata a Tensor handle shares with its copies (not with its views: a view has its own).
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Strides strides;
  int64_t offset = 0;  // in elements, from storage->data()
  DType dtype = DType::F32;
  std::shared_ptr<AutogradMeta> autograd;  // null until autograd touches this tensor
};

/// A strided view of a typed, device-resident buffer. Copying a Tensor copies the handle, not the
/// data; view operations (view, transpose, narrow, expand, ...) share the storage.
/// API names follow PyTorch's C++ frontend.
class Tensor {
 public:
  /// An undefined tensor (defined() is false).
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  /// A new contiguous tensor with uninitialised contents.
  static Tensor empty(const Shape& shape, TensorOptions options = {});
  /// A tensor over `storage` with the given layout (a view); checks the layout fits the storage.
  static Tensor from_storage(std::shared_ptr<Storage> storage, Shape shape, Strides strides,
                             int64_t offset, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Strides& strides() const { return impl().strides; }
  /// Size of dimension `dim` (negative counts from the end).
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t numel() const;
  int64_t offset() const { return impl().offset; }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  /// Row-major contiguous (size-1 dimensions may have any stride).
  bool is_contiguous() const;
  /// Pointer to element 0 of this view (storage base + offset).
  void* data_ptr() const;
  template <class T>
  T* data() const {
    FLAME_CHECK(dtype_of<T>() == dtype(), "data<T>(): tensor is {}, not the requested type",
                dtype_name(dtype()));
    return static_cast<T*>(data_ptr());
  }
  /// "Tensor[2, 3] f32 cuda:0"
  std::string describe() const;
  /// True when both handles share one implementation (the same tensor, not merely equal views).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }
  /// True when no other handle refers to this tensor and no other tensor shares its storage (no
  /// view of it or of what it views): whoever holds this handle may take the tensor over without
  /// anyone else seeing a later write (AccumulateGrad keeps such a gradient as .grad, uncopied).
  bool is_sole_owner() const { return impl_.use_count() == 1 && impl().storage.use_count() == 1; }

  // --- views (share storage) -------------------------------------------------------------
  /// Same data, new shape; one dimension may be -1. Requires a compatible layout (see reshape).
  Tensor view(const Shape& shape) const;
  /// view() when the layout allows it, otherwise a contiguous copy.
  Tensor reshape(const Shape& shape) const;
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  /// Transpose of a 2-D tensor.
  Tensor t() const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  /// Elements [start, start+length) along dim.
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  /// Elements start, start+step, ... < end along dim (Python slice semantics, step > 0).
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  /// The index-th entry along dim, with that dimension removed.
  Tensor select(int64_t dim, int64_t index) const;
  /// Broadcasts size-1 dimensions (stride 0) and prepends new ones; -1 keeps a size.
  Tensor expand(const Shape& shape) const;
  /// Removes every size-1 dimension, or only `dim` if it has size 1.
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  /// Merges dims start..end into one (reshape semantics).
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // --- copies and conversions ------------------------------------------------------------
  /// This tensor if already contiguous, else a contiguous copy.
  Tensor contiguous() const;
  /// A contiguous copy on `device` (this tensor if already there). Waits for device-to-host copies.
  Tensor to(Device device) const;
  /// A converted copy (this tensor if already of that dtype).
  Tensor to(DType dtype) const;
  /// A contiguous copy with its own storage.
  Tensor clone() const;
  /// Copies `src` into this tensor (broadcasting src, converting dtype, across devices). Returns *this.
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  /// The elements in row-major order on the host, converted to T (waits for the device).
  template <class T>
  std::vector<T> to_vector() const;
  /// The single element of a one-element tensor, as double.
  double item() const;

  // --- arithmetic (see core/ops.h for the full list and semantics) ------------------------
  Tensor operator-() const;
  Tensor& add_(const Tensor& other);
  Tensor& sub_(const Tensor& other);
  Tensor& mul_(const Tensor& other);
  Tensor& div_(const Tensor& other);
  Tensor& add_(double other);
  Tensor& sub_(double other);
  Tensor& mul_(double other);
  Tensor& div_(double other);
  Tensor& clamp_(double min, double max);
  Tensor& relu_();
  Tensor matmul(const Tensor& other) const;

  // --- autograd (Note [autograd engine] in core/autograd.h) ----------------------------------
  bool requires_grad() const;
  /// Marks a leaf as requiring gradients (or not); raises for a non-leaf. Returns *this.
  Tensor& requires_grad_(bool requires_grad = true);
  /// True unless the tensor is the result of a recorded op (has a grad_fn).
  bool is_leaf() const;
  /// The gradient accumulated by backward (undefined until one reaches this leaf).
  Tensor grad() const;
  /// Replaces the gradient; an undefined tensor clears it (zero_grad with set_to_none).
  void set_grad(const Tensor& grad) const;
  /// The node that computes this tensor's gradient inputs (null for leaves).
  std::shared_ptr<autograd::Node> grad_fn() const;
  /// Computes gradients of this tensor with respect to the leaves that require grad and adds
  /// them into their grad(). `gradient` defaults to 1 for a one-element tensor.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  /// The same data, cut from the graph (requires_grad false).
  Tensor detach() const;
  /// Runs `hook(leaf)` in every backward as soon as this leaf's gradient is final. That can be
  /// before backward has finished using the leaf's values (Note [early gradients]: a linear layer's
  /// weight gradient goes on before its input gradient is computed from the weight), so the hook
  /// must not change the leaf: one that does (an optimizer step inside backward) raises
  /// flame::Error. Step the optimizer after backward.
  void register_grad_ready_hook(GradReadyHook hook) const;
  /// Autograd's per-tensor record, created on first use (internal to core/).
  AutogradMeta& autograd_meta() const;
  /// The implementation handle (autograd keeps weak references to leaves).
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  Tensor sum(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor sum() const;
  Tensor mean(const std::vector<int64_t>& dims, bool keepdim = false) const;
  Tensor mean() const;

 private:
  TensorImpl& impl() const {
    FLAME_CHECK(impl_ != nullptr, "operation on an undefined Tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

/// What autograd keeps per tensor.
struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<autograd::Node> grad_fn;
  std::weak_ptr<autograd::Node> grad_accumulator;  // a leaf's AccumulateGrad node, while a graph holds it
  std::vector<GradReadyHook> ready_hooks;
};

/// Shape as "[2, 3, 4]".
std::string shape_str(const Shape& shape);
/// Contiguous row-major strides for `shape`.
Strides contiguous_strides(const Shape& shape);
/// Product of the sizes (1 for a 0-d shape).
int64_t shape_numel(const Shape& shape);
/// Wraps a possibly negative dim into [0, ndim); raises flame::Error naming `op` when out of range.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

extern template std::vector<float> Tensor::to_vector<float>() const;
extern template std::vector<double> Tensor::to_vector<double>() const;
extern template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
extern template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
extern template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;

}  // namespace flame
