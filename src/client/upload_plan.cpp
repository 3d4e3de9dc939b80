#include "client/upload_plan.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <unordered_set>
#include <cstdlib>
#include <set>

#include "client/files_detail.hpp"
#include "proto/utf8.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "util/jail.hpp"
#include "util/tree_walk.hpp"

namespace cskit::client {

using proto::errc;
using detail::base_name;
using detail::join;
using detail::local_errc;
using detail::local_message;

namespace {

bool is_local_dir(const std::string& path) {
  struct stat st {};
  return path != "-" && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The name a local source has on the server: its base name ("." and ".."
// resolved to the directory's own name).
std::string local_leaf(const std::string& src) {
  std::string leaf = base_name(src);
  if (leaf == "." || leaf == ".." || leaf == "/") {
    char buf[PATH_MAX];
    if (::realpath(src.c_str(), buf)) leaf = base_name(buf);
  }
  return leaf;
}


// Adds everything below the directory `local` (to be `remote`) to `items`,
// at any depth; a path the server could not take is an error, not a gap.
void walk_local(const std::string& local, const std::string& remote, const transfer_options& o,
                std::vector<put_item>& items, transfer_result& r) {
  util::unique_fd root(::open(local.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root) {
    r.errors.push_back({local, local_errc(errno), local_message(errno, local), true});
    return;
  }
  util::tree_visitor v;
  v.enter = [&](const util::tree_entry& e) {
    put_item it;
    it.local = local + "/" + e.path;
    it.remote = join(remote, e.path);
    it.st = e.st;
    if (util::is_part_file_name(e.name)) return util::walk_step::next;  // our own unfinished downloads
    if (o.filter.excluded(e.path, S_ISDIR(e.st.st_mode))) {
      ++r.excluded;
      return util::walk_step::next;  // a directory is not entered
    }
    if (!proto::is_valid_utf8(e.name) || !util::check_name(e.name).empty()) {
      r.errors.push_back({it.local, errc::bad_path,
                          it.local + ": the name is not valid UTF-8 or contains control characters; skipped", true});
      return util::walk_step::next;
    }
    if (it.remote.size() > util::max_remote_path) {
      r.errors.push_back({it.local, errc::bad_path,
                          it.local + ": its remote path would be longer than " +
                              std::to_string(util::max_remote_path) + " bytes, the longest a server takes; skipped", true});
      return util::walk_step::next;
    }
    if (S_ISDIR(e.st.st_mode)) {
      it.what = put_item::dir;
    } else if (S_ISREG(e.st.st_mode)) {
      it.what = put_item::file;
    } else if (S_ISLNK(e.st.st_mode)) {
      char buf[4097];
      const ssize_t len = ::readlinkat(e.dir_fd, e.name.c_str(), buf, sizeof buf - 1);
      if (len < 0) {
        r.errors.push_back({it.local, local_errc(errno), local_message(errno, it.local), true});
        return util::walk_step::next;
      }
      it.target.assign(buf, static_cast<std::size_t>(len));
      it.what = put_item::symlink;
    } else {
      r.errors.push_back({it.local, errc::bad_request, it.local + ": not a regular file, directory or symlink; skipped", true});
      return util::walk_step::next;
    }
    items.push_back(std::move(it));
    return util::walk_step::descend;
  };
  v.failed = [&](const util::tree_entry& e, int err) {
    const std::string lp = e.path.empty() ? local : local + "/" + e.path;
    r.errors.push_back({lp, local_errc(err), local_message(err, lp), true});
    return util::walk_step::next;
  };
  const std::size_t errors_before = r.errors.size();
  if (const int err = util::walk_tree(std::move(root), v); err && r.errors.size() == errors_before) {
    r.errors.push_back({local, local_errc(err), local_message(err, local), true});  // never a silent gap
  }
}


// Into the destination directory, or under the destination's name (also
// when it is a directory that an unfinished copy of the one source made).
void choose_destination(put_plan& plan, const std::vector<std::string>& sources, const transfer_options& o,
                        const remote_stat_fn& remote_stat) {
  plan.dest_is_dir = plan.dest.empty();
  const bool one_tree = o.recursive && sources.size() == 1 && is_local_dir(sources[0]);
  if (o.skip_unchanged && (sources.size() > 1 || std::any_of(sources.begin(), sources.end(), is_local_dir))) {
    // -a, as rsync: directories (and several sources) always go into the
    // destination, which is made when missing, so that every run of the
    // same command means the same; SRC/ puts SRC's contents there.
    plan.dest_is_dir = true;
    if (plan.dest.empty()) return;
    if (const auto e = remote_stat(plan.dest)) {
      if (e->type != "dir") {
        throw client_error(failure::remote, "'" + plan.dest + "' exists on the server and is not a directory",
                           errc::exists);
      }
      return;
    }
    // A SRC/ source makes it as its own; otherwise it is made to hold them.
    const bool made_by_a_source = std::any_of(sources.begin(), sources.end(), [](const std::string& src) {
      return src.size() > 1 && src.back() == '/' && is_local_dir(src);
    });
    if (!made_by_a_source) {
      put_item container{put_item::dir, {}, plan.dest, {}, {}};
      container.container = true;
      plan.items.push_back(std::move(container));
    }
    return;
  }
  if (!plan.dest_is_dir) {
    if (const auto e = remote_stat(plan.dest)) {
      plan.dest_is_dir = e->type == "dir" && !(one_tree && e->unfinished_copy_of == copy_mark(sources[0]));
    }
  }
  if (!plan.dest_is_dir && sources.size() > 1) {
    throw client_error(failure::remote, "'" + plan.dest + "' is not a directory on the server (several sources)",
                       errc::not_found);
  }
  // Its top is marked until the copy is complete, so that a re-run
  // continues it rather than nesting a second copy in it.
  if (one_tree && !plan.dest_is_dir) plan.new_tree = copy_mark(sources[0]);
}

// One command-line source: its items (a directory's whole tree), or an error.
void add_source(put_plan& plan, const std::string& src, const transfer_options& o, transfer_result& r) {
  put_item it;
  if (src == "-") {
    if (plan.dest_is_dir) {
      r.errors.push_back({"-", errc::bad_request, "stdin needs a remote file name, not a directory", true});
      return;
    }
    it.what = put_item::stream;
    it.local = "-";
    it.remote = plan.dest;
    plan.items.push_back(it);
    return;
  }
  if (::stat(src.c_str(), &it.st) != 0) {  // a symlink named on the command line is followed
    r.errors.push_back({src, local_errc(errno), local_message(errno, src), true});
    return;
  }
  const std::string leaf = local_leaf(src);
  if (!proto::is_valid_utf8(leaf) || !util::check_name(leaf).empty()) {
    r.errors.push_back({src, errc::bad_path, src + ": the name is not valid UTF-8 or contains control characters", true});
    return;
  }
  it.local = src;
  it.remote = plan.dest_is_dir ? join(plan.dest, leaf) : plan.dest;
  if (S_ISDIR(it.st.st_mode)) {
    if (!o.recursive) {
      r.errors.push_back({src, errc::bad_request, src + ": is a directory (use -r)", true});
      return;
    }
    if (o.skip_unchanged && src.size() > 1 && src.back() == '/') {  // -a SRC/: its contents
      it.remote = plan.dest;
      if (it.remote.empty()) {  // into the share itself, whose own mode and time stay
        plan.tops.push_back(it.remote);
        walk_local(src, it.remote, o, plan.items, r);
        return;
      }
    }
    it.what = put_item::dir;
    plan.items.push_back(it);
    plan.tops.push_back(it.remote);
    walk_local(src, it.remote, o, plan.items, r);
  } else if (S_ISREG(it.st.st_mode)) {
    it.what = put_item::file;
    plan.items.push_back(it);
    plan.tops.push_back(it.remote);
  } else {
    r.errors.push_back({src, errc::bad_request, src + ": not a regular file or directory", true});
  }
}

}  // namespace

namespace {

// Whether --exclude protects `rel`: itself, or a directory it is in (which
// the copy never entered, so what is in it was never listed as kept).
bool excluded_or_inside(const path_filter& filter, std::string_view rel, bool is_dir) {
  if (filter.empty()) return false;
  for (std::size_t slash = rel.find('/'); slash != std::string_view::npos; slash = rel.find('/', slash + 1)) {
    if (filter.excluded(rel.substr(0, slash), true)) return true;
  }
  return filter.excluded(rel, is_dir);
}

}  // namespace

void plan_deletions(put_plan& plan, const remote_tree& there, const path_filter& filter) {
  std::unordered_set<std::string> kept;
  for (const auto& it : plan.items) kept.insert(it.remote);
  std::vector<std::string> tree_tops;
  for (const auto& top : plan.tops) {
    const auto e = there.find(top);
    if (e != there.end() && e->second.type == "dir" && kept.count(top) + top.empty() > 0) tree_tops.push_back(top);
  }
  std::unordered_set<std::string> doomed;
  for (const auto& [path, e] : there) {
    if (kept.count(path)) continue;
    for (const auto& top : tree_tops) {
      const bool below = top.empty() ? !path.empty() : path.size() > top.size() + 1 && path.starts_with(top) &&
                                                            path[top.size()] == '/';
      if (!below) continue;
      const std::string_view rel = top.empty() ? std::string_view(path) : std::string_view(path).substr(top.size() + 1);
      if (!excluded_or_inside(filter, rel, e.type == "dir")) doomed.insert(path);
      break;
    }
  }
  // Only the highest of each doomed subtree: removing it takes the rest.
  for (const auto& path : doomed) {
    bool inside_another = false;
    for (std::size_t slash = path.find('/'); slash != std::string::npos && !inside_another;
         slash = path.find('/', slash + 1)) {
      inside_another = doomed.count(path.substr(0, slash)) > 0;
    }
    if (!inside_another) plan.deletions.push_back(path);
  }
  std::sort(plan.deletions.begin(), plan.deletions.end());
}

namespace {

// The XXH3-128 of a local file, as hex; "" when it cannot be read whole or
// is no longer what the plan saw (then it is sent, and checked then). A
// source named on the command line may be a link to its file, as when sent.
std::string local_xxh3(const put_item& it) {
  util::unique_fd fd(::open(it.local.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  struct stat now {};
  util::content_digest d(false);
  if (!fd || ::fstat(fd.get(), &now) != 0 || !S_ISREG(now.st_mode) || now.st_size != it.st.st_size ||
      util::mtime_ns(now) != util::mtime_ns(it.st) ||
      util::hash_file_range(fd.get(), 0, static_cast<std::uint64_t>(it.st.st_size), d) != 0) {
    return {};
  }
  return d.xxh3_hex();
}

}  // namespace

std::vector<std::string> digest_candidates(const put_plan& plan, const remote_tree& there) {
  std::vector<std::string> out;
  for (const auto& it : plan.items) {
    const auto e = there.find(it.remote);
    if (it.what == put_item::file && e != there.end() && e->second.type == "file" &&
        e->second.size == static_cast<std::uint64_t>(it.st.st_size)) {
      out.push_back(it.remote);
    }
  }
  return out;
}

void drop_unchanged(put_plan& plan, const remote_tree& there, const transfer_options& o, transfer_result& r,
                    const std::function<void()>& keep_alive) {
  std::erase_if(plan.items, [&](const put_item& it) {
    const auto e = there.find(it.remote);
    if (e == there.end()) return false;
    const remote_entry& x = e->second;
    if (it.what == put_item::symlink) return x.type == "symlink" && x.target == it.target;
    if (it.what != put_item::file || x.type != "file" || x.size != static_cast<std::uint64_t>(it.st.st_size)) {
      return false;
    }
    const bool same_time_and_bits = x.mtime_ns == util::mtime_ns(it.st) && (x.mode & 0777) == (it.st.st_mode & 0777);
    bool same = false;
    if (o.checksum) {
      if (keep_alive) keep_alive();
      same = !x.xxh3.empty() && local_xxh3(it) == x.xxh3;
      if (same && o.preserve && !same_time_and_bits) plan.retouch.push_back(it);
    } else {
      same = same_time_and_bits;  // rsync's quick check, and the bits -a keeps
    }
    if (same) ++r.unchanged;
    return same;
  });
  drop_unchanged_dirs(plan, there, o);
}

void drop_unchanged_dirs(put_plan& plan, const remote_tree& there, const transfer_options& o) {
  auto parent = [](const std::string& p) {
    const auto slash = p.rfind('/');
    return slash == std::string::npos ? std::string() : p.substr(0, slash);
  };
  auto is_remote_dir = [&](const std::string& p) {
    const auto e = there.find(p);
    return e != there.end() && e->second.type == "dir";
  };
  // Directories whose entries change: what is sent, made or deleted in them.
  std::set<std::string> touched;
  for (const auto& it : plan.items) {
    if (it.what != put_item::dir || !is_remote_dir(it.remote)) touched.insert(parent(it.remote));
  }
  for (const auto& d : plan.deletions) touched.insert(parent(d));
  std::erase_if(plan.items, [&](const put_item& it) {
    if (it.what != put_item::dir || it.container || !is_remote_dir(it.remote)) return false;
    if (!plan.new_tree.empty() && it.remote == plan.dest) return false;  // its mark is checked there
    if (!o.preserve) return true;  // there already: nothing to make
    const remote_entry& x = there.at(it.remote);
    return x.mtime_ns == util::mtime_ns(it.st) && (x.mode & 0777) == (it.st.st_mode & 0777) &&
           !touched.count(it.remote);  // -p would only set what it has
  });
}

std::vector<planned_step> planned_steps(const put_plan& plan, const remote_tree& there) {
  std::vector<planned_step> steps;
  for (const auto& it : plan.items) {
    switch (it.what) {
      case put_item::dir: {
        const auto e = there.find(it.remote);
        if (e == there.end() || e->second.type != "dir") steps.push_back({planned_step::mkdir, it.remote, 0});
        break;
      }
      case put_item::symlink: steps.push_back({planned_step::link, it.remote, 0}); break;
      case put_item::file:
        steps.push_back({planned_step::send, it.remote, static_cast<std::uint64_t>(it.st.st_size)});
        break;
      case put_item::stream: steps.push_back({planned_step::send, it.remote, 0}); break;
    }
  }
  for (const auto& path : plan.deletions) steps.push_back({planned_step::remove, path, 0});
  return steps;
}

std::string copy_mark(const std::string& src) {
  char buf[PATH_MAX];
  const std::string where = ::realpath(src.c_str(), buf) ? buf : src;
  return local_leaf(src) + " " + util::xxh3_128_hex(where.data(), where.size()).substr(0, 16);
}

put_plan plan_put(const std::vector<std::string>& sources, const std::string& dest, const transfer_options& o,
                  transfer_result& r, const remote_stat_fn& remote_stat) {
  if (std::string why = util::check_relative_path(dest); !why.empty()) {
    throw client_error(failure::local, "remote path '" + dest + "': " + why, errc::bad_path);
  }
  put_plan plan;
  plan.dest = util::normalize_relative(dest);
  choose_destination(plan, sources, o, remote_stat);
  for (const auto& src : sources) add_source(plan, src, o, r);
  return plan;
}

}  // namespace cskit::client
