#pragma once
// --exclude and --include for tree copies, with rsync's pattern rules (the
// everyday subset; README, "Choosing what a tree copy takes"):
//
// * the rules are tried in the order given; the first that matches
//   decides; a path no rule matches is taken;
// * `*` matches any characters but `/`, `**` any characters including
//   `/`, `?` one character but `/`, `[abc]`, `[a-z]` and `[!abc]` (or
//   `[^abc]`) one character of (or not of) a set; `\` takes the next
//   character literally;
// * a pattern ending in `/` matches directories only;
// * a pattern starting with `/` is anchored at the top of the tree being
//   copied; one without `/` (but a trailing one) matches the last name of
//   a path at any depth; any other matches the path's end at a name
//   boundary (`b/c` matches `b/c` and `a/b/c`, not `ab/c`);
// * an excluded directory is not entered: nothing below it is taken,
//   whatever the rules say of it (as with rsync).
//
// Pure: no I/O; paths are '/'-separated and relative to the tree's top.

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace cskit::client {

class path_filter {
 public:
  enum class action { include, exclude };

  /// Adds a rule after the others; throws std::invalid_argument for an
  /// empty pattern, an unclosed `[`, or a trailing `\`.
  void add(action a, std::string_view pattern);
  bool empty() const noexcept { return rules_.empty(); }

  /// Whether `path` (relative to the tree's top, no leading or trailing
  /// `/`) is left out by the rules. `is_dir`: the entry is a directory.
  bool excluded(std::string_view path, bool is_dir) const;

 private:
  struct rule {
    action what;
    std::string pattern;  ///< without its leading and trailing '/'
    bool anchored;        ///< started with '/'
    bool dirs_only;       ///< ended with '/'
    bool last_name_only;  ///< no '/' inside: matched against the last name
  };
  std::vector<rule> rules_;
};

/// Whether `text` matches the glob `pattern` (the wildcards above).
/// Exposed for tests.
bool glob_match(std::string_view pattern, std::string_view text);

}  // namespace cskit::client
