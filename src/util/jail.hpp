#pragma once
// The share as a jail. Every path a peer sends (and every name a server
// sends to a downloading client) is checked twice:
//  1. by syntax (check_relative_path): relative, no "..", no NUL or control
//     characters, bounded lengths;
//  2. at open time: every open goes through openat2() beneath the jail's
//     directory descriptor with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so
//     the kernel refuses any resolution (a symlink, a ".." that appeared
//     through a rename race) that would leave the directory.
// Used by the server's file service and by the client's `get`.

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::util {

/// Longest remote path accepted, in bytes (Linux PATH_MAX).
inline constexpr std::size_t max_remote_path = 4096;
/// Longest single name accepted, in bytes (Linux NAME_MAX).
inline constexpr std::size_t max_name_bytes = 255;

/// Why `path` is not an acceptable relative path, or "" when it is.
/// "" and "." name the root; one trailing '/' is allowed. Refused: absolute
/// paths, "." or ".." components, empty components ("a//b"), NUL and other
/// control characters (U+0000-U+001F, U+007F), names over max_name_bytes,
/// paths over max_remote_path. UTF-8 validity is checked by the protocol
/// layer (frame headers are UTF-8 JSON).
std::string check_relative_path(std::string_view path);
/// Why `name` is not acceptable as one component, or "".
std::string check_name(std::string_view name);
/// A checked path without its trailing '/', "" for the root.
std::string normalize_relative(std::string_view path);
/// Components of a normalized path ("" has none).
std::vector<std::string_view> split_relative(std::string_view normalized);
/// True when a symlink at `link_path` (normalized, relative to the jail)
/// with this `target` resolves, lexically, to a place inside the jail.
/// Absolute targets are never inside, and ".." is allowed only at the
/// start of the target (never after a name, which could be a link).
/// Callers also resolve a new link with open() (RESOLVE_BENEATH) to catch
/// chains through existing links; and every open is jailed anyway.
bool symlink_target_inside(std::string_view link_path, std::string_view target);

/// Name prefix of part files (transfers in progress). Such names are
/// hidden from listings and refused as transfer targets.
inline constexpr std::string_view part_prefix = ".cskit-part.";
/// The resumable part file for `leaf`: part_prefix + 16 hex digits of a
/// hash of the name (fits NAME_MAX whatever the name's length).
std::string part_file_name(std::string_view leaf);
bool is_part_file_name(std::string_view name);

/// A tree copied under a new name (put -r t HOST:new, get -r HOST:t new)
/// carries this file in its top directory, holding the source's name,
/// from the moment the copy creates it until the copy is complete: a
/// re-run of the same copy that finds it continues into the directory
/// instead of nesting a second copy in it. Hidden like any part file.
inline constexpr std::string_view unfinished_copy_marker = ".cskit-part.tree";
inline constexpr std::size_t max_copy_source_name = 4096;
/// Writes the marker into the directory `dirfd` (O_PATH is enough); 0 or an errno.
int mark_unfinished_copy(int dirfd, std::string_view source) noexcept;
/// The source named by the marker in `dirfd`, if there is one.
std::optional<std::string> unfinished_copy_of(int dirfd) noexcept;
/// Removes the marker (none there is fine); 0 or an errno.
int clear_unfinished_copy(int dirfd) noexcept;

class dir_jail {
 public:
  /// Opens `root`, which must be a directory. Throws std::system_error.
  /// `no_symlinks`: no symlink below the root is ever followed
  /// (RESOLVE_NO_SYMLINKS), for a tree that a peer described: a link it
  /// sent is written as a link, never walked through.
  explicit dir_jail(const std::filesystem::path& root, bool no_symlinks = false);
  /// Takes over `fd`, an open directory (O_PATH is enough).
  dir_jail(int fd, bool no_symlinks) noexcept : fd_(fd), no_symlinks_(no_symlinks) {}
  ~dir_jail();
  dir_jail(dir_jail&& o) noexcept : fd_(o.fd_), no_symlinks_(o.no_symlinks_) { o.fd_ = -1; }
  dir_jail& operator=(dir_jail&&) = delete;
  dir_jail(const dir_jail&) = delete;
  dir_jail& operator=(const dir_jail&) = delete;

  int root_fd() const noexcept { return fd_; }
  /// Opens `rel` (already checked; "" is the root itself) beneath the jail.
  /// `flags` are open(2) flags (O_NOFOLLOW: do not follow a final symlink).
  /// Returns a descriptor, or -errno: EXDEV when the path leads outside,
  /// ELOOP for too many links, the usual errors otherwise.
  int open(std::string_view rel, int flags, unsigned mode = 0) const noexcept;
  /// Opens the directory containing `rel` (not the root) and stores the
  /// last component in `leaf`. Returns a descriptor or -errno.
  int open_parent(std::string_view rel, std::string& leaf) const noexcept;

 private:
  int fd_ = -1;
  bool no_symlinks_ = false;
};

/// openat2(dirfd, rel, flags, mode) with RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS
/// (and RESOLVE_NO_SYMLINKS with `no_symlinks`). Returns a descriptor or -errno.
int open_beneath(int dirfd, std::string_view rel, int flags, unsigned mode = 0, bool no_symlinks = false) noexcept;

}  // namespace cskit::util
