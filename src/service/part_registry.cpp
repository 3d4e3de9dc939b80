#include "service/part_registry.hpp"

#include <fcntl.h>
#include <unistd.h>

#include "util/file_io.hpp"

namespace cskit::service {

part_registry::claim::claim(part_registry& owner, dev_t dev, ino_t ino, prober probe)
    : owner_(owner), key_(dev, ino), probe_(std::move(probe)) {}

part_registry::claim::~claim() { owner_.forget(key_); }

std::shared_ptr<part_registry::claim> part_registry::hold(const struct stat& part, prober probe) {
  auto c = std::make_shared<claim>(*this, part.st_dev, part.st_ino, std::move(probe));
  std::lock_guard lock(mu_);
  claims_[c->key_] = c;
  return c;
}

std::shared_ptr<part_registry::claim> part_registry::find(int dirfd, const std::string& name) {
  struct stat st {};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) return nullptr;
  std::lock_guard lock(mu_);
  auto it = claims_.find({st.st_dev, st.st_ino});
  return it == claims_.end() ? nullptr : it->second.lock();
}

void part_registry::supersede(int dirfd, const std::string& name, clock::time_point committed_after) {
  if (auto c = find(dirfd, name); c && c->since_ < committed_after) c->superseded_ = true;
}

void part_registry::forget(const std::pair<dev_t, ino_t>& key) noexcept {
  std::lock_guard lock(mu_);
  // Only an entry whose claim is gone: the inode may belong to a newer part.
  if (auto it = claims_.find(key); it != claims_.end() && it->second.expired()) claims_.erase(it);
}

}  // namespace cskit::service
