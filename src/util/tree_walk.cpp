#include "util/tree_walk.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace cskit::util {

namespace {

// Directories kept open at once, whatever the depth: deeper ones close the
// shallowest, which is opened again through ".." when the walk climbs back
// to it (and checked to be the same directory).
constexpr std::size_t max_open_levels = 32;

// One directory of the walk: its sorted names and where the walk is among
// them, and its own entry (for `leave`). `fd` is closed (-1) while the
// walk is far below it.
struct level {
  unique_fd fd;
  std::vector<std::string> names;
  std::size_t next = 0;
  std::string name, path;
  struct stat st {};
};

// Reads the kept names of the directory `fd` (its own descriptor stays
// open; the directory stream, with its buffer, does not). 0 or an errno.
int read_names(int fd, const tree_visitor& v, std::vector<std::string>& out) {
  const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return errno;
  DIR* d = ::fdopendir(dup);
  if (!d) {
    const int e = errno;
    ::close(dup);
    return e;
  }
  int err = 0;
  for (;;) {
    errno = 0;
    const dirent* de = ::readdir(d);
    if (!de) {
      err = errno;
      break;
    }
    const std::string_view n = de->d_name;
    if (n == "." || n == "..") continue;
    if (!v.keep || v.keep(n)) out.emplace_back(n);
  }
  ::closedir(d);
  if (err == 0) std::sort(out.begin(), out.end());
  return err;
}

// Reports a failure; true when the walk is to stop.
bool stop_on(const tree_visitor& v, const tree_entry& e, int err) {
  return !v.failed || v.failed(e, err) == walk_step::stop;
}

// Keeps at most max_open_levels descriptors: closes the shallowest open
// one above the deepest level.
void limit_open(std::vector<level>& stack) {
  std::size_t open = 0;
  for (const auto& l : stack) open += l.fd ? 1 : 0;
  for (std::size_t i = 0; open > max_open_levels && i + 1 < stack.size(); ++i) {
    if (stack[i].fd) {
      stack[i].fd.reset();
      --open;
    }
  }
}

// The walk climbs back from `child` (still open) to `parent`: opens the
// parent again if it was closed. 0, or ESTALE when ".." is no longer the
// directory it was (the tree was moved meanwhile).
int reopen(level& parent, const level& child) {
  if (parent.fd) return 0;
  unique_fd up(::openat(child.fd.get(), "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!up) return errno;
  struct stat st {};
  if (::fstat(up.get(), &st) != 0) return errno;
  if (st.st_dev != parent.st.st_dev || st.st_ino != parent.st.st_ino) return ESTALE;
  parent.fd = std::move(up);
  return 0;
}

}  // namespace

int walk_tree(unique_fd root, const tree_visitor& v) {
  std::vector<level> stack(1);
  stack.back().fd = std::move(root);
  if (::fstat(stack.back().fd.get(), &stack.back().st) != 0) return errno;
  if (int e = read_names(stack.back().fd.get(), v, stack.back().names)) return e;
  while (!stack.empty()) {
    level& top = stack.back();
    if (top.next == top.names.size()) {
      if (stack.size() == 1) break;
      if (int e = reopen(stack[stack.size() - 2], top)) return e;
      const level done = std::move(top);
      stack.pop_back();
      const tree_entry e{stack.back().fd.get(), done.name, done.path, done.st, stack.size() - 1};
      if (v.leave && v.leave(e) == walk_step::stop) return 0;
      continue;
    }
    const int fd = top.fd.get();
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
    sub.fd.reset(::openat(fd, sub.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    int err = !sub.fd ? errno : 0;
    if (!err) {
      // The same directory that was examined (not one renamed in since).
      struct stat opened {};
      err = ::fstat(sub.fd.get(), &opened) != 0 ? errno
            : opened.st_dev != sub.st.st_dev || opened.st_ino != sub.st.st_ino ? ENOENT
                                                                                : read_names(sub.fd.get(), v, sub.names);
    }
    if (err == ENOENT) continue;
    if (err != 0) {
      if (stop_on(v, e, err)) return err;
      continue;
    }
    stack.push_back(std::move(sub));  // `top` and `e` are not used past this point
    limit_open(stack);
  }
  return 0;
}

}  // namespace cskit::util
