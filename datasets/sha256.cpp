#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

#include "datasets/dataset.h"

namespace flame::data {

std::string sha256_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  FLAME_CHECK(file != nullptr, "sha256: cannot open '{}'", path);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  FLAME_CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1, "sha256: OpenSSL init failed");
  std::vector<unsigned char> buffer(1 << 20);
  size_t got;
  while ((got = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0)
    FLAME_CHECK(EVP_DigestUpdate(ctx.get(), buffer.data(), got) == 1, "sha256: OpenSSL update failed");
  FLAME_CHECK(!std::ferror(file.get()), "sha256: read error in '{}'", path);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  FLAME_CHECK(EVP_DigestFinal_ex(ctx.get(), digest, &length) == 1, "sha256: OpenSSL final failed");
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

}  // namespace flame::data
