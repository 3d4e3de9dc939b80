#include "client/path_filter.hpp"

#include <cstddef>
#include <vector>

namespace cskit::client {

namespace {

// Matches a bracket expression starting at p[i] ('[') against c; sets
// `end` to the index just past its ']'. Returns false for an unclosed one
// (add() refuses those, so here it only guards).
bool class_matches(std::string_view p, std::size_t i, char c, std::size_t& end) {
  std::size_t j = i + 1;
  bool negate = false;
  if (j < p.size() && (p[j] == '!' || p[j] == '^')) {
    negate = true;
    ++j;
  }
  bool hit = false;
  bool first = true;
  while (j < p.size() && (p[j] != ']' || first)) {
    first = false;
    char lo = p[j];
    if (lo == '\\' && j + 1 < p.size()) lo = p[++j];
    char hi = lo;
    if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
      hi = p[j + 2];
      if (hi == '\\' && j + 3 < p.size()) hi = p[++j + 2];
      j += 2;
    }
    if (lo <= c && c <= hi) hit = true;
    ++j;
  }
  if (j >= p.size()) return false;
  end = j + 1;
  return hit != negate && c != '/';
}

// Where the bracket expression at p[i] ends, or npos when it is unclosed.
std::size_t class_end(std::string_view p, std::size_t i) {
  std::size_t j = i + 1;
  if (j < p.size() && (p[j] == '!' || p[j] == '^')) ++j;
  if (j < p.size() && p[j] == ']') ++j;  // a leading ']' is a member
  while (j < p.size() && p[j] != ']') j += (p[j] == '\\' && j + 1 < p.size()) ? 2 : 1;
  return j < p.size() ? j + 1 : std::string_view::npos;
}

// A backtracking matcher that remembers the (pattern, text) positions
// already known not to match, so that no pattern and path (a server's
// listing can hold names of 255 bytes and paths of 4096) costs more than
// the pattern's stars times the path's length squared, however many
// starting positions are tried on the same text.
class matcher {
 public:
  matcher(std::string_view p, std::string_view t) : p_(p), t_(t), failed_((p.size() + 1) * (t.size() + 1)) {}

  bool at(std::size_t pi, std::size_t ti) {
    std::vector<bool>::reference known_failure = failed_[pi * (t_.size() + 1) + ti];
    if (known_failure) return false;
    if (step(pi, ti)) return true;
    known_failure = true;
    return false;
  }

 private:
  bool star(std::size_t pi, std::size_t ti) {
    const bool any_depth = pi + 1 < p_.size() && p_[pi + 1] == '*';
    std::size_t next = pi + 1;
    while (next < p_.size() && p_[next] == '*') ++next;
    for (std::size_t k = ti;; ++k) {  // every length the star may take, shortest first
      if (at(next, k)) return true;
      if (k == t_.size() || (!any_depth && t_[k] == '/')) return false;
    }
  }

  bool step(std::size_t pi, std::size_t ti) {
    if (pi == p_.size()) return ti == t_.size();
    const char c = p_[pi];
    if (c == '*') return star(pi, ti);
    if (ti == t_.size()) return false;
    if (c == '?') return t_[ti] != '/' && at(pi + 1, ti + 1);
    if (c == '[') {
      std::size_t end = 0;
      return class_matches(p_, pi, t_[ti], end) && at(end, ti + 1);
    }
    std::size_t next = pi + 1;
    char literal = c;
    if (c == '\\' && next < p_.size()) literal = p_[next++];
    return t_[ti] == literal && at(next, ti + 1);
  }

  std::string_view p_, t_;
  std::vector<bool> failed_;
};

std::string_view last_name(std::string_view path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) { return matcher(pattern, text).at(0, 0); }

void path_filter::add(action a, std::string_view pattern) {
  const std::string shown(pattern);
  rule r{a, {}, false, false, false};
  if (!pattern.empty() && pattern.front() == '/') {
    r.anchored = true;
    pattern.remove_prefix(1);
  }
  if (!pattern.empty() && pattern.back() == '/' && !(pattern.size() >= 2 && pattern[pattern.size() - 2] == '\\')) {
    r.dirs_only = true;
    pattern.remove_suffix(1);
  }
  if (pattern.empty()) throw std::invalid_argument("empty pattern '" + shown + "'");
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\') {
      if (i + 1 == pattern.size()) throw std::invalid_argument("pattern '" + shown + "' ends with a lone '\\'");
      ++i;
    } else if (pattern[i] == '[') {
      const std::size_t end = class_end(pattern, i);
      if (end == std::string_view::npos) throw std::invalid_argument("pattern '" + shown + "' has a '[' without its ']'");
      if (pattern.substr(i, end - i).find("[:") != std::string_view::npos) {
        throw std::invalid_argument("pattern '" + shown + "': character classes such as [:alpha:] are not supported");
      }
      i = end - 1;
    }
  }
  r.last_name_only = !r.anchored && pattern.find('/') == std::string_view::npos &&
                     pattern.find("**") == std::string_view::npos;
  r.pattern = std::string(pattern);
  rules_.push_back(std::move(r));
}

bool path_filter::excluded(std::string_view path, bool is_dir) const {
  for (const rule& r : rules_) {
    if (r.dirs_only && !is_dir) continue;
    bool hit = false;
    if (r.anchored) {
      hit = glob_match(r.pattern, path);
    } else if (r.last_name_only) {
      hit = glob_match(r.pattern, last_name(path));
    } else {
      // The path's end at any name boundary: the whole path, then after
      // each '/'. One matcher for all of them: every suffix ends where the
      // path ends, so what it learns of one position holds for the next.
      matcher m(r.pattern, path);
      for (std::size_t from = 0; !hit && from != std::string_view::npos;) {
        hit = m.at(0, from);
        const std::size_t slash = path.find('/', from);
        from = slash == std::string_view::npos ? slash : slash + 1;
      }
    }
    if (hit) return r.what == action::exclude;
  }
  return false;
}

}  // namespace cskit::client
