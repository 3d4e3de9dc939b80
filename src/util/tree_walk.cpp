#include "util/tree_walk.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

namespace cskit::util {

namespace {

struct dir_closer {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};

// One open directory of the walk: its sorted names and where the walk is
// among them, and its own entry (for `leave`).
struct level {
  std::unique_ptr<DIR, dir_closer> dir;
  std::vector<std::string> names;
  std::size_t next = 0;
  std::string name, path;
  struct stat st {};
  int fd() const noexcept { return ::dirfd(dir.get()); }
};

// Opens `fd` (taken over) as `out` and reads its kept names. 0 or an errno.
int read_level(int fd, const tree_visitor& v, level& out) {
  DIR* d = ::fdopendir(fd);
  if (!d) {
    const int e = errno;
    ::close(fd);
    return e;
  }
  out.dir.reset(d);
  for (;;) {
    errno = 0;
    const dirent* de = ::readdir(d);
    if (!de) break;
    const std::string_view n = de->d_name;
    if (n == "." || n == "..") continue;
    if (!v.keep || v.keep(n)) out.names.emplace_back(n);
  }
  if (errno != 0) return errno;
  std::sort(out.names.begin(), out.names.end());
  return 0;
}

// Reports a failure; true when the walk is to stop.
bool stop_on(const tree_visitor& v, const tree_entry& e, int err) {
  return !v.failed || v.failed(e, err) == walk_step::stop;
}

}  // namespace

int walk_tree(unique_fd root, const tree_visitor& v) {
  std::vector<level> stack(1);
  if (int e = read_level(root.release(), v, stack.back())) return e;
  while (!stack.empty()) {
    level& top = stack.back();
    if (top.next == top.names.size()) {
      const level done = std::move(top);
      stack.pop_back();
      if (stack.empty()) break;
      const tree_entry e{stack.back().fd(), done.name, done.path, done.st, stack.size() - 1};
      if (v.leave && v.leave(e) == walk_step::stop) return 0;
      continue;
    }
    const int fd = top.fd();
    level sub;
    sub.name = top.names[top.next++];
    sub.path = top.path.empty() ? sub.name : top.path + "/" + sub.name;
    const tree_entry e{fd, sub.name, sub.path, sub.st, stack.size() - 1};
    if (::fstatat(fd, sub.name.c_str(), &sub.st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      if (err == ENOENT) continue;  // vanished meanwhile
      if (stop_on(v, e, err)) return err;
      continue;
    }
    const walk_step step = v.enter(e);
    if (step == walk_step::stop) return 0;
    if (step != walk_step::descend || !S_ISDIR(sub.st.st_mode)) continue;
    const int dfd = ::openat(fd, sub.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int err = dfd < 0 ? errno : read_level(dfd, v, sub);
    if (err == ENOENT) continue;
    if (err != 0) {
      if (stop_on(v, e, err)) return err;
      continue;
    }
    stack.push_back(std::move(sub));  // `top` and `e` are not used past this point
  }
  return 0;
}

}  // namespace cskit::util
