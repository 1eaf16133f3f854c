#include "dist/communicator.h"

namespace flame::dist {

std::unique_ptr<Communicator> make_communicator(const ProcessGroup& group, Device device, CommunicatorOptions options) {
  if (device.is_cpu()) return make_mpi_communicator(group, options);
  const Device own = group.cuda_device();
  FLAME_CHECK(device == own,
              "make_communicator: rank {} (local rank {}) communicates on {}, not {}; move the tensors to "
              "group.cuda_device()",
              group.rank, group.local_rank, own.str(), device.str());
  return make_nccl_communicator(group, options);
}

}  // namespace flame::dist
