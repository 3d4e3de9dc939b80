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

#include "proto/listing.hpp"
#include "proto/messages.hpp"
#include "proto/utf8.hpp"
#include "util/delta.hpp"
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
constexpr std::size_t max_listing = 250000;           // entries: the server's limit for one listing

using detail::base_name;
using detail::clock_guard;
using detail::inline_max;
using detail::join;
using detail::local_errc;
using detail::local_message;

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
    if (f.type() == "put.progress" || f.type() == "put.basis") return;  // not the answer (delta: a late basis frame)
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
  e.xxh3 = j.value("xxh3", "");
  return e;
}

remote_entry file_client::stat(const std::string& path) {
  auto f = c_.request({{"type", "fs.stat"}, {"path", path}});
  return entry_from_json(f.header.at("entry"));
}

std::vector<std::string> file_client::digests(const std::vector<std::string>& paths) {
  // All the batches at once (the server answers them in order, one
  // hashing job after another), then their replies.
  constexpr std::size_t batch = 1000;  // the server's max_digest_paths
  std::vector<std::uint64_t> ids;
  for (std::size_t at = 0; at < paths.size(); at += batch) {
    const auto end = paths.begin() + static_cast<long>(std::min(paths.size(), at + batch));
    ids.push_back(c_.next_id());
    const json names(std::vector<std::string>(paths.begin() + static_cast<long>(at), end));
    c_.queue({{"type", "fs.digest"}, {"id", ids.back()}}, names.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  c_.flush();
  std::vector<std::string> out;
  out.reserve(paths.size());
  for (const auto id : ids) {
    for (;;) {
      proto::frame f = c_.receive();
      if (f.id() != id) continue;
      const std::size_t want = std::min(batch, paths.size() - out.size());
      if (f.type() == proto::type::error) {
        // (busy, or a server without fs.digest): no digests, so these
        // files count as changed and are sent; -c costs more, never wrong.
        out.insert(out.end(), want, std::string());
        break;
      }
      if (f.type() == "fs.digest.progress") continue;  // still hashing: the wait starts again
      const auto it = f.header.find("xxh3");
      if (it == f.header.end() || !it->is_array() || it->size() != want) {
        throw client_error(failure::protocol, "fs.digest.reply: not one digest per path");
      }
      for (const auto& d : *it) out.push_back(d.is_string() ? d.get<std::string>() : std::string());
      break;
    }
  }
  return out;
}

std::vector<remote_entry> file_client::list(const std::string& path, bool recursive, bool digests) {
  const auto id = c_.next_id();
  json h = {{"type", "fs.list"}, {"id", id}, {"path", path}, {"recursive", recursive}, {"packed", true}};
  if (digests) h["digests"] = true;
  c_.send(h);
  std::vector<remote_entry> out;
  last_list_skipped_ = 0;
  for (;;) {
    proto::frame f = c_.receive();
    if (f.id() != id) continue;
    if (f.type() == proto::type::error) throw error_from_frame(f);
    if (f.type() == "fs.list.progress") continue;  // still hashing: the wait starts again
    last_list_skipped_ = std::max(last_list_skipped_, f.header.value("skipped", std::uint64_t{0}));
    json arr;
    if (f.header.value("packed", false)) {
      auto unpacked = proto::unpack_entries(f.body, proto::max_packed_entries);
      if (!unpacked) throw client_error(failure::protocol, "fs.list.reply: a malformed packed listing");
      arr = std::move(*unpacked);
    } else {
      arr = json::parse(f.body, nullptr, false);
      if (!arr.is_array()) throw client_error(failure::protocol, "fs.list.reply: the body is not a JSON array");
    }
    for (auto& e : arr) out.push_back(entry_from_json(e));
    if (out.size() > max_listing) {
      throw client_error(failure::protocol, "fs.list: more entries than a server sends for one listing");
    }
    if (f.header.value("done", true)) break;
  }
  return out;
}

void file_client::keep_alive() { c_.keep_alive(); }

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

// Sends `n` bytes of `fd` from `pos` as the body of `header`, adding them
// to `digest`: read once and digested in memory when TLS copies them
// through user space anyway, else digested from the page cache and sent
// with sendfile. False if the file could not be read.
bool send_and_digest(connection& c, const json& header, int fd, std::uint64_t pos, std::size_t n,
                     util::content_digest& digest) {
  if (c.encrypts_in_user_space()) {
    const std::size_t sent =
        c.send_file(header, fd, pos, n, [&](std::string_view bytes) { digest.update(bytes.data(), bytes.size()); });
    return sent == n;
  }
  if (util::hash_file_range(fd, pos, n, digest) != 0) return false;
  c.send_file(header, fd, pos, n);
  return true;
}

// Sends a planned put (client/upload_plan.cpp decides what goes where),
// pipelined: directories, links and small files (one frame each) go
// without waiting for their answers; a large file waits for put.ready
// (which says where to resume) and then streams.
class upload {
 public:
  upload(connection& c, const transfer_options& o, const put_plan& plan, transfer_result& r)
      : c_(c), o_(o), plan_(plan), r_(r), pipe_(c, r), frame_max_(frame_max(c.rate_limit())) {}

  void run() {
    count_totals();
    std::size_t since_poll = 0;
    for (const auto& it : plan_.items) {
      while (pipe_.size() >= window_requests || pipe_.bytes() >= window_bytes) pipe_.wait_one();
      // Replies are collected every few items, not before each one: a
      // non-blocking read per small file was a system call per file.
      if (++since_poll >= 32) {
        since_poll = 0;
        pipe_.poll();
      }
      if (!send(it)) break;
    }
    pipe_.drain();
    finish_tree();
    // --delete only after a transfer without errors (as rsync): a source
    // that could not be read in full must not empty the destination.
    if (!plan_.deletions.empty() && r_.errors.empty()) delete_extraneous();
    retouch();
    if (o_.preserve) restore_directory_attributes();
  }

 private:
  void count_totals() {
    for (const auto& it : plan_.items) {
      if (it.what == put_item::file) prog_.bytes_total += static_cast<std::uint64_t>(it.st.st_size);
      if (it.what == put_item::file || it.what == put_item::stream) ++prog_.files_total;
    }
  }

  // False: nothing more may be sent (the top of a new tree was refused).
  bool send(const put_item& it) {
    switch (it.what) {
      case put_item::dir:
        if (!plan_.new_tree.empty() && it.remote == plan_.dest) return make_tree_top(it);
        send_dir(it);
        return true;
      case put_item::symlink: send_symlink(it); return true;
      case put_item::stream:
        prog_.current = "(stdin)";
        send_stream(it);
        return true;
      case put_item::file:
        prog_.current = it.local;
        send_file(it);
        return true;
    }
    return true;
  }

  bool make_tree_top(const put_item& it) {
    // The top of a copy under a new name: its mark must be in place (the
    // server refuses a directory another copy, or anyone, made meanwhile)
    // before anything is sent into it.
    const auto id = c_.next_id();
    c_.send({{"type", "fs.mkdir"}, {"id", id}, {"path", plan_.dest}, {"parents", true}, {"tree_of", plan_.new_tree},
             {"mode", new_dir_mode(&it)}});
    if (!pipe_.wait_for(id, plan_.dest)) return false;
    ++r_.dirs;
    return true;
  }

  // A new directory gets the source's permission bits (less the server's
  // umask), as cp and scp give them; the owner can always fill it (-p
  // sets the exact bits once it is full).
  static unsigned new_dir_mode(const put_item* it) {
    return it && !it->container ? (it->st.st_mode & 0777) | 0700 : 0777;
  }

  void send_dir(const put_item& it) {
    const auto id = c_.next_id();
    c_.send({{"type", "fs.mkdir"}, {"id", id}, {"path", it.remote}, {"parents", true}, {"mode", new_dir_mode(&it)}});
    pipe_.track(id, it.remote, [this](proto::frame& f) {
      if (f.type() == "fs.ok") ++r_.dirs;
    });
  }

  void send_symlink(const put_item& it) {
    const auto id = c_.next_id();
    c_.send({{"type", "fs.symlink"}, {"id", id}, {"path", it.remote}, {"target", it.target}});
    pipe_.track(id, it.remote, [this](proto::frame& f) {
      if (f.type() == "fs.ok") ++r_.symlinks;
    });
  }

  // stdin: size unknown, so no resume; digested and committed like a file.
  void send_stream(const put_item& it) {
    const auto id = c_.next_id();
    json h = base_put(it);
    h["id"] = id;
    c_.send(h);
    if (!pipe_.wait_for(id, it.remote)) {
      ++prog_.files_done;
      return;
    }
    util::content_digest digest(o_.sha256);
    std::string buf(1u << 20, '\0');
    pipe_.track(id, it.remote, file_done());  // errors while streaming arrive with this id
    while (pipe_.pending(id)) {  // until the server refuses the rest (quota, disk full, ...)
      const long n = util::read_full(0, buf.data(), buf.size());
      if (n < 0) {
        r_.errors.push_back({"-", local_errc(static_cast<int>(-n)), local_message(static_cast<int>(-n), "reading stdin"), true});
        abandon(id);
        return;
      }
      if (n == 0) return send_end(id, digest);
      digest.update(buf.data(), static_cast<std::size_t>(n));
      c_.send({{"type", "put.data"}, {"id", id}}, std::string_view(buf.data(), static_cast<std::size_t>(n)));
      prog_.bytes_done += static_cast<std::uint64_t>(n);
      report();
      pipe_.poll();
    }
    forget_upload(id);  // the server refused the rest, and said why
  }

  void send_file(const put_item& it) {
    util::unique_fd fd(::open(it.local.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      r_.errors.push_back({it.local, local_errc(errno), local_message(errno, it.local), true});
      ++prog_.files_done;
      return;
    }
    struct stat st {};
    ::fstat(fd.get(), &st);
    json h = base_put(it);
    if (o_.preserve) h["mtime_ns"] = util::mtime_ns(st), h["mode"] = st.st_mode & 0777;
    else h["source_mode"] = st.st_mode & 0777;
    if (static_cast<std::uint64_t>(st.st_size) <= std::min<std::uint64_t>(inline_max, frame_max_)) {
      return send_inline(it, fd.get(), std::move(h), st);
    }
    send_streamed(it, fd.get(), std::move(h), st);
  }

  // The whole file in the request, queued with other small files.
  void send_inline(const put_item& it, int fd, json h, const struct stat& st) {
    const auto size = static_cast<std::uint64_t>(st.st_size);
    std::string body(static_cast<std::size_t>(size) + 1, '\0');
    const long n = util::read_full(fd, body.data(), body.size(), 0);
    if (n < 0 || static_cast<std::uint64_t>(n) != size) {
      r_.errors.push_back({it.local, errc::changed, it.local + ": changed or vanished while it was being read"});
      ++prog_.files_done;
      return;
    }
    body.resize(static_cast<std::size_t>(size));
    util::content_digest digest(o_.sha256);
    digest.update(body.data(), body.size());
    const auto id = c_.next_id();
    h["id"] = id;
    h["inline"] = true;
    h["size"] = size;
    h["xxh3"] = digest.xxh3_hex();
    if (o_.sha256) h["sha256"] = digest.sha256_hex();
    c_.queue(h, body);  // small files leave together (flushed at 256 KiB or on the next wait)
    prog_.bytes_done += size;
    pipe_.track(id, it.remote, file_done(), body.size());
  }

  // put, put.ready (where to resume; with delta, whether the server has
  // an old copy), the content (sent, or with delta copied from the old
  // copy where it is the same), put.end.
  void send_streamed(const put_item& it, int fd, json h, const struct stat& st) {
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const auto id = c_.next_id();
    h["id"] = id;
    h["size"] = size;
    h["resume"] = true;
    if (o_.delta) h["delta"] = true;
    c_.send(h);
    auto ready = pipe_.wait_for(id, it.remote);
    if (!ready) {
      ++prog_.files_done;
      return;
    }
    util::content_digest digest(o_.sha256);
    const std::uint64_t pos = resume_point(fd, size, *ready, digest);
    if (ready->header.contains("basis") && ready->header["basis"].is_object()) {
      return send_delta(it, fd, id, *ready, st, pos);
    }
    pipe_.track(id, it.remote, file_done());  // errors while streaming arrive with this id
    bool first = true;
    for (std::uint64_t at = pos; at < size || first;) {
      if (!pipe_.pending(id)) return forget_upload(id);  // the server gave up (disk full, quota, ...): it said why
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(frame_max_, size - at));
      json d = {{"type", "put.data"}, {"id", id}};
      if (first) d["offset"] = at;
      first = false;
      if (n > 0 && !send_and_digest(c_, d, fd, at, n, digest)) return changed(it, id);
      if (n == 0) c_.send(d);
      at += n;
      prog_.bytes_done += n;
      report();
      pipe_.poll();
    }
    finish_file(it, id, fd, st, digest);
  }

  // put.end, unless the file changed while it was sent.
  void finish_file(const put_item& it, std::uint64_t id, int fd, const struct stat& st,
                   const util::content_digest& digest) {
    struct stat after {};
    if (::fstat(fd, &after) != 0 || after.st_size != st.st_size || after.st_mtim.tv_sec != st.st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
      return changed(it, id);
    }
    send_end(id, digest);
  }

  // ---- delta: the server has an old copy (its *basis*)

  // Our file is read once: cut into chunks (util/delta.hpp), digested, and
  // compared with the basis's groups as they come (put.basis). What both
  // have, in order, is sent as put.copy at once, so the server rebuilds
  // while both still read; the rest waits for the whole basis, whose
  // differing groups' chunks are then asked for (put.chunks).
  struct delta_run {
    const put_item* it;
    std::uint64_t id, size, resume_at;
    int fd;
    std::uint64_t basis_size;
    std::vector<util::delta::chunk> ours;
    std::vector<util::delta::group> our_groups;
    util::delta::grouper grouper;
    std::vector<util::delta::group> theirs;
    util::delta::basis_index their_index;
    bool theirs_done = false;
    bool theirs_unusable = false;  // not readable, or records that do not add up: the rest goes literal
    std::size_t next = 0;      // our first group not yet described by steps
    std::uint64_t out = 0;     // bytes of the file the steps so far describe
    std::uint64_t matched = 0;
    bool failed = false;  // the server refused (recorded), or our file changed
  };

  void send_delta(const put_item& it, int fd, std::uint64_t id, const proto::frame& ready, const struct stat& st,
                  std::uint64_t pos) {
    namespace d = util::delta;
    const auto size = static_cast<std::uint64_t>(st.st_size);
    const json& basis = ready.header["basis"];
    auto number = [&](const char* key) {
      const auto v = basis.find(key);
      return v != basis.end() && v->is_number_unsigned() ? v->get<std::uint64_t>() : 0;
    };
    delta_run run{&it, id, size, pos, fd, number("size"), {}, {}, {}, {}, {}};
    // Records about a basis no honest server would describe (another chunk
    // size, more than 2^20 smallest chunks) are not kept: the file goes whole.
    const d::params params = d::params_for(size);
    if (number("chunk_avg") != params.avg || run.basis_size / params.min > detail::max_delta_chunks) {
      run.theirs_unusable = true;
    }
    c_.send({{"type", "put.data"}, {"id", id}, {"offset", pos}});  // where the steps start
    util::content_digest whole(o_.sha256);
    d::reading r;
    r.observe = [&](std::string_view bytes) { whole.update(bytes.data(), bytes.size()); };
    r.progress = [&](bool done) {
      if (done) {
        run.grouper.finish(run.ours, run.our_groups);
      } else {
        run.grouper.add(run.ours, run.our_groups);
      }
      take_frames(run, false);
      send_matched(run);
      return !run.failed;
    };
    if (!d::chunk_file(fd, size, params, run.ours, r)) {
      if (!run.failed) changed_in_delta(run);
      return;
    }
    while (!run.theirs_done && !run.failed) take_frames(run, true);  // (all of it, even unusable)
    if (!run.failed) send_matched(run);
    if (!run.failed) send_the_rest(run);
    if (run.failed) return;
    pipe_.track(id, it.remote, file_done(run.matched));
    finish_file(it, id, fd, st, whole);
  }

  // Frames for this upload (put.basis, put.progress, an error); others go
  // to the pipeline. `wait`: until one of ours has come.
  void take_frames(delta_run& run, bool wait) {
    for (;;) {
      auto f = wait ? std::optional<proto::frame>(c_.receive()) : c_.try_receive();
      if (!f) return;
      if (f->id() != run.id) {
        pipe_.handle(*f);
        continue;
      }
      if (f->type() == proto::type::error) {
        auto e = error_from_frame(*f);
        r_.errors.push_back({run.it->remote, e.code().value_or(errc::io_error), f->header.value("message", e.what())});
        ++prog_.files_done;
        run.failed = true;
        forget_upload(run.id);
        return;
      }
      if (f->type() == "put.basis") take_groups(run, *f);
      if (wait) return;
    }
  }

  void take_groups(delta_run& run, const proto::frame& f) {
    const bool last = f.header.value("done", false);
    const std::size_t had = run.theirs.size();
    run.theirs_done = last;
    if (run.theirs_unusable || f.header.value("failed", false) ||
        !util::delta::decode_more_groups(f.body, run.basis_size, last, run.theirs) ||
        run.theirs.size() > detail::max_delta_chunks + 1) {
      run.theirs_unusable = true;  // what was copied stands (the digest will tell); the rest goes whole
      return;
    }
    for (std::size_t i = had; i < run.theirs.size(); ++i) {
      run.their_index.add(run.theirs[i].hash, run.theirs[i].bytes, run.theirs[i].offset);
    }
  }

  // Our next groups, as long as the basis has each.
  void send_matched(delta_run& run) {
    while (!run.failed && !run.theirs_unusable && run.next < run.our_groups.size()) {
      const auto& g = run.our_groups[run.next];
      const auto at = run.their_index.find(g.hash, g.bytes);
      if (!at) return;
      send_step(run, {util::delta::op::copy, *at, g.bytes});
      ++run.next;
    }
  }

  // Our groups the basis has no copy of: chunk by chunk, against the
  // chunks of the basis's groups that we have no copy of.
  void send_the_rest(delta_run& run) {
    namespace d = util::delta;
    std::vector<d::chunk> their_chunks;
    if (!run.theirs_unusable) {
      const auto wanted = d::unmatched_groups(run.our_groups, run.theirs);
      if (!wanted.empty() && run.next < run.our_groups.size()) {
        c_.send({{"type", "put.chunks"}, {"id", run.id}}, d::encode_indices(wanted));
        auto reply = pipe_.wait_for(run.id, run.it->remote);
        while (reply && reply->type() == "put.progress") reply = pipe_.wait_for(run.id, run.it->remote);
        if (!reply) {
          ++prog_.files_done;
          run.failed = true;
          forget_upload(run.id);
          return;
        }
        if (auto decoded = d::decode_chunks(reply->body, run.theirs, wanted)) their_chunks = std::move(*decoded);
      }
    }
    const std::vector<d::group> rest(run.our_groups.begin() + static_cast<long>(run.next), run.our_groups.end());
    const std::vector<d::group> none;
    for (const auto& step : d::plan_ops(run.ours, rest, run.theirs_unusable ? none : run.theirs, their_chunks)) {
      if (run.failed) return;
      send_step(run, step);
    }
  }

  // One step, in frames: put.copy (at most a frame's worth each, the
  // server copies it in one go) or put.data from our file. What the part
  // already has (a resume) is skipped.
  void send_step(delta_run& run, util::delta::op step) {
    const std::uint64_t end = run.out + step.length;
    if (end <= run.resume_at) {
      run.out = end;
      return;
    }
    if (run.out < run.resume_at) {
      step.from += run.resume_at - run.out;
      step.length -= run.resume_at - run.out;
      run.out = run.resume_at;
    }
    const bool copy = step.what == util::delta::op::copy;
    for (std::uint64_t done = 0; done < step.length && !run.failed;) {
      const auto n = static_cast<std::size_t>(
          std::min<std::uint64_t>(copy ? chunk : frame_max_, step.length - done));
      if (copy) {
        c_.send({{"type", "put.copy"}, {"id", run.id}, {"from", step.from + done}, {"size", n}});
        run.matched += n;
      } else if (c_.send_file({{"type", "put.data"}, {"id", run.id}}, run.fd, step.from + done, n) != n) {
        return changed_in_delta(run);
      }
      done += n;
      run.out += n;
      prog_.bytes_done += n;
      report();
      take_frames(run, false);
    }
  }

  // The server refused an upload (and said why): it lets go of it, its
  // part kept for a resume, instead of holding it until the connection ends.
  void forget_upload(std::uint64_t id) { c_.send({{"type", "put.abort"}, {"id", id}, {"discard", false}}); }

  void changed_in_delta(delta_run& run) {
    run.failed = true;
    r_.errors.push_back({run.it->local, errc::changed, run.it->local + ": changed or vanished while it was being sent"});
    c_.send({{"type", "put.abort"}, {"id", run.id}, {"discard", true}});
    ++prog_.files_done;
  }

  // Where the server's part lets this file resume: only if the part is a
  // prefix of the file (its digest says so); 0 otherwise.
  std::uint64_t resume_point(int fd, std::uint64_t size, const proto::frame& ready, util::content_digest& digest) {
    const std::uint64_t pos = ready.header.value("offset", std::uint64_t{0});
    if (pos == 0 || pos > size) return 0;
    if (util::hash_file_range(fd, 0, pos, digest) != 0 || digest.xxh3_hex() != ready.header.value("xxh3", "")) {
      digest.reset();
      return 0;
    }
    r_.resumed_bytes += pos;
    prog_.bytes_done += pos;
    prog_.resumed_bytes += pos;
    return pos;
  }

  // Our side failed: the source shrank or changed while being sent.
  void changed(const put_item& it, std::uint64_t id) {
    if (!pipe_.pending(id)) return forget_upload(id);  // the server had already given up, and said why
    r_.errors.push_back({it.local, errc::changed, it.local + ": changed or vanished while it was being sent"});
    abandon(id);
  }

  void abandon(std::uint64_t id) {
    c_.send({{"type", "put.abort"}, {"id", id}, {"discard", true}});
    pipe_.forget(id);
    ++prog_.files_done;
  }

  void send_end(std::uint64_t id, const util::content_digest& digest) {
    json end = {{"type", "put.end"}, {"id", id}, {"xxh3", digest.xxh3_hex()}};
    if (o_.sha256) end["sha256"] = digest.sha256_hex();
    c_.send(end);
  }

  json base_put(const put_item& it) const {
    json h = {{"type", "put"}, {"path", it.remote}};
    if (o_.no_clobber) h["no_clobber"] = true;
    if (o_.sha256) h["verify"] = "sha256";
    if (it.what == put_item::stream) return h;
    if (o_.preserve) {
      h["mode"] = it.st.st_mode & 0777;
      h["mtime_ns"] = util::mtime_ns(it.st);
    } else {
      h["source_mode"] = it.st.st_mode & 0777;  // a new file gets it less the server's umask
    }
    return h;
  }

  // The reply handler of an upload (put.done, or its error).
  // `matched`: bytes the server copied from its old copy (delta).
  pipeline::on_reply file_done(std::uint64_t matched = 0) {
    return [this, matched](proto::frame& f) {
      ++prog_.files_done;
      if (f.type() == "put.done") {
        ++r_.files;
        r_.bytes += f.header.value("size", std::uint64_t{0});
        r_.matched_bytes += matched;
      }
      report();
    };
  }

  void report() {
    if (o_.on_progress) o_.on_progress(prog_);
  }

  void finish_tree() {
    if (plan_.new_tree.empty() || !r_.errors.empty()) return;
    // Complete: the mark goes (before -p sets the directories' times).
    const auto id = c_.next_id();
    c_.send({{"type", "fs.setattr"}, {"id", id}, {"path", plan_.dest}, {"copy_finished", true}});
    pipe_.track(id, plan_.dest, nullptr);
    pipe_.drain();
  }

  // -c -p: what was already there with the same content gets the
  // source's time and permission bits.
  void retouch() {
    for (const auto& it : plan_.retouch) {
      const auto id = c_.next_id();
      c_.send({{"type", "fs.setattr"}, {"id", id}, {"path", it.remote}, {"mode", it.st.st_mode & 0777},
               {"mtime_ns", util::mtime_ns(it.st)}});
      pipe_.track(id, it.remote, nullptr);
      while (pipe_.size() >= window_requests) pipe_.wait_one();
    }
    pipe_.drain();
  }

  void delete_extraneous() {
    for (const auto& path : plan_.deletions) {
      const auto id = c_.next_id();
      c_.send({{"type", "fs.rm"}, {"id", id}, {"path", path}, {"recursive", true}});
      pipe_.track(id, path, [this](proto::frame& f) {
        if (f.type() == "fs.ok") r_.deleted += f.header.value("removed", std::uint64_t{0});
      });
      while (pipe_.size() >= window_requests) pipe_.wait_one();
    }
    pipe_.drain();
  }

  void restore_directory_attributes() {
    // Directory times last: creating files inside changes them.
    for (auto it = plan_.items.rbegin(); it != plan_.items.rend(); ++it) {
      if (it->what != put_item::dir || it->container) continue;
      const auto id = c_.next_id();
      c_.send({{"type", "fs.setattr"}, {"id", id}, {"path", it->remote}, {"mode", it->st.st_mode & 0777},
               {"mtime_ns", util::mtime_ns(it->st)}});
      pipe_.track(id, it->remote, nullptr);
      while (pipe_.size() >= window_requests) pipe_.wait_one();
    }
    pipe_.drain();
  }

  // Bytes per put.data frame: under --bwlimit, what the rate sends in about
  // 4 s (the server allows a frame 30 s to arrive), else `chunk`.
  static std::size_t frame_max(std::uint64_t rate) {
    return rate ? static_cast<std::size_t>(std::clamp<std::uint64_t>(rate * 4, 16 * 1024, chunk)) : chunk;
  }

  connection& c_;
  const transfer_options& o_;
  const put_plan& plan_;
  transfer_result& r_;
  pipeline pipe_;
  std::size_t frame_max_;
  transfer_progress prog_;
};

}  // namespace

namespace {

// What the server holds at and below `tops`.
remote_tree remote_tree_at(file_client& fc, const std::vector<std::string>& tops) {
  // One stat per top, one listing per directory: the replies of a listing
  // stream in bulk, whatever the number of files.
  remote_tree there;
  for (const auto& top : tops) {
    auto e = fc.stat_if_exists(top);
    if (!e) continue;
    if (e->type == "dir") {
      for (auto& x : fc.list(top, true, false)) {
        std::string path = join(top, x.name);
        there.insert_or_assign(std::move(path), std::move(x));
      }
    }
    there.insert_or_assign(top, std::move(*e));
  }
  return there;
}

}  // namespace

transfer_result file_client::put(const std::vector<std::string>& sources, const std::string& dest,
                                 const transfer_options& o) {
  transfer_result r;
  clock_guard timer{std::chrono::steady_clock::now(), r};
  put_plan plan = plan_put(sources, dest, o, r, [this](const std::string& path) { return stat_if_exists(path); });
  remote_tree there;
  if (o.skip_unchanged || o.checksum || o.dry_run || o.delete_extraneous) {
    there = remote_tree_at(*this, plan.tops);
  }
  if (o.checksum) {
    // Only a file of the same size can be the same: only those are hashed.
    const auto paths = digest_candidates(plan, there);
    const auto sums = digests(paths);
    for (std::size_t i = 0; i < paths.size(); ++i) there.at(paths[i]).xxh3 = sums[i];
  }
  if (o.delete_extraneous) plan_deletions(plan, there, o.filter);
  if (o.skip_unchanged || o.checksum) drop_unchanged(plan, there, o, r, [this] { c_.keep_alive(); });
  if (!r.errors.empty()) plan.deletions.clear();  // never after errors: not in a dry run's list either
  if (o.dry_run) {
    r.planned = planned_steps(plan, there);
    return r;
  }
  upload(c_, o, plan, r).run();
  return r;
}

std::optional<remote_entry> file_client::stat_if_exists(const std::string& path) {
  try {
    return stat(path);
  } catch (const client_error& e) {
    if (e.code() != errc::not_found) throw;
    return std::nullopt;
  }
}


transfer_result file_client::get(const std::vector<std::string>& sources, const std::string& dest,
                                 const transfer_options& o) {
  return download(&c_, *this, o).run(sources, dest);
}

}  // namespace cskit::client
