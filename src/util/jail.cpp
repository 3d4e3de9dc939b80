#include "util/jail.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "util/digest.hpp"

namespace cskit::util {

std::string check_name(std::string_view name) {
  if (name.empty()) return "empty name";
  if (name == "." || name == "..") return "'" + std::string(name) + "' is not allowed as a name";
  if (name.size() > max_name_bytes) return "a name is longer than " + std::to_string(max_name_bytes) + " bytes";
  for (unsigned char c : name) {
    if (c == 0) return "a name contains a NUL byte";
    if (c == '/') return "a name contains '/'";
    if (c < 0x20 || c == 0x7f) return "a name contains a control character";
  }
  return {};
}

std::string check_relative_path(std::string_view path) {
  if (path.size() > max_remote_path) return "path is longer than " + std::to_string(max_remote_path) + " bytes";
  if (path.find('\0') != std::string_view::npos) return "path contains a NUL byte";
  if (path.empty() || path == "." || path == "./") return {};
  if (path.front() == '/') return "absolute paths are not allowed (paths are relative to the share)";
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  std::size_t start = 0;
  for (;;) {
    std::size_t slash = path.find('/', start);
    std::string_view name = path.substr(start, slash == std::string_view::npos ? path.npos : slash - start);
    if (name.empty()) return "empty path component ('//')";
    if (name == "..") return "'..' is not allowed in paths";
    if (std::string why = check_name(name); !why.empty()) return why;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

std::string normalize_relative(std::string_view path) {
  if (path == "." || path == "./") return {};
  if (!path.empty() && path.back() == '/') path.remove_suffix(1);
  return std::string(path);
}

std::vector<std::string_view> split_relative(std::string_view p) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (start < p.size()) {
    std::size_t slash = p.find('/', start);
    if (slash == std::string_view::npos) slash = p.size();
    if (slash > start) out.push_back(p.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

bool symlink_target_inside(std::string_view link_path, std::string_view target) {
  if (target.empty() || target.front() == '/') return false;
  if (target.find('\0') != std::string_view::npos) return false;
  auto parts = split_relative(link_path);
  if (!parts.empty()) parts.pop_back();  // the link's own name
  std::size_t depth = parts.size();
  bool named = false;
  for (auto name : split_relative(target)) {
    if (name == ".") continue;
    if (name == "..") {
      // ".." only before any name: after a name (which may itself be a
      // link, "T/../..") the lexical reading can differ from the kernel's.
      if (named || depth == 0) return false;
      --depth;
    } else {
      named = true;
      ++depth;
    }
  }
  return true;
}

std::string part_file_name(std::string_view leaf) {
  return std::string(part_prefix) + xxh3_128_hex(leaf.data(), leaf.size()).substr(0, 16);
}

bool is_part_file_name(std::string_view name) { return name.substr(0, part_prefix.size()) == part_prefix; }

int mark_unfinished_copy(int dirfd, std::string_view source) noexcept {
  const std::string name(unfinished_copy_marker);
  // O_NONBLOCK: a FIFO planted under the name fails (ENXIO) instead of blocking.
  const int fd = ::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
  if (fd < 0) return errno;
  int err = 0;
  std::size_t done = 0;
  while (done < source.size() && !err) {
    const ssize_t n = ::write(fd, source.data() + done, source.size() - done);
    if (n < 0 && errno != EINTR) err = errno;
    if (n > 0) done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 && !err) err = errno;
  return err;
}

std::optional<std::string> unfinished_copy_of(int dirfd) noexcept {
  const std::string name(unfinished_copy_marker);
  const int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text(max_copy_source_name + 1, '\0');
  std::size_t have = 0;
  while (have < text.size()) {
    const ssize_t n = ::read(fd, text.data() + have, text.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (have > max_copy_source_name) return std::nullopt;  // not ours
  text.resize(have);
  return text;
}

int clear_unfinished_copy(int dirfd) noexcept {
  const std::string name(unfinished_copy_marker);
  if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) return errno;
  return 0;
}

int open_beneath(int dirfd, std::string_view rel, int flags, unsigned mode, bool no_symlinks) noexcept {
  std::string path = rel.empty() ? std::string(".") : std::string(rel);
  open_how how{};
  how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (no_symlinks ? RESOLVE_NO_SYMLINKS : 0);
  int err = EAGAIN;
  for (int attempt = 0; attempt < 64; ++attempt) {
    long fd = ::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    err = errno;
    // EAGAIN: a concurrent rename raced the lookup (RESOLVE_BENEATH then
    // refuses to guess); EINTR: a signal. Both are worth another try.
    if (err != EINTR && err != EAGAIN) break;
  }
  return -err;
}

dir_jail::dir_jail(const std::filesystem::path& root, bool no_symlinks) : no_symlinks_(no_symlinks) {
  fd_ = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + root.string());
}

dir_jail::~dir_jail() {
  if (fd_ >= 0) ::close(fd_);
}

int dir_jail::open(std::string_view rel, int flags, unsigned mode) const noexcept {
  return open_beneath(fd_, rel, flags, mode, no_symlinks_);
}

int dir_jail::open_parent(std::string_view rel, std::string& leaf) const noexcept {
  auto slash = rel.rfind('/');
  if (rel.empty()) return -EINVAL;
  if (slash == std::string_view::npos) {
    leaf.assign(rel);
    return open_beneath(fd_, "", O_PATH | O_DIRECTORY, 0, no_symlinks_);
  }
  leaf.assign(rel.substr(slash + 1));
  return open_beneath(fd_, rel.substr(0, slash), O_PATH | O_DIRECTORY, 0, no_symlinks_);
}

}  // namespace cskit::util
