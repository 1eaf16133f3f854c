#include "core/random.h"

#include <map>
#include <mutex>

namespace flame {

namespace {

struct GeneratorRegistry {
  std::mutex mutex;
  uint64_t seed = 0;
  std::map<std::pair<int, int>, Generator> generators;  // (device type, index) -> generator
};

GeneratorRegistry& registry() {
  static auto* r = new GeneratorRegistry();
  return *r;
}

}  // namespace

Generator& default_generator(Device device) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  const auto key = std::pair{static_cast<int>(device.type), device.index};
  auto it = r.generators.find(key);
  if (it == r.generators.end()) it = r.generators.emplace(key, Generator(r.seed)).first;
  return it->second;
}

void manual_seed(uint64_t seed) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  r.seed = seed;
  for (auto& [key, gen] : r.generators) gen.manual_seed(seed);
}

}  // namespace flame
