#include "client/download.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <cerrno>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <map>
#include <optional>

#include "client/download_parts.hpp"
#include "client/files_detail.hpp"
#include "util/tree_walk.hpp"
#include "proto/messages.hpp"

namespace cskit::client {

using detail::base_name;
using detail::inline_max;
using detail::join;
using detail::local_errc;
using detail::local_message;
using proto::errc;
using proto::json;

namespace {

constexpr std::size_t window_gets = 64;         // get requests in flight
constexpr std::size_t max_commit_batch = 1024;  // files per group commit (a descriptor each, and their directories)

// A local error in a download, in words: ELOOP below a tree's root means a
// link was in the way, which a download never walks through.
std::string download_message(int err, const std::string& what) {
  if (err == ELOOP) return what + ": a symbolic link is in the way (a download never follows links)";
  return local_message(err, what);
}

// Creates directory `rel` (and its parents) under the jail; 0 or errno.
// `mode`: the last one's, when this makes it (less the umask); its
// parents get 0777 less the umask, as mkdir -p gives them.
int make_dirs(const util::dir_jail& jail, const std::string& rel, mode_t mode = 0777) {
  std::string done;
  const auto names = util::split_relative(rel);
  for (std::size_t i = 0; i < names.size(); ++i) {
    std::string leaf(names[i]);
    util::unique_fd parent(jail.open(done, O_PATH | O_DIRECTORY));
    if (!parent) return -parent.release();
    if (::mkdirat(parent.get(), leaf.c_str(), i + 1 == names.size() ? mode : 0777) != 0 && errno != EEXIST) {
      return errno;
    }
    done = join(done, leaf);
    util::unique_fd check(jail.open(done, O_PATH | O_DIRECTORY | O_NOFOLLOW));
    if (!check) {
      check.release();
      return ENOTDIR;  // exists, but is not a directory (or is a symlink)
    }
  }
  return 0;
}

}  // namespace

download::download(connection* c, remote_lister& files, const transfer_options& o) : c_(c), files_(files), o_(o) {}
download::~download() = default;

transfer_result download::run(const std::vector<std::string>& sources, const std::string& dest) {
  {
    // Timed into r_ when the block ends (r_ is moved out after it).
    detail::clock_guard timer{std::chrono::steady_clock::now(), r_};
    choose_destination(sources, dest);
    for (const auto& src : sources) plan_source(src);
    drop_below_refused_links();
    if (o_.skip_unchanged || o_.checksum) drop_unchanged();
    if (o_.dry_run) {
      list_planned();
    } else {
      execute();
    }
  }
  return std::move(r_);
}

void download::execute() {
  if (!c_) throw std::logic_error("download: no connection to transfer with (only a dry run plans without one)");
  make_directories();
  make_links();
  check_links();
  prog_.files_total = queue_.size();
  for (const auto& f : queue_) prog_.bytes_total += f->entry.size;
  const std::uint64_t fd_limit = util::raise_fd_limit();
  commit_batch_ = static_cast<std::size_t>(
      std::clamp<std::uint64_t>(fd_limit > 288 ? (fd_limit - 256) / 2 : 16, 16, max_commit_batch));
  try {
    transfer();
  } catch (...) {
    // The connection failed: the files already received and verified are
    // committed all the same (an unnamed one would otherwise be lost).
    commit_finished();
    throw;
  }
  commit_finished();
  // --delete only after a transfer without errors (as rsync).
  if (o_.delete_extraneous) prune_extraneous(true);
  if (marked_tree_ && r_.errors.empty()) {
    // Complete: the mark goes (before -p sets the directories' times).
    if (int e = util::clear_unfinished_copy(marked_tree_->root_fd())) {
      r_.errors.push_back({new_name_, local_errc(e), download_message(e, new_name_), true});
    }
  }
  restore_directory_attributes();
}

// ------------------------------------------------------------------ plan

void download::choose_destination(const std::vector<std::string>& sources, const std::string& dest) {
  to_stdout_ = dest == "-";
  if (to_stdout_) {
    if (sources.size() != 1) {
      throw client_error(failure::local, "'-' (stdout) takes exactly one remote file", errc::bad_request);
    }
    return;
  }
  // Into an existing directory, or as a new name (also into a directory
  // that an unfinished copy of the same source made under this new name).
  base_ = ".";
  struct stat st {};
  bool is_dir = ::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (!is_dir && o_.skip_unchanged && into_directory(sources)) {
    // -a, as rsync: a directory (or several sources) always goes into the
    // destination, made when missing, so that every run means the same.
    if (!o_.dry_run && ::mkdir(dest.c_str(), 0777) != 0 && errno != EEXIST) {
      throw client_error(failure::local, "local destination " + dest + ": " + std::strerror(errno), local_errc(errno));
    }
    is_dir = true;
  }
  if (is_dir && o_.dry_run && ::stat(dest.c_str(), &st) != 0) {
    base_ = dest;  // not made by a dry run: nothing in it exists yet, and base_jail_ stays empty
    return;
  }
  // (-a never continues a copy under a new name: its sources always go
  // into the destination, and a re-run skips what is complete.)
  if (is_dir && (o_.skip_unchanged || !continues_a_copy(sources, dest))) {
    base_ = dest;
  } else {
    if (sources.size() > 1) {
      throw client_error(failure::local, dest + ": not a directory (several sources)", errc::not_found);
    }
    std::string d = dest;
    if (is_dir) {
      // The copy continues where it is, whatever it was called this time
      // (".", "new/.", a link to it).
      char buf[PATH_MAX];
      if (!::realpath(dest.c_str(), buf)) {
        throw client_error(failure::local, "local destination " + dest + ": " + std::strerror(errno),
                           local_errc(errno));
      }
      d = buf;
    }
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    auto slash = d.rfind('/');
    base_ = slash == std::string::npos ? "." : (slash == 0 ? "/" : d.substr(0, slash));
    new_name_ = slash == std::string::npos ? d : d.substr(slash + 1);
    if (!util::check_name(new_name_).empty()) {
      throw client_error(failure::local, dest + ": not a usable local name", errc::bad_path);
    }
  }
  try {
    base_jail_ = std::make_unique<util::dir_jail>(base_, true);
  } catch (const std::system_error& e) {
    throw client_error(failure::local, "local destination " + base_ + ": " + e.code().message(),
                       local_errc(e.code().value()));
  }
}

std::string download::copy_source(const std::string& src) {
  std::string s = util::normalize_relative(src);
  return s.empty() ? "." : s;  // the share's root
}

bool download::into_directory(const std::vector<std::string>& sources) const {
  if (sources.size() != 1) return true;
  try {
    return files_.stat(util::normalize_relative(sources[0])).type == "dir";
  } catch (const client_error& e) {
    if (e.kind() != failure::remote && e.kind() != failure::permission) throw;
    return false;  // plan_source reports it
  }
}

bool download::continues_a_copy(const std::vector<std::string>& sources, const std::string& dest) const {
  if (sources.size() != 1 || !o_.recursive) return false;
  util::unique_fd d(::open(dest.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!d) return false;
  const auto source = util::unfinished_copy_of(d.get());
  return source && *source == copy_source(sources[0]);
}

void download::refuse(const std::string& shown, const std::string& why) {
  r_.errors.push_back({shown, errc::bad_path, "refused a name from the server: '" + shown + "': " + why});
}

void download::plan_source(const std::string& src_in) {
  if (std::string why = util::check_relative_path(src_in); !why.empty()) {
    r_.errors.push_back({src_in, errc::bad_path, "'" + src_in + "': " + why, true});
    return;
  }
  const std::string src = util::normalize_relative(src_in);
  remote_entry top;
  try {
    top = files_.stat(src);
  } catch (const client_error& e) {
    if (e.kind() != failure::remote && e.kind() != failure::permission) throw;
    r_.errors.push_back({src, e.code().value_or(errc::io_error), e.what()});
    return;
  }
  std::string root_name = new_name_.empty() ? (src.empty() ? std::string() : base_name(src)) : new_name_;
  if (o_.skip_unchanged && new_name_.empty() && top.type == "dir" && src_in.size() > 1 && src_in.back() == '/') {
    root_name.clear();  // -a SRC/: its contents, into the destination itself
  }
  if (top.type == "dir") {
    if (to_stdout_ || !o_.recursive) {
      r_.errors.push_back({src, errc::bad_request, "'" + src + "' is a directory" + (to_stdout_ ? "" : " (use -r)"), true});
      return;
    }
    marked_source_ = src;
    return plan_tree(src, top, root_name);
  }
  if (!to_stdout_ && root_name.empty()) {
    r_.errors.push_back({src, errc::bad_path, "no local name for '" + src + "'", true});
    return;
  }
  note_landing(root_name);
  auto f = std::make_unique<file>(o_.sha256);
  f->remote = src;
  f->jail = base_jail_.get();
  f->local = f->shown = root_name;
  f->entry = top;
  queue_.push_back(std::move(f));
}

const util::dir_jail* download::make_tree_root(const std::string& root_name, const std::string& shown, mode_t mode) {
  // The tree's own directory (the share's root lands in the destination
  // itself): everything the server lists goes beneath it, and the kernel
  // holds it there.
  if (root_name.empty()) return base_jail_.get();
  if (o_.dry_run) {
    // Nothing is made: the tree as it is, or nullptr when it is not there
    // yet (everything in it would be sent).
    if (!base_jail_) return nullptr;
    const int fd = base_jail_->open(root_name, O_PATH | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) return nullptr;
    trees_.push_back(std::make_unique<util::dir_jail>(fd, true));
    return trees_.back().get();
  }
  if (int e = make_dirs(*base_jail_, root_name, mode)) {
    r_.errors.push_back({shown, local_errc(e), download_message(e, "mkdir " + shown), true});
    return nullptr;
  }
  ++r_.dirs;
  const int fd = base_jail_->open(root_name, O_PATH | O_DIRECTORY | O_NOFOLLOW);
  if (fd < 0) {
    r_.errors.push_back({shown, local_errc(-fd), download_message(-fd, shown), true});
    return nullptr;
  }
  trees_.push_back(std::make_unique<util::dir_jail>(fd, true));
  if (!new_name_.empty() && marked_tree_ == nullptr) {
    // A tree under a new name: marked until complete (a re-run continues it).
    if (int e = util::mark_unfinished_copy(fd, copy_source(marked_source_))) {
      r_.errors.push_back({shown, local_errc(e), download_message(e, shown), true});
      return nullptr;
    }
    marked_tree_ = trees_.back().get();
  }
  return trees_.back().get();
}

void download::plan_tree(const std::string& src, const remote_entry& top, const std::string& root_name) {
  std::vector<remote_entry> entries;
  try {
    entries = files_.list(src, true, false);
  } catch (const client_error& e) {
    if (e.kind() != failure::remote && e.kind() != failure::permission) throw;
    r_.errors.push_back({src, e.code().value_or(errc::io_error), e.what()});
    return;
  }
  const util::dir_jail* tree = make_tree_root(root_name, root_name.empty() ? base_ : root_name,
                                              static_cast<mode_t>((top.mode & 0777) | 0700));
  if (!tree && !o_.dry_run) return;
  note_landing(root_name);
  if (!root_name.empty()) dirs_.push_back({base_jail_.get(), root_name, root_name, top, true});  // for -p
  std::set<std::string, std::less<>> left_out;  // directories excluded, with all they hold
  listed_tree* listed = nullptr;
  if (o_.delete_extraneous && tree) {
    listed = &listed_tree_of(*tree);
    listed->prune = true;
    if (listed->shown.empty()) listed->shown = root_name;
    // Names the server left out of its listing may be here: --delete cannot
    // tell them from what the source no longer has, so it deletes nothing.
    if (files_.last_list_skipped() > 0) {
      r_.errors.push_back({src, errc::bad_path,
                           "'" + src + "': the server left " + std::to_string(files_.last_list_skipped()) +
                               " name(s) out of its listing (not UTF-8, or control characters); --delete "
                               "deletes nothing"});
    }
  }
  for (const auto& e : entries) {
    if (listed && util::check_relative_path(e.name).empty()) listed->names.insert(util::normalize_relative(e.name));
    if (!o_.filter.empty() && filtered_out(e, left_out)) continue;
    plan_entry(tree, root_name, src, e);
  }
}

bool download::filtered_out(const remote_entry& e, std::set<std::string, std::less<>>& left_out) {
  if (!util::check_relative_path(e.name).empty()) return false;  // plan_entry refuses it
  const std::string rel = util::normalize_relative(e.name);
  if (!left_out.empty()) {
    for (std::size_t slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', slash + 1)) {
      if (left_out.find(std::string_view(rel).substr(0, slash)) != left_out.end()) return true;  // inside one left out
    }
  }
  const bool is_dir = e.type == "dir";
  if (!o_.filter.excluded(rel, is_dir)) return false;
  ++r_.excluded;
  if (is_dir) left_out.insert(rel);
  return true;
}

void download::plan_entry(const util::dir_jail* tree, const std::string& root_name, const std::string& src,
                          const remote_entry& e) {
  const std::string shown_remote = join(src, e.name);
  if (std::string why = util::check_relative_path(e.name); !why.empty() || util::normalize_relative(e.name).empty()) {
    return refuse(shown_remote, why.empty() ? "an entry must name something below the directory, not '" + e.name + "'"
                                            : why);
  }
  const std::string rel = util::normalize_relative(e.name);
  for (auto n : util::split_relative(rel)) {
    if (util::is_part_file_name(n)) return refuse(shown_remote, "reserved name");
  }
  const std::string shown = join(root_name, rel);
  if (e.type == "dir") {
    dirs_.push_back({tree, rel, shown, e});
  } else if (e.type == "symlink") {
    // Lexically, from the tree's own root: a link may point anywhere in the
    // tree, never above it, never to an absolute path.
    if (!util::symlink_target_inside(rel, e.target)) {
      refused_links_.push_back({tree, rel, shown, e});
      return refuse(shown_remote, "the link's target '" + e.target + "' points outside the destination");
    }
    links_.push_back({tree, rel, shown, e});
  } else if (e.type == "file") {
    auto f = std::make_unique<file>(o_.sha256);
    f->remote = shown_remote;
    f->jail = tree;
    f->local = rel;
    f->shown = shown;
    f->entry = e;
    queue_.push_back(std::move(f));
  }
}

void download::drop_below_refused_links() {
  if (refused_links_.empty()) return;
  // By tree, each refused link's path: an entry is looked up by each of
  // its parent paths, so the cost grows with the listing, not with the
  // listing times the refused links.
  std::map<const util::dir_jail*, std::map<std::string, const item*, std::less<>>> refused;
  for (const auto& l : refused_links_) refused[l.jail].emplace(l.local, &l);
  auto below_refused = [&](const util::dir_jail* jail, const std::string& rel) -> const item* {
    auto tree = refused.find(jail);
    if (tree == refused.end()) return nullptr;
    for (std::size_t slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', slash + 1)) {
      if (auto it = tree->second.find(std::string_view(rel).substr(0, slash)); it != tree->second.end()) return it->second;
    }
    return nullptr;
  };
  auto drop = [&](auto& items, auto jail_of, auto rel_of, auto shown_of) {
    std::erase_if(items, [&](const auto& x) {
      const item* l = below_refused(jail_of(x), rel_of(x));
      if (l) refuse(shown_of(x), "it is listed below the refused link '" + l->shown + "'");
      return l != nullptr;
    });
  };
  drop(dirs_, [](const item& x) { return x.jail; }, [](const item& x) { return x.local; },
       [](const item& x) { return x.shown; });
  drop(links_, [](const item& x) { return x.jail; }, [](const item& x) { return x.local; },
       [](const item& x) { return x.shown; });
  drop(queue_, [](const std::unique_ptr<file>& f) { return f->jail; },
       [](const std::unique_ptr<file>& f) { return f->local; }, [](const std::unique_ptr<file>& f) { return f->shown; });
}

bool download::local_stat(const util::dir_jail* jail, const std::string& local, struct stat& st, std::string& leaf,
                          shared_dir& dir) {
  // What is there now, looked up beneath the tree's root (nullptr jail:
  // a tree a --dry-run did not make, where nothing is there yet).
  int err = 0;
  dir = jail ? parent_dir(*jail, local, leaf, err) : nullptr;
  return dir && ::fstatat(dir->get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

bool download::same_size_here(const file& f) {
  struct stat st {};
  std::string leaf;
  shared_dir dir;
  return local_stat(f.jail, f.local, st, leaf, dir) && S_ISREG(st.st_mode) &&
         static_cast<std::uint64_t>(st.st_size) == f.entry.size;
}

void download::fetch_remote_digests() {
  // -c: only a file of the same size as ours can be the same: only those
  // are hashed on the server, in bulk.
  std::vector<file*> which;
  std::vector<std::string> paths;
  for (const auto& f : queue_) {
    if (same_size_here(*f)) {
      which.push_back(f.get());
      paths.push_back(f->remote);
    }
  }
  if (paths.empty()) return;
  const auto sums = files_.digests(paths);
  for (std::size_t i = 0; i < which.size() && i < sums.size(); ++i) which[i]->entry.xxh3 = sums[i];
}

void download::drop_unchanged() {
  if (to_stdout_) return;
  if (o_.checksum) fetch_remote_digests();
  std::erase_if(queue_, [&](const std::unique_ptr<file>& f) {
    struct stat st {};
    std::string leaf;
    shared_dir dir;
    if (!local_stat(f->jail, f->local, st, leaf, dir) || !S_ISREG(st.st_mode) ||
        static_cast<std::uint64_t>(st.st_size) != f->entry.size) {
      return false;
    }
    const bool same_time_and_bits = util::mtime_ns(st) == f->entry.mtime_ns && (st.st_mode & 0777) == (f->entry.mode & 0777);
    bool same = same_time_and_bits;  // rsync's quick check, and the bits -a keeps
    if (o_.checksum) {
      files_.keep_alive();
      same = !f->entry.xxh3.empty() && local_xxh3(dir->get(), leaf, f->entry.size) == f->entry.xxh3;
      if (same && o_.preserve && !o_.dry_run && !same_time_and_bits) retouch(dir->get(), leaf, *f);
    }
    if (same) ++r_.unchanged;
    return same;
  });
  std::erase_if(links_, [&](const item& l) {
    struct stat st {};
    std::string leaf;
    shared_dir dir;
    if (!local_stat(l.jail, l.local, st, leaf, dir) || !S_ISLNK(st.st_mode)) return false;
    char buf[4097];
    const ssize_t n = ::readlinkat(dir->get(), leaf.c_str(), buf, sizeof buf - 1);
    return n >= 0 && std::string_view(buf, static_cast<std::size_t>(n)) == l.entry.target;  // the same link
  });
}

std::string download::local_xxh3(int dir, const std::string& leaf, std::uint64_t size) {
  util::unique_fd fd(::openat(dir, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  util::content_digest d(false);
  if (!fd || util::hash_file_range(fd.get(), 0, size, d) != 0) return {};
  return d.xxh3_hex();
}

void download::retouch(int dir, const std::string& leaf, const file& f) {
  // -c -p: the same content already; the server's time and bits.
  util::unique_fd fd(::openat(dir, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  int err = fd ? 0 : errno;
  if (!err && ::fchmod(fd.get(), static_cast<mode_t>(f.entry.mode & 0777)) != 0) err = errno;
  if (!err) err = util::set_mtime_ns(fd.get(), f.entry.mtime_ns);
  if (err) r_.errors.push_back({f.shown, local_errc(err), download_message(err, f.shown), true});
}

void download::list_planned() {
  if (!base_jail_) r_.planned.push_back({planned_step::mkdir, base_, 0});  // -a into a destination not made yet
  auto exists = [](const item& d) {
    if (!d.jail) return false;
    util::unique_fd fd(d.jail->open(d.local, O_PATH | O_DIRECTORY | O_NOFOLLOW));
    return static_cast<bool>(fd);
  };
  for (const auto& d : dirs_) {
    if (!exists(d)) r_.planned.push_back({planned_step::mkdir, d.shown, 0});
  }
  for (const auto& l : links_) r_.planned.push_back({planned_step::link, l.shown, 0});
  for (const auto& f : queue_) r_.planned.push_back({planned_step::send, to_stdout_ ? "-" : f->shown, f->entry.size});
  if (o_.delete_extraneous) prune_extraneous(false);
}

download::listed_tree& download::listed_tree_of(const util::dir_jail& tree) {
  // By the directory itself: two sources that land in one directory (or a
  // tree and the files beside it) share what is kept there.
  struct stat st {};
  ::fstat(tree.root_fd(), &st);
  listed_tree& l = listed_[{st.st_dev, st.st_ino}];
  if (!l.jail) l.jail = &tree;
  return l;
}

void download::note_landing(const std::string& name) {
  // What a source creates in the destination itself is the source's, not
  // extraneous, should another source's contents (-a SRC/) land there too.
  if (!o_.delete_extraneous || !base_jail_ || name.empty() || name.find('/') != std::string::npos) return;
  listed_tree_of(*base_jail_).landed.insert(name);
}

void download::prune_extraneous(bool act) {
  if (!r_.errors.empty()) return;  // never after errors (nor in a dry run's list)
  for (const auto& [key, listed] : listed_) {
    for (const auto& name : listed.landed) {
      if (listed.prune && listed.names.count(name)) {
        // Two sources put the same name there: which one's listing decides
        // what stays below it is not clear, so nothing is deleted.
        r_.errors.push_back({name, errc::exists,
                             "'" + name + "' comes from two sources; --delete deletes nothing"});
        return;
      }
    }
  }
  for (const auto& entry : listed_) {
    const listed_tree& listed = entry.second;  // (a reference the lambdas below can capture)
    if (!listed.prune) continue;  // only names noted there, nothing listed into it
    const util::dir_jail* tree = listed.jail;
    util::unique_fd root(::openat(tree->root_fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    const std::string top = listed.shown.empty() ? base_ : listed.shown;
    if (!root) {
      r_.errors.push_back({top, local_errc(errno), download_message(errno, top), true});
      continue;
    }
    util::tree_visitor v;
    v.keep = [](std::string_view n) { return !util::is_part_file_name(n) && n != util::unfinished_copy_marker; };
    v.enter = [&](const util::tree_entry& e) {
      const bool is_dir = S_ISDIR(e.st.st_mode);
      if (o_.filter.excluded(e.path, is_dir)) return util::walk_step::next;  // protected, with all it holds
      if (listed.landed.count(e.path)) return util::walk_step::next;  // another source's, judged by its own listing
      if (listed.names.count(e.path)) return is_dir ? util::walk_step::descend : util::walk_step::next;
      const std::string shown = join(listed.shown, e.path);
      if (act) {
        remove_extraneous(e, shown);
      } else {
        r_.planned.push_back({planned_step::remove, shown, 0});
      }
      return util::walk_step::next;  // a directory went (or would go) whole
    };
    v.failed = [&](const util::tree_entry& e, int err) {
      const std::string shown = join(listed.shown, e.path);
      r_.errors.push_back({shown, local_errc(err), download_message(err, shown), true});
      return util::walk_step::next;
    };
    util::walk_tree(std::move(root), v);
  }
}

void download::remove_extraneous(const util::tree_entry& e, const std::string& shown) {
  std::uint64_t removed = 1;
  int err = 0;
  if (S_ISDIR(e.st.st_mode)) {
    util::unique_fd sub(::openat(e.dir_fd, e.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    err = !sub ? errno : util::remove_tree_contents(std::move(sub), [&](const util::tree_entry&) { ++removed; });
    if (!err && ::unlinkat(e.dir_fd, e.name.c_str(), AT_REMOVEDIR) != 0) err = errno;
  } else if (::unlinkat(e.dir_fd, e.name.c_str(), 0) != 0) {
    err = errno;
  }
  if (err) {
    r_.errors.push_back({shown, local_errc(err), download_message(err, "delete " + shown), true});
  } else {
    r_.deleted += removed;
  }
}

// ------------------------------------------------------------------ shape

void download::make_directories() {
  for (const auto& d : dirs_) {
    if (d.made) continue;  // a tree's root, made with its plan
    // The source's permission bits, as cp and scp give a new directory
    // (less the umask; the owner can always fill it: -p sets the exact
    // bits once it is full).
    if (int e = make_dirs(*d.jail, d.local, static_cast<mode_t>((d.entry.mode & 0777) | 0700))) {
      r_.errors.push_back({d.shown, local_errc(e), download_message(e, "mkdir " + d.shown), true});
    } else {
      ++r_.dirs;
    }
  }
}

void download::make_links() {
  for (const auto& l : links_) {
    std::string leaf;
    util::unique_fd dir(l.jail->open_parent(l.local, leaf));
    if (!dir) {
      r_.errors.push_back({l.shown, local_errc(-dir.get()), download_message(-dir.get(), l.shown), true});
      continue;
    }
    const std::string tmp = util::part_file_name(leaf) + "." + util::random_hex64();
    if (::symlinkat(l.entry.target.c_str(), dir.get(), tmp.c_str()) != 0 ||
        ::renameat2(dir.get(), tmp.c_str(), dir.get(), leaf.c_str(), o_.no_clobber ? RENAME_NOREPLACE : 0) != 0) {
      const int err = errno;
      ::unlinkat(dir.get(), tmp.c_str(), 0);
      r_.errors.push_back({l.shown, local_errc(err), download_message(err, l.shown), true});
      continue;
    }
    ++r_.symlinks;
  }
}

void download::check_links() {
  // Now that every link exists, let the kernel follow each one from the
  // tree's root (and only for this check): a chain of links must not lead
  // outside the tree. A link that does is removed again.
  for (const auto& l : links_) {
    util::unique_fd probe(util::open_beneath(l.jail->root_fd(), l.local, O_PATH));
    if (probe || -probe.get() == ENOENT || -probe.get() == ELOOP) continue;
    std::string leaf;
    util::unique_fd dir(l.jail->open_parent(l.local, leaf));
    struct stat st {};
    if (dir && ::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
      ::unlinkat(dir.get(), leaf.c_str(), 0);
      --r_.symlinks;
    }
    refuse(l.shown, "the link's target '" + l.entry.target + "' leads outside the destination (through other links)");
  }
}

void download::restore_directory_attributes() {
  if (!o_.preserve || to_stdout_) return;
  // Directory times last: creating files inside changes them.
  for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
    util::unique_fd fd(it->jail->open(it->local, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
    if (!fd) continue;
    ::fchmod(fd.get(), static_cast<mode_t>(it->entry.mode & 0777));
    util::set_mtime_ns(fd.get(), it->entry.mtime_ns);
  }
}

// ------------------------------------------------------------------ files

download::shared_dir download::parent_dir(const util::dir_jail& jail, const std::string& local, std::string& leaf,
                                          int& err) {
  const auto slash = local.rfind('/');
  const std::string_view parent =
      slash == std::string::npos ? std::string_view() : std::string_view(local).substr(0, slash);
  if (last_dir_ && &jail == last_jail_ && parent == last_parent_) {
    leaf = local.substr(slash == std::string::npos ? 0 : slash + 1);
    return last_dir_;
  }
  util::unique_fd d(jail.open_parent(local, leaf));
  if (!d) {
    err = -d.release();
    return nullptr;
  }
  last_dir_ = std::make_shared<const util::unique_fd>(std::move(d));
  last_jail_ = &jail;
  last_parent_.assign(parent);
  return last_dir_;
}

bool download::open_dir(file& f) {
  int e = 0;
  f.dir = parent_dir(*f.jail, f.local, f.leaf, e);
  if (!f.dir) r_.errors.push_back({f.shown, local_errc(e), download_message(e, f.shown), true});
  return f.dir != nullptr;
}

bool download::prepare(file& f) {
  // Open each file's part just before requesting it. A file small enough
  // to arrive in one frame gets an unnamed file, linked into place once it
  // is verified: nothing to lock, rename or clean up, and nothing to
  // resume (it would be sent whole anyway). A larger one gets its named,
  // resumable part.
  if (to_stdout_) return true;
  if (!open_dir(f)) return false;
  const int dir = f.dir->get();
  struct stat st {};
  if (o_.no_clobber && ::fstatat(dir, f.leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    r_.errors.push_back({f.shown, errc::exists, f.shown + ": already exists (--no-clobber)"});
    return false;
  }
  // Without -p a file gets the server's permission bits less the umask,
  // or keeps those of the file it replaces (as cp and scp); the part is
  // created with them (and u+rw, so that it can be resumed), so that most
  // commits need no chmod. -p modes are set at commit.
  f.mode = o_.preserve ? static_cast<mode_t>(f.entry.mode & 0777)
                       : util::received_file_mode(dir, f.leaf.c_str(), static_cast<mode_t>(f.entry.mode));
  const mode_t create_mode = o_.preserve ? 0600 : (f.mode | 0600);
  int fd = f.entry.size <= inline_max ? util::open_unnamed(dir, create_mode, f.part_st) : -EOPNOTSUPP;
  if (fd >= 0) {
    f.part.clear();
  } else if (fd == -EOPNOTSUPP) {
    f.part = util::part_file_name(f.leaf);
    fd = util::open_locked_part(dir, f.part, f.private_part, create_mode, &f.part_st);
  }
  if (fd < 0) {
    r_.errors.push_back({f.shown, local_errc(-fd), download_message(-fd, f.shown), true});
    return false;
  }
  f.fd.reset(fd);
  // Reserve the file's space before asking for its bytes: a disk that
  // cannot hold it is reported now, and nothing is sent. (get.begin
  // reserves again only if the server's size differs or the part was
  // truncated, which gave the blocks back.)
  const auto have = static_cast<std::uint64_t>(f.part_st.st_size);
  if (f.entry.size > inline_max && f.entry.size > have) {
    if (int e = util::preallocate(fd, have, f.entry.size - have)) {
      r_.errors.push_back({f.shown, local_errc(e), local_message(e, f.shown), true});
      if (have == 0 && !f.part.empty()) ::unlinkat(dir, f.part.c_str(), 0);  // empty: nothing to resume
      f.fd.reset();
      f.dir.reset();
      return false;
    }
    f.preallocated = true;
  }
  return true;
}

void download::send_next() {
  // Requests go out in batches, queued and written together: refilling
  // the window one request per finished file cost a write per file.
  // A delta file whose get.end came but whose part is still being rebuilt
  // counts too: its descriptors, reserved blocks and memory are held.
  const std::size_t rebuilding = static_cast<std::size_t>(
      std::count_if(rebuilding_.begin(), rebuilding_.end(), [](const file* f) { return f->delta && f->delta->end.has_value(); }));
  if (waiting_.size() + rebuilding > window_gets / 2) return;
  while (next_ < queue_.size() && waiting_.size() + rebuilding < window_gets) {
    file& f = *queue_[next_++];
    if (!prepare(f)) {
      ++prog_.files_done;
      continue;
    }
    json h = {{"type", "get"}, {"path", f.remote}};
    if (o_.sha256) h["verify"] = "sha256";
    if (open_basis(f)) h["delta"] = true;
    const struct stat& st = f.part_st;
    if (!to_stdout_ && st.st_size > 0 && static_cast<std::uint64_t>(st.st_size) <= f.entry.size) {
      // A part from an interrupted run: offer it; the server checks it.
      if (util::hash_file_range(f.fd.get(), 0, static_cast<std::uint64_t>(st.st_size), f.digest) == 0) {
        h["offset"] = static_cast<std::uint64_t>(st.st_size);
        h["xxh3"] = f.digest.xxh3_hex();
      } else {
        f.digest.reset();
      }
    }
    f.id = c_->next_id();
    h["id"] = f.id;
    c_->queue(h);
    waiting_[f.id] = &f;
  }
  c_->flush();
}

void download::transfer() {
  send_next();
  auto stream = [&](const json& h) {
    current_ = nullptr;
    if (h.value("type", "") != "get.data") return false;
    auto it = waiting_.find(h.value("id", std::uint64_t{0}));
    if (it == waiting_.end()) return false;
    current_ = it->second;
    return true;
  };
  auto part = [&](std::string_view bytes) {
    if (current_) take_data(*current_, bytes);
  };
  constexpr std::uint64_t rebuild_slice = 4u << 20;  // between reads of the connection
  while (!waiting_.empty() || !rebuilding_.empty()) {
    auto ready = std::find_if(rebuilding_.begin(), rebuilding_.end(), [&](file* f) { return can_rebuild(*f); });
    if (ready != rebuilding_.end()) {
      file& f = **ready;
      rebuild_some(f, rebuild_slice);
      settle(f);
      send_next();  // (a file done here frees a place in the window)
      // What has come meanwhile (a read ends inside a frame more often than
      // not: a few reads, each of what the socket holds).
      for (int reads = 0, frames = 0; reads < 16 && frames < 1024;) {
        if (auto frame = c_->try_receive_streamed(stream, part)) {
          on_frame(*frame);
          ++frames;
        } else {
          ++reads;
        }
      }
      continue;
    }
    if (waiting_.empty()) {
      // Nothing more will come, and no part can grow: settle fails them.
      for (file* f : std::vector<file*>(rebuilding_)) {
        settle(*f);
        if (std::erase(rebuilding_, f) > 0) {  // (settle finishes any that got their get.end)
          ++prog_.files_done;
          fail(*f, errc::integrity, f->shown + ": the download ended before the file was complete", true);
          f->delta.reset(), f->fd.reset(), f->dir.reset();
        }
      }
      send_next();
      continue;
    }
    proto::frame frame = c_->receive_streamed(stream, part);
    on_frame(frame);
  }
}

void download::on_frame(proto::frame& frame) {
  auto id = frame.id();
  auto it = id ? waiting_.find(*id) : waiting_.end();
  if (it == waiting_.end()) return;
  file& f = *it->second;
  const auto type = frame.type();
  if (type == "get.data") {
    if (!frame.body.empty()) take_data(f, frame.body);  // (a body that was not streamed)
    return;
  }
  if (type == "get.begin") return on_begin(f, frame);
  if (type == "get.groups") return take_groups(f, frame);
  if (type == "get.chunks.reply") return take_chunks(f, frame);
  if (type == "get.progress") return;  // the server reads its file for a delta: still working
  waiting_.erase(it);
  if (type == "get.end" && f.delta && f.delta->asked) {
    f.delta->end = frame.header;  // done once the part is complete
    settle(f);
    return send_next();
  }
  std::erase(rebuilding_, &f);
  if (type == "get.file" && f.delta && f.delta->offered) {
    ++prog_.files_done;
    fail(f, errc::integrity, f.shown + ": the server sent the whole file after offering a delta", true);
  } else if (type == "get.file") {
    f.digest.reset();
    f.pos = 0;
    truncate_part(f);
    write_data(f, frame.body);
    finish(f, frame.header);
  } else if (type == "get.end") {
    finish(f, frame.header);
  } else if (type == proto::type::error) {
    auto e = error_from_frame(frame);
    ++prog_.files_done;
    fail(f, e.code().value_or(errc::io_error), f.remote + ": " + frame.header.value("message", e.what()),
         e.code() == errc::integrity);
    if (f.private_part && f.dir) ::unlinkat(f.dir->get(), f.part.c_str(), 0);
  } else {
    ++prog_.files_done;
    fail(f, errc::integrity, f.shown + ": the server answered with '" + std::string(type) + "'", true);
  }
  if (f.failed) f.delta.reset(), f.fd.reset(), f.dir.reset();
  send_next();
}

void download::on_begin(file& f, const proto::frame& frame) {
  if (f.delta && f.delta->offered) {
    return fail(f, errc::integrity, f.shown + ": the server began the download twice", true);
  }
  const auto offset = frame.header.value("offset", std::uint64_t{0});
  if (offset != f.digest.bytes() || offset == 0) {
    // The server did not take our part (or there was none): start over,
    // dropping whatever an earlier attempt left in the part file.
    f.digest.reset();
    truncate_part(f);
    f.pos = 0;
  } else {
    f.pos = offset;
    r_.resumed_bytes += offset;
    prog_.bytes_done += offset;
    prog_.resumed_bytes += offset;
    prog_.current = f.shown;
    if (o_.on_progress) o_.on_progress(prog_);  // a file that was all there gets no data to report it
  }
  const std::uint64_t listed_size = f.entry.size;
  f.entry.size = frame.header.value("size", f.entry.size);
  // Reserve the blocks still to come, unless the reservation made before
  // the request still covers them: a full disk is reported now, not
  // halfway, and writing into reserved blocks is cheaper.
  const bool still_reserved = f.preallocated && f.entry.size == listed_size;
  if (!to_stdout_ && !f.failed && f.entry.size > f.pos && !still_reserved) {
    if (int e = util::preallocate(f.fd.get(), f.pos, f.entry.size - f.pos)) {
      fail(f, local_errc(e), local_message(e, f.shown), f.pos == 0, true);  // an empty part: nothing to resume
    } else {
      f.preallocated = true;
    }
  }
  if (f.delta) start_delta(f, frame.header);
}

void download::take_data(file& f, std::string_view data) {
  if (f.delta) return take_literal(f, data);
  write_data(f, data);
}

void download::write_data(file& f, std::string_view data) {
  if (f.failed) return;
  const int e = to_stdout_ ? util::write_all(1, data.data(), data.size())
                           : util::pwrite_all(f.fd.get(), data.data(), data.size(), f.pos);
  // The reader of stdout went away (`cskit get HOST:f - | head`): stop
  // now, quietly, as cat does.
  if (e == EPIPE && to_stdout_) throw output_closed();
  if (e) return fail(f, local_errc(e), local_message(e, to_stdout_ ? "writing to stdout" : f.shown), false, true);
  f.digest.update(data.data(), data.size());
  constexpr std::uint64_t writeback_step = 16u << 20;
  if (o_.fsync && !to_stdout_ && (f.pos + data.size()) / writeback_step != f.pos / writeback_step) {
    // Start writing back what is complete, so the final fsync has little
    // left to do: the disk works while the network does.
    const std::uint64_t end = (f.pos + data.size()) / writeback_step * writeback_step;
    ::sync_file_range(f.fd.get(), static_cast<off_t>(end - writeback_step), static_cast<off_t>(writeback_step),
                      SYNC_FILE_RANGE_WRITE);
  }
  f.pos += data.size();
  prog_.bytes_done += data.size();
  if (prog_.current != f.shown) prog_.current = f.shown;
  if (o_.on_progress) o_.on_progress(prog_);
}

void download::truncate_part(file& f) {
  // Empties a part before the server's content is written from offset 0
  // (an earlier attempt may have left bytes in it); a new part is empty.
  if (to_stdout_ || f.part_st.st_size == 0) return;
  if (::ftruncate(f.fd.get(), 0) != 0) return fail(f, local_errc(errno), local_message(errno, f.shown), false, true);
  f.part_st.st_size = 0;
  f.preallocated = false;  // truncating gave the reserved blocks back
}

void download::fail(file& f, errc code, const std::string& message, bool drop_part, bool local) {
  if (!f.failed) r_.errors.push_back({to_stdout_ ? f.remote : f.shown, code, message, local});
  f.failed = true;
  if (drop_part && f.dir && !f.part.empty()) ::unlinkat(f.dir->get(), f.part.c_str(), 0);
  f.release();
}

void download::finish(file& f, const json& h) {
  ++prog_.files_done;
  const std::uint64_t matched = f.delta && !f.failed ? f.delta->matched : 0;
  if (!f.failed) f.delta.reset();  // (complete: our old copy is closed before the file replaces it)
  if (f.failed) return;
  const std::string want = h.value("xxh3", "");
  if (f.pos != h.value("size", f.pos) || want != f.digest.xxh3_hex() ||
      (o_.sha256 && h.value("sha256", "") != f.digest.sha256_hex())) {
    return fail(f, errc::integrity,
                (to_stdout_ ? f.remote : f.shown) + ": content digest mismatch (server " + want + ", received " +
                    f.digest.xxh3_hex() + ")" + (to_stdout_ ? "" : "; the file was not committed"),
                true);
  }
  r_.bytes += f.pos;
  r_.matched_bytes += matched;
  if (to_stdout_) {
    ++r_.files;
    return;
  }
  commit c;
  c.file = std::move(f.fd);
  c.dir = std::move(f.dir);
  c.part = f.part;
  c.leaf = f.leaf;
  c.shown = f.shown;
  c.mode = f.mode;
  c.chmod = (f.part_st.st_mode & 07777) != c.mode;
  if (o_.preserve) c.mtime = h.value("mtime_ns", f.entry.mtime_ns);
  batch_.push_back(std::move(c));
  if (batch_.size() >= commit_batch_) commit_finished();
}

void download::commit_finished() {
  // Flushes and renames a batch of finished downloads: one syncfs() for all.
  if (batch_.empty()) return;
  std::vector<int> err(batch_.size(), 0);
  for (std::size_t i = 0; i < batch_.size(); ++i) {
    auto& c = batch_[i];
    if (c.chmod && ::fchmod(c.file.get(), c.mode) != 0) err[i] = errno;
    if (!err[i] && c.mtime) err[i] = util::set_mtime_ns(c.file.get(), *c.mtime);
  }
  int rc = !o_.fsync ? 0 : batch_.size() == 1 ? ::fsync(batch_.front().file.get()) : ::syncfs(batch_.front().file.get());
  if (rc != 0) {
    const int e = errno;
    for (auto& x : err) x = x ? x : e;
  }
  for (std::size_t i = 0; i < batch_.size(); ++i) {
    auto& c = batch_[i];
    const int dir = c.dir->get();
    if (!err[i] && c.part.empty()) {
      // Linked into place; a part an earlier, larger version left goes.
      err[i] = util::link_unnamed(c.file.get(), dir, c.leaf.c_str(), o_.no_clobber);
      if (!err[i]) util::drop_stale_part(dir, c.leaf);
    } else if (!err[i] &&
               ::renameat2(dir, c.part.c_str(), dir, c.leaf.c_str(), o_.no_clobber ? RENAME_NOREPLACE : 0) != 0) {
      err[i] = errno;
    }
    if (err[i]) {
      // Refused for good (the name is taken, or a directory is in the
      // way): the part goes. (An unnamed file vanishes when closed.)
      if ((err[i] == EEXIST || err[i] == EISDIR) && !c.part.empty()) ::unlinkat(dir, c.part.c_str(), 0);
      r_.errors.push_back({c.shown, local_errc(err[i]),
                           err[i] == EEXIST ? c.shown + ": already exists (--no-clobber)"
                                            : local_message(err[i], c.shown), true});
    } else {
      ++r_.files;
    }
  }
  batch_.clear();
}

}  // namespace cskit::client
