#pragma once
// A depth-first walk of a directory tree without recursion, for trees of
// any depth: the stack of directories lives on the heap, never on the call
// stack; at most 32 of them are open at once (a deeper walk closes the
// shallowest and reopens it through "..", checking it is the same
// directory, when it climbs back), so neither descriptors nor memory grow
// with the depth beyond the names being walked; and nothing cuts the walk
// short silently. Each directory's names are read and sorted before
// its first entry is visited; entries are lstat'ed (links are never
// followed) and subdirectories opened with O_NOFOLLOW relative to their
// parent, so a concurrent rename cannot lead the walk outside the tree.

#include <sys/stat.h>

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "util/file_io.hpp"

namespace cskit::util {

/// One entry met by walk_tree. References are valid during the callback.
struct tree_entry {
  int dir_fd;               ///< the directory the entry is in (open during the callback)
  const std::string& name;  ///< its name there
  const std::string& path;  ///< relative to the walk's root: "a/b/name"
  const struct stat& st;    ///< lstat of the entry (a link is not followed)
  std::size_t depth;        ///< 0: directly in the root
};

enum class walk_step {
  next,     ///< go on with the next entry (a directory is not entered)
  descend,  ///< enter this directory (only meaningful for a directory)
  stop,     ///< end the walk
};

struct tree_visitor {
  /// Which names of a directory to visit ("." and ".." never are). Unset: all.
  std::function<bool(std::string_view name)> keep;
  /// Every kept entry, before a directory's contents (pre-order).
  std::function<walk_step(const tree_entry&)> enter;
  /// A directory that was entered, after its contents (post-order). Optional.
  std::function<walk_step(const tree_entry&)> leave;
  /// An entry that could not be examined, or a directory that could not be
  /// opened or read (`st` is then zero for the former). Unset: stop. An
  /// entry that vanished meanwhile (ENOENT) is skipped without a call.
  std::function<walk_step(const tree_entry&, int err)> failed;
};

/// Walks everything below the directory `root` (taken over). Returns 0
/// when the walk ran to its end or a callback stopped it, or the errno
/// that stopped it when `failed` is unset or said stop. A failure of the
/// walk's own directories (the root cannot be read; ESTALE: a directory
/// the walk had to reopen was moved meanwhile) always stops it, and is
/// also reported to `failed` (with `dir_fd` -1) so that a caller that
/// collects failures there sees it.
int walk_tree(unique_fd root, const tree_visitor& visitor);

/// Removes everything below the directory `root` (taken over), at any
/// depth, by descriptors (never by path, so nothing outside it can be
/// reached through a link). `removed` (optional) is told of each entry
/// once it is gone. Returns 0, or the errno that stopped it.
int remove_tree_contents(unique_fd root, const std::function<void(const tree_entry&)>& removed = {});

}  // namespace cskit::util
