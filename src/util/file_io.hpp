#pragma once
// Small, careful file I/O helpers shared by the file service and the client.

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cskit::util {

class content_digest;

/// Feeds bytes [offset, offset+length) of the regular file `fd` to `digest`,
/// reading them through a read-only memory map (no copy; the page cache is
/// hashed in place, which is what lets the sender use sendfile). A file
/// that shrinks underneath (SIGBUS on the mapping) is caught. Falls back to
/// pread where mapping fails. Returns 0 or an errno (EIO: the file shrank).
int hash_file_range(int fd, std::uint64_t offset, std::uint64_t length, content_digest& digest) noexcept;

/// Reserves disk blocks for bytes [offset, offset + length) of `fd`
/// without changing its size (fallocate with FALLOC_FL_KEEP_SIZE), so that
/// writing them cannot run out of space, and costs less: ext4 skips its
/// delayed allocation per block (page-cache writes 4.2 -> 5.1 GB/s here).
/// Returns ENOSPC, EDQUOT or EFBIG when the space is not there (and
/// nothing past the file's size stays reserved then); 0 on
/// success and wherever the file system cannot preallocate (the writes
/// then find out as before). On tmpfs, where reserving means allocating
/// the pages at once, only the free space is checked. Blocks past the size
/// stay reserved until the file is truncated: see release_preallocation.
int preallocate(int fd, std::uint64_t offset, std::uint64_t length) noexcept;
/// Gives back the blocks reserved past the end of the file's data (a
/// transfer that stopped short).
void release_preallocation(int fd) noexcept;

/// write(2) until done; returns 0 or an errno.
int write_all(int fd, const void* data, std::size_t n) noexcept;
/// pwrite(2) at `offset` until done; returns 0 or an errno.
int pwrite_all(int fd, const void* data, std::size_t n, std::uint64_t offset) noexcept;
/// pread(2) until `n` bytes or EOF; returns bytes read or -errno.
long read_full(int fd, void* data, std::size_t n, std::uint64_t offset) noexcept;
/// read(2) until `n` bytes or EOF; returns bytes read or -errno.
long read_full(int fd, void* data, std::size_t n) noexcept;

/// Opens (creating with `create_mode`, less the umask) the part file
/// `name` in directory `dirfd` and takes an exclusive flock on it, making sure the locked file is still
/// the one under that name (another transfer may have renamed it into
/// place between our open and our lock). When another transfer holds the
/// lock, a private part `name.<random>` is created instead and `name` is
/// updated. Returns the descriptor or -errno; `is_private` tells which,
/// and `st` (when given) receives the opened file's status.
int open_locked_part(int dirfd, std::string& name, bool& is_private, mode_t create_mode = 0600,
                     struct stat* st = nullptr) noexcept;

/// Creates an unnamed regular file in directory `dirfd` (O_TMPFILE, read
/// and write, mode `create_mode` less the umask): no directory entry until
/// link_unnamed gives it its name, and nothing left behind if the process
/// dies first. Used for files that arrive whole (resuming one would gain
/// nothing), instead of a named part that must be locked, renamed and
/// cleaned up. `st` receives the file's status (its mode as created).
/// Returns a descriptor, or -errno; -EOPNOTSUPP where the file system
/// cannot do it or /proc is not mounted (linking needs /proc/self/fd):
/// callers then fall back to a named part.
int open_unnamed(int dirfd, mode_t create_mode, struct stat& st) noexcept;
/// Gives the unnamed file `fd` (from open_unnamed) the name `name` in
/// `dirfd`. An existing entry is replaced atomically (through a temporary
/// name and rename) unless `no_clobber`, which fails with EEXIST instead.
/// A directory in the way fails with EISDIR. Returns 0 or an errno.
int link_unnamed(int fd, int dirfd, const char* name, bool no_clobber) noexcept;
/// Removes the resumable part of `leaf` in `dirfd`, if there is one and no
/// transfer holds it: called once `leaf` was committed, so that a part left
/// by an earlier, interrupted transfer of another version does not stay
/// behind for ever (with its reserved blocks). True when there is one but
/// a transfer holds it (it is left to that transfer).
bool drop_stale_part(int dirfd, std::string_view leaf) noexcept;

/// 0666 less the process's umask (read once): the mode of a new file.
mode_t default_file_mode() noexcept;

/// The mode a received file gets when its sender's mode is not imposed
/// (no -p), as cp and scp give it: a file that replaces another keeps that
/// one's permission bits (not set-id ones); a new one gets `source_mode`'s
/// rwx bits less the umask, or default_file_mode() when the sender gave
/// none (0).
mode_t received_file_mode(int dirfd, const char* leaf, mode_t source_mode) noexcept;

/// A file's modification time in nanoseconds since the epoch.
inline std::int64_t mtime_ns(const struct stat& st) noexcept {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
}
/// Sets a file's modification time (nanoseconds since the epoch); 0 or errno.
int set_mtime_ns(int fd, std::int64_t ns) noexcept;
/// 16 random hex digits, for temporary names.
std::string random_hex64();

/// Replaces the file at `path` with `text` atomically: a temporary file in
/// the same directory, written and flushed, renamed over it, and the
/// directory flushed; a reader sees the old contents or the new, never
/// part. The file gets `mode`, and `uid`/`gid` unless they are -1.
/// Returns 0 or an errno (nothing changed then).
int replace_file(const std::string& path, std::string_view text, mode_t mode, uid_t uid, gid_t gid);

/// Raises the soft limit on open descriptors to the hard limit; returns
/// the soft limit now in force.
std::uint64_t raise_fd_limit() noexcept;

/// Closes the descriptor when it goes out of scope.
class unique_fd {
 public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  ~unique_fd();
  unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
  unique_fd& operator=(unique_fd&& o) noexcept;
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

}  // namespace cskit::util
