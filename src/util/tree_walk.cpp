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

// A directory of the walk itself failed (the root could not be read, or a
// directory could not be reopened on the way back): the walk cannot go on,
// whatever `failed` answers; it is told, so that it can say what stopped.
int abandon(const tree_visitor& v, const level& l, std::size_t depth, int err) {
  if (v.failed) {
    const tree_entry e{-1, l.name, l.path, l.st, depth};
    v.failed(e, err);
  }
  return err;
}

// The walk's stack of directories. The open ones are always the deepest,
// stack[lowest_open..]: a push beyond max_open_levels closes the shallowest
// of them, a climb back below it reopens the parent.
class walk {
 public:
  walk(unique_fd root, const tree_visitor& v) : v_(v) {
    stack_.emplace_back();
    stack_.back().fd = std::move(root);
  }

  int run() {
    if (::fstat(stack_.back().fd.get(), &stack_.back().st) != 0) return abandon(v_, stack_.back(), 0, errno);
    if (int e = read_names(stack_.back().fd.get(), v_, stack_.back().names)) return abandon(v_, stack_.back(), 0, e);
    while (!stack_.empty()) {
      level& top = stack_.back();
      const int r = top.next == top.names.size() ? (stack_.size() == 1 ? done : climb()) : visit_next(top);
      if (r != go_on) return r == done ? 0 : r;
    }
    return 0;
  }

 private:
  static constexpr int go_on = -1, done = -2;  // besides 0 (stopped) and an errno

  // The top directory is finished: back to its parent, then `leave`.
  int climb() {
    const std::size_t parent = stack_.size() - 2;
    if (int e = reopen(stack_[parent], stack_.back())) return abandon(v_, stack_[parent], parent ? parent - 1 : 0, e);
    lowest_open_ = std::min(lowest_open_, parent);
    const level finished = std::move(stack_.back());
    stack_.pop_back();
    const tree_entry e{stack_.back().fd.get(), finished.name, finished.path, finished.st, stack_.size() - 1};
    return v_.leave && v_.leave(e) == walk_step::stop ? 0 : go_on;
  }

  // The next name of the top directory: examined, shown to `enter`, and
  // entered when it is a directory `enter` descends into.
  int visit_next(level& top) {
    const int fd = top.fd.get();
    level sub;
    sub.name = top.names[top.next++];
    sub.path = top.path.empty() ? sub.name : top.path + "/" + sub.name;
    const tree_entry e{fd, sub.name, sub.path, sub.st, stack_.size() - 1};
    if (::fstatat(fd, sub.name.c_str(), &sub.st, AT_SYMLINK_NOFOLLOW) != 0) {
      const int err = errno;
      if (err == ENOENT) return go_on;  // vanished meanwhile
      return stop_on(v_, e, err) ? err : go_on;
    }
    const walk_step step = v_.enter(e);
    if (step == walk_step::stop) return 0;
    if (step != walk_step::descend || !S_ISDIR(sub.st.st_mode)) return go_on;
    const int err = open_level(fd, sub);
    if (err == ENOENT) return go_on;
    if (err != 0) return stop_on(v_, e, err) ? err : go_on;
    push(std::move(sub));  // `top` and `e` are not used past this point
    return go_on;
  }

  // Opens the directory `sub` names in `dir_fd` and reads its names. ENOENT
  // also when it is not the directory examined (one renamed in since).
  int open_level(int dir_fd, level& sub) {
    sub.fd.reset(::openat(dir_fd, sub.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.fd) return errno;
    struct stat opened {};
    if (::fstat(sub.fd.get(), &opened) != 0) return errno;
    if (opened.st_dev != sub.st.st_dev || opened.st_ino != sub.st.st_ino) return ENOENT;
    return read_names(sub.fd.get(), v_, sub.names);
  }

  void push(level sub) {
    stack_.push_back(std::move(sub));
    if (stack_.size() - lowest_open_ > max_open_levels) stack_[lowest_open_++].fd.reset();
  }

  const tree_visitor& v_;
  std::vector<level> stack_;
  std::size_t lowest_open_ = 0;
};

}  // namespace

int walk_tree(unique_fd root, const tree_visitor& v) { return walk(std::move(root), v).run(); }

int remove_tree_contents(unique_fd root, const std::function<void(const tree_entry&)>& removed) {
  int result = 0;
  tree_visitor v;
  v.enter = [&](const tree_entry& e) {
    if (S_ISDIR(e.st.st_mode)) return walk_step::descend;
    if (::unlinkat(e.dir_fd, e.name.c_str(), 0) != 0) {
      result = errno;
      return walk_step::stop;
    }
    if (removed) removed(e);
    return walk_step::next;
  };
  v.leave = [&](const tree_entry& e) {
    if (::unlinkat(e.dir_fd, e.name.c_str(), AT_REMOVEDIR) != 0) {
      result = errno;
      return walk_step::stop;
    }
    if (removed) removed(e);
    return walk_step::next;
  };
  const int err = walk_tree(std::move(root), v);
  return err ? err : result;
}

}  // namespace cskit::util
