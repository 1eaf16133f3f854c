// The backward engine and the graph-building helpers (Note [autograd engine] in core/autograd.h).
#include <atomic>
#include <limits>
#include <queue>
#include <unordered_map>

#include "core/autograd.h"
#include "core/ops.h"

namespace flame::autograd {

namespace {

thread_local bool t_grad_enabled = true;
std::atomic<uint64_t> g_sequence_nr{0};

/// A leaf's gradient sink: adds into .grad, then fires the leaf's gradient-ready hooks.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<TensorImpl>& leaf) : leaf_(leaf) {
    // Runs as soon as it is ready, ahead of every other ready node (hooks fire promptly).
    sequence_nr = std::numeric_limits<uint64_t>::max();
  }
  std::vector<Tensor> apply(const Tensor& grad) override {
    auto impl = leaf_.lock();
    if (!impl || !grad.defined()) return {};
    const Tensor leaf(impl);
    AutogradMeta& meta = leaf.autograd_meta();
    // The first gradient becomes .grad: taken over when nothing else can see it (the engine's
    // handle is the only one, it views all of its own storage and is contiguous, as PyTorch's
    // AccumulateGrad steals), else copied into a fresh buffer (it may be shared with other leaves or
    // nodes, or be the caller's own tensor). Later ones add into .grad in place, so a .grad that is
    // a view (of a DDP bucket) stays one.
    if (meta.grad.defined())
      meta.grad.add_(grad);
    else if (grad.is_sole_owner() && grad.is_contiguous() && grad.offset() == 0 &&
             grad.storage()->nbytes() == grad.nbytes())
      meta.grad = grad;
    else
      meta.grad = grad.clone();
    const uint64_t version = leaf.storage()->version();
    for (const GradReadyHook& hook : meta.ready_hooks) hook(leaf);
    // Backward may still need the leaf's values (Note [early gradients]): a hook must not change it.
    FLAME_CHECK(leaf.storage()->version() == version,
                "a gradient-ready hook changed {} in place during backward, which may still need its values "
                "(a linear layer's input gradient uses its weight after the weight's gradient is ready); step "
                "the optimizer after backward",
                leaf.describe());
    return {};
  }
  const char* name() const override { return "AccumulateGrad"; }

 private:
  std::weak_ptr<TensorImpl> leaf_;
};

std::shared_ptr<Node> accumulator_of(const Tensor& leaf) {
  AutogradMeta& meta = leaf.autograd_meta();
  if (auto existing = meta.grad_accumulator.lock()) return existing;
  auto node = std::make_shared<AccumulateGrad>(leaf.impl_ptr());
  meta.grad_accumulator = node;
  return node;
}

/// Where the gradient of `t` goes: its grad_fn, its accumulator, or nowhere.
std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  if (auto fn = t.grad_fn()) return fn;
  return accumulator_of(t);
}

struct LaterFirst {
  bool operator()(const Node* a, const Node* b) const { return a->sequence_nr < b->sequence_nr; }
};

void check_gradient(const Node& node, size_t input, const Tensor& grad) {
  const InputMeta& meta = node.input_meta[input];
  FLAME_CHECK(grad.shape() == meta.shape && grad.dtype() == meta.dtype && grad.device() == meta.device,
              "backward of {}: gradient {} for input {} does not match the input ({} {} {})", node.name(),
              grad.describe(), input, shape_str(meta.shape), dtype_name(meta.dtype), meta.device.str());
}

}  // namespace

Node::~Node() {
  std::vector<std::shared_ptr<Node>> orphans;
  auto take_sole_owned = [&orphans](std::vector<std::shared_ptr<Node>>& edges) {
    for (auto& edge : edges)
      if (edge && edge.use_count() == 1) orphans.push_back(std::move(edge));
    edges.clear();
  };
  take_sole_owned(next);
  while (!orphans.empty()) {
    std::shared_ptr<Node> node = std::move(orphans.back());
    orphans.pop_back();
    take_sole_owned(node->next);
  }  // each node dies here with no edges left, so no destructor recurses
}

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

std::vector<Tensor> FunctionNode::apply(const Tensor& grad_output) {
  FLAME_CHECK(fn_ != nullptr,
              "backward through {} a second time: its saved tensors were freed after the first "
              "backward; pass retain_graph=true to the first backward() to keep them",
              name_);
  return fn_(grad_output);
}

// Keeps a detached handle: saving a node's own output would otherwise make the node own itself.
SavedTensor::SavedTensor(const Tensor& t)
    : tensor_(t.defined() ? t.detach() : t), version_(t.defined() ? t.storage()->version() : 0) {}

const Tensor& SavedTensor::get() const {
  FLAME_CHECK(!tensor_.defined() || tensor_.storage()->version() == version_,
              "a tensor saved for backward ({}) was modified in place after it was saved; clone() it "
              "before the in-place op",
              tensor_.describe());
  return tensor_;
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn) {
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->sequence_nr = g_sequence_nr.fetch_add(1);
  node->next.reserve(inputs.size());
  node->input_meta.reserve(inputs.size());
  for (const Tensor& input : inputs) {
    node->next.push_back(gradient_edge(input));
    node->input_meta.push_back(input.defined() ? InputMeta{input.shape(), input.dtype(), input.device()} : InputMeta{});
  }
  AutogradMeta& meta = out.autograd_meta();
  meta.requires_grad = true;
  meta.grad_fn = std::move(node);
}

namespace {

/// The state of one backward pass (Note [autograd engine]).
class GraphTask {
 public:
  std::unordered_map<Node*, int> dependencies;  // edges into each node not yet delivered
  std::unordered_map<Node*, Tensor> pending;    // summed incoming gradient per node
  std::priority_queue<Node*, std::vector<Node*>, LaterFirst> ready;

  /// Runs `node` and hands its input gradients on; nodes that become ready go to `early` when
  /// given (deliver_gradient_early), else to the ready queue.
  void run_node(Node* node, std::vector<Node*>* early = nullptr);
  /// Adds `grad` (may be undefined) to the pending gradient of node->next[input]; true when that
  /// was its last missing contribution.
  bool deliver(Node& node, size_t input, Tensor grad);
};

/// The node whose backward is running on this thread, for deliver_gradient_early.
struct RunningNode {
  GraphTask* task = nullptr;
  Node* node = nullptr;
  std::vector<char>* delivered = nullptr;  // per input: handed on early already
};
thread_local RunningNode t_running;

bool GraphTask::deliver(Node& node, size_t input, Tensor grad) {
  Node* next = node.next[input].get();
  if (!next) return false;
  if (grad.defined()) {
    check_gradient(node, input, grad);
    Tensor& slot = pending[next];
    slot = slot.defined() ? add(slot, grad) : std::move(grad);  // moved: the slot may become its only handle
  }
  return --dependencies[next] == 0;
}

void GraphTask::run_node(Node* node, std::vector<Node*>* early) {
  auto entry = pending.extract(node);
  std::vector<char> delivered(node->next.size(), 0);
  std::vector<Tensor> input_grads;
  if (!entry.empty() && entry.mapped().defined()) {
    const RunningNode outer = t_running;
    t_running = RunningNode{this, node, &delivered};
    try {
      input_grads = node->apply(entry.mapped());
    } catch (...) {
      t_running = outer;
      throw;
    }
    t_running = outer;
  }
  for (size_t i = 0; i < node->next.size(); ++i) {
    if (delivered[i]) continue;
    if (deliver(*node, i, i < input_grads.size() ? std::move(input_grads[i]) : Tensor())) {
      if (early)
        early->push_back(node->next[i].get());
      else
        ready.push(node->next[i].get());
    }
  }
}

/// Whether a node reached through an early gradient runs at once too: accumulators and nodes with a
/// single input (views, transposes, casts), the path from an op to a parameter's accumulator.
bool runs_early(const Node& node) { return node.next.size() <= 1; }

}  // namespace

void deliver_gradient_early(size_t input, Tensor grad) {
  FLAME_CHECK(t_running.task != nullptr, "deliver_gradient_early: called outside a backward function");
  Node& node = *t_running.node;
  std::vector<char>& delivered = *t_running.delivered;
  FLAME_CHECK(input < node.next.size() && !delivered[input],
              "deliver_gradient_early: {} has no input {} or delivered it already", node.name(), input);
  delivered[input] = 1;
  GraphTask& task = *t_running.task;
  if (!task.deliver(node, input, std::move(grad))) return;
  // Note [early gradients]: what now has all its gradient runs before the caller goes on.
  std::vector<Node*> early{node.next[input].get()};
  while (!early.empty()) {
    Node* next = early.back();
    early.pop_back();
    if (runs_early(*next))
      task.run_node(next, &early);
    else
      task.ready.push(next);
  }
}

void run_backward(const Tensor& root, const Tensor& grad_in, bool retain_graph) {
  FLAME_CHECK(root.defined() && root.requires_grad(),
              "backward: the tensor does not require grad and has no grad_fn (did an input call "
              "requires_grad_()? was grad mode off?)");
  Tensor grad = grad_in;
  if (!grad.defined()) {
    FLAME_CHECK(root.numel() == 1,
                "backward: a gradient can be implied only for one-element outputs, got {}; "
                "pass the gradient explicitly",
                root.describe());
    grad = ones(root.shape(), TensorOptions(root.dtype(), root.device()));
  }
  FLAME_CHECK(grad.shape() == root.shape() && grad.dtype() == root.dtype() && grad.device() == root.device(),
              "backward: gradient {} does not match the output {}", grad.describe(), root.describe());
  NoGradGuard no_grad;

  const std::shared_ptr<Node> root_node = gradient_edge(root);
  GraphTask task;
  // Count, for every reachable node, the edges that lead into it.
  std::vector<Node*> visited{root_node.get()};
  std::vector<Node*> stack{root_node.get()};
  task.dependencies[root_node.get()] = 0;
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const auto& next : node->next) {
      if (!next) continue;
      auto [it, inserted] = task.dependencies.try_emplace(next.get(), 0);
      ++it->second;
      if (inserted) {
        visited.push_back(next.get());
        stack.push_back(next.get());
      }
    }
  }

  task.pending[root_node.get()] = grad;
  task.ready.push(root_node.get());
  while (!task.ready.empty()) {
    Node* node = task.ready.top();
    task.ready.pop();
    task.run_node(node);
  }
  if (!retain_graph)
    for (Node* node : visited) node->release();
}

Tensor sum_to(const Tensor& grad, const Shape& shape) {
  if (grad.shape() == shape) return grad;
  const int64_t lead = grad.dim() - static_cast<int64_t>(shape.size());
  FLAME_CHECK(lead >= 0, "sum_to: cannot reduce {} to {}", grad.describe(), shape_str(shape));
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < grad.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && grad.size(d) != 1)) dims.push_back(d);
  Tensor reduced = dims.empty() ? grad : sum(grad, dims, true);
  return reduced.reshape(shape);
}

}  // namespace flame::autograd
