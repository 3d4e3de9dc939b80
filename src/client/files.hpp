#pragma once
// The client side of file transfer (docs/protocol.md, "Files"): remote
// file operations, and put/get of files and trees, pipelined (no round
// trip per file), digested end to end, resumable, committed atomically.
// A server is never trusted: every name it sends is checked, and every
// local write goes through openat2(RESOLVE_BENEATH) under the destination.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "client/client.hpp"
#include "client/path_filter.hpp"
#include "proto/errc.hpp"
#include "util/digest.hpp"

namespace cskit::client {

struct remote_entry {
  std::string name;  ///< name, or path relative to the listed directory (recursive)
  std::string type;  ///< file, dir, symlink, other
  std::uint64_t size = 0;
  std::uint32_t mode = 0;  ///< permission bits
  std::int64_t mtime_ns = 0;
  std::string target;  ///< symlinks
  /// fs.stat of a directory that a tree copy under way created: the
  /// source it copies (util::unfinished_copy_marker).
  std::string unfinished_copy_of;
  /// fs.list with digests: the file's XXH3-128, 32 hex digits ("" when
  /// not asked for, or the server could not read the file whole).
  std::string xxh3;
};

struct transfer_progress {
  std::uint64_t bytes_done = 0;     ///< resumed bytes included
  std::uint64_t bytes_total = 0;
  std::uint64_t files_done = 0;
  std::uint64_t files_total = 0;
  std::uint64_t resumed_bytes = 0;  ///< of bytes_done, already there from an earlier attempt
  std::string current;              ///< the file being sent or received, as the user named it
};

struct transfer_options {
  bool recursive = false;
  bool preserve = false;    ///< -p: mode and mtime
  bool no_clobber = false;  ///< never replace an existing file
  bool sha256 = false;      ///< --verify sha256, in addition to XXH3-128
  bool fsync = true;        ///< get: flush downloaded files before renaming them into place
  /// -a: a file whose destination has the same size and modification time
  /// is not sent again (rsync's quick check; -a also keeps times, so that
  /// a second run finds them equal).
  bool skip_unchanged = false;
  /// -c/--checksum: a file whose destination has the same size and
  /// XXH3-128 is not sent (whatever its time), with or without -a; under
  /// -p its time and permission bits are brought in line instead.
  bool checksum = false;
  /// Send a changed file's differences only, when the destination has an
  /// older copy (-a/-c, unless --whole-file): content-defined chunks,
  /// util/delta.hpp. Both ways: a get rebuilds from the local copy.
  bool delta = false;
  bool dry_run = false;  ///< --dry-run: plan, say what would be done (transfer_result::planned), change nothing
  /// --delete: in a tree copy, remove from the destination what the source
  /// no longer has (not what --exclude protects), after a transfer without
  /// errors, never outside the tree.
  bool delete_extraneous = false;
  path_filter filter;    ///< --exclude/--include: what a tree copy leaves out
  /// Called often (after each chunk and file); the caller throttles drawing.
  std::function<void(const transfer_progress&)> on_progress;
};

/// One failed item. `code` classifies it (local failures use the same
/// codes: no_space, permission_denied, not_found, changed, ...).
struct transfer_error {
  std::string path;
  proto::errc code = proto::errc::io_error;
  std::string message;
  bool local = false;  ///< found here (a local file, an argument), not reported by the server
};

/// --dry-run: one thing a transfer would do.
struct planned_step {
  enum kind { send, mkdir, link, remove } what;
  std::string path;  ///< where, as the user names it (remote for put, local for get)
  std::uint64_t size = 0;  ///< send: the file's size
};

struct transfer_result {
  std::uint64_t files = 0;
  std::uint64_t dirs = 0;
  std::uint64_t symlinks = 0;
  std::uint64_t bytes = 0;          ///< content bytes of the files transferred
  std::uint64_t resumed_bytes = 0;  ///< of which already there from an earlier attempt
  std::uint64_t matched_bytes = 0;  ///< of which the receiver took from its old copy (delta), not from the wire
  std::uint64_t unchanged = 0;      ///< files not sent: the destination had them already (-a)
  std::uint64_t excluded = 0;       ///< entries left out by --exclude/--include (a directory counts once)
  std::uint64_t deleted = 0;        ///< --delete: entries removed from the destination (all they held counted)
  std::vector<planned_step> planned;  ///< --dry-run only
  double seconds = 0;
  std::vector<transfer_error> errors;
};

/// What planning a download asks of the server (file_client; a fake in
/// tests/unit/test_download_plan.cpp, which plans without a network).
class remote_lister {
 public:
  virtual ~remote_lister() = default;
  virtual remote_entry stat(const std::string& path) = 0;
  /// A directory's entries (recursive: every entry below, as relative
  /// paths, a directory before its contents); a file lists as itself.
  /// `digests`: each file's entry also has its XXH3-128.
  virtual std::vector<remote_entry> list(const std::string& path, bool recursive, bool digests) = 0;
  /// How many names the last list() said the server left out (`skipped`).
  virtual std::uint64_t last_list_skipped() const noexcept = 0;
  /// Called while the client works on its own for a while (hashing local
  /// files): keeps the connection from looking idle.
  virtual void keep_alive() = 0;
  /// The XXH3-128 of each of these files ("" for one that is not a
  /// regular file or cannot be read whole), in bulk (fs.digest).
  virtual std::vector<std::string> digests(const std::vector<std::string>& paths) = 0;
};

class file_client : public remote_lister {
 public:
  explicit file_client(connection& c) : c_(c) {}

  remote_entry stat(const std::string& path) override;
  /// stat, with nullopt for a path that does not exist.
  std::optional<remote_entry> stat_if_exists(const std::string& path);
  /// With `digests` the server computes them first (fs.list.progress
  /// frames meanwhile).
  std::vector<remote_entry> list(const std::string& path, bool recursive, bool digests) override;
  std::vector<std::string> digests(const std::vector<std::string>& paths) override;
  std::uint64_t last_list_skipped() const noexcept override { return last_list_skipped_; }
  void keep_alive() override;
  void mkdir(const std::string& path, bool parents);
  std::uint64_t rm(const std::string& path, bool recursive);
  /// Returns where it ended up (into an existing directory, like mv).
  std::string mv(const std::string& from, const std::string& to, bool no_clobber);

  /// Uploads local files (and, recursive, trees; "-" is stdin) to `dest`:
  /// an existing directory receives them, otherwise (one source) `dest`
  /// is the new name. Throws client_error for connection-level failures;
  /// per-item failures are in the result.
  transfer_result put(const std::vector<std::string>& sources, const std::string& dest, const transfer_options& o);
  /// Downloads remote files (and trees) into `dest` (an existing local
  /// directory, or a new name for one source, or "-" for stdout).
  transfer_result get(const std::vector<std::string>& sources, const std::string& dest, const transfer_options& o);

 private:
  connection& c_;
  std::uint64_t last_list_skipped_ = 0;
};

remote_entry entry_from_json(const proto::json& j);

}  // namespace cskit::client
