#include "nn/flatten.h"

#include <algorithm>

namespace flame::nn {

Tensor Flatten::forward(const Tensor& input) {
  FLAME_CHECK(input.defined(), "Flatten(start_dim={}, end_dim={}): the input is undefined", start_dim_, end_dim_);
  const int64_t nd = std::max<int64_t>(input.dim(), 1);  // a 0-d input flattens as a 1-D one
  auto wrap = [nd](int64_t d) { return d < 0 ? d + nd : d; };
  const int64_t start = wrap(start_dim_), end = wrap(end_dim_);
  FLAME_CHECK(start >= 0 && start < nd && end >= 0 && end < nd && start <= end,
              "Flatten(start_dim={}, end_dim={}): input {} has {} dims; need -{} <= start_dim <= end_dim < {}",
              start_dim_, end_dim_, input.describe(), input.dim(), nd, nd);
  return input.flatten(start, end);
}

}  // namespace flame::nn
