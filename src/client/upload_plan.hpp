#pragma once
// What a put sends where, decided before anything is sent: the
// destination's meaning (into a directory, a new name, or an unfinished
// copy to continue) and every local entry, in order. No I/O on the network:
// the one question for the server (what the destination is) is asked
// through `remote_stat`, so that the plan is tested without one.

#include <sys/stat.h>

#include <functional>
#include <optional>
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
};

struct put_plan {
  std::string dest;          ///< normalized remote destination
  bool dest_is_dir = false;  ///< sources go into it (otherwise: the one source under this name)
  /// One local tree copied under a new name (or continuing such a copy):
  /// the mark that identifies it (fs.mkdir tree_of); empty otherwise.
  std::string new_tree;
  std::vector<put_item> items;  ///< a directory before its contents
};

/// What the server says `path` is; nullopt when it does not exist.
using remote_stat_fn = std::function<std::optional<remote_entry>(const std::string& path)>;

/// Plans `put SOURCES DEST`: local problems become errors in `r` (the
/// entry is skipped); a destination that cannot be used throws client_error.
put_plan plan_put(const std::vector<std::string>& sources, const std::string& dest, const transfer_options& o,
                  transfer_result& r, const remote_stat_fn& remote_stat);

/// What marks a tree copied from the local directory `src` under a new
/// name: its name, and a digest of where it is (another tree of the same
/// name is another copy), never the local path itself.
std::string copy_mark(const std::string& src);

}  // namespace cskit::client
