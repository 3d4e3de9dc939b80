#include "client/files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>

#include "proto/messages.hpp"
#include "proto/utf8.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "util/jail.hpp"

namespace cskit::client {

using proto::errc;
using proto::json;

namespace {

constexpr std::uint64_t inline_max = 256 * 1024;  // the server's inline_file_max
constexpr std::size_t chunk = 4u << 20;           // bytes per put.data frame
constexpr std::size_t window_requests = 1024;     // unanswered requests in flight
constexpr std::size_t window_bytes = 32u << 20;   // inline bytes in flight
constexpr std::size_t window_gets = 64;           // get requests in flight
constexpr std::size_t max_commit_batch = 1024;    // files per group commit (a descriptor each, and their directories)

errc local_errc(int err) {
  switch (err) {
    case ENOSPC:
    case EDQUOT: return errc::no_space;
    case EACCES:
    case EPERM:
    case EROFS: return errc::permission_denied;
    case ENOENT: return errc::not_found;
    case EEXIST:
    case EISDIR: return errc::exists;  // a directory in the way
    case EXDEV:
    case ELOOP: return errc::bad_path;
    default: return errc::io_error;
  }
}

std::string local_message(int err, const std::string& what) {
  if (err == ENOSPC) return what + ": no space left on the local disk";
  if (err == EXDEV) return what + ": the path leads outside the destination";
  return what + ": " + std::strerror(err);
}

std::string join(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return a + "/" + b;
}

std::string base_name(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::int64_t mtime_of(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
}

// Replies to pipelined requests, matched by id.
class pipeline {
 public:
  using on_reply = std::function<void(proto::frame&)>;
  explicit pipeline(connection& c, transfer_result& r) : c_(c), r_(r) {}

  void track(std::uint64_t id, std::string path, on_reply fn, std::size_t bytes = 0) {
    inflight_[id] = {std::move(path), std::move(fn), bytes};
    bytes_ += bytes;
  }
  bool pending(std::uint64_t id) const { return inflight_.count(id) != 0; }
  /// Stops waiting for `id` (a later reply to it is ignored).
  void forget(std::uint64_t id) {
    auto it = inflight_.find(id);
    if (it == inflight_.end()) return;
    bytes_ -= it->second.bytes;
    inflight_.erase(it);
  }
  std::size_t size() const { return inflight_.size(); }
  std::size_t bytes() const { return bytes_; }

  void handle(proto::frame& f) {
    auto id = f.id();
    if (!id) return;
    auto it = inflight_.find(*id);
    if (it == inflight_.end()) return;  // a late reply to something given up
    auto entry = std::move(it->second);
    inflight_.erase(it);
    bytes_ -= entry.bytes;
    if (f.type() == proto::type::error) {
      auto e = error_from_frame(f);
      r_.errors.push_back({entry.path, e.code().value_or(errc::io_error), f.header.value("message", e.what())});
      if (entry.fn) entry.fn(f);  // lets the owner clean up (it checks the type)
      return;
    }
    if (entry.fn) entry.fn(f);
  }
  void wait_one() {
    proto::frame f = c_.receive();
    handle(f);
  }
  void poll() {
    while (auto f = c_.try_receive()) handle(*f);
  }
  void drain() {
    while (!inflight_.empty()) wait_one();
  }
  /// Waits for the reply to `id` (handling the others meanwhile). nullopt
  /// when it was an error (already recorded).
  std::optional<proto::frame> wait_for(std::uint64_t id, const std::string& path) {
    for (;;) {
      proto::frame f = c_.receive();
      if (f.id() == id) {
        if (f.type() == proto::type::error) {
          auto e = error_from_frame(f);
          r_.errors.push_back({path, e.code().value_or(errc::io_error), f.header.value("message", e.what())});
          return std::nullopt;
        }
        return f;
      }
      handle(f);
    }
  }

 private:
  struct entry {
    std::string path;
    on_reply fn;
    std::size_t bytes = 0;
  };
  connection& c_;
  transfer_result& r_;
  std::map<std::uint64_t, entry> inflight_;
  std::size_t bytes_ = 0;
};

struct clock_guard {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  transfer_result& r;
  ~clock_guard() { r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

}  // namespace

remote_entry entry_from_json(const json& j) {
  remote_entry e;
  e.name = j.value("name", "");
  e.type = j.value("type", "other");
  e.size = j.value("size", std::uint64_t{0});
  e.mode = j.value("mode", 0u);
  e.mtime_ns = j.value("mtime_ns", std::int64_t{0});
  e.target = j.value("target", "");
  return e;
}

bool file_client::send_and_digest(const json& header, int fd, std::uint64_t pos, std::size_t n,
                                  util::content_digest& digest) {
  if (c_.encrypts_in_user_space()) {
    const std::size_t sent =
        c_.send_file(header, fd, pos, n, [&](std::string_view bytes) { digest.update(bytes.data(), bytes.size()); });
    return sent == n;
  }
  if (util::hash_file_range(fd, pos, n, digest) != 0) return false;
  c_.send_file(header, fd, pos, n);
  return true;
}

remote_entry file_client::stat(const std::string& path) {
  auto f = c_.request({{"type", "fs.stat"}, {"path", path}});
  return entry_from_json(f.header.at("entry"));
}

std::vector<remote_entry> file_client::list(const std::string& path, bool recursive) {
  const auto id = c_.next_id();
  c_.send({{"type", "fs.list"}, {"id", id}, {"path", path}, {"recursive", recursive}});
  std::vector<remote_entry> out;
  for (;;) {
    proto::frame f = c_.receive();
    if (f.id() != id) continue;
    if (f.type() == proto::type::error) throw error_from_frame(f);
    json arr = json::parse(f.body, nullptr, false);
    if (!arr.is_array()) throw client_error(failure::protocol, "fs.list.reply: the body is not a JSON array");
    for (auto& e : arr) out.push_back(entry_from_json(e));
    if (f.header.value("done", true)) break;
  }
  return out;
}

void file_client::mkdir(const std::string& path, bool parents) {
  c_.request({{"type", "fs.mkdir"}, {"path", path}, {"parents", parents}});
}

std::uint64_t file_client::rm(const std::string& path, bool recursive) {
  auto f = c_.request({{"type", "fs.rm"}, {"path", path}, {"recursive", recursive}});
  return f.header.value("removed", std::uint64_t{0});
}

std::string file_client::mv(const std::string& from, const std::string& to, bool no_clobber) {
  auto f = c_.request({{"type", "fs.mv"}, {"from", from}, {"to", to}, {"no_clobber", no_clobber}});
  return f.header.value("path", to);
}

// ------------------------------------------------------------------ put

namespace {

struct put_item {
  enum kind { dir, file, symlink, stream } what;
  std::string local;
  std::string remote;
  struct stat st {};
  std::string target;
};

// Adds `local` (a directory) and everything below it to `items`.
void walk_local(const std::string& local, const std::string& remote, std::vector<put_item>& items,
                transfer_result& r, int depth) {
  DIR* d = ::opendir(local.c_str());
  if (!d) {
    r.errors.push_back({local, local_errc(errno), local_message(errno, local)});
    return;
  }
  std::vector<std::string> names;
  while (dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    const std::string lp = local + "/" + n;
    if (!proto::is_valid_utf8(n) || !util::check_name(n).empty()) {
      r.errors.push_back({lp, errc::bad_path, lp + ": the name is not valid UTF-8 or contains control characters; skipped"});
      continue;
    }
    if (util::is_part_file_name(n)) continue;  // our own unfinished downloads
    put_item it;
    it.local = lp;
    it.remote = join(remote, n);
    if (::lstat(lp.c_str(), &it.st) != 0) {
      r.errors.push_back({lp, local_errc(errno), local_message(errno, lp)});
      continue;
    }
    if (S_ISDIR(it.st.st_mode)) {
      it.what = put_item::dir;
      items.push_back(it);
      if (depth < 256) walk_local(lp, it.remote, items, r, depth + 1);
    } else if (S_ISREG(it.st.st_mode)) {
      it.what = put_item::file;
      items.push_back(it);
    } else if (S_ISLNK(it.st.st_mode)) {
      char buf[4097];
      ssize_t len = ::readlink(lp.c_str(), buf, sizeof buf - 1);
      if (len < 0) continue;
      it.target.assign(buf, static_cast<std::size_t>(len));
      it.what = put_item::symlink;
      items.push_back(it);
    } else {
      r.errors.push_back({lp, errc::bad_request, lp + ": not a regular file, directory or symlink; skipped"});
    }
  }
}

}  // namespace

transfer_result file_client::put(const std::vector<std::string>& sources, const std::string& dest_in,
                                 const transfer_options& o) {
  transfer_result r;
  clock_guard timer{std::chrono::steady_clock::now(), r};
  if (std::string why = util::check_relative_path(dest_in); !why.empty()) {
    throw client_error(failure::remote, "remote path '" + dest_in + "': " + why, errc::bad_path);
  }
  const std::string dest = util::normalize_relative(dest_in);
  bool dest_is_dir = dest.empty();
  if (!dest_is_dir) {
    try {
      dest_is_dir = stat(dest).type == "dir";
    } catch (const client_error& e) {
      if (e.code() != errc::not_found) throw;
    }
  }
  if (!dest_is_dir && sources.size() > 1) {
    throw client_error(failure::remote, "'" + dest + "' is not a directory on the server (several sources)",
                       errc::not_found);
  }

  std::vector<put_item> items;
  for (const auto& src : sources) {
    put_item it;
    if (src == "-") {
      if (dest_is_dir) {
        r.errors.push_back({"-", errc::bad_request, "stdin needs a remote file name, not a directory"});
        continue;
      }
      it.what = put_item::stream;
      it.local = "-";
      it.remote = dest;
      items.push_back(it);
      continue;
    }
    if (::stat(src.c_str(), &it.st) != 0) {  // a symlink named on the command line is followed
      r.errors.push_back({src, local_errc(errno), local_message(errno, src)});
      continue;
    }
    std::string leaf = base_name(src);
    if (leaf == "." || leaf == ".." || leaf == "/") {
      char buf[4096];
      if (::realpath(src.c_str(), buf)) leaf = base_name(buf);
    }
    if (!proto::is_valid_utf8(leaf) || !util::check_name(leaf).empty()) {
      r.errors.push_back({src, errc::bad_path, src + ": the name is not valid UTF-8 or contains control characters"});
      continue;
    }
    it.local = src;
    it.remote = dest_is_dir ? join(dest, leaf) : dest;
    if (S_ISDIR(it.st.st_mode)) {
      if (!o.recursive) {
        r.errors.push_back({src, errc::bad_request, src + ": is a directory (use -r)"});
        continue;
      }
      it.what = put_item::dir;
      items.push_back(it);
      walk_local(src, it.remote, items, r, 0);
    } else if (S_ISREG(it.st.st_mode)) {
      it.what = put_item::file;
      items.push_back(it);
    } else {
      r.errors.push_back({src, errc::bad_request, src + ": not a regular file or directory"});
    }
  }

  transfer_progress prog;
  for (const auto& it : items) {
    if (it.what == put_item::file) prog.bytes_total += static_cast<std::uint64_t>(it.st.st_size);
    if (it.what == put_item::file || it.what == put_item::stream) ++prog.files_total;
  }
  auto report = [&] {
    if (o.on_progress) o.on_progress(prog);
  };
  pipeline pipe(c_, r);
  // The reply handler of an upload (put.done, or its error).
  auto file_done = [&] {
    return [&](proto::frame& f) {
      ++prog.files_done;
      if (f.type() == "put.done") {
        ++r.files;
        r.bytes += f.header.value("size", std::uint64_t{0});
      }
      report();
    };
  };
  auto base_put = [&](const put_item& it) {
    json h = {{"type", "put"}, {"path", it.remote}};
    if (o.no_clobber) h["no_clobber"] = true;
    if (o.sha256) h["verify"] = "sha256";
    if (o.preserve && it.what != put_item::stream) {
      h["mode"] = it.st.st_mode & 0777;
      h["mtime_ns"] = mtime_of(it.st);
    }
    return h;
  };

  std::size_t since_poll = 0;
  for (const auto& it : items) {
    while (pipe.size() >= window_requests || pipe.bytes() >= window_bytes) pipe.wait_one();
    // Replies are collected every few items, not before each one: a
    // non-blocking read per small file was a system call per file.
    if (++since_poll >= 32) {
      since_poll = 0;
      pipe.poll();
    }
    if (it.what == put_item::dir) {
      const auto id = c_.next_id();
      c_.send({{"type", "fs.mkdir"}, {"id", id}, {"path", it.remote}, {"parents", true}});
      pipe.track(id, it.remote, [&](proto::frame& f) {
        if (f.type() == "fs.ok") ++r.dirs;
      });
      continue;
    }
    if (it.what == put_item::symlink) {
      const auto id = c_.next_id();
      c_.send({{"type", "fs.symlink"}, {"id", id}, {"path", it.remote}, {"target", it.target}});
      pipe.track(id, it.remote, [&](proto::frame& f) {
        if (f.type() == "fs.ok") ++r.symlinks;
      });
      continue;
    }
    if (it.what == put_item::stream) {
      // stdin: size unknown, so no resume; digested and committed like a file.
      const auto id = c_.next_id();
      json h = base_put(it);
      h["id"] = id;
      c_.send(h);
      if (!pipe.wait_for(id, it.remote)) {
        ++prog.files_done;
        continue;
      }
      util::content_digest digest(o.sha256);
      std::string buf(1u << 20, '\0');
      pipe.track(id, it.remote, file_done());  // errors while streaming arrive with this id
      for (;;) {
        if (!pipe.pending(id)) break;  // the server refused the rest (quota, disk full, ...)
        long n = util::read_full(0, buf.data(), buf.size());
        if (n < 0) {
          r.errors.push_back({"-", local_errc(static_cast<int>(-n)), local_message(static_cast<int>(-n), "reading stdin")});
          c_.send({{"type", "put.abort"}, {"id", id}, {"discard", true}});
          pipe.forget(id);
          ++prog.files_done;
          break;
        }
        if (n == 0) {
          json end = {{"type", "put.end"}, {"id", id}, {"xxh3", digest.xxh3_hex()}};
          if (o.sha256) end["sha256"] = digest.sha256_hex();
          c_.send(end);
          break;
        }
        digest.update(buf.data(), static_cast<std::size_t>(n));
        c_.send({{"type", "put.data"}, {"id", id}}, std::string_view(buf.data(), static_cast<std::size_t>(n)));
        prog.bytes_done += static_cast<std::uint64_t>(n);
        report();
        pipe.poll();
      }
      continue;
    }

    // A regular file.
    util::unique_fd fd(::open(it.local.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      r.errors.push_back({it.local, local_errc(errno), local_message(errno, it.local)});
      ++prog.files_done;
      continue;
    }
    struct stat st {};
    ::fstat(fd.get(), &st);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    util::content_digest digest(o.sha256);
    json h = base_put(it);
    if (o.preserve) h["mtime_ns"] = mtime_of(st), h["mode"] = st.st_mode & 0777;
    if (size <= inline_max) {
      std::string body(static_cast<std::size_t>(size) + 1, '\0');
      long n = util::read_full(fd.get(), body.data(), body.size(), 0);
      if (n < 0 || static_cast<std::uint64_t>(n) != size) {
        r.errors.push_back({it.local, errc::changed, it.local + ": changed or vanished while it was being read"});
        ++prog.files_done;
        continue;
      }
      body.resize(static_cast<std::size_t>(size));
      digest.update(body.data(), body.size());
      const auto id = c_.next_id();
      h["id"] = id;
      h["inline"] = true;
      h["size"] = size;
      h["xxh3"] = digest.xxh3_hex();
      if (o.sha256) h["sha256"] = digest.sha256_hex();
      c_.queue(h, body);  // small files leave together (flushed at 256 KiB or on the next wait)
      prog.bytes_done += size;
      pipe.track(id, it.remote, file_done(), body.size());
      continue;
    }
    const auto id = c_.next_id();
    h["id"] = id;
    h["size"] = size;
    h["resume"] = true;
    c_.send(h);
    auto ready = pipe.wait_for(id, it.remote);
    if (!ready) {
      ++prog.files_done;
      continue;
    }
    std::uint64_t pos = ready->header.value("offset", std::uint64_t{0});
    if (pos > size) pos = 0;
    if (pos > 0) {
      // Resume only if the part on the server is a prefix of this file.
      if (util::hash_file_range(fd.get(), 0, pos, digest) != 0 || digest.xxh3_hex() != ready->header.value("xxh3", "")) {
        digest.reset();
        pos = 0;
      } else {
        r.resumed_bytes += pos;
        prog.bytes_done += pos;
      }
    }
    pipe.track(id, it.remote, file_done());  // errors while streaming arrive with this id
    bool first = true, failed = false;
    while (pos < size || first) {
      if (!pipe.pending(id)) {  // the server gave up (disk full, quota, ...)
        failed = true;
        break;
      }
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, size - pos));
      json d = {{"type", "put.data"}, {"id", id}};
      if (first) d["offset"] = pos;
      first = false;
      if (n > 0 && !send_and_digest(d, fd.get(), pos, n, digest)) {
        failed = true;
        break;
      }
      if (n == 0) c_.send(d);
      pos += n;
      prog.bytes_done += n;
      report();
      pipe.poll();
    }
    struct stat after {};
    if (!failed && (::fstat(fd.get(), &after) != 0 || after.st_size != st.st_size ||
                    after.st_mtim.tv_sec != st.st_mtim.tv_sec || after.st_mtim.tv_nsec != st.st_mtim.tv_nsec)) {
      failed = true;
    }
    if (failed) {
      if (pipe.pending(id)) {
        // Our side failed: the source shrank or changed while being sent.
        r.errors.push_back({it.local, errc::changed, it.local + ": changed or vanished while it was being sent"});
        c_.send({{"type", "put.abort"}, {"id", id}, {"discard", true}});
        pipe.forget(id);
        ++prog.files_done;
      }
      continue;
    }
    json end = {{"type", "put.end"}, {"id", id}, {"xxh3", digest.xxh3_hex()}};
    if (o.sha256) end["sha256"] = digest.sha256_hex();
    c_.send(end);
  }
  pipe.drain();

  if (o.preserve) {
    // Directory times last: creating files inside changes them.
    for (auto it = items.rbegin(); it != items.rend(); ++it) {
      if (it->what != put_item::dir) continue;
      const auto id = c_.next_id();
      c_.send({{"type", "fs.setattr"}, {"id", id}, {"path", it->remote}, {"mode", it->st.st_mode & 0777},
               {"mtime_ns", mtime_of(it->st)}});
      pipe.track(id, it->remote, nullptr);
      while (pipe.size() >= window_requests) pipe.wait_one();
    }
    pipe.drain();
  }
  return r;
}

// ------------------------------------------------------------------ get

namespace {

// A directory descriptor shared by the files going into that directory.
using shared_dir = std::shared_ptr<const util::unique_fd>;

struct local_commit {
  util::unique_fd file;
  shared_dir dir;
  std::string part, leaf, shown;  // part empty: an unnamed file (util::open_unnamed)
  mode_t mode = 0644;
  bool chmod = true;  // false: the part already has `mode`
  std::optional<std::int64_t> mtime;
};

// Flushes and renames a batch of finished downloads: one syncfs() for all.
void commit_all(std::vector<local_commit>& batch, bool no_clobber, bool flush, transfer_result& r, std::uint64_t& files) {
  if (batch.empty()) return;
  std::vector<int> err(batch.size(), 0);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    auto& c = batch[i];
    if (c.chmod && ::fchmod(c.file.get(), c.mode) != 0) err[i] = errno;
    if (!err[i] && c.mtime) err[i] = util::set_mtime_ns(c.file.get(), *c.mtime);
  }
  int rc = !flush ? 0 : batch.size() == 1 ? ::fsync(batch.front().file.get()) : ::syncfs(batch.front().file.get());
  if (rc != 0) {
    const int e = errno;
    for (auto& x : err) x = x ? x : e;
  }
  for (std::size_t i = 0; i < batch.size(); ++i) {
    auto& c = batch[i];
    const int dir = c.dir->get();
    if (!err[i] && c.part.empty()) {
      // Linked into place; a part an earlier, larger version left goes.
      err[i] = util::link_unnamed(c.file.get(), dir, c.leaf.c_str(), no_clobber);
      if (!err[i]) util::drop_stale_part(dir, c.leaf);
    } else if (!err[i] && ::renameat2(dir, c.part.c_str(), dir, c.leaf.c_str(), no_clobber ? RENAME_NOREPLACE : 0) != 0) {
      err[i] = errno;
    }
    if (err[i]) {
      // Refused for good (the name is taken, or a directory is in the
      // way): the part goes. (An unnamed file vanishes when closed.)
      if ((err[i] == EEXIST || err[i] == EISDIR) && !c.part.empty()) ::unlinkat(dir, c.part.c_str(), 0);
      r.errors.push_back({c.shown, local_errc(err[i]),
                          err[i] == EEXIST ? c.shown + ": already exists (--no-clobber)"
                                           : local_message(err[i], c.shown)});
    } else {
      ++files;
    }
  }
  batch.clear();
}

struct get_file {
  std::string remote;  // path on the server
  std::string local;   // relative to the local jail ("" with stdout)
  remote_entry entry;
  shared_dir dir;
  util::unique_fd fd;
  std::string leaf, part;  // part empty: an unnamed file, or stdout
  bool private_part = false;
  struct stat part_st {};  // the part file as opened (size: what to resume from; mode)
  std::uint64_t pos = 0;
  util::content_digest digest;
  bool failed = false;
  bool preallocated = false;  // blocks up to entry.size reserved (util::preallocate)
  explicit get_file(bool sha) : digest(sha) {}
  get_file(const get_file&) = delete;
  get_file& operator=(const get_file&) = delete;
  // A part left behind (failure, lost connection) keeps only its data.
  ~get_file() { release(); }
  void release() noexcept {
    if (preallocated && fd) util::release_preallocation(fd.get());
    preallocated = false;
  }
};

// Creates directory `rel` (and its parents) under the jail; 0 or errno.
int make_dirs(const util::dir_jail& jail, const std::string& rel) {
  std::string done;
  for (auto name : util::split_relative(rel)) {
    std::string leaf(name);
    util::unique_fd parent(jail.open(done, O_PATH | O_DIRECTORY));
    if (!parent) return -parent.release();
    if (::mkdirat(parent.get(), leaf.c_str(), 0777) != 0 && errno != EEXIST) return errno;
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

transfer_result file_client::get(const std::vector<std::string>& sources, const std::string& dest,
                                 const transfer_options& o) {
  transfer_result r;
  clock_guard timer{std::chrono::steady_clock::now(), r};
  const bool to_stdout = dest == "-";

  // Where things go locally: into an existing directory, or as a new name.
  std::string base = ".", new_name;
  if (!to_stdout) {
    struct stat st {};
    if (::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      base = dest;
    } else {
      if (sources.size() > 1) {
        throw client_error(failure::remote, dest + ": not a directory (several sources)", errc::not_found);
      }
      std::string d = dest;
      while (d.size() > 1 && d.back() == '/') d.pop_back();
      auto slash = d.rfind('/');
      base = slash == std::string::npos ? "." : (slash == 0 ? "/" : d.substr(0, slash));
      new_name = slash == std::string::npos ? d : d.substr(slash + 1);
      if (!util::check_name(new_name).empty()) {
        throw client_error(failure::remote, dest + ": not a usable local name", errc::bad_path);
      }
    }
  } else if (sources.size() != 1) {
    throw client_error(failure::remote, "'-' (stdout) takes exactly one remote file", errc::bad_request);
  }
  std::optional<util::dir_jail> jail;
  if (!to_stdout) {
    try {
      jail.emplace(base);
    } catch (const std::system_error& e) {
      throw client_error(failure::remote, "local destination " + base + ": " + e.code().message(), local_errc(e.code().value()));
    }
  }

  // The plan: directories, symlinks and files, every name checked.
  struct dir_item {
    std::string local;
    remote_entry entry;
  };
  std::vector<dir_item> dirs;
  std::vector<std::pair<std::string, remote_entry>> links;  // local path, entry
  std::vector<std::unique_ptr<get_file>> files;
  auto unsafe = [&](const std::string& shown, const std::string& why) {
    r.errors.push_back({shown, errc::bad_path, "refused a name from the server: '" + shown + "': " + why});
  };
  for (const auto& src_in : sources) {
    if (std::string why = util::check_relative_path(src_in); !why.empty()) {
      r.errors.push_back({src_in, errc::bad_path, "'" + src_in + "': " + why});
      continue;
    }
    const std::string src = util::normalize_relative(src_in);
    remote_entry top;
    try {
      top = stat(src);
    } catch (const client_error& e) {
      if (e.kind() != failure::remote && e.kind() != failure::permission) throw;
      r.errors.push_back({src, e.code().value_or(errc::io_error), e.what()});
      continue;
    }
    std::string local_root = new_name.empty() ? (src.empty() ? std::string() : base_name(src)) : new_name;
    if (top.type == "dir") {
      if (to_stdout || !o.recursive) {
        r.errors.push_back({src, errc::bad_request, "'" + src + "' is a directory" + (to_stdout ? "" : " (use -r)")});
        continue;
      }
      if (!local_root.empty()) dirs.push_back({local_root, top});
      std::vector<remote_entry> entries;
      try {
        entries = list(src, true);
      } catch (const client_error& e) {
        if (e.kind() != failure::remote && e.kind() != failure::permission) throw;
        r.errors.push_back({src, e.code().value_or(errc::io_error), e.what()});
        continue;
      }
      for (auto& e : entries) {
        const std::string shown = join(src, e.name);
        if (std::string why = util::check_relative_path(e.name); !why.empty() || util::normalize_relative(e.name).empty()) {
          unsafe(shown, why.empty() ? "an entry must name something below the directory, not '" + e.name + "'" : why);
          continue;
        }
        bool part_name = false;
        for (auto n : util::split_relative(e.name)) part_name |= util::is_part_file_name(n);
        if (part_name) {
          unsafe(shown, "reserved name");
          continue;
        }
        const std::string local = join(local_root, util::normalize_relative(e.name));
        if (e.type == "dir") {
          dirs.push_back({local, e});
        } else if (e.type == "symlink") {
          if (!util::symlink_target_inside(local, e.target)) {
            unsafe(shown, "the link's target '" + e.target + "' points outside the destination");
            continue;
          }
          links.emplace_back(local, e);
        } else if (e.type == "file") {
          auto g = std::make_unique<get_file>(o.sha256);
          g->remote = shown;
          g->local = local;
          g->entry = e;
          files.push_back(std::move(g));
        }
      }
    } else {
      auto g = std::make_unique<get_file>(o.sha256);
      g->remote = src;
      g->local = local_root;
      g->entry = top;
      if (!to_stdout && local_root.empty()) {
        r.errors.push_back({src, errc::bad_path, "no local name for '" + src + "'"});
        continue;
      }
      files.push_back(std::move(g));
    }
  }

  for (const auto& d : dirs) {
    if (int e = make_dirs(*jail, d.local)) {
      r.errors.push_back({d.local, local_errc(e), local_message(e, "mkdir " + d.local)});
    } else {
      ++r.dirs;
    }
  }
  for (const auto& [local, e] : links) {
    std::string leaf;
    util::unique_fd dir(jail->open_parent(local, leaf));
    if (!dir) {
      r.errors.push_back({local, local_errc(-dir.get()), local_message(-dir.get(), local)});
      continue;
    }
    const std::string tmp = util::part_file_name(leaf) + "." + util::random_hex64();
    if (::symlinkat(e.target.c_str(), dir.get(), tmp.c_str()) != 0 ||
        ::renameat2(dir.get(), tmp.c_str(), dir.get(), leaf.c_str(), o.no_clobber ? RENAME_NOREPLACE : 0) != 0) {
      const int err = errno;
      ::unlinkat(dir.get(), tmp.c_str(), 0);
      r.errors.push_back({local, local_errc(err), local_message(err, local)});
      continue;
    }
    ++r.symlinks;
  }
  // Now that every link exists, let the kernel follow each one, jailed: a
  // chain of links from the server must not lead outside the destination.
  for (const auto& [local, e] : links) {
    util::unique_fd probe(jail ? jail->open(local, O_PATH) : -ENOENT);
    if (probe || -probe.get() == ENOENT || -probe.get() == ELOOP) continue;
    std::string leaf;
    util::unique_fd dir(jail->open_parent(local, leaf));
    struct stat st {};
    if (dir && ::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
      ::unlinkat(dir.get(), leaf.c_str(), 0);
      --r.symlinks;
    }
    unsafe(local, "the link's target '" + e.target + "' leads outside the destination (through other links)");
  }

  transfer_progress prog;
  prog.files_total = files.size();
  for (const auto& f : files) prog.bytes_total += f->entry.size;
  auto report = [&] {
    if (o.on_progress) o.on_progress(prog);
  };

  // The directory of the last file prepared: a tree's files come directory
  // by directory, and share one descriptor instead of a jailed open and a
  // close each. (Only this process and the user's own programs can move a
  // local directory; the server only sends names.)
  std::string last_parent;
  shared_dir last_dir;
  auto open_dir = [&](get_file& g) -> bool {
    const auto slash = g.local.rfind('/');
    const std::string_view parent =
        slash == std::string::npos ? std::string_view() : std::string_view(g.local).substr(0, slash);
    if (!last_dir || parent != last_parent) {
      util::unique_fd d(jail->open_parent(g.local, g.leaf));
      if (!d) {
        const int e = -d.release();
        r.errors.push_back({g.local, local_errc(e), local_message(e, g.local)});
        return false;
      }
      last_dir = std::make_shared<const util::unique_fd>(std::move(d));
      last_parent.assign(parent);
    } else {
      g.leaf = g.local.substr(slash == std::string::npos ? 0 : slash + 1);
    }
    g.dir = last_dir;
    return true;
  };
  // Open each file's part just before requesting it. A file small enough
  // to arrive in one frame gets an unnamed file, linked into place once it
  // is verified: nothing to lock, rename or clean up, and nothing to
  // resume (it would be sent whole anyway). A larger one gets its named,
  // resumable part.
  auto prepare = [&](get_file& g) -> bool {
    if (to_stdout) return true;
    if (!open_dir(g)) return false;
    const int dir = g.dir->get();
    struct stat st {};
    if (o.no_clobber && ::fstatat(dir, g.leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      r.errors.push_back({g.local, errc::exists, g.local + ": already exists (--no-clobber)"});
      return false;
    }
    // New files get their final mode (less the umask) at once, so that
    // committing them needs no chmod; -p modes are set at commit.
    const mode_t create_mode = o.preserve ? 0600 : 0666;
    int fd = g.entry.size <= inline_max ? util::open_unnamed(dir, create_mode, g.part_st) : -EOPNOTSUPP;
    if (fd >= 0) {
      g.part.clear();
    } else if (fd == -EOPNOTSUPP) {
      g.part = util::part_file_name(g.leaf);
      fd = util::open_locked_part(dir, g.part, g.private_part, create_mode, &g.part_st);
    }
    if (fd < 0) {
      r.errors.push_back({g.local, local_errc(-fd), local_message(-fd, g.local)});
      return false;
    }
    g.fd.reset(fd);
    // Reserve the file's space before asking for its bytes: a disk that
    // cannot hold it is reported now, and nothing is sent. (get.begin
    // reserves again only if the server's size differs or the part was
    // truncated, which gave the blocks back.)
    const auto have = static_cast<std::uint64_t>(g.part_st.st_size);
    if (g.entry.size > inline_max && g.entry.size > have) {
      if (int e = util::preallocate(fd, have, g.entry.size - have)) {
        r.errors.push_back({g.local, local_errc(e), local_message(e, g.local)});
        if (have == 0 && !g.part.empty()) ::unlinkat(dir, g.part.c_str(), 0);  // empty: nothing to resume
        g.fd.reset();
        g.dir.reset();
        return false;
      }
      g.preallocated = true;
    }
    return true;
  };

  // Finished files wait, open, for one syncfs that covers them all.
  const std::uint64_t fd_limit = util::raise_fd_limit();
  const std::size_t commit_batch = static_cast<std::size_t>(
      std::clamp<std::uint64_t>(fd_limit > 288 ? (fd_limit - 256) / 2 : 16, 16, max_commit_batch));
  std::vector<local_commit> batch;
  std::map<std::uint64_t, get_file*> waiting;  // id -> file, in request order
  std::size_t next = 0;
  get_file* current = nullptr;  // the file whose get.data is arriving

  auto fail = [&](get_file& g, errc code, const std::string& msg, bool drop_part) {
    if (!g.failed) r.errors.push_back({to_stdout ? g.remote : g.local, code, msg});
    g.failed = true;
    if (drop_part && g.dir && !g.part.empty()) ::unlinkat(g.dir->get(), g.part.c_str(), 0);
    g.release();
  };
  auto write_data = [&](get_file& g, std::string_view data) {
    if (g.failed) return;
    int e = 0;
    if (to_stdout) {
      e = util::write_all(1, data.data(), data.size());
    } else {
      std::size_t off = 0;
      while (off < data.size()) {
        ssize_t w = ::pwrite(g.fd.get(), data.data() + off, data.size() - off, static_cast<off_t>(g.pos + off));
        if (w < 0) {
          if (errno == EINTR) continue;
          e = errno;
          break;
        }
        off += static_cast<std::size_t>(w);
      }
    }
    if (e) return fail(g, local_errc(e), local_message(e, to_stdout ? "writing to stdout" : g.local), false);
    g.digest.update(data.data(), data.size());
    constexpr std::uint64_t writeback_step = 16u << 20;
    if (o.fsync && !to_stdout && (g.pos + data.size()) / writeback_step != g.pos / writeback_step) {
      // Start writing back what is complete, so the final fsync has
      // little left to do: the disk works while the network does.
      const std::uint64_t end = (g.pos + data.size()) / writeback_step * writeback_step;
      ::sync_file_range(g.fd.get(), static_cast<off_t>(end - writeback_step), static_cast<off_t>(writeback_step),
                        SYNC_FILE_RANGE_WRITE);
    }
    g.pos += data.size();
    prog.bytes_done += data.size();
    report();
  };
  // Empties a part before the server's content is written from offset 0
  // (an earlier attempt may have left bytes in it); a new part is empty.
  auto truncate_part = [&](get_file& g) {
    if (to_stdout || g.part_st.st_size == 0) return;
    if (::ftruncate(g.fd.get(), 0) != 0) return fail(g, local_errc(errno), local_message(errno, g.local), false);
    g.part_st.st_size = 0;
    g.preallocated = false;  // truncating gave the reserved blocks back
  };
  auto finish = [&](get_file& g, const json& h) {
    ++prog.files_done;
    if (g.failed) return;
    const std::string want = h.value("xxh3", "");
    if (g.pos != h.value("size", g.pos) || want != g.digest.xxh3_hex() ||
        (o.sha256 && h.value("sha256", "") != g.digest.sha256_hex())) {
      return fail(g, errc::integrity,
                  (to_stdout ? g.remote : g.local) + ": content digest mismatch (server " + want + ", received " +
                      g.digest.xxh3_hex() + ")" + (to_stdout ? "" : "; the file was not committed"),
                  true);
    }
    r.bytes += g.pos;
    if (to_stdout) {
      ++r.files;
      return;
    }
    local_commit c;
    c.file = std::move(g.fd);
    c.dir = std::move(g.dir);
    c.part = g.part;
    c.leaf = g.leaf;
    c.shown = g.local;
    c.mode = o.preserve ? static_cast<mode_t>(g.entry.mode & 0777) : util::default_file_mode();
    c.chmod = (g.part_st.st_mode & 07777) != c.mode;
    if (o.preserve) c.mtime = h.value("mtime_ns", g.entry.mtime_ns);
    batch.push_back(std::move(c));
    if (batch.size() >= commit_batch) commit_all(batch, o.no_clobber, o.fsync, r, r.files);
  };

  // Requests go out in batches, queued and written together: refilling
  // the window one request per finished file cost a write per file.
  auto send_next = [&] {
    if (waiting.size() > window_gets / 2) return;
    while (next < files.size() && waiting.size() < window_gets) {
      get_file& g = *files[next++];
      if (!prepare(g)) {
        ++prog.files_done;
        continue;
      }
      json h = {{"type", "get"}, {"path", g.remote}};
      if (o.sha256) h["verify"] = "sha256";
      const struct stat& st = g.part_st;
      if (!to_stdout && st.st_size > 0 && static_cast<std::uint64_t>(st.st_size) <= g.entry.size) {
        // A part from an interrupted run: offer it; the server checks it.
        if (util::hash_file_range(g.fd.get(), 0, static_cast<std::uint64_t>(st.st_size), g.digest) == 0) {
          h["offset"] = static_cast<std::uint64_t>(st.st_size);
          h["xxh3"] = g.digest.xxh3_hex();
        } else {
          g.digest.reset();
        }
      }
      const auto id = c_.next_id();
      h["id"] = id;
      c_.queue(h);
      waiting[id] = &g;
    }
    c_.flush();
  };

  try {
    send_next();
    while (!waiting.empty()) {
      proto::frame f = c_.receive_streamed(
          [&](const json& h) {
            current = nullptr;
            if (h.value("type", "") != "get.data") return false;
            auto it = waiting.find(h.value("id", std::uint64_t{0}));
            if (it == waiting.end()) return false;
            current = it->second;
            return true;
          },
          [&](std::string_view part) {
            if (current) write_data(*current, part);
          });
      auto id = f.id();
      auto it = id ? waiting.find(*id) : waiting.end();
      if (it == waiting.end()) continue;
      get_file& g = *it->second;
      const auto type = f.type();
      if (type == "get.data") {
        if (!f.body.empty()) write_data(g, f.body);  // (a body that was not streamed)
        continue;
      }
      if (type == "get.begin") {
        const auto offset = f.header.value("offset", std::uint64_t{0});
        if (offset != g.digest.bytes() || offset == 0) {
          // The server did not take our part (or there was none): start over,
          // dropping whatever an earlier attempt left in the part file.
          g.digest.reset();
          truncate_part(g);
          g.pos = 0;
        } else {
          g.pos = offset;
          r.resumed_bytes += offset;
          prog.bytes_done += offset;
        }
        const std::uint64_t listed_size = g.entry.size;
        g.entry.size = f.header.value("size", g.entry.size);
        // Reserve the blocks still to come, unless the reservation made
        // before the request still covers them: a full disk is reported now,
        // not halfway, and writing into reserved blocks is cheaper.
        const bool still_reserved = g.preallocated && g.entry.size == listed_size;
        if (!to_stdout && !g.failed && g.entry.size > g.pos && !still_reserved) {
          if (int e = util::preallocate(g.fd.get(), g.pos, g.entry.size - g.pos)) {
            fail(g, local_errc(e), local_message(e, g.local), g.pos == 0);  // an empty part: nothing to resume
          } else {
            g.preallocated = true;
          }
        }
        continue;
      }
      waiting.erase(it);
      if (type == "get.file") {
        g.digest.reset();
        g.pos = 0;
        truncate_part(g);
        write_data(g, f.body);
        finish(g, f.header);
      } else if (type == "get.end") {
        finish(g, f.header);
      } else if (type == proto::type::error) {
        auto e = error_from_frame(f);
        ++prog.files_done;
        fail(g, e.code().value_or(errc::io_error), g.remote + ": " + f.header.value("message", e.what()),
             e.code() == errc::integrity);
        if (g.private_part && g.dir) ::unlinkat(g.dir->get(), g.part.c_str(), 0);
      }
      if (g.failed) g.fd.reset(), g.dir.reset();
      send_next();
    }
  } catch (...) {
    // The connection failed: the files already received and verified are
    // committed all the same (an unnamed one would otherwise be lost).
    commit_all(batch, o.no_clobber, o.fsync, r, r.files);
    throw;
  }
  commit_all(batch, o.no_clobber, o.fsync, r, r.files);

  if (o.preserve && !to_stdout) {
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
      util::unique_fd fd(jail->open(it->local, O_RDONLY | O_DIRECTORY | O_NOFOLLOW));
      if (!fd) continue;
      ::fchmod(fd.get(), static_cast<mode_t>(it->entry.mode & 0777));
      util::set_mtime_ns(fd.get(), it->entry.mtime_ns);
    }
  }
  return r;
}

}  // namespace cskit::client
