// Convolution through cuDNN on contiguous NCHW tensors, enqueued on the device's compute stream:
// execution plans of cuDNN's graph (backend) API, or its legacy cudnnConvolutionForward /
// BackwardData / BackwardFilter calls.
//
// Note [cudnn conv plans]
// - One cuDNN handle per device, created on first use and bound to the device's compute stream.
//   Handles live for the process (never destroyed: at exit the CUDA runtime may already be gone).
// - A plan is kept per (device, dtype, geometry, pointer alignment) for the process, so
//   steady-state training makes no heuristic query. Plans are small host objects; a new batch size
//   adds one. A plan has two halves, each built the first time a call needs it (a process on one API
//   never plans the other), each covering the three passes (forward, backward-data,
//   backward-filter):
//   - execution plans of cuDNN's graph API: the pass as a one-operation graph, and the first engine
//     configuration, from heuristics mode A's list and then the fallback list, that is allowed
//     (below), finalizes, and fits the workspace limit. A call then only builds a variant pack (the
//     three data pointers and the workspace) and runs cudnnBackendExecute. This is the default
//     (Conv2dApi::Graph, core/cuda_device.h): its host cost per call is a fraction of the legacy
//     calls', whose every call goes through cuDNN's own plan lookup, and the cnn's training step was
//     bound by the host (docs/PERFORMANCE.md, sixteenth run);
//   - the legacy descriptors and algorithms (cudnnGet*Algorithm_v7, no benchmarking), used under
//     Conv2dApi::Legacy (set_conv2d_api, or FLAME_CUDNN_CONV=legacy) and for a pass for which the
//     graph API offers no allowed engine (logged once per plan). conv2d_api_calls() counts both.
// - The operands' byte alignment is part of the plan: 16 when the three operands start on 16-byte
//   boundaries (every fresh tensor from the caching allocator), else the largest power of two they
//   share, down to the element size (a view at an odd element offset). The workspace always comes
//   from the caching allocator, whose blocks are 512-byte aligned.
// - Math: FLAME's f32 never uses TF32 (as matmul). The legacy path asks with CUDNN_FMA_MATH, because
//   CUDNN_DEFAULT_MATH lets cuDNN run f32 convolutions as TF32 on Ampere and later, and skips results
//   whose math type is a tensor-op mode; the graph path skips f32 engines whose numerical notes
//   name tensor cores. f64 uses the default math (full f64 precision either way). f16 and bf16 use
//   tensor cores and compute (accumulate) in f32; the graph path skips engines with a
//   reduced-precision reduction or down-converted inputs for every dtype.
// - Workspace comes from the caching allocator as a u8 Tensor on the device, freed stream-ordered
//   right after the call is enqueued (Note [caching allocator streams]); engines and algorithms
//   needing more than kMaxWorkspaceBytes are passed over.
#include <cudnn.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <strings.h>

#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/cuda/cudnn_backend.h"
#include "core/cuda/launchers.h"
#include "core/cuda_device.h"

namespace flame::cuda {
namespace {

constexpr size_t kMaxWorkspaceBytes = size_t{1} << 30;

/// The API conv2d starts with: FLAME_CUDNN_CONV ("graph" or "legacy", any case), else the graph API.
Conv2dApi api_from_environment() {
  const char* value = std::getenv("FLAME_CUDNN_CONV");
  if (value == nullptr || *value == '\0' || strcasecmp(value, "graph") == 0) return Conv2dApi::Graph;
  if (strcasecmp(value, "legacy") == 0) return Conv2dApi::Legacy;
  FLAME_FAIL("FLAME_CUDNN_CONV must be \"graph\" or \"legacy\", got \"{}\" (set_conv2d_api overrides it)", value);
}

// The selected Conv2dApi, or kApiUnread until the environment is read (on the first call that needs
// it, unless set_conv2d_api came first: a bad FLAME_CUDNN_CONV then never raises).
constexpr int kApiUnread = -1;
std::atomic<int> selected_api{kApiUnread};

Conv2dApi current_api() {
  int api = selected_api.load(std::memory_order_relaxed);
  if (api == kApiUnread) {
    int unread = kApiUnread;
    selected_api.compare_exchange_strong(unread, static_cast<int>(api_from_environment()));
    api = selected_api.load();
  }
  return static_cast<Conv2dApi>(api);
}

std::atomic<uint64_t> graph_calls{0};
std::atomic<uint64_t> legacy_calls{0};

std::string geometry_str(const Conv2dGeometry& g) {
  return fmt::format(
      "input [{}, {}, {}, {}], weight [{}, {}, {}, {}], output [{}, {}, {}, {}], stride {}x{}, padding {}x{}, "
      "dilation {}x{}, groups {}",
      g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels, g.groups > 0 ? g.in_channels / g.groups : 0, g.kernel_h,
      g.kernel_w, g.batch, g.out_channels, g.out_h, g.out_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h,
      g.dilation_w, g.groups);
}

Shape input_shape(const Conv2dGeometry& g) { return {g.batch, g.in_channels, g.in_h, g.in_w}; }
Shape weight_shape(const Conv2dGeometry& g) {
  return {g.out_channels, g.groups > 0 ? g.in_channels / g.groups : 0, g.kernel_h, g.kernel_w};
}
Shape output_shape(const Conv2dGeometry& g) { return {g.batch, g.out_channels, g.out_h, g.out_w}; }

struct CudnnTypes {
  cudnnDataType_t data;
  cudnnDataType_t compute;
  cudnnMathType_t math;
};

CudnnTypes cudnn_types(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return {CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH};
    case DType::F64:
      return {CUDNN_DATA_DOUBLE, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH};
    case DType::F16:
      return {CUDNN_DATA_HALF, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH};
    case DType::BF16:
      return {CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_TENSOR_OP_MATH};
    default:
      FLAME_FAIL("conv2d: the CUDA backend supports f32, f64, f16 and bf16, got {}; convert with to()",
                 dtype_name(dtype));
  }
}

/// The device's cuDNN handle (Note [cudnn conv plans]).
cudnnHandle_t handle_for(DeviceContext& ctx) {
  static std::mutex mutex;
  static std::map<int, cudnnHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = handles.find(ctx.device); it != handles.end()) return it->second;
  FLAME_CUDA_CHECK(cudaSetDevice(ctx.device));
  cudnnHandle_t handle = nullptr;
  FLAME_CUDNN_CHECK(cudnnCreate(&handle));
  FLAME_CUDNN_CHECK(cudnnSetStream(handle, ctx.stream));
  handles.emplace(ctx.device, handle);
  return handle;
}

// Unscoped: a pass indexes the per-pass arrays below.
enum Pass { kForward = 0, kBackwardData = 1, kBackwardFilter = 2, kPasses = 3 };
const char* const kPassNames[kPasses] = {"forward", "backward-data", "backward-filter"};

// The unique ids of the three tensors in every pass's graph: x is the input (or its gradient), w the
// weight (or its gradient) and y the output (or its gradient).
constexpr int64_t kUidX = 1, kUidW = 2, kUidY = 3;

/// One pass planned through cuDNN's graph API (Note [cudnn conv plans]): the finalized execution
/// plan, the descriptors it was built from (kept for its lifetime) and its workspace size.
struct GraphPass {
  std::vector<BackendDescriptor> parts;
  std::unique_ptr<BackendDescriptor> plan;
  size_t workspace_bytes = 0;
};

/// The legacy API's half of a plan: descriptors and the chosen algorithm of each pass. Each pass has
/// its own convolution descriptor, whose math type is the one its chosen algorithm was offered with
/// (cuDNN picks kernels by algorithm and math type together).
struct LegacyPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t forward_conv = nullptr, data_conv = nullptr, filter_conv = nullptr;
  cudnnConvolutionFwdAlgo_t forward_algo{};
  cudnnConvolutionBwdDataAlgo_t data_algo{};
  cudnnConvolutionBwdFilterAlgo_t filter_algo{};
  std::array<size_t, kPasses> workspace_bytes{};  // per Pass

  LegacyPlan() = default;
  LegacyPlan(const LegacyPlan&) = delete;
  LegacyPlan& operator=(const LegacyPlan&) = delete;
  ~LegacyPlan() {
    for (cudnnConvolutionDescriptor_t conv : {forward_conv, data_conv, filter_conv})
      if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
  }
};

/// The plan of one (device, dtype, geometry, alignment) (Note [cudnn conv plans]). Each API's half is
/// built the first time a call needs it, under `mutex`, so a process on one API never plans the other.
struct ConvPlan {
  Conv2dGeometry geometry;
  DType dtype = DType::F32;
  int64_t alignment = 0;
  std::mutex mutex;
  std::unique_ptr<LegacyPlan> legacy;  // null until the legacy API first runs a pass
  bool graph_planned = false;
  std::array<std::unique_ptr<GraphPass>, kPasses> graph;  // per Pass; null where the graph API offers no plan
};

/// True when a heuristic result may be used: it succeeded and, for f32, is not a tensor-op (TF32) kernel.
template <class Perf>
bool usable(const Perf& perf, DType dtype) {
  if (perf.status != CUDNN_STATUS_SUCCESS) return false;
  if (dtype == DType::F32)
    return perf.mathType != CUDNN_TENSOR_OP_MATH && perf.mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
  return true;
}

/// Plans one pass: asks cuDNN's heuristics for its algorithms, then keeps the first usable result
/// whose workspace fits, giving `conv` (the pass's descriptor) the result's math type; fails naming
/// the pass otherwise. `get_algorithms` and `get_workspace` are the pass's cudnnGet*Algorithm_v7 and
/// cudnnGet*WorkspaceSize, which both take the handle and the descriptors `a`, `b`, `conv`, `c`.
template <class A, class B, class C, class Perf, class Algo>
void plan_pass(const char* pass, cudnnHandle_t handle, A a, B b, cudnnConvolutionDescriptor_t conv, C c,
               cudnnStatus_t (*get_algorithms)(cudnnHandle_t, A, B, cudnnConvolutionDescriptor_t, C, int, int*, Perf*),
               cudnnStatus_t (*get_workspace)(cudnnHandle_t, A, B, cudnnConvolutionDescriptor_t, C, Algo, size_t*),
               int algorithm_count, DType dtype, const Conv2dGeometry& g, Algo& algo, size_t& bytes) {
  std::vector<Perf> results(static_cast<size_t>(algorithm_count));
  int returned = 0;
  FLAME_CUDNN_CHECK(get_algorithms(handle, a, b, conv, c, algorithm_count, &returned, results.data()));
  for (int i = 0; i < returned; ++i) {
    if (!usable(results[i], dtype)) continue;
    FLAME_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, results[i].mathType));
    size_t needed = 0;
    if (get_workspace(handle, a, b, conv, c, results[i].algo, &needed) != CUDNN_STATUS_SUCCESS ||
        needed > kMaxWorkspaceBytes)
      continue;
    algo = results[i].algo;
    bytes = needed;
    return;
  }
  FLAME_FAIL("conv2d: cuDNN offers no {} algorithm for {} in {} (within a {} MiB workspace{})", pass, geometry_str(g),
             dtype_name(dtype), kMaxWorkspaceBytes >> 20, dtype == DType::F32 ? ", without TF32" : "");
}

/// Creates `conv`, a convolution descriptor for `g` with the dtype's compute and math types.
void make_conv_descriptor(const Conv2dGeometry& g, const CudnnTypes& types, cudnnConvolutionDescriptor_t& conv) {
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  FLAME_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
  FLAME_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, i(g.pad_h), i(g.pad_w), i(g.stride_h), i(g.stride_w),
                                                    i(g.dilation_h), i(g.dilation_w), CUDNN_CROSS_CORRELATION,
                                                    types.compute));
  FLAME_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, i(g.groups)));
  FLAME_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, types.math));
}

/// alpha = 1 and beta = 0 in the type cuDNN reads them as (double for f64 data, float otherwise).
struct Scaling {
  float one_f = 1.0f, zero_f = 0.0f;
  double one_d = 1.0, zero_d = 0.0;
  bool f64;
  explicit Scaling(DType dtype) : f64(dtype == DType::F64) {}
  const void* one() const { return f64 ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f); }
  const void* zero() const { return f64 ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f); }
};

/// True when an engine with these numerical notes may run a pass in `dtype` (Note [cudnn conv plans]).
bool engine_allowed(const std::vector<cudnnBackendNumericalNote_t>& notes, DType dtype) {
  for (const cudnnBackendNumericalNote_t note : notes) {
    if (note == CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION || note == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
      return false;
    if (dtype == DType::F32 && note == CUDNN_NUMERICAL_NOTE_TENSOR_CORE) return false;  // TF32
  }
  return true;
}

/// Plans `pass` through cuDNN's graph API (Note [cudnn conv plans]); null when cuDNN refuses a step
/// or offers no allowed engine within the workspace limit.
std::unique_ptr<GraphPass> make_graph_pass(cudnnHandle_t handle, const Conv2dGeometry& g, DType dtype, Pass pass,
                                           int64_t alignment) {
  const CudnnTypes types = cudnn_types(dtype);
  auto result = std::make_unique<GraphPass>();
  bool ok = true;
  const auto make = [&](cudnnBackendDescriptorType_t type) {
    result->parts.emplace_back(type);
    return result->parts.back().get();
  };
  const auto set = [&](cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                       int64_t count, const void* values) {
    if (ok) ok = cudnnBackendSetAttribute(d, name, type, count, values) == CUDNN_STATUS_SUCCESS;
  };
  const auto finalize = [&](cudnnBackendDescriptor_t d) {
    if (ok) ok = cudnnBackendFinalize(d) == CUDNN_STATUS_SUCCESS;
  };
  const auto tensor = [&](int64_t uid, const Shape& shape) {
    const std::array<int64_t, 4> dims{shape[0], shape[1], shape[2], shape[3]};
    const std::array<int64_t, 4> strides{dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
    const cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &types.data);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment);
    finalize(t);
    return t;
  };
  const cudnnBackendDescriptor_t x = tensor(kUidX, input_shape(g));
  const cudnnBackendDescriptor_t w = tensor(kUidW, weight_shape(g));
  const cudnnBackendDescriptor_t y = tensor(kUidY, output_shape(g));

  const cudnnBackendDescriptor_t conv = make(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const int64_t spatial_dims = 2;
  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const std::array<int64_t, 2> padding{g.pad_h, g.pad_w}, dilation{g.dilation_h, g.dilation_w},
      stride{g.stride_h, g.stride_w};
  set(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial_dims);
  set(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &types.compute);
  set(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
  set(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, padding.data());
  set(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, padding.data());
  set(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilation.data());
  set(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride.data());
  finalize(conv);

  const Scaling scaling(dtype);  // alpha = 1, beta = 0
  const cudnnBackendAttributeType_t scale_type = scaling.f64 ? CUDNN_TYPE_DOUBLE : CUDNN_TYPE_FLOAT;
  struct OperationAttributes {
    cudnnBackendDescriptorType_t type;
    cudnnBackendAttributeName_t x, w, y, conv, alpha, beta;
  };
  static constexpr OperationAttributes kOperations[kPasses] = {
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA},
      {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC, CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
       CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA},
  };
  const OperationAttributes& attributes = kOperations[pass];
  const cudnnBackendDescriptor_t operation = make(attributes.type);
  set(operation, attributes.x, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
  set(operation, attributes.w, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
  set(operation, attributes.y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
  set(operation, attributes.conv, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
  set(operation, attributes.alpha, scale_type, 1, scaling.one());
  set(operation, attributes.beta, scale_type, 1, scaling.zero());
  finalize(operation);

// The *_HANDLE attributes are deprecated from cuDNN 9.19 in favour of *_DEVICEPROP; the GPU machines
// run cuDNN 9.14, which needs them.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  const cudnnBackendDescriptor_t graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &operation);
  set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
  finalize(graph);
  if (!ok) return nullptr;

  // The first allowed engine that finalizes within the workspace limit: heuristics mode A's list,
  // then the fallback list.
  for (const cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    BackendDescriptor heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    int64_t count = 0;
    if (heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph) !=
            CUDNN_STATUS_SUCCESS ||
        heuristics.set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode) != CUDNN_STATUS_SUCCESS ||
        heuristics.finalize() != CUDNN_STATUS_SUCCESS ||
        cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                 &count, nullptr) != CUDNN_STATUS_SUCCESS ||
        count <= 0)
      continue;
    std::vector<BackendDescriptor> owned;
    std::vector<cudnnBackendDescriptor_t> configs;
    for (int64_t i = 0; i < count; ++i) {
      owned.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      configs.push_back(owned.back().get());
    }
    int64_t returned = 0;
    if (cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                 &returned, configs.data()) != CUDNN_STATUS_SUCCESS)
      continue;
    for (int64_t i = 0; i < returned; ++i) {
      BackendDescriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      cudnnBackendDescriptor_t engine_descriptor = engine.get();
      int64_t got = 0;
      if (cudnnBackendGetAttribute(configs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got,
                                   &engine_descriptor) != CUDNN_STATUS_SUCCESS)
        continue;
      std::vector<cudnnBackendNumericalNote_t> notes(CUDNN_NUMERICAL_NOTE_TYPE_COUNT);
      if (cudnnBackendGetAttribute(engine_descriptor, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                   static_cast<int64_t>(notes.size()), &got, notes.data()) != CUDNN_STATUS_SUCCESS)
        continue;
      notes.resize(static_cast<size_t>(got));
      if (!engine_allowed(notes, dtype)) continue;
      auto plan = std::make_unique<BackendDescriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      int64_t workspace = 0;
      if (plan->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) != CUDNN_STATUS_SUCCESS ||
          plan->set(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &configs[i]) !=
              CUDNN_STATUS_SUCCESS ||
          plan->finalize() != CUDNN_STATUS_SUCCESS ||
          cudnnBackendGetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                   &workspace) != CUDNN_STATUS_SUCCESS ||
          workspace < 0 || static_cast<size_t>(workspace) > kMaxWorkspaceBytes)
        continue;
      result->parts.push_back(std::move(heuristics));
      for (BackendDescriptor& config : owned) result->parts.push_back(std::move(config));
      result->plan = std::move(plan);
      result->workspace_bytes = static_cast<size_t>(workspace);
      return result;
    }
  }
#pragma GCC diagnostic pop
  return nullptr;
}

/// The legacy API's half of the plan for (g, dtype): its descriptors, and each pass's algorithm
/// from cuDNN's heuristics; raises naming the pass that has no algorithm.
std::unique_ptr<LegacyPlan> make_legacy_plan(cudnnHandle_t handle, const Conv2dGeometry& g, DType dtype) {
  const CudnnTypes types = cudnn_types(dtype);
  const auto i = [](int64_t v) { return static_cast<int>(v); };
  auto plan = std::make_unique<LegacyPlan>();
  FLAME_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->x));
  FLAME_CUDNN_CHECK(cudnnCreateTensorDescriptor(&plan->y));
  FLAME_CUDNN_CHECK(cudnnCreateFilterDescriptor(&plan->w));
  FLAME_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->x, CUDNN_TENSOR_NCHW, types.data, i(g.batch), i(g.in_channels),
                                               i(g.in_h), i(g.in_w)));
  FLAME_CUDNN_CHECK(cudnnSetTensor4dDescriptor(plan->y, CUDNN_TENSOR_NCHW, types.data, i(g.batch), i(g.out_channels),
                                               i(g.out_h), i(g.out_w)));
  FLAME_CUDNN_CHECK(cudnnSetFilter4dDescriptor(plan->w, types.data, CUDNN_TENSOR_NCHW, i(g.out_channels),
                                               i(g.in_channels / g.groups), i(g.kernel_h), i(g.kernel_w)));
  make_conv_descriptor(g, types, plan->forward_conv);
  make_conv_descriptor(g, types, plan->data_conv);
  make_conv_descriptor(g, types, plan->filter_conv);

  int n = 0, c = 0, h = 0, w = 0;
  FLAME_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(plan->forward_conv, plan->x, plan->w, &n, &c, &h, &w));
  FLAME_CHECK(n == g.batch && c == g.out_channels && h == g.out_h && w == g.out_w,
              "conv2d: cuDNN computes output [{}, {}, {}, {}] for {}, which disagrees with FLAME's geometry", n, c, h,
              w, geometry_str(g));

  plan_pass("forward", handle, plan->x, plan->w, plan->forward_conv, plan->y, cudnnGetConvolutionForwardAlgorithm_v7,
            cudnnGetConvolutionForwardWorkspaceSize, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, dtype, g, plan->forward_algo,
            plan->workspace_bytes[kForward]);
  plan_pass("backward-data", handle, plan->w, plan->y, plan->data_conv, plan->x,
            cudnnGetConvolutionBackwardDataAlgorithm_v7, cudnnGetConvolutionBackwardDataWorkspaceSize,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, dtype, g, plan->data_algo, plan->workspace_bytes[kBackwardData]);
  plan_pass("backward-filter", handle, plan->x, plan->y, plan->filter_conv, plan->w,
            cudnnGetConvolutionBackwardFilterAlgorithm_v7, cudnnGetConvolutionBackwardFilterWorkspaceSize,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, dtype, g, plan->filter_algo,
            plan->workspace_bytes[kBackwardFilter]);
  return plan;
}

/// `pass` of `plan` through the graph API, planning the graph half first if no call has yet (Note
/// [cudnn conv plans]); null where the graph API offers no allowed engine.
const GraphPass* graph_pass(cudnnHandle_t handle, ConvPlan& plan, Pass pass) {
  std::lock_guard<std::mutex> lock(plan.mutex);
  if (!plan.graph_planned) {
    for (const Pass each : {kForward, kBackwardData, kBackwardFilter}) {
      plan.graph[each] = make_graph_pass(handle, plan.geometry, plan.dtype, each, plan.alignment);
      if (plan.graph[each] == nullptr)
        spdlog::info(
            "conv2d: cuDNN's graph API offers no {} plan for {} in {} ({}-byte alignment); that pass runs "
            "through the legacy API",
            kPassNames[each], geometry_str(plan.geometry), dtype_name(plan.dtype), plan.alignment);
    }
    plan.graph_planned = true;
  }
  return plan.graph[pass].get();
}

/// The legacy half of `plan`, planned first if no call has needed it yet.
const LegacyPlan& legacy_plan(cudnnHandle_t handle, ConvPlan& plan) {
  std::lock_guard<std::mutex> lock(plan.mutex);
  if (plan.legacy == nullptr) plan.legacy = make_legacy_plan(handle, plan.geometry, plan.dtype);
  return *plan.legacy;
}

/// The cached plan of (ctx's device, dtype, g, alignment) (Note [cudnn conv plans]), each API's half
/// still to be built on first use.
ConvPlan& plan_for(DeviceContext& ctx, const Conv2dGeometry& g, DType dtype, int64_t alignment) {
  using Key = std::array<int64_t, 19>;
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<ConvPlan>> plans;
  const Key key{ctx.device,     static_cast<int64_t>(dtype),
                g.batch,        g.in_channels,
                g.out_channels, g.groups,
                g.in_h,         g.in_w,
                g.out_h,        g.out_w,
                g.kernel_h,     g.kernel_w,
                g.stride_h,     g.stride_w,
                g.pad_h,        g.pad_w,
                g.dilation_h,   g.dilation_w,
                alignment};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  if (it == plans.end()) {
    for (int64_t v : {g.batch, g.in_channels, g.out_channels, g.in_h, g.in_w, g.kernel_h, g.kernel_w, g.stride_h,
                      g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, g.groups})
      FLAME_CHECK(v <= INT_MAX, "conv2d: {} has a size above cuDNN's 32-bit limit {}", geometry_str(g), INT_MAX);
    auto plan = std::make_unique<ConvPlan>();
    plan->geometry = g;
    plan->dtype = dtype;
    plan->alignment = alignment;
    it = plans.emplace(key, std::move(plan)).first;
  }
  return *it->second;  // plans are never erased
}

/// Scratch memory for one cuDNN call (Note [cudnn conv plans]); empty for 0 bytes.
Tensor workspace(DeviceContext& ctx, size_t bytes) {
  if (bytes == 0) return Tensor();
  return Tensor::empty({static_cast<int64_t>(bytes)}, TensorOptions(DType::U8, cuda_device(ctx.device)));
}

/// The byte alignment the operands share (Note [cudnn conv plans]): the largest power of two up to 16
/// that divides each one's address, at least the element size.
int64_t operand_alignment(DType dtype, std::initializer_list<const Tensor*> operands) {
  const auto element = static_cast<int64_t>(dtype_size(dtype));
  int64_t alignment = 16;
  for (const Tensor* operand : operands) {
    const auto address = reinterpret_cast<uintptr_t>(operand->data_ptr());
    while (alignment > element && address % static_cast<uintptr_t>(alignment) != 0) alignment /= 2;
  }
  return alignment;
}

/// Runs `pass` on x, w and y (input, weight and output, or their gradients): through the plan's
/// graph execution plan under Conv2dApi::Graph where it has one, else through
/// `legacy(legacy_plan, workspace)`, the pass's legacy call (Note [cudnn conv plans]).
template <class LegacyCall>
void run_pass(DeviceContext& ctx, cudnnHandle_t handle, ConvPlan& plan, Pass pass, const Tensor& x, const Tensor& w,
              const Tensor& y, LegacyCall legacy) {
  const GraphPass* graph = current_api() == Conv2dApi::Graph ? graph_pass(handle, plan, pass) : nullptr;
  if (graph == nullptr) {
    const LegacyPlan& legacy_half = legacy_plan(handle, plan);
    const Tensor scratch = workspace(ctx, legacy_half.workspace_bytes[pass]);
    legacy(legacy_half, scratch.defined() ? scratch.data_ptr() : nullptr);
    legacy_calls.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const Tensor scratch = workspace(ctx, graph->workspace_bytes);
  void* workspace_pointer = scratch.defined() ? scratch.data_ptr() : nullptr;
  const std::array<int64_t, 3> uids{kUidX, kUidW, kUidY};
  const std::array<void*, 3> pointers{x.data_ptr(), w.data_ptr(), y.data_ptr()};
  BackendDescriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  FLAME_CUDNN_CHECK(pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids.data()));
  FLAME_CUDNN_CHECK(pack.set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers.data()));
  FLAME_CUDNN_CHECK(pack.set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace_pointer));
  FLAME_CUDNN_CHECK(pack.finalize());
  FLAME_CUDNN_CHECK(cudnnBackendExecute(handle, graph->plan->get(), pack.get()));
  graph_calls.fetch_add(1, std::memory_order_relaxed);
}

void check_operand(const char* op, const char* what, const Tensor& t, DType dtype, const Shape& shape) {
  FLAME_CHECK(t.dtype() == dtype, "{}: {} {} must be {} like the other operands", op, what, t.describe(),
              dtype_name(dtype));
  FLAME_CHECK(t.is_contiguous() && t.numel() == shape_numel(shape),
              "{}: {} {} must be contiguous with the {} elements of {}", op, what, t.describe(), shape_numel(shape),
              shape_str(shape));
}

}  // namespace

void launch_conv2d_forward(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input, const Tensor& weight,
                           const Tensor& out) {
  const char* op = "conv2d";
  check_conv2d_geometry(op, g);
  const DType dtype = out.dtype();
  check_operand(op, "input", input, dtype, input_shape(g));
  check_operand(op, "weight", weight, dtype, weight_shape(g));
  check_operand(op, "out", out, dtype, output_shape(g));
  if (out.numel() == 0) return;
  const cudnnHandle_t handle = handle_for(ctx);
  ConvPlan& plan = plan_for(ctx, g, dtype, operand_alignment(dtype, {&input, &weight, &out}));
  run_pass(ctx, handle, plan, kForward, input, weight, out, [&](const LegacyPlan& legacy, void* scratch) {
    const Scaling s(dtype);
    FLAME_CUDNN_CHECK(cudnnConvolutionForward(handle, s.one(), legacy.x, input.data_ptr(), legacy.w, weight.data_ptr(),
                                              legacy.forward_conv, legacy.forward_algo, scratch,
                                              legacy.workspace_bytes[kForward], s.zero(), legacy.y, out.data_ptr()));
  });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_conv2d_backward_input(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& grad_out,
                                  const Tensor& weight, const Tensor& grad_input) {
  const char* op = "conv2d backward (input)";
  check_conv2d_geometry(op, g);
  const DType dtype = grad_input.dtype();
  check_operand(op, "grad_out", grad_out, dtype, output_shape(g));
  check_operand(op, "weight", weight, dtype, weight_shape(g));
  check_operand(op, "grad_input", grad_input, dtype, input_shape(g));
  if (grad_input.numel() == 0) return;
  if (grad_out.numel() == 0) {  // no output channels: the input does not influence anything
    FLAME_CUDA_CHECK(cudaMemsetAsync(grad_input.data_ptr(), 0, grad_input.nbytes(), ctx.stream));
    return;
  }
  const cudnnHandle_t handle = handle_for(ctx);
  ConvPlan& plan = plan_for(ctx, g, dtype, operand_alignment(dtype, {&grad_input, &weight, &grad_out}));
  run_pass(ctx, handle, plan, kBackwardData, grad_input, weight, grad_out,
           [&](const LegacyPlan& legacy, void* scratch) {
             const Scaling s(dtype);
             FLAME_CUDNN_CHECK(cudnnConvolutionBackwardData(handle, s.one(), legacy.w, weight.data_ptr(), legacy.y,
                                                            grad_out.data_ptr(), legacy.data_conv, legacy.data_algo,
                                                            scratch, legacy.workspace_bytes[kBackwardData], s.zero(),
                                                            legacy.x, grad_input.data_ptr()));
           });
  FLAME_CUDA_LAUNCH_CHECK();
}

void launch_conv2d_backward_weight(DeviceContext& ctx, const Conv2dGeometry& g, const Tensor& input,
                                   const Tensor& grad_out, const Tensor& grad_weight) {
  const char* op = "conv2d backward (weight)";
  check_conv2d_geometry(op, g);
  const DType dtype = grad_weight.dtype();
  check_operand(op, "input", input, dtype, input_shape(g));
  check_operand(op, "grad_out", grad_out, dtype, output_shape(g));
  check_operand(op, "grad_weight", grad_weight, dtype, weight_shape(g));
  if (grad_weight.numel() == 0) return;
  if (g.batch == 0) {  // an empty batch contributes nothing
    FLAME_CUDA_CHECK(cudaMemsetAsync(grad_weight.data_ptr(), 0, grad_weight.nbytes(), ctx.stream));
    return;
  }
  const cudnnHandle_t handle = handle_for(ctx);
  ConvPlan& plan = plan_for(ctx, g, dtype, operand_alignment(dtype, {&input, &grad_weight, &grad_out}));
  run_pass(
      ctx, handle, plan, kBackwardFilter, input, grad_weight, grad_out, [&](const LegacyPlan& legacy, void* scratch) {
        const Scaling s(dtype);
        FLAME_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, s.one(), legacy.x, input.data_ptr(), legacy.y,
                                                         grad_out.data_ptr(), legacy.filter_conv, legacy.filter_algo,
                                                         scratch, legacy.workspace_bytes[kBackwardFilter], s.zero(),
                                                         legacy.w, grad_weight.data_ptr()));
      });
  FLAME_CUDA_LAUNCH_CHECK();
}

void set_conv2d_api(Conv2dApi api) { selected_api.store(static_cast<int>(api)); }
Conv2dApi conv2d_api() { return current_api(); }
Conv2dApiCalls conv2d_api_calls() { return {graph_calls.load(), legacy_calls.load()}; }

}  // namespace flame::cuda
