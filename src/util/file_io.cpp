#include "util/file_io.hpp"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>

#include "util/digest.hpp"
#include "util/jail.hpp"

namespace cskit::util {

namespace {

// SIGBUS while hashing a mapping means the file shrank under us. The
// handler jumps back to the hashing loop of the faulting thread; a SIGBUS
// anywhere else keeps its default meaning.
thread_local sigjmp_buf* bus_jump = nullptr;
struct sigaction previous_bus {};

void on_sigbus(int sig, siginfo_t* info, void* ctx) {
  if (bus_jump) siglongjmp(*bus_jump, 1);
  if (previous_bus.sa_flags & SA_SIGINFO) {
    if (previous_bus.sa_sigaction) return previous_bus.sa_sigaction(sig, info, ctx);
  } else if (previous_bus.sa_handler != SIG_DFL && previous_bus.sa_handler != SIG_IGN) {
    return previous_bus.sa_handler(sig);
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

void install_bus_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &previous_bus);
  });
}

constexpr std::uint64_t map_window = 64u << 20;  // map at most this much at a time

int hash_by_pread(int fd, std::uint64_t offset, std::uint64_t length, content_digest& d) noexcept {
  constexpr std::size_t chunk = 256 * 1024;
  std::unique_ptr<char[]> buf(new (std::nothrow) char[chunk]);
  if (!buf) return ENOMEM;
  while (length > 0) {
    long n = read_full(fd, buf.get(), static_cast<std::size_t>(std::min<std::uint64_t>(chunk, length)), offset);
    if (n < 0) return static_cast<int>(-n);
    if (n == 0) return EIO;  // shorter than expected
    d.update(buf.get(), static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
    length -= static_cast<std::uint64_t>(n);
  }
  return 0;
}

// Hashes mapped memory; false when the mapping faulted (the file shrank).
// Kept apart so that nothing but its arguments lives across sigsetjmp.
[[gnu::noinline]] bool guarded_update(content_digest& d, const char* p, std::size_t n) noexcept {
  sigjmp_buf jump;
  if (sigsetjmp(jump, 1) != 0) {
    bus_jump = nullptr;
    return false;
  }
  bus_jump = &jump;
  d.update(p, n);
  bus_jump = nullptr;
  return true;
}

}  // namespace

int hash_file_range(int fd, std::uint64_t offset, std::uint64_t length, content_digest& d) noexcept {
  if (length == 0) return 0;
  install_bus_handler();
  static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  while (length > 0) {
    const std::uint64_t base = offset & ~(page - 1);
    const std::uint64_t lead = offset - base;
    const std::uint64_t take = std::min(length, map_window - lead);
    void* m = ::mmap(nullptr, static_cast<std::size_t>(lead + take), PROT_READ, MAP_SHARED, fd, static_cast<off_t>(base));
    if (m == MAP_FAILED) return hash_by_pread(fd, offset, length, d);
    ::madvise(m, static_cast<std::size_t>(lead + take), MADV_SEQUENTIAL);
    const bool ok = guarded_update(d, static_cast<const char*>(m) + lead, static_cast<std::size_t>(take));
    ::munmap(m, static_cast<std::size_t>(lead + take));
    if (!ok) return EIO;
    offset += take;
    length -= take;
  }
  return 0;
}

int preallocate(int fd, std::uint64_t offset, std::uint64_t length) noexcept {
  if (length == 0) return 0;
  struct statfs fs {};
  if (::fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC) {
    // tmpfs reserves by allocating the pages at once (0.35 s per GiB here,
    // on the caller's thread, which may be an event loop), and gains
    // nothing by it: only check that the space is there.
    const auto free_bytes = static_cast<std::uint64_t>(fs.f_bavail) * static_cast<std::uint64_t>(fs.f_bsize);
    return length > free_bytes ? ENOSPC : 0;
  }
  // The system call itself, not posix_fallocate, which emulates missing
  // support by writing every block.
  while (::fallocate(fd, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
    const int e = errno;
    if (e == EINTR) continue;
    if (e != ENOSPC && e != EDQUOT && e != EFBIG) return 0;
    // A file system may have reserved part of the range before it ran
    // out (ext4 does): give that back, or the refusal itself would leave
    // the disk fuller, and a part kept for a resume would hold it.
    release_preallocation(fd);
    return e;
  }
  return 0;
}

void release_preallocation(int fd) noexcept {
  // Truncating a file to its own size frees the blocks past it (ext4, xfs,
  // tmpfs); KEEP_SIZE never moved the size, so it is where the data ends.
  struct stat st {};
  if (::fstat(fd, &st) == 0) (void)::ftruncate(fd, st.st_size);
}

int write_all(int fd, const void* data, std::size_t n) noexcept {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

int pwrite_all(int fd, const void* data, std::size_t n, std::uint64_t offset) noexcept {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    offset += static_cast<std::uint64_t>(w);
    n -= static_cast<std::size_t>(w);
  }
  return 0;
}

namespace {
// Reads until `n` bytes, end of file or an error; `step` does one read.
template <class Step>
long read_until_full(char* p, std::size_t n, Step step) noexcept {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = step(p + got, n - got, got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
  }
  return static_cast<long>(got);
}
}  // namespace

long read_full(int fd, void* data, std::size_t n, std::uint64_t offset) noexcept {
  return read_until_full(static_cast<char*>(data), n, [&](char* at, std::size_t want, std::size_t got) {
    return ::pread(fd, at, want, static_cast<off_t>(offset + got));
  });
}

long read_full(int fd, void* data, std::size_t n) noexcept {
  return read_until_full(static_cast<char*>(data), n,
                         [&](char* at, std::size_t want, std::size_t) { return ::read(fd, at, want); });
}

namespace {
mode_t process_umask() noexcept {
  static const mode_t u = [] {
    mode_t m = ::umask(022);
    ::umask(m);
    return m;
  }();
  return u;
}
}  // namespace

mode_t default_file_mode() noexcept { return static_cast<mode_t>(0666 & ~process_umask()); }

mode_t received_file_mode(int dirfd, const char* leaf, mode_t source_mode) noexcept {
  struct stat st {};
  if (::fstatat(dirfd, leaf, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
    return static_cast<mode_t>(st.st_mode & 0777);  // never set-id bits onto new content
  }
  source_mode &= 0777;
  if (source_mode == 0) return default_file_mode();
  return static_cast<mode_t>(source_mode & ~process_umask());
}

int set_mtime_ns(int fd, std::int64_t ns) noexcept {
  timespec ts[2];
  ts[0].tv_sec = 0;
  ts[0].tv_nsec = UTIME_OMIT;
  ts[1].tv_sec = static_cast<time_t>(ns / 1000000000LL);
  ts[1].tv_nsec = static_cast<long>(ns % 1000000000LL);
  if (ts[1].tv_nsec < 0) {
    ts[1].tv_nsec += 1000000000L;
    ts[1].tv_sec -= 1;
  }
  return ::futimens(fd, ts) == 0 ? 0 : errno;
}

std::string random_hex64() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

namespace {
// True when the regular file open as `fd` is still the one named `name` in
// `dirfd` (another transfer may have renamed it into place meanwhile);
// `mine` receives its status.
bool still_named(int fd, int dirfd, const char* name, struct stat& mine) noexcept {
  struct stat named {};
  return ::fstat(fd, &mine) == 0 && S_ISREG(mine.st_mode) &&
         ::fstatat(dirfd, name, &named, AT_SYMLINK_NOFOLLOW) == 0 && mine.st_dev == named.st_dev &&
         mine.st_ino == named.st_ino;
}
}  // namespace

int open_locked_part(int dirfd, std::string& name, bool& is_private, mode_t create_mode, struct stat* st) noexcept {
  is_private = false;
  for (int attempt = 0; attempt < 8; ++attempt) {
    int fd = ::openat(dirfd, name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, create_mode);
    if (fd < 0) return -errno;
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      break;  // in use by another transfer
    }
    struct stat mine {};
    if (still_named(fd, dirfd, name.c_str(), mine)) {
      if (st) *st = mine;
      return fd;
    }
    ::close(fd);  // renamed away (committed) under us: try again
  }
  try {
    name += "." + random_hex64();
  } catch (...) {
    return -ENOMEM;
  }
  int fd = ::openat(dirfd, name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_mode);
  if (fd < 0) return -errno;
  ::flock(fd, LOCK_EX | LOCK_NB);
  is_private = true;
  if (st && ::fstat(fd, st) != 0) *st = {};
  return fd;
}

int open_unnamed(int dirfd, mode_t create_mode, struct stat& st) noexcept {
  // linkat() of an O_TMPFILE file goes through /proc/self/fd (the
  // AT_EMPTY_PATH form needs CAP_DAC_READ_SEARCH).
  static const bool have_proc = ::access("/proc/self/fd", X_OK) == 0;
  if (!have_proc) return -EOPNOTSUPP;
  // The umask applied here too: kernels before 6.0 left it out for
  // O_TMPFILE on file systems without POSIX ACLs.
  int fd = ::openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, create_mode & ~process_umask());
  if (fd >= 0) {
    if (::fstat(fd, &st) == 0) return fd;
    const int e = errno;
    ::close(fd);
    return -e;
  }
  const int e = errno;
  // Kernels and file systems without O_TMPFILE say so in several ways.
  return -(e == EISDIR || e == EINVAL || e == ENOENT ? EOPNOTSUPP : e);
}

int link_unnamed(int fd, int dirfd, const char* name, bool no_clobber) noexcept {
  char self[32];
  std::snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
  if (::linkat(AT_FDCWD, self, dirfd, name, AT_SYMLINK_FOLLOW) == 0) return 0;
  int e = errno;
  if (e != EEXIST) return e;
  struct stat old {};
  if (::fstatat(dirfd, name, &old, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(old.st_mode)) return EISDIR;
  if (no_clobber) return EEXIST;
  // Replace: link under a name of our own, then rename over the old entry.
  std::string tmp;
  try {
    tmp = std::string(part_prefix) + "link." + random_hex64();
  } catch (...) {
    return ENOMEM;
  }
  if (::linkat(AT_FDCWD, self, dirfd, tmp.c_str(), AT_SYMLINK_FOLLOW) != 0) return errno;
  if (::renameat(dirfd, tmp.c_str(), dirfd, name) == 0) return 0;
  e = errno;
  ::unlinkat(dirfd, tmp.c_str(), 0);
  return e;
}

bool drop_stale_part(int dirfd, std::string_view leaf) noexcept {
  std::string name;
  try {
    name = part_file_name(leaf);
  } catch (...) {
    return false;
  }
  unique_fd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return false;  // the usual case: none
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return true;  // a transfer is using it
  struct stat mine {};
  if (still_named(fd.get(), dirfd, name.c_str(), mine)) ::unlinkat(dirfd, name.c_str(), 0);
  return false;
}

std::uint64_t raise_fd_limit() noexcept {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

unique_fd::~unique_fd() { reset(); }

unique_fd& unique_fd::operator=(unique_fd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

void unique_fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace cskit::util

namespace cskit::util {

int replace_file(const std::string& path, std::string_view text, mode_t mode, uid_t uid, gid_t gid) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string tmp = path + ".XXXXXX";
  const int fd = ::mkstemp(tmp.data());  // mode 0600 until it is whole
  if (fd < 0) return errno;
  int err = write_all(fd, text.data(), text.size());
  if (err == 0 && (uid != static_cast<uid_t>(-1) || gid != static_cast<gid_t>(-1)) && ::fchown(fd, uid, gid) != 0) {
    err = errno;
  }
  if (err == 0 && ::fchmod(fd, mode) != 0) err = errno;
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  ::close(fd);
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return err;
  }
  if (const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {
    ::fsync(d);
    ::close(d);
  }
  return 0;
}

}  // namespace cskit::util
