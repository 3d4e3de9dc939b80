#include "client/files.hpp"

#include "client/download.hpp"
#include "client/files_detail.hpp"
#include "client/upload_plan.hpp"

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
#include "util/tree_walk.hpp"

namespace cskit::client {

using proto::errc;
using proto::json;

namespace {

constexpr std::size_t chunk = 4u << 20;           // bytes per put.data frame
constexpr std::size_t window_requests = 1024;     // unanswered requests in flight
constexpr std::size_t window_bytes = 32u << 20;   // inline bytes in flight

using detail::base_name;
using detail::clock_guard;
using detail::inline_max;
using detail::join;
using detail::local_errc;
using detail::local_message;

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

}  // namespace

namespace detail {

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

}  // namespace detail

remote_entry entry_from_json(const json& j) {
  remote_entry e;
  e.name = j.value("name", "");
  e.type = j.value("type", "other");
  e.size = j.value("size", std::uint64_t{0});
  e.mode = j.value("mode", 0u);
  e.mtime_ns = j.value("mtime_ns", std::int64_t{0});
  e.target = j.value("target", "");
  e.unfinished_copy_of = j.value("unfinished_copy_of", "");
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
// What to send where is decided by plan_put (client/upload_plan.cpp); this
// sends it, pipelined.

transfer_result file_client::put(const std::vector<std::string>& sources, const std::string& dest_in,
                                 const transfer_options& o) {
  transfer_result r;
  clock_guard timer{std::chrono::steady_clock::now(), r};
  const put_plan plan = plan_put(sources, dest_in, o, r, [this](const std::string& path) -> std::optional<remote_entry> {
    try {
      return stat(path);
    } catch (const client_error& e) {
      if (e.code() != errc::not_found) throw;
      return std::nullopt;
    }
  });
  const std::vector<put_item>& items = plan.items;
  const std::string& dest = plan.dest;
  const std::string& new_tree = plan.new_tree;

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
    if (it.what == put_item::stream) return h;
    if (o.preserve) {
      h["mode"] = it.st.st_mode & 0777;
      h["mtime_ns"] = mtime_of(it.st);
    } else {
      h["source_mode"] = it.st.st_mode & 0777;  // a new file gets it less the server's umask
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
    if (it.what == put_item::dir && !new_tree.empty() && it.remote == dest) {
      // The top of a copy under a new name: its mark must be in place (the
      // server refuses a directory another copy, or anyone, made meanwhile)
      // before anything is sent into it.
      const auto id = c_.next_id();
      c_.send({{"type", "fs.mkdir"}, {"id", id}, {"path", dest}, {"parents", true}, {"tree_of", new_tree}});
      if (!pipe.wait_for(id, dest)) break;
      ++r.dirs;
      continue;
    }
    if (it.what == put_item::dir) {
      const auto id = c_.next_id();
      json mkdir = {{"type", "fs.mkdir"}, {"id", id}, {"path", it.remote}, {"parents", true}};
      c_.send(mkdir);
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
    prog.current = it.what == put_item::stream ? "(stdin)" : it.local;
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
    else h["source_mode"] = st.st_mode & 0777;
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
        prog.resumed_bytes += pos;
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
  if (!new_tree.empty() && r.errors.empty()) {
    // Complete: the mark goes (before -p sets the directories' times).
    const auto id = c_.next_id();
    c_.send({{"type", "fs.setattr"}, {"id", id}, {"path", dest}, {"copy_finished", true}});
    pipe.track(id, dest, nullptr);
    pipe.drain();
  }

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

transfer_result file_client::get(const std::vector<std::string>& sources, const std::string& dest,
                                 const transfer_options& o) {
  return download(c_, *this, o).run(sources, dest);
}

}  // namespace cskit::client
