#pragma once
// What a put sends where, decided before anything is sent: the
// destination's meaning (into a directory, a new name, or an unfinished
// copy to continue) and every local entry, in order. No I/O on the network:
// the one question for the server (what the destination is) is asked
// through `remote_stat`, so that the plan is tested without one.

#include <sys/stat.h>

#include <functional>
#include <optional>
#include <unordered_map>
#include <string>
#include <vector>

#include "client/files.hpp"

namespace cskit::client {

struct put_item {
  enum kind { dir, file, symlink, stream } what;
  std::string local;
  std::string remote;
  struct stat st {};
  std::string target;  ///< symlinks
  /// A directory made only to hold the sources (-a into a missing
  /// destination): no local directory stands behind it, so -p gives it
  /// no mode or time.
  bool container = false;
};

struct put_plan {
  std::string dest;          ///< normalized remote destination
  bool dest_is_dir = false;  ///< sources go into it (otherwise: the one source under this name)
  /// One local tree copied under a new name (or continuing such a copy):
  /// the mark that identifies it (fs.mkdir tree_of); empty otherwise.
  std::string new_tree;
  std::vector<put_item> items;  ///< a directory before its contents
  /// Where each local source lands on the server (a file, or the top of a
  /// tree): what -a and --dry-run ask the server about, in bulk.
  std::vector<std::string> tops;
  /// --delete: what the destination has and the source no longer does,
  /// the highest of each such subtree only (its removal takes the rest).
  std::vector<std::string> deletions;
  /// -c with -p: files already there with the same content whose time or
  /// permission bits differ: only those are set (fs.setattr).
  std::vector<put_item> retouch;
};

/// What the server holds at and below the plan's tops, by remote path.
using remote_tree = std::unordered_map<std::string, remote_entry>;

/// What the server says `path` is; nullopt when it does not exist.
using remote_stat_fn = std::function<std::optional<remote_entry>(const std::string& path)>;

/// Plans `put SOURCES DEST`: local problems become errors in `r` (the
/// entry is skipped); a destination that cannot be used throws client_error.
put_plan plan_put(const std::vector<std::string>& sources, const std::string& dest, const transfer_options& o,
                  transfer_result& r, const remote_stat_fn& remote_stat);

/// --delete: fills plan.deletions from what `there` holds below each
/// directory the plan copies, leaving what `filter` excludes (as rsync
/// protects it). Call it before drop_unchanged (which drops items that
/// the source still has).
void plan_deletions(put_plan& plan, const remote_tree& there, const path_filter& filter);

/// -c: the remote files whose digests can tell (those of the same size as
/// the file that would replace them), to ask the server for.
std::vector<std::string> digest_candidates(const put_plan& plan, const remote_tree& there);

/// -a: drops the files whose remote counterpart is a file of the same size,
/// modification time (rsync's quick check) and permission bits; with
/// o.checksum, those of the same size and XXH3-128 (in `there`, from
/// the digests of digest_candidates) instead (the local
/// file is read; under -p one whose time or bits differ goes to
/// plan.retouch). Counted in r.unchanged. Links already there with the
/// same target are dropped too.
/// `keep_alive` (optional) is called before each local file is read, so
/// that a long read of the local tree does not leave the connection idle.
void drop_unchanged(put_plan& plan, const remote_tree& there, const transfer_options& o, transfer_result& r,
                    const std::function<void()>& keep_alive = {});

/// Part of drop_unchanged: directories the server has need no mkdir; under
/// -p, one whose time and bits are the source's, and in which nothing is
/// sent, made or deleted, needs no setattr either, and is dropped.
void drop_unchanged_dirs(put_plan& plan, const remote_tree& there, const transfer_options& o);

/// --dry-run: what executing `plan` would do; directories `there` already
/// has are not made again, so they are left out.
std::vector<planned_step> planned_steps(const put_plan& plan, const remote_tree& there);

/// What marks a tree copied from the local directory `src` under a new
/// name: its name, and a digest of where it is (another tree of the same
/// name is another copy), never the local path itself.
std::string copy_mark(const std::string& src);

}  // namespace cskit::client
