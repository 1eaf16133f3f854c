// Cross-rank consistency checks for data parallelism: the same parameter list on every rank (at
// DDP construction) and the same parameter values (the periodic desynchronisation check).
#pragma once

#include <cstdint>
#include <string>

#include "dist/communicator.h"
#include "nn/module.h"

namespace flame::dist {

/// 64-bit FNV-1a hash of "name|shape|dtype" of one parameter (its signature).
uint64_t parameter_signature(const std::string& name, const Tensor& tensor);

/// Collective (every rank calls it): checks that every rank holds the same parameter names, shapes
/// and dtypes in the same order, by all-gathering [count, hash of all signatures] (i64 [2] per
/// rank). On a mismatch every rank raises flame::Error naming the first differing entry as rank 0
/// and the first differing rank describe it, or the differing counts. `what` names the tensors
/// ("parameter", "buffer"); `device` is where the check's own tensors go (the communicator's
/// device). Every rank must call it, also with an empty list (a rank may hold none).
void verify_same_signatures(const nn::NamedTensors& tensors, Communicator& communicator, Device device,
                            const std::string& what);

/// Per-tensor checksum: [P, 3] f64 on the tensors' device, row i = (sum, sum of squares,
/// position-weighted sum) of tensor i, accumulated in f64. The weighted sum (weights (j mod 1021) + 1
/// by flat position j) changes when values move within the tensor. Cheap (three reductions per
/// tensor) and stays on the device; a tensor is converted to f64 about 16.7M values at a time, so
/// the temporaries stay near 400 MB however large the parameter.
Tensor parameter_checksums(const nn::NamedTensors& tensors);

/// Collective: all-gathers parameter_checksums() ([W * P, 3]), copies it to the host (a
/// synchronisation: call it every N steps, not every step) and compares every rank with rank 0.
/// Two values agree when |a - b| <= rtol * max(|a|, |b|) (rtol 0: bitwise-equal results, which
/// identical updates give), or both are NaN. Raises flame::Error on every rank naming `when`, the
/// first diverging tensor, its checksums and the ranks that differ from rank 0.
void check_in_sync(const nn::NamedTensors& tensors, Communicator& communicator, const std::string& when,
                   double rtol = 0.0);

}  // namespace flame::dist
