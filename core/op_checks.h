// Argument checks and shape helpers shared by the op frontends (internal to core/).
#pragma once

#include <initializer_list>
#include <optional>

#include "core/tensor.h"

namespace flame::detail {

/// Every tensor is defined and on one device; raises naming `op` and the tensors otherwise.
void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors);
/// Every tensor has one dtype (no implicit promotion).
void check_same_dtype(const char* op, std::initializer_list<const Tensor*> tensors);
/// The tensor's dtype is floating point (f32, f64, f16, bf16).
void check_floating(const char* op, const Tensor& t);
/// NumPy broadcasting of two shapes; raises naming `op` when incompatible.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
/// Raises when `out` maps several elements to one memory location (e.g. an expanded tensor),
/// which in-place ops cannot write.
void check_no_internal_overlap(const char* op, const Tensor& out);
/// Sorted, de-duplicated, wrapped dims (all dims when `dims` is empty).
std::vector<int64_t> normalize_dims(const char* op, const std::vector<int64_t>& dims, int64_t ndim);

/// Before an in-place write to `self`: refuses when autograd would need the result or the
/// overwritten values (grad mode on and self or a source requires grad; use NoGradGuard or the
/// out-of-place op).
void check_inplace_allowed(const char* op, const Tensor& self, std::initializer_list<const Tensor*> sources = {});
/// After an in-place write to `self` has been issued: bumps self's storage version, so that copies
/// of it saved for backward are caught. Called once the backend returned, never before a check
/// that may still raise: an op refused for a bad argument writes nothing and leaves the version,
/// and a later backward through a saved copy, as they were.
void mark_written(const Tensor& self);

/// x.view(shape) when the layout allows it without copying, else nothing.
std::optional<Tensor> try_view(const Tensor& x, const Shape& shape);
/// True when a and b share storage and their memory ranges intersect.
bool may_overlap(const Tensor& a, const Tensor& b);

}  // namespace flame::detail
