// Reverse-mode automatic differentiation: grad mode, graph nodes, saved tensors, and the engine
// entry point. Tensor's own autograd methods (requires_grad_, backward, grad, detach, hooks) are
// declared in core/tensor.h.
//
// Note [autograd engine]
// Each differentiable op whose inputs require grad (with grad mode on) gives its output a grad_fn:
// a Node holding the op's backward and one edge per input (the input's grad_fn, the input leaf's
// gradient accumulator, or nothing). backward() counts each node's incoming edges reachable from
// the root, then runs nodes whose count has dropped to zero, latest-created first (so roughly in
// reverse order of the forward pass), summing the gradients that reach each node. A leaf's
// accumulator runs as soon as all its contributions have arrived: it adds them into the leaf's
// .grad and fires the leaf's gradient-ready hooks, exactly once per backward and before any later
// node runs. That hook is the only link from autograd to dist/ (the data-parallel reducer).
// Backward ops are ordinary tensor ops on the gradients' device, run with grad mode off, so a CUDA
// graph's backward stays on the GPU with no host round-trip.
// Unless retain_graph is set, backward releases every node's saved tensors; a second backward
// through the same graph then raises flame::Error.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/tensor.h"

namespace flame::autograd {

/// Whether ops record history on this thread (on by default).
bool grad_enabled();
void set_grad_enabled(bool enabled);

/// Turns grad mode off for its scope (optimizer steps, evaluation), restoring it afterwards.
class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

/// Shape, dtype and device of one input of a node: the engine checks each gradient against it.
struct InputMeta {
  Shape shape;
  DType dtype = DType::F32;
  Device device;
};

/// One step of the backward graph.
class Node {
 public:
  /// Frees the chain of nodes only this one owns iteratively, so a long graph cannot overflow the
  /// stack through nested shared_ptr destructors.
  virtual ~Node();
  /// Gradients of the inputs (one per edge; undefined where an input gets none) from the
  /// gradient of this node's output.
  virtual std::vector<Tensor> apply(const Tensor& grad_output) = 0;
  /// Frees what backward needed (after a backward without retain_graph).
  virtual void release() {}
  /// Op name for messages, e.g. "MulBackward".
  virtual const char* name() const = 0;

  /// Per input: the node its gradient flows to (null when that input needs no gradient).
  std::vector<std::shared_ptr<Node>> next;
  /// Per input: what its gradient must look like.
  std::vector<InputMeta> input_meta;
  /// Creation order; the engine runs ready nodes with the largest first.
  uint64_t sequence_nr = 0;
};

/// Backward of an op: gradient of the output -> gradients of the inputs (in input order).
using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

/// A node whose backward is a function capturing only what it needs (STYLE.md 3);
/// release() drops the captures.
class FunctionNode final : public Node {
 public:
  FunctionNode(const char* name, BackwardFn fn) : name_(name), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(const Tensor& grad_output) override;
  void release() override { fn_ = nullptr; }
  const char* name() const override { return name_; }

 private:
  const char* name_;
  BackwardFn fn_;
};

/// A tensor kept for backward that detects in-place changes made to it after it was saved. It keeps
/// a detached handle (same data, no graph): an op's output owns its grad_fn, so a node holding the
/// output itself would own itself and never be freed when no backward runs. Save tensors as they
/// are; the detached handle shares their storage, so in-place changes are still caught.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  /// The tensor; raises flame::Error when it was modified in place since it was saved.
  const Tensor& get() const;

 private:
  Tensor tensor_;
  uint64_t version_ = 0;
};

/// True when grad mode is on and any of the (defined) inputs requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);

/// Gives `out` a grad_fn named `name` running `fn`, with one edge per input. Call only when
/// needs_grad(inputs). `out` must be a fresh result (not yet part of a graph).
void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn);

/// The engine: runs backward from `root` (gradient `grad`, or 1 for a one-element root when
/// undefined). See Note [autograd engine].
void run_backward(const Tensor& root, const Tensor& grad, bool retain_graph);

/// Note [early gradients]
/// Called from inside a backward function: hands input `input`'s gradient to the engine now, before
/// the function goes on computing its other gradients. When that completes the next node's
/// gradient, the node runs at once, and so does what it completes in turn as long as each node is
/// an accumulator or has a single input (the transposes and views between an op and a parameter);
/// other nodes go to the ready queue as usual. So a parameter's accumulator and its gradient-ready
/// hooks run -- and DDP launches that bucket's all-reduce -- while the device has still to compute the
/// op's other gradients, which the host queues after it: matmul and conv2d hand on the weight's
/// gradient first, and the communication overlaps the input-gradient GEMM or convolution. Any
/// order that respects the dependencies is a valid backward order; only where three or more
/// gradients meet in one node can the order of their sums (so the last bits) change. The
/// function must return that input's entry undefined (what it returns there is ignored). Pass the
/// gradient with std::move when the function keeps no other handle to it, so that the parameter's
/// accumulator can take it over instead of copying it.
void deliver_gradient_early(size_t input, Tensor grad);

/// Sums `grad` over the dims that broadcasting added or expanded, giving `shape`
/// (the backward of broadcasting).
Tensor sum_to(const Tensor& grad, const Shape& shape);

}  // namespace flame::autograd
