#include "service/files.hpp"

#include <unordered_map>
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <spdlog/spdlog.h>

#include "net/connection.hpp"
#include "proto/listing.hpp"
#include "proto/utf8.hpp"
#include "service/audit.hpp"
#include "util/delta.hpp"
#include "util/tree_walk.hpp"

namespace cskit::service {

using proto::errc;
using proto::json;

namespace {

// Flow control of a download: stop queueing data above `high`, resume below `low`.
constexpr std::size_t download_high = 16u << 20;
constexpr std::size_t download_low = 8u << 20;
// TLS in user space: a download is read, digested and encrypted a piece at
// a time, and what waits for the socket is ciphertext in memory, so less
// is let wait.
constexpr std::size_t tls_piece = 256u << 10;
constexpr std::size_t tls_download_high = 1u << 20;
constexpr std::size_t tls_download_low = 512u << 10;
// Requests waiting behind a download or a commit, per connection.
constexpr std::size_t max_queued_requests = 8192;
constexpr std::size_t max_queued_request_bytes = 64u << 20;
constexpr std::size_t max_uploads_per_connection = 64;
constexpr std::uint64_t writeback_step = 16u << 20;  // a large upload's data is written back in steps this large
constexpr std::size_t max_list_entries = 250000;
constexpr std::size_t list_chunk = proto::max_packed_entries;
// A put's basis (delta) is offered only when its chunk list is bounded:
// at most this many chunks of the smallest size (24 bytes each in memory,
// 12 in the reply), and for one upload per connection at a time.
constexpr std::uint64_t max_basis_chunks = 1u << 20;
// put.copy steps are carried out this much at a time between other work
// on the event loop (a 40-byte frame can ask for 4 MiB of disk work). At
// most this much waits (in at most this many steps): past it, each new
// step is carried out as it comes, like a put.data frame's write, which
// paces the client; whatever waits is done before the upload's next data
// or its end.
constexpr std::uint64_t copy_slice = 4u << 20;
constexpr std::uint64_t max_pending_copy_bytes = 16u << 20;
constexpr std::size_t max_pending_copies = 4096;

std::string part_name_for(std::string_view leaf) { return util::part_file_name(leaf); }
bool is_part_name(std::string_view name) { return util::is_part_file_name(name); }

// `rel` below the share-relative directory `dir`.
std::string under(const std::string& dir, const std::string& rel) { return dir.empty() ? rel : dir + "/" + rel; }

// A path for a message: a very long one keeps its two ends.
std::string elided(const std::string& p) {
  constexpr std::size_t keep = 120;
  if (p.size() <= 2 * keep + 3) return p;
  auto continuation = [&](std::size_t i) { return (static_cast<unsigned char>(p[i]) & 0xC0) == 0x80; };
  std::size_t head = keep, tail = p.size() - keep;  // cut between whole UTF-8 characters
  while (head > 0 && continuation(head)) --head;
  while (tail < p.size() && continuation(tail)) ++tail;
  return p.substr(0, head) + "..." + p.substr(tail);
}


const char* type_name(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "symlink";
  return "other";
}

std::string read_link(int dirfd, const char* name) {
  char buf[util::max_remote_path + 1];
  ssize_t n = ::readlinkat(dirfd, name, buf, sizeof buf - 1);
  if (n < 0) return {};
  return std::string(buf, static_cast<std::size_t>(n));
}

json entry_json(std::string name, const struct stat& st, int dirfd, const char* leaf) {
  json e = {{"name", std::move(name)},
            {"type", type_name(st.st_mode)},
            {"size", S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0},
            {"mode", st.st_mode & 07777},
            {"mtime_ns", util::mtime_ns(st)}};
  if (S_ISLNK(st.st_mode)) {
    std::string t = read_link(dirfd, leaf);
    e["target"] = proto::is_valid_utf8(t) ? t : std::string();
  }
  return e;
}


template <class T>
std::optional<T> opt_number(const json& h, const char* key) {
  auto it = h.find(key);
  if (it == h.end() || it->is_null()) return std::nullopt;
  if constexpr (std::is_signed_v<T>) {
    if (!it->is_number_integer()) throw json::type_error::create(302, std::string(key) + " must be an integer", &*it);
  } else {
    if (!it->is_number_unsigned()) {
      throw json::type_error::create(302, std::string(key) + " must be a non-negative integer", &*it);
    }
  }
  return it->get<T>();
}

// The request's "verify": absent or "xxh3" (the XXH3-128 digest is always
// checked), or "sha256" to add SHA-256. False for anything else.
bool wants_sha256(const json& h, bool& sha) {
  auto it = h.find("verify");
  if (it == h.end() || it->is_null()) return true;
  if (!it->is_string()) return false;
  const auto& v = it->get_ref<const std::string&>();
  sha = v == "sha256";
  return sha || v == "xxh3";
}

}  // namespace

proto::errc errc_for_errno(int err) noexcept {
  switch (err) {
    case ENOENT: return errc::not_found;
    case EXDEV:
    case ELOOP:
    case ENAMETOOLONG: return errc::bad_path;
    case EEXIST:
    case ENOTEMPTY: return errc::exists;
    case ENOSPC:
    case EDQUOT: return errc::no_space;
    case EACCES:
    case EPERM:
    case EROFS: return errc::permission_denied;
    case EFBIG: return errc::too_large;
    default: return errc::io_error;
  }
}

std::string errno_message(int err, std::string_view what) {
  std::string m(what);
  switch (err) {
    case EXDEV: return m + ": the path leads outside the share";
    case ELOOP: return m + ": too many symbolic links, or a symbolic link where none is allowed";
    case ENOENT: return m + ": no such file or directory";
    case ENOSPC: return m + ": no space left on the server's disk";
    case EDQUOT: return m + ": the server's disk quota is exceeded";
    case EACCES:
    case EPERM: return m + ": permission denied by the server's file system";
    default: return m + ": " + std::strerror(err);
  }
}

// ---------------------------------------------------------------- share

file_share::file_share(const std::filesystem::path& root, files_options options)
    : jail_(root),
      options_(options),
      counted_(options.quota > 0),
      max_file_size_(options.max_file_size),
      quota_(options.quota) {
  if (counted_) {
    std::uint64_t total = 0;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(
             root, std::filesystem::directory_options::skip_permission_denied, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      std::error_code e2;
      if (it->is_regular_file(e2) && !it->is_symlink(e2)) total += it->file_size(e2);
    }
    usage_ = total;
  }
  thread_ = std::thread([this] { committer(); });
  hash_thread_ = std::thread([this] { hasher(); });
}

file_share::~file_share() { stop(); }

void file_share::stop() {
  stop_requested_ = true;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  hash_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (hash_thread_.joinable()) hash_thread_.join();
}

bool file_share::hash_in_background(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ || hash_jobs_.size() >= max_hash_jobs) return false;
    hash_jobs_.push_back(std::move(job));
  }
  hash_cv_.notify_one();
  return true;
}

void file_share::hasher() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      hash_cv_.wait(lock, [&] { return stopping_ || !hash_jobs_.empty(); });
      if (stopping_) return;
      job = std::move(hash_jobs_.front());
      hash_jobs_.pop_front();
    }
    job();
  }
}

bool file_share::reserve_basis_memory(std::uint64_t bytes) noexcept {
  std::uint64_t now = basis_memory_.load();
  do {
    if (now + bytes > max_basis_memory) return false;
  } while (!basis_memory_.compare_exchange_weak(now, now + bytes));
  return true;
}

bool file_share::set_limits(std::uint64_t max_file_size, std::uint64_t quota) noexcept {
  max_file_size_.store(max_file_size, std::memory_order_relaxed);
  if (counted_ != (quota > 0)) return false;
  quota_.store(quota, std::memory_order_relaxed);
  return true;
}

bool file_share::reserve(std::uint64_t bytes) noexcept {
  if (!counted_) return true;
  std::uint64_t r = reserved_.load();
  for (;;) {
    if (usage_.load() + r + bytes > quota_.load(std::memory_order_relaxed)) return false;
    if (reserved_.compare_exchange_weak(r, r + bytes)) return true;
  }
}

void file_share::release(std::uint64_t bytes) noexcept {
  if (!counted_ || bytes == 0) return;
  reserved_.fetch_sub(std::min(bytes, reserved_.load()));
}

void file_share::adjust_usage(std::int64_t delta) noexcept {
  if (delta >= 0) {
    usage_.fetch_add(static_cast<std::uint64_t>(delta));
  } else {
    const auto d = static_cast<std::uint64_t>(-delta);
    std::uint64_t u = usage_.load();
    while (!usage_.compare_exchange_weak(u, u > d ? u - d : 0)) {
    }
  }
}

void file_share::commit(commit_job job, bool wake) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(job));
  }
  if (wake) cv_.notify_one();
}

void file_share::wake_committer() { cv_.notify_one(); }

void file_share::start_writeback(int file, std::uint64_t offset, std::uint64_t length) {
  util::unique_fd dup(::fcntl(file, F_DUPFD_CLOEXEC, 0));
  if (!dup) return;  // only an optimisation: the commit's flush writes it anyway
  {
    std::lock_guard lock(mu_);
    writebacks_.push_back({std::move(dup), offset, length});
  }
  cv_.notify_one();
}

void file_share::committer() {
  for (;;) {
    std::deque<commit_job> batch;
    std::deque<writeback> writebacks;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty() || !writebacks_.empty(); });
      if (jobs_.empty() && writebacks_.empty()) return;  // stopping, and nothing left
      batch.swap(jobs_);
      writebacks.swap(writebacks_);
    }
    std::vector<int> result = make_durable(batch);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!result[i]) result[i] = rename_into_place(batch[i]);
      finish_commit(batch[i], result[i]);
    }
    // Write-back hints last: commits are what connections wait for.
    for (const auto& w : writebacks) {
      ::sync_file_range(w.file.get(), static_cast<off_t>(w.offset), static_cast<off_t>(w.length),
                        SYNC_FILE_RANGE_WRITE);
    }
  }
}

std::vector<int> file_share::make_durable(std::deque<commit_job>& batch) {
  std::vector<int> result(batch.size(), 0);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    auto& j = batch[i];
    if (j.mode && ::fchmod(j.file.get(), *j.mode) != 0) result[i] = errno;
    if (!result[i] && j.mtime_ns) result[i] = util::set_mtime_ns(j.file.get(), *j.mtime_ns);
  }
  if (options_.fsync && !batch.empty()) {
    // Group commit: one syncfs() writes every waiting file at once; a
    // lone file needs only its own fsync.
    int rc = batch.size() == 1 ? ::fsync(batch.front().file.get()) : ::syncfs(batch.front().file.get());
    if (rc != 0) {
      const int e = errno;
      for (auto& r : result) r = r ? r : e;
    }
  }
  return result;
}

int file_share::rename_into_place(commit_job& j) {
  // Only the quota needs the size of a file being replaced. Without one,
  // the rename itself refuses a directory in the way (EISDIR, or EEXIST
  // with no_clobber): one system call less per file.
  const bool counted = counted_;
  struct stat old {};
  const bool replaced = counted && ::fstatat(j.dir.get(), j.target.c_str(), &old, AT_SYMLINK_NOFOLLOW) == 0;
  int err = 0;
  if (replaced && S_ISDIR(old.st_mode)) {
    err = EISDIR;
  } else if (j.part.empty()) {
    // An unnamed file (an upload that came whole): link it into place,
    // and reclaim the part an earlier, larger version left, if any.
    err = util::link_unnamed(j.file.get(), j.dir.get(), j.target.c_str(), j.no_clobber);
  } else if (::renameat2(j.dir.get(), j.part.c_str(), j.dir.get(), j.target.c_str(),
                         j.no_clobber ? RENAME_NOREPLACE : 0) != 0) {
    err = errno;
    // With no_clobber a directory in the way is EEXIST too: say which.
    if (err == EEXIST && ::fstatat(j.dir.get(), j.target.c_str(), &old, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISDIR(old.st_mode)) {
      err = EISDIR;
    }
  }
  if (err) return err;
  if (counted) {
    adjust_usage(static_cast<std::int64_t>(j.size) -
                 (replaced && S_ISREG(old.st_mode) ? static_cast<std::int64_t>(old.st_size) : 0));
  }
  // The target's part from an earlier upload is of an older version now:
  // removed when no transfer holds it, else marked so that its holder
  // removes it rather than keeping it for a resume.
  if (util::drop_stale_part(j.dir.get(), j.target)) {
    parts_.supersede(j.dir.get(), part_name_for(j.target), j.submitted);
  }
  return 0;
}

void file_share::finish_commit(commit_job& j, int result) {
  if (result == EEXIST || result == EISDIR) {
    // Refused for good: a named part goes (still locked by us); an
    // unnamed file vanishes when it is closed.
    if (!j.part.empty()) ::unlinkat(j.dir.get(), j.part.c_str(), 0);
  } else if (result) {
    spdlog::warn("files: commit of '{}' failed: {}", j.target, std::strerror(result));
  }
  release(j.reserved);
  auto done = std::move(j.done);
  j.file.reset();  // releases the part file's lock
  if (done) done(result);
}

// ---------------------------------------------------------------- session

// A put's basis, or a delta get's file, being chunked on the hashing thread.
struct files_session::basis_job {
  std::uint64_t id = 0, serial = 0, size = 0;
  util::delta::params params;
  util::unique_fd fd;  // its own: the upload may end meanwhile
  std::unique_ptr<util::content_digest> whole;  // a get's: the digest of what was read
  std::atomic<std::uint64_t> read{0};
  std::atomic<bool> cancelled{false};  // the upload ended
  std::atomic<bool> finished{false};
};

struct files_session::upload {
  util::unique_fd dir;
  util::unique_fd file;
  std::string path;  // as the client named it (for messages)
  std::string leaf;
  std::string part;  // empty: an unnamed file (util::open_unnamed), linked at commit
  bool private_part = false;  // not resumable: removed on failure
  std::optional<std::uint64_t> size;
  std::uint64_t written = 0;
  std::uint64_t reserved = 0;
  util::content_digest digest;
  bool want_sha256 = false;
  bool no_clobber = false;
  bool frame_open = false;  // inside a put.data frame
  bool data_seen = false;   // any put.data so far
  std::optional<mode_t> mode;
  mode_t part_mode = 0;  // the part file's mode as opened
  mode_t create_mode = 0;  // what the part is created with (modes_for)
  std::optional<std::int64_t> mtime;
  bool failed = false;  // answered with an error; waiting for put.end to forget it
  bool preallocated = false;  // blocks up to `size` are reserved (util::preallocate)
  std::shared_ptr<part_registry::claim> claim;  // a resumable part's registration
  // Delta (a put with "delta"): the target's old content, which put.copy
  // reads, and its chunks until put.chunks asks for them.
  std::uint64_t serial = 0;  // tells this upload from a later one with the same id
  util::unique_fd basis;
  std::uint64_t basis_size = 0;
  std::shared_ptr<basis_job> reading;  // the hashing thread's job that describes it
  bool basis_done = false;             // every group was sent (put.basis with done)
  bool chunks_asked = false;
  std::vector<util::delta::chunk> basis_chunks;
  std::vector<util::delta::group> basis_groups;
  // put.copy steps not carried out yet: done a slice at a time between
  // other work on the event loop, and all of them before anything that
  // comes after (put.data, put.end).
  struct pending_copy {
    std::uint64_t from, size;
  };
  std::deque<pending_copy> copies;
  std::uint64_t copies_bytes = 0;
  bool copies_scheduled = false;
  file_share* basis_share = nullptr;  // holds basis_memory of its bound
  std::uint64_t basis_memory = 0;

  /// Ends delta transfer for this upload (it failed or ended): the basis's
  /// reading stops and what describes it is let go.
  void drop_basis() noexcept {
    if (reading) reading->cancelled = true;
    if (basis_share) basis_share->release_basis_memory(basis_memory);
    basis_share = nullptr;
    basis_memory = 0;
    reading.reset();
    basis.reset();
    basis_chunks = {};
    basis_groups = {};
    copies.clear();
    copies_bytes = 0;
  }

  /// Only a part with a known target size can be resumed; anything else
  /// is removed when the upload ends without a commit.
  bool resumable() const noexcept { return size.has_value() && !private_part && !part.empty(); }

  /// The upload ends without a commit: a resumable part is kept, holding
  /// only what was written (its reservation is given back); any other
  /// part, a part superseded by a commit of its target meanwhile, or any
  /// part when `discard`, is removed.
  void leave_part(bool discard = false) noexcept {
    if (discard || !resumable() || (claim && claim->superseded())) {
      if (dir && !part.empty()) ::unlinkat(dir.get(), part.c_str(), 0);
    } else if (preallocated && file) {
      util::release_preallocation(file.get());
    }
    preallocated = false;
  }
  explicit upload(bool sha) : digest(sha), want_sha256(sha) {}
  ~upload();
  upload(const upload&) = delete;
  upload& operator=(const upload&) = delete;
};

struct files_session::download {
  std::uint64_t id = 0;
  util::unique_fd fd;
  std::uint64_t size = 0;
  std::uint64_t pos = 0;
  std::uint64_t sent = 0;          // bytes of the file sent (a delta's: its ranges), for the audit trail
  struct stat st {};
  util::content_digest digest;
  // Delta (a get with "delta"): the hashing thread describes the file
  // (get.groups) and digests it; then only the ranges the client asks for
  // are sent, and get.end carries the description's digest.
  std::shared_ptr<basis_job> describing;
  std::uint64_t serial = 0;
  bool described = false, chunks_asked = false, ranges_given = false;
  std::vector<util::delta::chunk> chunks;
  std::vector<util::delta::group> groups;
  std::deque<util::delta::range> ranges;
  std::string xxh3, sha256;  // of the whole file, as described
  file_share* memory_share = nullptr;  // holds `memory` of its basis-memory bound
  std::uint64_t memory = 0;

  explicit download(bool sha) : digest(sha) {}
  ~download() {
    if (describing) describing->cancelled = true;
    drop_lists();
  }
  download(const download&) = delete;
  download& operator=(const download&) = delete;
  bool delta() const noexcept { return describing != nullptr; }
  void drop_lists() noexcept {
    chunks = {};
    groups = {};
    if (memory_share) memory_share->release_basis_memory(memory);
    memory_share = nullptr;
    memory = 0;
  }
  // What is sent: the file from `pos`, or a delta's ranges.
  bool more() const noexcept { return delta() ? !ranges.empty() : pos < size; }
  std::pair<std::uint64_t, std::size_t> next_piece(std::size_t limit) const noexcept {
    if (delta()) return {ranges.front().offset, static_cast<std::size_t>(std::min<std::uint64_t>(limit, ranges.front().length))};
    return {pos, static_cast<std::size_t>(std::min<std::uint64_t>(limit, size - pos))};
  }
  void advance(std::size_t n) noexcept {
    sent += n;
    if (!delta()) {
      pos += n;
      return;
    }
    ranges.front().offset += n;
    ranges.front().length -= n;
    if (ranges.front().length == 0) ranges.pop_front();
  }
};

files_session::files_session(file_share& share, net::connection& conn, bool may_read, std::string user)
    : user_(std::move(user)), peer_(conn.peer()), share_(share), conn_(conn), may_read_(may_read) {}

files_session::~files_session() {
  // Uploads cut off by a closed connection keep their part files (they
  // are resumable); private parts are removed.
  if (download_ && download_audit_) {
    audit(*download_audit_, download_->sent, "interrupted",
          "the connection closed; the download can be resumed");
  }
  for (auto& [id, u] : uploads_) {
    if (!u->failed) {
      audit({id, "put", u->path, ""}, u->written, "interrupted", "the connection closed; the upload can be resumed");
    }
    u->leave_part();
    share_.release(u->reserved);
  }
}

void files_session::reply(std::uint64_t id, json header, std::string_view body) {
  header["id"] = id;
  audit_answer(id, &header, "ok", {});
  conn_.send(header, body);
}

void files_session::error(std::uint64_t id, errc code, std::string_view message) {
  audit_answer(id, nullptr, proto::to_wire(code), message);
  conn_.send(proto::make_error(code, message, id));
}

void files_session::error_over_limit(std::uint64_t id, std::uint64_t limit, std::string_view message) {
  audit_answer(id, nullptr, proto::to_wire(errc::too_large), message);
  auto h = proto::make_error(errc::too_large, message, id);
  h["limit"] = limit;
  conn_.send(h);
}

bool files_session::busy() const noexcept {
  const bool uploading =
      std::any_of(uploads_.begin(), uploads_.end(), [](const auto& entry) { return !entry.second->failed; });
  return download_ || uploading || commits_pending_ > 0 || !queue_.empty();
}

void files_session::abandon_transfers(std::string_view why) {
  // Requests not started yet: refused (and recorded, for put, get, fs.*).
  auto queued = std::move(queue_);
  queue_.clear();
  queued_bytes_ = 0;
  for (const auto& q : queued) {
    const std::string type = q.header.value("type", "");
    if (type == "put" || type == "get" || type == "fs.rm" || type == "fs.mv" || type == "fs.mkdir") {
      const std::string op = type.starts_with("fs.") ? type.substr(3) : type;
      audit({q.id, op, q.header.value("path", q.header.value("from", std::string())), ""}, 0,
            proto::to_wire(errc::shutting_down), why);
    }
    error(q.id, errc::shutting_down, why);
  }
  if (download_) {
    if (download_audit_) audit(*download_audit_, download_->sent, "interrupted", why);
    download_audit_.reset();
    finish_download(errc::shutting_down, why);
  }
  for (auto& [id, u] : uploads_) {
    if (u->failed) continue;
    u->failed = true;  // the part stays: the destructor leaves it for a resume
    audit({id, "put", u->path, ""}, u->written, "interrupted", why);
    error(id, errc::shutting_down, why);
  }
}

void files_session::audit(const audit_entry& a, std::uint64_t bytes, std::string_view result, std::string_view detail) {
  audit_file_operation({a.op, user_, peer_, a.path, a.to, bytes, result, detail});
}

void files_session::audit_answer(std::uint64_t id, const json* reply, std::string_view result, std::string_view detail) {
  if (!pending_audit_ || pending_audit_->id != id) return;
  audit_entry a = std::move(*pending_audit_);
  pending_audit_.reset();
  const std::string type = reply ? reply->value("type", std::string()) : std::string();
  if (type == "get.begin") {  // the transfer starts: recorded when it ends
    download_audit_ = std::move(a);
    return;
  }
  if (type == "put.ready") return;  // recorded at its commit (or failure)
  const std::uint64_t bytes = type == "get.file" ? reply->value("size", std::uint64_t{0}) : a.bytes;
  audit(a, bytes, result, detail);
}

void files_session::fail_errno(std::uint64_t id, int err, const std::string& what) {
  error(id, errc_for_errno(err), errno_message(err, what));
}

std::optional<std::string> files_session::checked_path(std::uint64_t id, const json& h, const char* key) {
  auto it = h.find(key);
  if (it == h.end() || !it->is_string()) {
    error(id, errc::bad_request, std::string("'") + key + "' must be a string");
    return std::nullopt;
  }
  const std::string& p = it->get_ref<const std::string&>();
  if (std::string why = util::check_relative_path(p); !why.empty()) {
    error(id, errc::bad_path, "'" + p + "': " + why);
    return std::nullopt;
  }
  std::string norm = util::normalize_relative(p);
  for (auto name : util::split_relative(norm)) {
    if (is_part_name(name)) {
      error(id, errc::bad_path, "'" + p + "': names beginning with " + std::string(util::part_prefix) + " are reserved");
      return std::nullopt;
    }
  }
  return norm;
}

void files_session::request(std::uint64_t id, json header, std::string body) {
  if (queue_.size() >= max_queued_requests || queued_bytes_ + body.size() > max_queued_request_bytes) {
    error(id, errc::busy, "too many file requests in flight on this connection; wait for replies");
    return;
  }
  queued_bytes_ += body.size();
  queue_.push_back({id, std::move(header), std::move(body)});
  pump();
}

void files_session::pump() {
  if (pumping_) return;
  pumping_ = true;
  while (!queue_.empty() && !conn_.closing()) {
    if (!run(queue_.front())) break;
    queued_bytes_ -= queue_.front().body.size();
    queue_.pop_front();
  }
  pumping_ = false;
}

bool files_session::run(queued_request& q) {
  // Requests run in order. A download holds the line until it is sent;
  // requests that look at the share wait for this connection's commits,
  // so that `put` then `mv` of the same file works. Uploads and mkdir do
  // not wait: a tree upload flows without a round trip per file.
  if (download_ || line_held_) return false;
  const std::string type = q.header.value("type", "");
  const bool independent = type == "put" || type == "fs.mkdir" || type == "fs.symlink";
  if (!independent && commits_pending_ > 0) return false;
  if (type == "put" || type == "get" || type == "fs.rm" || type == "fs.mv" || type == "fs.mkdir") {
    // The paths as asked (a malformed one is recorded as "").
    auto text = [&q](const char* key) {
      const auto it = q.header.find(key);
      return it != q.header.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    const std::string op = type.starts_with("fs.") ? type.substr(3) : type;
    pending_audit_ = audit_entry{q.id, op, text(type == "fs.mv" ? "from" : "path"), type == "fs.mv" ? text("to") : ""};
  } else {
    pending_audit_.reset();
  }
  try {
    if (type == "put") {
      if (wait_for_part_holder(q)) return false;
      part_checked_.reset();
      do_put(q.id, q.header, q.body);
    } else if (type == "get") {
      do_get(q.id, q.header);
    } else if (type == "fs.stat") {
      do_stat(q.id, q.header);
    } else if (type == "fs.list") {
      do_list(q.id, q.header);
    } else if (type == "fs.digest") {
      do_digest(q.id, q.body);
    } else if (type == "fs.mkdir") {
      do_mkdir(q.id, q.header);
    } else if (type == "fs.rm") {
      do_rm(q.id, q.header);
    } else if (type == "fs.mv") {
      do_mv(q.id, q.header);
    } else if (type == "fs.symlink") {
      do_symlink(q.id, q.header);
    } else if (type == "fs.setattr") {
      do_setattr(q.id, q.header);
    } else {
      error(q.id, errc::unknown_type, "unknown file request '" + type + "'");
    }
  } catch (const json::exception& e) {
    error(q.id, errc::bad_request, std::string("'") + type + "': a field has the wrong type (" + e.what() + ")");
  }
  pending_audit_.reset();  // answered, or handed on to the transfer's end
  return true;
}

// ---- a part held by another upload

// How long a put waits for the holder of its part to be found alive or
// gone, and how long a holder's peer may stay silent once asked.
constexpr auto part_holder_wait = std::chrono::seconds(5);
constexpr auto peer_probe_timeout = std::chrono::seconds(3);
constexpr auto part_poll = std::chrono::milliseconds(50);

// How long the peer of an upload offered a resume of `bytes` may stay
// silent once asked: it reads its own copy of those bytes to compare
// digests before it sends anything, which takes as long as reading that
// much from a slow disk (100 MB/s) does. Capped at 20 s, so that a put
// waiting for the holder (at most the cap and 2 s) is answered well within
// a client's 30 s I/O deadline.
constexpr auto max_quiet = std::chrono::seconds(20);
std::chrono::milliseconds quiet_budget(std::uint64_t bytes) {
  const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(peer_probe_timeout) +
                      std::chrono::milliseconds(bytes / 100'000);
  return std::min(budget, std::chrono::milliseconds(max_quiet));
}

bool files_session::wait_for_part_holder(const queued_request& q) {
  const auto now = std::chrono::steady_clock::now();
  auto again = [this] {
    if (part_poll_armed_) return true;  // one timer, however often the queue is pumped meanwhile
    part_poll_armed_ = true;
    conn_.run_after(part_poll, [w = weak_from_this()] {
      if (auto self = w.lock()) {
        self->part_poll_armed_ = false;
        self->pump();
      }
    });
    return true;
  };
  if (part_wait_ && part_wait_->id == q.id) {
    // Done when the holder answered (alive: a fresh part it will be), or
    // let go of the part (it can be resumed), or at the deadline.
    if (*part_wait_->alive || now >= part_wait_->until || !holder_of_part(q.header)) {
      part_wait_.reset();
      return false;
    }
    return again();
  }
  if (part_checked_ == q.id) return false;
  part_checked_ = q.id;
  auto holder = holder_of_part(q.header);
  if (!holder) return false;
  auto alive = std::make_shared<bool>(false);
  holder->probe([alive, w = weak_from_this(), ex = conn_.executor()](bool is_alive) {
    boost::asio::post(ex, [alive, w, is_alive] {
      *alive = is_alive;
      if (auto self = w.lock()) self->pump();
    });
  });
  // Long enough for the holder's peer to use the longest quiet budget (the
  // holder may have a larger part pending than this one); the wait ends as
  // soon as the holder answers or lets go of the part.
  part_wait_ = part_wait{q.id, now + std::max<std::chrono::milliseconds>(part_holder_wait, max_quiet + std::chrono::seconds(2)), alive};
  return again();
}

std::shared_ptr<part_registry::claim> files_session::holder_of_part(const json& h) const {
  // Only a resumable upload wants an existing part.
  if (!h.value("resume", false) || h.value("inline", false) || !h.contains("size")) return nullptr;
  auto p = h.find("path");
  if (p == h.end() || !p->is_string()) return nullptr;
  if (!util::check_relative_path(p->get_ref<const std::string&>()).empty()) return nullptr;  // put will say why
  const std::string path = util::normalize_relative(p->get_ref<const std::string&>());
  if (path.empty()) return nullptr;
  std::string leaf;
  util::unique_fd dir(share_.jail().open_parent(path, leaf));
  if (!dir) return nullptr;
  const std::string part = part_name_for(leaf);
  util::unique_fd fd(::openat(dir.get(), part.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return nullptr;  // none, or free
  auto holder = share_.parts().find(dir.get(), part);
  for (const auto& [id, u] : uploads_) {
    if (holder && u->claim == holder) return nullptr;  // this connection's own upload
  }
  return holder;
}

void files_session::probe_peer(std::function<void(bool alive)> done) {
  // A client that was offered a resume may be reading its own copy of the
  // part before it sends anything (quiet_budget).
  auto quiet = std::chrono::duration_cast<std::chrono::milliseconds>(peer_probe_timeout);
  for (const auto& [id, u] : uploads_) {
    if (u->claim && !u->data_seen) quiet = std::max(quiet, quiet_budget(u->written));
  }
  conn_.send(json{{"type", "ping"}});
  const auto now = std::chrono::steady_clock::now();
  watch_peer(now, now + quiet, std::move(done));
}

void files_session::watch_peer(std::chrono::steady_clock::time_point since, std::chrono::steady_clock::time_point until,
                               std::function<void(bool alive)> done) {
  if (conn_.last_activity() > since) return done(true);
  if (std::chrono::steady_clock::now() >= until) {
    spdlog::info("files: {} silent while a newer upload waits for the part it holds; closing", conn_.peer());
    conn_.close_now("silent while a newer upload waited for its part");
    return done(false);
  }
  conn_.run_after(part_poll, [w = weak_from_this(), since, until, done = std::move(done)]() mutable {
    if (auto self = w.lock()) self->watch_peer(since, until, std::move(done));
  });
}

// ---- metadata operations

void files_session::do_stat(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  struct stat st {};
  if (path->empty()) {
    if (::fstat(share_.jail().root_fd(), &st) != 0) return error(id, errc::io_error, errno_message(errno, "stat"));
    return reply(id, {{"type", "fs.stat.reply"}, {"entry", entry_json("", st, -1, "")}});
  }
  std::string leaf;
  util::unique_fd dir(share_.jail().open_parent(*path, leaf));
  if (!dir) return fail_errno(id, -dir.release(), "'" + *path + "'");
  if (::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return error(id, errc_for_errno(errno), errno_message(errno, "'" + *path + "'"));
  }
  json entry = entry_json(leaf, st, dir.get(), leaf.c_str());
  if (S_ISDIR(st.st_mode)) {
    util::unique_fd sub(::openat(dir.get(), leaf.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (sub) {
      if (auto source = util::unfinished_copy_of(sub.get()); source && proto::is_valid_utf8(*source)) {
        entry["unfinished_copy_of"] = *source;
      }
    }
  }
  reply(id, {{"type", "fs.stat.reply"}, {"entry", std::move(entry)}});
}

struct files_session::digest_listing {
  struct file {
    std::size_t chunk, index;  // where its entry is
    std::string path;          // share-relative
    std::uint64_t size;
    std::string xxh3;          // filled on the hashing thread ("" : could not be read whole)
  };
  std::uint64_t id = 0;
  bool packed = false;
  std::vector<json> chunks;
  std::vector<file> files;
  std::size_t skipped = 0;
  std::atomic<std::size_t> hashed{0};  // files done, for the progress frames
};

namespace {

// The XXH3-128 of a regular file, read in slices so that `cancelled` is
// asked often; "" when it cannot be read whole (as `listed`, if given).
template <class Cancelled>
std::string digest_of(const util::dir_jail& jail, const std::string& path, std::optional<std::uint64_t> listed,
                      Cancelled cancelled) {
  constexpr std::uint64_t slice = 64u << 20;
  util::unique_fd fd(jail.open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK));  // a FIFO must not block
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      (listed && static_cast<std::uint64_t>(st.st_size) != *listed)) {
    return {};
  }
  const auto size = static_cast<std::uint64_t>(st.st_size);
  util::content_digest d(false);
  for (std::uint64_t at = 0; at < size; at += slice) {
    if (cancelled() || util::hash_file_range(fd.get(), at, std::min(slice, size - at), d) != 0) return {};
  }
  return d.xxh3_hex();
}

}  // namespace

// fs.digest: the digests of the files a client names.
struct files_session::digest_request {
  std::uint64_t id = 0;
  std::vector<std::string> paths;  // share-relative, checked
  std::vector<std::string> xxh3;   // filled on the hashing thread
  std::atomic<std::size_t> hashed{0};
};

void files_session::do_digest(std::uint64_t id, const std::string& body) {
  // The paths are the body (a JSON array): a header could not hold 1000
  // long ones.
  const json paths = json::parse(body, nullptr, false);
  if (!paths.is_array() || paths.empty() || paths.size() > max_digest_paths) {
    return error(id, errc::bad_request,
                 "the body must be a JSON array of 1 to " + std::to_string(max_digest_paths) + " paths");
  }
  auto work = std::make_shared<digest_request>();
  work->id = id;
  for (const auto& p : paths) {
    auto path = checked_path(id, json{{"path", p}}, "path");
    if (!path) return;
    work->paths.push_back(std::move(*path));
  }
  work->xxh3.resize(work->paths.size());
  line_held_ = work;  // holds the request line (run()) until it is answered
  const bool queued = share_.hash_in_background([work, &share = share_, w = weak_from_this(), ex = conn_.executor()] {
    auto gone = [&] { return share.stopping() || w.expired(); };
    std::unordered_map<std::string, std::string> seen;  // a path named twice is read once
    for (std::size_t i = 0; i < work->paths.size() && !gone(); ++i) {
      auto [it, fresh] = seen.try_emplace(work->paths[i]);
      if (fresh) it->second = digest_of(share.jail(), work->paths[i], std::nullopt, gone);
      work->xxh3[i] = it->second;
      work->hashed.fetch_add(1, std::memory_order_relaxed);
    }
    boost::asio::post(ex, [w, work] {
      if (auto self = w.lock()) self->send_digests(*work);
    });
  });
  if (!queued) {
    line_held_.reset();
    return error(id, errc::busy, "the server is computing too many digests; try again shortly");
  }
  report_progress(id, [this, request = std::weak_ptr(work)]() -> std::optional<json> {
    auto work = request.lock();
    if (!work || line_held_ != work) return std::nullopt;
    return json{{"type", "fs.digest.progress"},
                {"files_hashed", work->hashed.load(std::memory_order_relaxed)},
                {"files", work->paths.size()}};
  });
}

void files_session::send_digests(digest_request& work) {
  reply(work.id, {{"type", "fs.digest.reply"}, {"xxh3", work.xxh3}});
  if (line_held_.get() == &work) {
    line_held_.reset();
    pump();  // the requests that waited for it
  }
}

void files_session::list_with_digests(std::shared_ptr<digest_listing> work) {
  if (work->files.empty()) return send_listing(*work);
  line_held_ = work;  // holds the request line (run()) until it is answered
  const bool queued = share_.hash_in_background([work, &share = share_, w = weak_from_this(), ex = conn_.executor()] {
    auto gone = [&] { return share.stopping() || w.expired(); };  // nobody to answer, or shutting down
    for (auto& f : work->files) {
      if (gone()) return;
      f.xxh3 = digest_of(share.jail(), f.path, f.size, gone);
      work->hashed.fetch_add(1, std::memory_order_relaxed);
    }
    boost::asio::post(ex, [w, work] {
      if (auto self = w.lock()) self->send_listing(*work);
    });
  });
  if (!queued) {
    line_held_.reset();
    return error(work->id, errc::busy, "the server is computing too many digests; try again shortly");
  }
  report_progress(work->id, [this, listing = std::weak_ptr(work)]() -> std::optional<json> {
    auto work = listing.lock();
    if (!work || line_held_ != work) return std::nullopt;
    return json{{"type", "fs.list.progress"},
                {"files_hashed", work->hashed.load(std::memory_order_relaxed)},
                {"files", work->files.size()}};
  });
}

void files_session::report_progress(std::uint64_t id, std::function<std::optional<json>()> frame) {
  // Once a second while the hashing thread works for a request (or the
  // job waits its turn): the client, whose every wait has a deadline,
  // knows the server is at it, and the connection is not idle. `frame`
  // says what to send, or nullopt once the job is over.
  conn_.run_after(std::chrono::seconds(1), [w = weak_from_this(), id, frame = std::move(frame)]() mutable {
    auto self = w.lock();
    if (!self) return;
    auto f = frame();
    if (!f) return;
    self->conn_.touch();
    self->reply(id, std::move(*f));
    self->report_progress(id, std::move(frame));
  });
}

void files_session::send_listing(digest_listing& work) {
  for (const auto& f : work.files) {
    if (!f.xxh3.empty()) work.chunks[f.chunk][f.index]["xxh3"] = f.xxh3;
  }
  for (std::size_t i = 0; i < work.chunks.size(); ++i) {
    send_list_frame(work.id, work.chunks[i], i + 1 == work.chunks.size(), work.skipped, work.packed);
  }
  if (line_held_.get() == &work) {
    line_held_.reset();
    pump();  // the requests that waited for it
  }
}

void files_session::send_list_frame(std::uint64_t id, const json& entries, bool done, std::size_t skipped,
                                    bool packed) {
  json h = {{"type", "fs.list.reply"}, {"count", entries.size()}, {"done", done}, {"skipped", skipped}};
  if (packed) h["packed"] = true;
  reply(id, std::move(h),
        packed ? proto::pack_entries(entries) : entries.dump(-1, ' ', false, json::error_handler_t::replace));
}

// One fs.list answer as its entries come: a frame every list_chunk
// entries, or (with digests) all kept for the hashing thread.
struct files_session::list_output {
  files_session& session;
  std::uint64_t id;
  bool packed;
  std::shared_ptr<digest_listing> digests;
  json chunk = json::array();
  std::size_t total = 0, skipped = 0;
  bool too_many = false;

  void flush(bool done) {
    if (digests) {
      digests->chunks.push_back(std::move(chunk));
      digests->skipped = skipped;
      if (done) session.list_with_digests(std::move(digests));
    } else {
      session.send_list_frame(id, chunk, done, skipped, packed);
    }
    chunk = json::array();
  }
  // `shared`: the entry's share-relative path, for its digest.
  void add(json e, const std::string& shared) {
    if (digests && e.value("type", "") == "file") {
      digests->files.push_back({digests->chunks.size(), chunk.size(), shared, e.value("size", std::uint64_t{0}), {}});
    }
    chunk.push_back(std::move(e));
    if (++total > max_list_entries) too_many = true;
    if (chunk.size() >= list_chunk) flush(false);
  }
};

void files_session::do_list(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  list_output out{*this, id, h.value("packed", false), nullptr};
  // With digests the frames wait for the hashing thread: the listing is
  // kept whole until then (at most max_list_entries entries).
  if (h.value("digests", false)) {
    out.digests = std::make_shared<digest_listing>();
    out.digests->id = id;
    out.digests->packed = out.packed;
  }
  util::unique_fd top(share_.jail().open(*path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK));  // a FIFO must not block
  if (!top) {
    const int e = -top.release();
    if (e != ELOOP) return error(id, errc_for_errno(e), errno_message(e, "'" + *path + "'"));  // (a link: one entry)
  }
  struct stat st {};
  if (top && ::fstat(top.get(), &st) != 0) return error(id, errc::io_error, errno_message(errno, "stat"));
  if (!top || !S_ISDIR(st.st_mode)) {
    // A file (or link): one entry, named by its last component.
    std::string leaf;
    util::unique_fd dir(share_.jail().open_parent(*path, leaf));
    if (!dir || ::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      return error(id, errc::not_found, "'" + *path + "': no such file or directory");
    }
    out.add(entry_json(leaf, st, dir.get(), leaf.c_str()), *path);
    return out.flush(true);
  }
  list_tree(out, *path, h.value("recursive", false), std::move(top));
}

void files_session::list_tree(list_output& out, const std::string& path, bool recursive, util::unique_fd top) {
  // Depth-first, each directory's entries sorted by name, a directory
  // before its contents (a downloader creates it first). Any depth whose
  // paths a client can name (max_remote_path); a deeper path, or a
  // directory that cannot be read, ends the listing with an error rather
  // than leaving a part of the tree out unsaid.
  std::string failed_path;
  int failed_errno = 0;
  util::tree_visitor v;
  v.keep = [&](std::string_view n) {
    if (is_part_name(n)) return false;
    if (!util::check_name(n).empty() || !proto::is_valid_utf8(n)) {
      ++out.skipped;  // a name no client could ask for again (control characters, not UTF-8)
      return false;
    }
    return true;
  };
  v.enter = [&](const util::tree_entry& e) {
    if (out.too_many) return util::walk_step::stop;
    if (recursive && under(path, e.path).size() > util::max_remote_path) {
      failed_path = e.path;
      failed_errno = ENAMETOOLONG;
      return util::walk_step::stop;
    }
    out.add(entry_json(recursive ? e.path : e.name, e.st, e.dir_fd, e.name.c_str()),
            out.digests ? under(path, e.path) : std::string());
    return recursive ? util::walk_step::descend : util::walk_step::next;
  };
  v.failed = [&](const util::tree_entry& e, int err) {
    failed_path = e.path;
    failed_errno = err;
    return util::walk_step::stop;
  };
  if (const int err = util::walk_tree(std::move(top), v); err && !failed_errno) failed_errno = err;
  if (out.too_many) {
    return error_over_limit(out.id, max_list_entries,
                            "more than " + std::to_string(max_list_entries) + " entries; list a smaller directory");
  }
  if (failed_errno) return report_list_failure(out.id, under(path, failed_path), failed_errno);
  out.flush(true);
}

void files_session::report_list_failure(std::uint64_t id, const std::string& where, int err) {
  if (err == ENAMETOOLONG) {
    return error_over_limit(id, util::max_remote_path,
                            "'" + elided(where) + "' is longer than " + std::to_string(util::max_remote_path) +
                                " bytes, the longest path a client can name; the listing stops there");
  }
  error(id, errc_for_errno(err), errno_message(err, "'" + elided(where) + "'") + "; the listing stops there");
}

void files_session::do_mkdir(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  if (path->empty()) return error(id, errc::exists, "the share's root always exists");
  const bool parents = h.value("parents", false);
  const auto mode = opt_number<std::uint32_t>(h, "mode");
  const mode_t m = mode ? static_cast<mode_t>(*mode & 0777) : 0777;
  std::optional<std::string> tree_of;
  if (auto it = h.find("tree_of"); it != h.end() && !it->is_null()) {
    if (!it->is_string() || it->get_ref<const std::string&>().empty() ||
        it->get_ref<const std::string&>().size() > util::max_copy_source_name ||
        !proto::is_valid_utf8(it->get_ref<const std::string&>())) {
      return error(id, errc::bad_request, "'tree_of' must be a non-empty UTF-8 string of at most 4096 bytes");
    }
    tree_of = it->get<std::string>();
  }
  if (!parents) {
    std::string leaf;
    util::unique_fd dir(share_.jail().open_parent(*path, leaf));
    if (!dir) return fail_errno(id, -dir.release(), "'" + *path + "'");
    if (::mkdirat(dir.get(), leaf.c_str(), m) != 0) {
      const int e = errno;
      return error(id, errc_for_errno(e), e == EEXIST ? "'" + *path + "' already exists"
                                                      : errno_message(e, "mkdir '" + *path + "'"));
    }
    util::unique_fd made(::openat(dir.get(), leaf.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    return finish_mkdir(id, made.get(), true, *path, tree_of);
  }
  // -p: create each missing component; never follow a symlink on the way.
  // Missing parents get 0777 (less the umask), as mkdir -p gives them;
  // `mode` is the last one's.
  util::unique_fd cur(::fcntl(share_.jail().root_fd(), F_DUPFD_CLOEXEC, 0));
  std::string done;
  bool created = false;
  const auto names = util::split_relative(*path);
  for (std::size_t i = 0; i < names.size(); ++i) {
    std::string n(names[i]);
    done += (done.empty() ? "" : "/") + n;
    created = ::mkdirat(cur.get(), n.c_str(), i + 1 == names.size() ? m : 0777) == 0;
    if (!created && errno != EEXIST) {
      return error(id, errc_for_errno(errno), errno_message(errno, "mkdir '" + done + "'"));
    }
    int next = ::openat(cur.get(), n.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      const int e = errno;
      return error(id, e == ENOTDIR || e == ELOOP ? errc::exists : errc_for_errno(e),
                   e == ENOTDIR || e == ELOOP ? "'" + done + "' exists and is not a directory"
                                              : errno_message(e, "'" + done + "'"));
    }
    cur.reset(next);
  }
  finish_mkdir(id, cur.get(), created, *path, tree_of);
}

void files_session::finish_mkdir(std::uint64_t id, int dirfd, bool created, const std::string& path,
                                 const std::optional<std::string>& tree_of) {
  // `tree_of`: the directory is the top of a tree copied under a new name,
  // marked unfinished until the client says the copy is complete. Only a
  // directory this request made, or one the same copy marked before: never
  // someone else's.
  if (tree_of) {
    if (dirfd < 0) return fail_errno(id, errno, "'" + path + "'");
    if (!created && util::unfinished_copy_of(dirfd) != tree_of) {
      return error(id, errc::exists, "'" + path + "' exists and is not an unfinished copy of '" + *tree_of +
                                         "' (made meanwhile?): run the command again to copy into it");
    }
    if (int e = util::mark_unfinished_copy(dirfd, *tree_of)) {
      return error(id, errc_for_errno(e), errno_message(e, "marking '" + path + "' as a copy under way"));
    }
  }
  reply(id, {{"type", "fs.ok"}});
}

namespace {
// Removes everything below the directory `fd` (taken over), any depth.
// Returns 0 or an errno; adds the sizes of removed files to `bytes` and
// counts the entries removed.
int remove_contents(int fd, std::uint64_t& bytes, std::uint64_t& count) {
  return util::remove_tree_contents(util::unique_fd(fd), [&](const util::tree_entry& e) {
    if (e.name == util::unfinished_copy_marker) return;  // never charged, never counted
    if (S_ISREG(e.st.st_mode)) bytes += static_cast<std::uint64_t>(e.st.st_size);
    ++count;
  });
}
}  // namespace

namespace {
// rmdir, for a directory that may hold nothing but an unfinished copy's
// mark (hidden from listings, so it looks empty): then the mark goes too.
// 0 or an errno.
int remove_directory(int dir, const char* leaf) {
  if (::unlinkat(dir, leaf, AT_REMOVEDIR) == 0) return 0;
  const int e = errno;
  if (e != ENOTEMPTY && e != EEXIST) return e;
  util::unique_fd sub(::openat(dir, leaf, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  const auto mark = sub ? util::unfinished_copy_of(sub.get()) : std::nullopt;
  if (!mark || util::clear_unfinished_copy(sub.get()) != 0) return e;
  if (::unlinkat(dir, leaf, AT_REMOVEDIR) == 0) return 0;
  util::mark_unfinished_copy(sub.get(), *mark);  // not empty after all: the copy keeps its mark
  return e;
}
}  // namespace

namespace {
fs_outcome failed(int err, const std::string& what) { return {errc_for_errno(err), errno_message(err, what)}; }
fs_outcome refused(errc code, std::string message) { return {code, std::move(message)}; }
}  // namespace

fs_outcome file_share::remove(const std::string& path, bool recursive) {
  if (path.empty()) return refused(errc::bad_path, "the share's root cannot be removed");
  std::string leaf;
  util::unique_fd dir(jail_.open_parent(path, leaf));
  if (!dir) return failed(-dir.release(), "'" + path + "'");
  struct stat st {};
  if (::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return failed(errno, "'" + path + "'");
  fs_outcome r;
  if (S_ISDIR(st.st_mode)) {
    if (recursive) {
      int sub = ::openat(dir.get(), leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      int e = sub < 0 ? errno : remove_contents(sub, r.bytes, r.count);
      adjust_usage(-static_cast<std::int64_t>(r.bytes));
      if (e) {
        fs_outcome f = failed(e, "rm -r '" + path + "'");
        f.bytes = r.bytes;  // partway: what was removed before the error
        return f;
      }
    }
    if (const int e = remove_directory(dir.get(), leaf.c_str())) {
      fs_outcome f = e == ENOTEMPTY || e == EEXIST
                         ? refused(errc::not_empty, "'" + path + "' is a directory that is not empty (use -r)")
                         : failed(e, "rm '" + path + "'");
      f.bytes = r.bytes;
      return f;
    }
  } else {
    if (::unlinkat(dir.get(), leaf.c_str(), 0) != 0) return failed(errno, "rm '" + path + "'");
    if (S_ISREG(st.st_mode)) {
      adjust_usage(-st.st_size);
      r.bytes = static_cast<std::uint64_t>(st.st_size);
    }
  }
  ++r.count;
  return r;
}

fs_outcome file_share::move(const std::string& from, const std::string& to, bool no_clobber) {
  if (from.empty()) return refused(errc::bad_path, "the share's root cannot be moved");
  std::string from_leaf;
  util::unique_fd from_dir(jail_.open_parent(from, from_leaf));
  if (!from_dir) return failed(-from_dir.release(), "'" + from + "'");
  struct stat fst {};
  if (::fstatat(from_dir.get(), from_leaf.c_str(), &fst, AT_SYMLINK_NOFOLLOW) != 0) {
    return failed(errno, "'" + from + "'");
  }
  // Into an existing directory (like mv), or to a new name.
  util::unique_fd to_dir;
  std::string to_leaf;
  util::unique_fd as_dir(jail_.open(to, O_PATH | O_DIRECTORY | O_NOFOLLOW));
  std::string shown = to;
  if (as_dir) {
    to_dir = std::move(as_dir);
    to_leaf = from_leaf;
    shown = to.empty() ? from_leaf : to + "/" + from_leaf;
  } else {
    to_dir.reset(jail_.open_parent(to, to_leaf));
    if (!to_dir) return failed(-to_dir.release(), "'" + to + "'");
  }
  struct stat old {};
  const bool replaced = ::fstatat(to_dir.get(), to_leaf.c_str(), &old, AT_SYMLINK_NOFOLLOW) == 0;
  if (::renameat2(from_dir.get(), from_leaf.c_str(), to_dir.get(), to_leaf.c_str(), no_clobber ? RENAME_NOREPLACE : 0) != 0) {
    const int e = errno;
    if (e == EEXIST || e == ENOTEMPTY) return refused(errc::exists, "'" + shown + "' already exists");
    if (e == EINVAL) return refused(errc::bad_request, "cannot move '" + from + "' into itself");
    if (e == EISDIR || e == ENOTDIR) {
      return refused(errc::exists, "'" + shown + "' exists and is of another type (file or directory)");
    }
    return failed(e, "mv '" + from + "' '" + shown + "'");
  }
  if (replaced && S_ISREG(old.st_mode) && !(fst.st_dev == old.st_dev && fst.st_ino == old.st_ino)) {
    adjust_usage(-old.st_size);
  }
  fs_outcome r;
  r.path = shown;
  if (S_ISREG(fst.st_mode)) r.bytes = static_cast<std::uint64_t>(fst.st_size);
  return r;
}

fs_outcome file_share::make_directory(const std::string& path) {
  if (path.empty()) return refused(errc::exists, "the share's root always exists");
  std::string leaf;
  util::unique_fd dir(jail_.open_parent(path, leaf));
  if (!dir) return failed(-dir.release(), "'" + path + "'");
  if (::mkdirat(dir.get(), leaf.c_str(), 0777) != 0) {
    const int e = errno;
    return e == EEXIST ? refused(errc::exists, "'" + path + "' already exists") : failed(e, "mkdir '" + path + "'");
  }
  return {};
}

void files_session::do_rm(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  const fs_outcome r = share_.remove(*path, h.value("recursive", false));
  // Partway too: the audit trail records what was removed before an error.
  if (pending_audit_ && pending_audit_->id == id) pending_audit_->bytes = r.bytes;
  if (!r.ok()) return error(id, r.code, r.message);
  reply(id, {{"type", "fs.ok"}, {"removed", r.count}});
}

void files_session::do_mv(std::uint64_t id, const json& h) {
  auto from = checked_path(id, h, "from");
  if (!from) return;
  auto to = checked_path(id, h, "to");
  if (!to) return;
  const fs_outcome r = share_.move(*from, *to, h.value("no_clobber", false));
  if (!r.ok()) return error(id, r.code, r.message);
  if (pending_audit_ && pending_audit_->id == id) {
    pending_audit_->to = r.path;
    if (r.bytes) pending_audit_->bytes = r.bytes;
  }
  reply(id, {{"type", "fs.ok"}, {"path", r.path}});
}

void files_session::do_symlink(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  if (path->empty()) return error(id, errc::bad_path, "a symlink needs a name");
  const std::string target = h.at("target").get<std::string>();
  if (target.size() > util::max_remote_path || !util::symlink_target_inside(*path, target)) {
    return error(id, errc::bad_path, "'" + *path + "' -> '" + target +
                                         "': the link would point outside the share (absolute or too many '..')");
  }
  std::string leaf;
  util::unique_fd dir(share_.jail().open_parent(*path, leaf));
  if (!dir) return fail_errno(id, -dir.release(), "'" + *path + "'");
  struct stat st {};
  const bool exists = ::fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (exists && (S_ISDIR(st.st_mode) || h.value("no_clobber", false))) {
    return error(id, errc::exists, "'" + *path + "' already exists");
  }
  // Create under a temporary name, then rename over: replacing is atomic.
  const std::string tmp = part_name_for(leaf) + "." + util::random_hex64();
  if (::symlinkat(target.c_str(), dir.get(), tmp.c_str()) != 0) {
    return error(id, errc_for_errno(errno), errno_message(errno, "symlink '" + *path + "'"));
  }
  {
    // Let the kernel follow it, jailed: a chain through links already in
    // the share (or a parent that is itself a link) must not lead outside.
    const auto slash = path->rfind('/');
    const std::string tmp_rel = slash == std::string::npos ? tmp : path->substr(0, slash + 1) + tmp;
    util::unique_fd probe(share_.jail().open(tmp_rel, O_PATH));
    if (!probe && -probe.get() != ENOENT && -probe.get() != ELOOP) {
      ::unlinkat(dir.get(), tmp.c_str(), 0);
      return error(id, errc::bad_path, "'" + *path + "' -> '" + target + "': the link would lead outside the share");
    }
  }
  if (::renameat(dir.get(), tmp.c_str(), dir.get(), leaf.c_str()) != 0) {
    const int e = errno;
    ::unlinkat(dir.get(), tmp.c_str(), 0);
    return error(id, errc_for_errno(e), errno_message(e, "symlink '" + *path + "'"));
  }
  if (exists && S_ISREG(st.st_mode)) share_.adjust_usage(-st.st_size);
  reply(id, {{"type", "fs.ok"}});
}

void files_session::do_setattr(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  const auto mode = opt_number<std::uint32_t>(h, "mode");
  const auto mtime = opt_number<std::int64_t>(h, "mtime_ns");
  util::unique_fd fd(share_.jail().open(*path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) {
    const int e = -fd.release();
    if (e == ELOOP) return reply(id, {{"type", "fs.ok"}});  // a symlink: nothing to set
    return error(id, errc_for_errno(e), errno_message(e, "'" + *path + "'"));
  }
  if (h.value("copy_finished", false)) {
    if (int e = util::clear_unfinished_copy(fd.get())) return error(id, errc_for_errno(e), errno_message(e, "'" + *path + "'"));
  }
  if (mode && ::fchmod(fd.get(), static_cast<mode_t>(*mode & 0777)) != 0) {
    return error(id, errc_for_errno(errno), errno_message(errno, "chmod '" + *path + "'"));
  }
  if (mtime) {
    if (int e = util::set_mtime_ns(fd.get(), *mtime)) return error(id, errc_for_errno(e), errno_message(e, "'" + *path + "'"));
  }
  reply(id, {{"type", "fs.ok"}});
}

// ---- uploads

namespace {

// The mode an upload's part is created with, and the one the committed
// file gets (none: the part's). `mode` (-p) is imposed at commit on a
// private 0600 part. `source_mode` gives a new file the sender's
// permission bits less the umask and leaves a replaced file its own, as cp
// and scp do; the part has them already (and u+rw, to be resumable), so
// most commits need no chmod. Neither: 0666 less the umask.
struct upload_modes {
  std::optional<mode_t> final;
  mode_t create = 0666;
};

upload_modes modes_for(int dir, const std::string& leaf, std::optional<std::uint32_t> mode,
                       std::optional<std::uint32_t> source_mode) {
  if (mode) return {static_cast<mode_t>(*mode & 0777), 0600};
  if (!source_mode) return {};
  const mode_t m = util::received_file_mode(dir, leaf.c_str(), static_cast<mode_t>(*source_mode & 0777));
  return {m, static_cast<mode_t>(m | 0600)};
}

}  // namespace

// A put request, checked: what do_put needs of its header.
struct files_session::put_request {
  std::string path;
  std::optional<std::uint64_t> size;
  bool is_inline = false;
  bool sha = false;
  bool no_clobber = false;
  bool resume = false;
  std::uint64_t declared = 0;  // bytes to reserve against the quota
  std::optional<std::uint32_t> mode, source_mode;
  std::optional<std::int64_t> mtime_ns;
  bool delta = false;
};

files_session::upload::~upload() { drop_basis(); }

void files_session::do_put(std::uint64_t id, const json& h, std::string& body) {
  const auto req = parse_put(id, h, body);
  if (!req) return;
  auto u = open_put_target(id, *req);
  if (!u) return;
  struct stat st {};
  if (!open_put_part(id, *u, *req, st)) return;
  if (req->is_inline) return put_inline(id, std::move(u), h, body, st);
  put_streamed(id, std::move(u), *req, st);
}

std::optional<files_session::put_request> files_session::parse_put(std::uint64_t id, const json& h,
                                                                   const std::string& body) {
  auto path = checked_path(id, h, "path");
  if (!path) return std::nullopt;
  auto refuse = [&](errc code, std::string_view why) {
    error(id, code, why);
    return std::nullopt;
  };
  if (path->empty()) return refuse(errc::bad_path, "put needs a file name, not the share's root");
  if (uploads_.count(id)) return refuse(errc::bad_request, "request id already in use by an upload");
  if (uploads_.size() >= max_uploads_per_connection) return refuse(errc::busy, "too many uploads open on this connection");
  put_request r;
  r.path = std::move(*path);
  r.size = opt_number<std::uint64_t>(h, "size");
  r.is_inline = h.value("inline", false);
  if (!wants_sha256(h, r.sha)) return refuse(errc::bad_request, "'verify' must be \"xxh3\" or \"sha256\"");
  r.no_clobber = h.value("no_clobber", false);
  r.resume = h.value("resume", false);
  // Everything that can still fail to parse is read here, before the quota
  // is reserved (open_put_target): nothing may throw while it is held.
  r.mode = opt_number<std::uint32_t>(h, "mode");
  r.source_mode = opt_number<std::uint32_t>(h, "source_mode");
  r.mtime_ns = opt_number<std::int64_t>(h, "mtime_ns");
  r.delta = h.value("delta", false) && r.size && !r.is_inline;  // (else ignored: an ordinary upload)
  r.declared = r.is_inline ? body.size() : r.size.value_or(0);
  if (r.is_inline && r.size && *r.size != body.size()) {
    return refuse(errc::bad_request, "inline put: size " + std::to_string(*r.size) + " but the body has " +
                                         std::to_string(body.size()) + " bytes");
  }
  const auto max = share_.max_file_size();
  if (max && r.declared > max) {
    error_over_limit(id, max, "'" + r.path + "' is " + std::to_string(r.declared) +
                                  " bytes; this server accepts files up to " + std::to_string(max));
    return std::nullopt;
  }
  if (r.is_inline) r.size = body.size();
  return r;
}

bool files_session::refuse_put_target(std::uint64_t id, const upload& u, const put_request& req) {
  struct stat st {};
  if (::fstatat(u.dir.get(), u.leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return false;
  if (S_ISDIR(st.st_mode)) {
    error(id, errc::exists, "'" + req.path + "' is a directory");
  } else if (req.no_clobber) {
    error(id, errc::exists, "'" + req.path + "' already exists (no_clobber)");
  } else {
    return false;
  }
  return true;
}

std::unique_ptr<files_session::upload> files_session::open_put_target(std::uint64_t id, const put_request& req) {
  auto u = std::make_unique<upload>(req.sha);
  u->path = req.path;
  u->dir.reset(share_.jail().open_parent(req.path, u->leaf));
  if (!u->dir) {
    const int e = -u->dir.release();
    error(id, errc_for_errno(e),
          e == ENOENT ? "'" + req.path + "': the directory does not exist" : errno_message(e, "'" + req.path + "'"));
    return nullptr;
  }
  // Refuse a directory in the way (or, with no_clobber, any file) before
  // any data is sent. An inline upload has sent its data already: its
  // commit refuses both, atomically, so looking first would only cost a
  // lookup per small file.
  if (!req.is_inline && refuse_put_target(id, *u, req)) return nullptr;
  if (!share_.reserve(req.declared)) {
    // An inline put was not looked at yet: a name it could not take says so
    // rather than the quota.
    if (req.is_inline && refuse_put_target(id, *u, req)) return nullptr;
    error(id, errc::quota_exceeded, "'" + req.path + "' (" + std::to_string(req.declared) +
                                        " bytes) would exceed the share's quota");
    return nullptr;
  }
  u->reserved = req.declared;
  u->size = req.size;
  u->no_clobber = req.no_clobber;
  const upload_modes modes = modes_for(u->dir.get(), u->leaf, req.mode, req.source_mode);
  u->mode = modes.final;
  u->create_mode = modes.create;
  u->mtime = req.mtime_ns;
  return u;
}

bool files_session::open_put_part(std::uint64_t id, upload& u, const put_request& req, struct stat& st) {
  // A file that comes whole in this frame is written to an unnamed file
  // and linked into place at commit: there is nothing to resume, so no
  // part needs a name, a lock or a rename.
  int fd = req.is_inline ? util::open_unnamed(u.dir.get(), u.create_mode, st) : -EOPNOTSUPP;
  if (fd == -EOPNOTSUPP) {
    // The part file: one well-known name per target (resumable), locked
    // while in use. A concurrent upload of the same name gets a private one.
    u.part = part_name_for(u.leaf);
    fd = util::open_locked_part(u.dir.get(), u.part, u.private_part, u.create_mode, &st);
  }
  if (fd < 0) {
    share_.release(u.reserved);
    fail_errno(id, -fd, "cannot create a part file for '" + req.path + "'");
    return false;
  }
  u.file.reset(fd);
  u.part_mode = static_cast<mode_t>(st.st_mode & 07777);
  if (!req.is_inline && u.resumable()) {
    // Registered, so that a newer upload of this target can ask whether
    // this one's peer is still there.
    u.claim = share_.parts().hold(st, [w = weak_from_this(), ex = conn_.executor()](auto done) {
      boost::asio::post(ex, [w, done = std::move(done)]() mutable {
        if (auto self = w.lock()) self->probe_peer(std::move(done));
      });
    });
  }
  if (!S_ISREG(st.st_mode)) {
    share_.release(u.reserved);
    error(id, errc::io_error, "the part file for '" + req.path + "' is not a regular file");
    return false;
  }
  return true;
}

void files_session::put_inline(std::uint64_t id, std::unique_ptr<upload> u, const json& h, const std::string& body,
                               const struct stat& st) {
  // The whole file in this one frame: write, check, commit.
  const int fd = u->file.get();
  int e = st.st_size == 0 || ::ftruncate(fd, 0) == 0 ? util::write_all(fd, body.data(), body.size()) : errno;
  u->digest.update(body.data(), body.size());
  u->written = body.size();
  if (e) {
    share_.release(u->reserved);
    if (u->private_part) ::unlinkat(u->dir.get(), u->part.c_str(), 0);  // (an unnamed file has none)
    return error(id, errc_for_errno(e), errno_message(e, "writing '" + u->path + "'"));
  }
  uploads_.emplace(id, std::move(u));
  put_end(id, h);
}

void files_session::put_streamed(std::uint64_t id, std::unique_ptr<upload> u, const put_request& req,
                                 const struct stat& st) {
  const int fd = u->file.get();
  std::uint64_t offset = 0;
  if (req.resume && !u->private_part && u->size && st.st_size > 0 &&
      static_cast<std::uint64_t>(st.st_size) <= *u->size) {
    offset = static_cast<std::uint64_t>(st.st_size);
    if (util::hash_file_range(fd, 0, offset, u->digest) != 0) {
      offset = 0;  // unreadable: start over
      u->digest.reset();
    }
  }
  if (offset == 0 && st.st_size != 0 && ::ftruncate(fd, 0) != 0) {
    share_.release(u->reserved);
    return error(id, errc_for_errno(errno), errno_message(errno, "'" + req.path + "'"));
  }
  // Reserve the blocks still to come: a full disk is reported now, before
  // any data is sent, and cannot strike halfway.
  if (u->size && *u->size > offset) {
    if (int e = util::preallocate(fd, offset, *u->size - offset)) {
      share_.release(u->reserved);
      if (offset == 0) ::unlinkat(u->dir.get(), u->part.c_str(), 0);  // empty: nothing to resume
      return error(id, errc_for_errno(e),
                   errno_message(e, "'" + req.path + "' (" + std::to_string(*u->size - offset) + " bytes to come)"));
    }
    u->preallocated = true;
  }
  u->written = offset;
  u->serial = ++upload_serial_;
  json ready = ready_frame(*u);
  if (req.delta && offer_basis(id, *u)) {
    ready["basis"] = {{"size", u->basis_size}, {"chunk_avg", util::delta::params_for(*u->size).avg}};
  }
  uploads_.emplace(id, std::move(u));
  reply(id, ready);
}

json files_session::ready_frame(const upload& u) const {
  json ready = {{"type", "put.ready"}, {"offset", u.written}};
  if (u.written > 0) ready["xxh3"] = u.digest.xxh3_hex();
  return ready;
}

util::unique_fd files_session::basis_candidate(const upload& u, const util::delta::params& params,
                                               struct stat& st) const {
  // The target as it is now, if it is a regular file whose chunk list is
  // small enough to keep; one such upload per connection at a time, and
  // only for a user who may read it.
  if (!may_read_ || !u.size || (basis_job_ && !basis_job_->finished)) return {};
  for (const auto& [other, up] : uploads_) {
    if (up->basis || up->reading) return {};
  }
  util::unique_fd fd(::openat(u.dir.get(), u.leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  // A basis much larger than the new file would cost a long read for
  // little: the file goes whole then.
  const std::uint64_t four_times = *u.size > (~std::uint64_t{0} >> 2) ? ~std::uint64_t{0} : *u.size * 4;
  const auto bound = std::min(std::uint64_t{params.min} * max_basis_chunks, std::max(four_times, std::uint64_t{64} << 20));
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0 ||
      static_cast<std::uint64_t>(st.st_size) > bound) {
    return {};
  }
  return fd;
}

bool files_session::offer_basis(std::uint64_t id, upload& u) {
  const auto params = util::delta::params_for(u.size.value_or(0));
  struct stat st {};
  util::unique_fd fd = basis_candidate(u, params, st);
  if (!fd) return false;
  // Its lists: a chunk (24 bytes) and at most a group (40) per smallest
  // chunk, twice while it is read (the hashing thread's and the session's).
  const std::uint64_t memory = (static_cast<std::uint64_t>(st.st_size) / params.min + 1) * 128;
  if (!share_.reserve_basis_memory(memory)) return false;
  u.basis_share = &share_;
  u.basis_memory = memory;
  auto job = describe_in_background(id, u.serial, fd.get(), static_cast<std::uint64_t>(st.st_size), params, std::nullopt,
                                    &files_session::basis_arrived, "put.progress");
  if (!job) {
    u.drop_basis();
    return false;  // the hashing thread is busy: the file comes whole
  }
  basis_job_ = job;
  u.basis = std::move(fd);
  u.basis_size = job->size;
  u.reading = job;
  return true;
}

std::shared_ptr<files_session::basis_job> files_session::describe_in_background(
    std::uint64_t id, std::uint64_t serial, int fd, std::uint64_t size, const util::delta::params& params,
    std::optional<bool> digest_sha, void (files_session::*arrived)(const basis_job&, basis_batch),
    const char* progress_type) {
  auto job = std::make_shared<basis_job>();
  job->id = id;
  job->serial = serial;
  job->size = size;
  job->params = params;
  if (digest_sha) job->whole = std::make_unique<util::content_digest>(*digest_sha);
  job->fd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
  auto read = [job, arrived, &share = share_, w = weak_from_this(), ex = conn_.executor()] {
    auto gone = [&] { return share.stopping() || w.expired() || job->cancelled; };
    describe_basis(*job, gone, [&](basis_batch batch) {
      boost::asio::post(ex, [w, job, arrived, batch = std::move(batch)]() mutable {
        if (auto self = w.lock()) ((*self).*arrived)(*job, std::move(batch));
      });
    });
  };
  if (!job->fd || !share_.hash_in_background(std::move(read))) return nullptr;
  report_progress(id, [job, progress_type]() -> std::optional<json> {
    if (job->finished || job->cancelled) return std::nullopt;
    return json{{"type", progress_type}, {"bytes_read", job->read.load(std::memory_order_relaxed)}, {"bytes", job->size}};
  });
  return job;
}

void files_session::describe_basis(basis_job& job, const std::function<bool()>& gone,
                                   const std::function<void(basis_batch)>& deliver) {
  if (gone()) {  // the upload ended while the job waited its turn
    job.finished = true;
    job.fd.reset();
    return;
  }
  // On the hashing thread: the basis's groups go to the session as they
  // are completed (the sender starts matching, and the server copying,
  // while the rest is read); each batch brings its chunks too.
  std::vector<util::delta::chunk> chunks;
  std::vector<util::delta::group> groups;
  util::delta::grouper grouper;
  std::size_t posted_chunks = 0, posted_groups = 0;
  auto post = [&](bool done, bool failed) {
    basis_batch batch;
    const std::size_t upto = done ? chunks.size() : groups.back().first + groups.back().count;
    batch.chunks.assign(chunks.begin() + static_cast<long>(posted_chunks), chunks.begin() + static_cast<long>(upto));
    batch.groups.assign(groups.begin() + static_cast<long>(posted_groups), groups.end());
    batch.done = done;
    batch.failed = failed;
    if (done && !failed && job.whole) {
      batch.xxh3 = job.whole->xxh3_hex();
      if (job.whole->has_sha256()) batch.sha256 = job.whole->sha256_hex();
    }
    posted_chunks = upto;
    posted_groups = groups.size();
    deliver(std::move(batch));
  };
  util::delta::reading r;
  r.observe = [&](std::string_view bytes) {
    if (job.whole) job.whole->update(bytes.data(), bytes.size());
    job.read.fetch_add(bytes.size(), std::memory_order_relaxed);
  };
  r.progress = [&](bool done) {
    if (done) {
      grouper.finish(chunks, groups);
    } else {
      grouper.add(chunks, groups);
    }
    if (done) job.finished = true;  // no put.progress after the last put.basis
    if (done || groups.size() > posted_groups) post(done, false);
    return !gone();
  };
  const bool ok = util::delta::chunk_file(job.fd.get(), job.size, job.params, chunks, r);
  job.fd.reset();  // (the old file, replaced at commit, must not stay open: its blocks would)
  if (!ok && !gone()) {
    job.finished = true;
    post(true, true);  // not readable as it was: no more groups
  }
  job.finished = true;
}

void files_session::basis_arrived(const basis_job& job, basis_batch batch) {
  auto it = uploads_.find(job.id);
  if (it == uploads_.end() || it->second->serial != job.serial || it->second->failed) return;
  upload& u = *it->second;
  // The groups' chunk indices count from the basis's first chunk: the
  // batches come in order, and each brings the chunks of its groups.
  u.basis_chunks.insert(u.basis_chunks.end(), batch.chunks.begin(), batch.chunks.end());
  u.basis_groups.insert(u.basis_groups.end(), batch.groups.begin(), batch.groups.end());
  u.basis_done = batch.done;
  json h = {{"type", "put.basis"}, {"count", batch.groups.size()}, {"done", batch.done}};
  if (batch.failed) h["failed"] = true;
  reply(job.id, h, util::delta::encode_groups(batch.groups));
}

void files_session::put_chunks(std::uint64_t id, std::string_view body) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) return error(id, errc::not_found, "put.chunks for an upload that is not open");
  upload& u = *it->second;
  if (u.failed) return;
  if (!u.basis_done || u.chunks_asked || u.basis_groups.empty()) {
    return fail_upload(u, errc::bad_request,
                       "put.chunks: '" + u.path + "' has no basis described in full (put.basis with done), or "
                       "its chunks were asked for once");
  }
  const auto which = util::delta::decode_indices(body, u.basis_groups.size());
  if (!which) {
    return fail_upload(u, errc::bad_request,
                       "put.chunks: the body must be group numbers (u32, big-endian), increasing, below " +
                           std::to_string(u.basis_groups.size()));
  }
  const std::string records = util::delta::encode_chunks(u.basis_chunks, u.basis_groups, *which);
  // Asked once: the lists are not kept any longer than that (the hashing
  // thread's were let go when it was done).
  u.chunks_asked = true;
  u.basis_chunks = {};
  u.basis_groups = {};
  if (u.basis_share) u.basis_share->release_basis_memory(u.basis_memory);
  u.basis_share = nullptr;
  u.basis_memory = 0;
  reply(id, {{"type", "put.chunks.reply"}, {"count", records.size() / util::delta::chunk_record}}, records);
}

void files_session::put_copy(std::uint64_t id, const json& h) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) return error(id, errc::not_found, "put.copy for an upload that is not open");
  upload& u = *it->second;
  if (u.failed) return;
  if (!u.basis) return fail_upload(u, errc::bad_request, "put.copy: '" + u.path + "' has no basis to copy from");
  const auto from = h.find("from"), size = h.find("size");
  if (from == h.end() || size == h.end() || !from->is_number_unsigned() || !size->is_number_unsigned() ||
      size->get<std::uint64_t>() == 0 || size->get<std::uint64_t>() > data_chunk ||
      from->get<std::uint64_t>() > u.basis_size || size->get<std::uint64_t>() > u.basis_size - from->get<std::uint64_t>()) {
    return fail_upload(u, errc::bad_request,
                       "put.copy: 'from' and 'size' must name 1 byte to 4 MiB within the old file (" +
                           std::to_string(u.basis_size) + " bytes)");
  }
  const auto n = size->get<std::uint64_t>();
  if (u.size && u.written + u.copies_bytes + n > *u.size) {
    return fail_upload(u, errc::integrity,
                       "'" + u.path + "': more data than its declared size of " + std::to_string(*u.size) +
                           " bytes; the file was not committed");
  }
  u.data_seen = true;
  u.copies.push_back({from->get<std::uint64_t>(), n});
  u.copies_bytes += n;
  if (u.copies.size() > max_pending_copies) {
    drain_copies(id, ~std::uint64_t{0});  // many small steps: carried out rather than held
  } else if (u.copies_bytes > max_pending_copy_bytes) {
    drain_copies(id, u.copies_bytes - max_pending_copy_bytes);
  }
  schedule_copies(id);
}

void files_session::schedule_copies(std::uint64_t id) {
  auto it = uploads_.find(id);
  if (it == uploads_.end() || it->second->copies_scheduled || it->second->copies.empty()) return;
  it->second->copies_scheduled = true;
  boost::asio::post(conn_.executor(), [w = weak_from_this(), id, serial = it->second->serial] {
    auto self = w.lock();
    if (!self) return;
    auto it = self->uploads_.find(id);
    if (it == self->uploads_.end() || it->second->serial != serial) return;
    it->second->copies_scheduled = false;
    self->drain_copies(id, copy_slice);
    self->schedule_copies(id);  // the rest, after whatever else waits on this loop
  });
}

void files_session::drain_copies(std::uint64_t id, std::uint64_t budget) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) return;
  upload& u = *it->second;
  while (!u.copies.empty() && budget > 0 && !u.failed) {
    auto& c = u.copies.front();
    const std::uint64_t n = std::min(c.size, budget);
    if (!copy_from_basis(u, c.from, n)) return;
    u.copies_bytes -= n;
    budget -= n;
    c.from += n;
    c.size -= n;
    if (c.size == 0) u.copies.pop_front();
  }
}

bool files_session::copy_from_basis(upload& u, std::uint64_t from, std::uint64_t n) {
  // One buffer per session, made at the first copy (not one per step).
  std::string& buf = copy_buffer_;
  if (buf.empty()) buf.resize(1u << 20);
  for (std::uint64_t done = 0; done < n;) {
    const auto piece = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), n - done));
    if (util::read_full(u.basis.get(), buf.data(), piece, from + done) != static_cast<long>(piece)) {
      fail_upload(u, errc::changed,
                  "'" + u.path + "': its old content changed while the new one was built from it; send it again");
      return false;
    }
    if (!append(u, std::string_view(buf.data(), piece))) return false;
    done += piece;
  }
  return true;
}

void files_session::fail_upload(upload& u, errc code, const std::string& message, std::optional<std::uint64_t> limit) {
  u.failed = true;
  u.drop_basis();
  // Content that is not what was declared is no use for a resume.
  u.leave_part(code == errc::integrity);
  spdlog::info("files: upload of '{}' failed: {}", u.path, message);
  // The id is known to the caller; find it to answer.
  for (auto& [id, p] : uploads_) {
    if (p.get() != &u) continue;
    audit({id, "put", u.path, ""}, u.written, proto::to_wire(code), message);
    if (limit) return error_over_limit(id, *limit, message);
    return error(id, code, message);
  }
}

void files_session::put_data(std::uint64_t id, const json& h, std::string_view part) {
  auto it = uploads_.find(id);
  if (it == uploads_.end() || it->second->failed) return;
  upload& u = *it->second;
  if (!u.copies.empty()) {
    drain_copies(id, ~std::uint64_t{0});  // the steps before these bytes come first
    if (u.failed) return;
  }
  if (!u.frame_open) {
    u.frame_open = true;
    if (auto off = h.find("offset"); off != h.end()) {
      if (!off->is_number_unsigned()) return fail_upload(u, errc::bad_request, "put.data: offset must be an integer");
      const auto o = off->get<std::uint64_t>();
      if (o != u.written) {
        // Only the first data frame may restart, and only backwards (the
        // sender found that the part does not match its source).
        if (u.data_seen || o > u.written) {
          return fail_upload(u, errc::bad_request,
                             "put.data: offset " + std::to_string(o) + " but " + std::to_string(u.written) +
                                 " bytes are written");
        }
        if (::ftruncate(u.file.get(), static_cast<off_t>(o)) != 0) {
          return fail_upload(u, errc_for_errno(errno), errno_message(errno, "'" + u.path + "'"));
        }
        u.digest.reset();
        if (o > 0 && util::hash_file_range(u.file.get(), 0, o, u.digest) != 0) {
          return fail_upload(u, errc::io_error, "cannot read back the part file of '" + u.path + "'");
        }
        u.written = o;
        if (u.preallocated) {  // the truncation gave the reserved blocks back
          if (int e = util::preallocate(u.file.get(), o, *u.size - o)) {
            if (o == 0) ::unlinkat(u.dir.get(), u.part.c_str(), 0);  // empty: nothing to resume
            return fail_upload(u, errc_for_errno(e), errno_message(e, "'" + u.path + "'"));
          }
        }
      }
    }
    u.data_seen = true;
  }
  if (!part.empty()) append(u, part);
}

bool files_session::append(upload& u, std::string_view part) {
  // Checked before anything is written: the declared size, the server's
  // largest file, and (for a stream of unknown length) the quota.
  const auto max = share_.max_file_size();
  std::optional<std::uint64_t> limit;
  std::string refused;
  errc code = errc::integrity;
  if (u.size && u.written + part.size() > *u.size) {
    refused = "'" + u.path + "': more data than its declared size of " + std::to_string(*u.size) +
              " bytes; the file was not committed";
  } else if (max && u.written + part.size() > max) {
    code = errc::too_large, limit = max;
    refused = "'" + u.path + "' is larger than this server accepts (" + std::to_string(max) + " bytes)";
  } else if (!u.size && !share_.reserve(part.size())) {
    code = errc::quota_exceeded;
    refused = "'" + u.path + "' would exceed the share's quota";
  }
  if (!refused.empty()) {
    fail_upload(u, code, refused, limit);
    return false;
  }
  if (!u.size) u.reserved += part.size();
  std::size_t off = 0;
  while (off < part.size()) {
    ssize_t w = ::pwrite(u.file.get(), part.data() + off, part.size() - off, static_cast<off_t>(u.written + off));
    if (w < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      // Keep what was written: the part stays resumable.
      (void)::ftruncate(u.file.get(), static_cast<off_t>(u.written + off));
      u.digest.update(part.data(), off);
      u.written += off;
      fail_upload(u, errc_for_errno(e), errno_message(e, "writing '" + u.path + "'"));
      return false;
    }
    off += static_cast<std::size_t>(w);
  }
  u.digest.update(part.data(), part.size());
  if (share_.options().fsync && (u.written + part.size()) / writeback_step != u.written / writeback_step) {
    const std::uint64_t end = (u.written + part.size()) / writeback_step * writeback_step;
    share_.start_writeback(u.file.get(), end - writeback_step, writeback_step);
  }
  u.written += part.size();
  return true;
}

void files_session::put_data_done(std::uint64_t id) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) {
    error(id, errc::not_found, "put.data for an upload that is not open (send put first)");
    return;
  }
  it->second->frame_open = false;
}

void files_session::put_end(std::uint64_t id, const json& h) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) return error(id, errc::not_found, "put.end for an upload that is not open");
  if (!it->second->copies.empty()) drain_copies(id, ~std::uint64_t{0});
  if (it->second->failed) {
    // Already answered with its error; the part stays for a resume.
    share_.release(it->second->reserved);
    uploads_.erase(it);  // (a part that is not resumable is already gone)
    return;
  }
  upload& u = *it->second;
  // A refused put.end ends the upload and removes its part.
  auto refuse = [&](errc code, const std::string& msg) {
    spdlog::warn("files: {}", msg);
    if (pending_audit_ && pending_audit_->id == id) pending_audit_.reset();  // (an inline put: recorded here, once)
    audit({id, "put", u.path, ""}, u.written, proto::to_wire(code), msg);
    u.leave_part(true);
    share_.release(u.reserved);
    uploads_.erase(it);
    error(id, code, msg);
  };
  const auto want = h.find("xxh3");
  const auto want_sha = h.find("sha256");
  if (want == h.end() || !want->is_string() || (u.want_sha256 && (want_sha == h.end() || !want_sha->is_string()))) {
    return refuse(errc::bad_request,
                  "'" + u.path + "': put.end must carry the content's 'xxh3'" +
                      (u.want_sha256 ? std::string(" and 'sha256' (the upload asked for verify=sha256)") : "") +
                      "; the file was not committed");
  }
  if (u.size && u.written != *u.size) {
    return refuse(errc::integrity,
                  "'" + u.path + "': got " + std::to_string(u.written) + " of its declared " + std::to_string(*u.size) +
                      " bytes; the file was not committed");
  }
  if (const std::string got = u.digest.xxh3_hex(); want->get<std::string>() != got) {
    return refuse(errc::integrity,
                  "'" + u.path + "': content digest mismatch (xxh3: sent " + want->get<std::string>() + ", received " +
                      got + "); the file was not committed");
  }
  if (u.want_sha256) {
    if (const std::string got = u.digest.sha256_hex(); want_sha->get<std::string>() != got) {
      return refuse(errc::integrity,
                    "'" + u.path + "': content digest mismatch (sha256: sent " + want_sha->get<std::string>() +
                        ", received " + got + "); the file was not committed");
    }
  }
  submit_commit(u, id);
  uploads_.erase(id);
}

void files_session::put_abort(std::uint64_t id, const json& h) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) return;
  upload& u = *it->second;
  if (!u.failed) audit({id, "put", u.path, ""}, u.written, "aborted", "the client stopped the upload");
  u.leave_part(h.value("discard", false));
  share_.release(u.reserved);
  uploads_.erase(it);
}

void files_session::submit_commit(upload& u, std::uint64_t id) {
  commit_job job;
  job.file = std::move(u.file);
  job.dir = std::move(u.dir);
  job.part = u.part;
  job.target = u.leaf;
  job.no_clobber = u.no_clobber;
  job.mode = u.mode;
  if (!job.mode) job.mode = util::default_file_mode();  // like any new file
  if (job.mode == u.part_mode) job.mode.reset();  // created with it
  job.mtime_ns = u.mtime;
  job.size = u.written;
  job.reserved = u.reserved;
  u.reserved = 0;
  json done = {{"type", "put.done"}, {"id", id}, {"size", u.written}, {"xxh3", u.digest.xxh3_hex()}};
  if (u.want_sha256) done["sha256"] = u.digest.sha256_hex();
  ++commits_pending_;
  // What the commit came to: recorded even when the session is gone by
  // then (the file is committed all the same).
  auto outcome = [](int err, const std::string& shown, std::string& why) {
    if (err == EEXIST) return why = "'" + shown + "' already exists (no_clobber)", errc::exists;
    if (err == EISDIR) return why = "'" + shown + "' is a directory", errc::exists;
    return why = errno_message(err, "committing '" + shown + "'"), errc_for_errno(err);
  };
  job.done = [w = weak_from_this(), ex = conn_.executor(), id, done = std::move(done), shown = u.path, user = user_,
              peer = peer_, outcome](int err) mutable {
    const std::uint64_t size = done.value("size", std::uint64_t{0});
    auto record_alone = [err, shown, user, peer, size, outcome] {  // by value: it may run after this returns
      std::string why;
      const std::string_view result = err ? proto::to_wire(outcome(err, shown, why)) : std::string_view("ok");
      audit_file_operation({"put", user, peer, shown, "", size, result, why});
    };
    // Only a live session may be answered: it keeps its connection, and so
    // the executor, alive. (This runs on the committer thread.)
    if (w.expired()) return record_alone();
    boost::asio::post(ex, [w, id, err, size, done = std::move(done), shown = std::move(shown), outcome,
                           record_alone]() mutable {
      auto self = w.lock();
      if (!self) return record_alone();
      --self->commits_pending_;
      std::string why;
      const errc code = err ? outcome(err, shown, why) : errc::io_error;
      self->audit({id, "put", shown, ""}, size, err ? proto::to_wire(code) : "ok", why);
      if (err) {
        self->error(id, code, why);
      } else {
        self->conn_.send(done);
      }
      self->pump();
    });
  };
  // The committer is woken once, after the rest of this read batch (a
  // tree upload brings dozens of small files per read): woken per file, it
  // would take each file alone, a flush and two thread switches per file.
  share_.commit(std::move(job), false);
  if (!commit_wake_posted_) {
    commit_wake_posted_ = true;
    boost::asio::post(conn_.executor(), [self = shared_from_this()] {
      self->commit_wake_posted_ = false;
      self->share_.wake_committer();
    });
  }
}

// ---- downloads

void files_session::do_get(std::uint64_t id, const json& h) {
  auto path = checked_path(id, h, "path");
  if (!path) return;
  bool sha = false;
  if (!wants_sha256(h, sha)) return error(id, errc::bad_request, "'verify' must be \"xxh3\" or \"sha256\"");
  util::unique_fd fd(share_.jail().open(*path, O_RDONLY | O_NONBLOCK));
  if (!fd) return fail_errno(id, -fd.release(), "'" + *path + "'");
  auto d = std::make_unique<download>(sha);
  if (::fstat(fd.get(), &d->st) != 0) return error(id, errc::io_error, errno_message(errno, "stat"));
  if (S_ISDIR(d->st.st_mode)) return error(id, errc::bad_request, "'" + *path + "' is a directory (use -r)");
  if (!S_ISREG(d->st.st_mode)) return error(id, errc::bad_request, "'" + *path + "' is not a regular file");
  d->id = id;
  d->size = static_cast<std::uint64_t>(d->st.st_size);
  json meta = {{"size", d->size}, {"mode", d->st.st_mode & 07777}, {"mtime_ns", util::mtime_ns(d->st)}};

  // Resume: continue after the receiver's part if it matches our content.
  const auto offset = opt_number<std::uint64_t>(h, "offset").value_or(0);
  if (offset > 0 && offset <= d->size) {
    if (util::hash_file_range(fd.get(), 0, offset, d->digest) == 0 && d->digest.xxh3_hex() == h.value("xxh3", "")) {
      d->pos = offset;
    } else {
      d->digest.reset();
    }
  }
  if (d->pos == 0 && d->size <= inline_file_max) {
    std::string body(static_cast<std::size_t>(d->size), '\0');
    long n = util::read_full(fd.get(), body.data(), body.size(), 0);
    if (n < 0) return error(id, errc_for_errno(static_cast<int>(-n)), errno_message(static_cast<int>(-n), "reading '" + *path + "'"));
    if (static_cast<std::uint64_t>(n) != d->size) {
      return error(id, errc::changed, "'" + *path + "' changed while it was being read");
    }
    d->digest.update(body.data(), body.size());
    meta["type"] = "get.file";
    meta["xxh3"] = d->digest.xxh3_hex();
    if (sha) meta["sha256"] = d->digest.sha256_hex();
    return reply(id, meta, body);
  }
  meta["type"] = "get.begin";
  meta["offset"] = d->pos;
  d->fd = std::move(fd);
  const auto delta = h.find("delta");
  if (delta != h.end() && delta->is_boolean() && delta->get<bool>() && d->pos < d->size && offer_description(*d)) {
    meta["delta"] = {{"chunk_avg", d->describing->params.avg}};
  }
  reply(id, meta);
  download_ = std::move(d);
  stream_download();  // (a delta download waits for its description and the client's ranges)
}

bool files_session::offer_description(download& d) {
  // Files that fit one frame come whole anyway; the description's lists
  // count against the same bound as a put's basis.
  const auto params = util::delta::params_for(d.size);
  if (d.size <= inline_file_max || d.size / params.min > max_basis_chunks) return false;
  if (basis_job_ && !basis_job_->finished) return false;  // one reading per connection (with puts' bases)
  const std::uint64_t memory = (d.size / params.min + 1) * 128;
  if (!share_.reserve_basis_memory(memory)) return false;
  d.memory_share = &share_;
  d.memory = memory;
  d.serial = ++upload_serial_;
  d.describing = describe_in_background(d.id, d.serial, d.fd.get(), d.size, params, d.digest.has_sha256(),
                                        &files_session::description_arrived, "get.progress");
  if (!d.describing) {
    d.drop_lists();
    return false;
  }
  basis_job_ = d.describing;
  return true;
}

void files_session::description_arrived(const basis_job& job, basis_batch batch) {
  if (!download_ || download_->id != job.id || download_->serial != job.serial) return;
  download& d = *download_;
  if (batch.failed) return finish_download(errc::changed, "the file changed while it was being read");
  if (!d.ranges_given) {  // (ranges already asked for: the lists are not needed)
    d.chunks.insert(d.chunks.end(), batch.chunks.begin(), batch.chunks.end());
    d.groups.insert(d.groups.end(), batch.groups.begin(), batch.groups.end());
  }
  json h = {{"type", "get.groups"}, {"count", batch.groups.size()}, {"done", batch.done}};
  reply(job.id, h, util::delta::encode_groups(batch.groups));
  if (!batch.done) return;
  d.described = true;
  d.xxh3 = std::move(batch.xxh3);
  d.sha256 = std::move(batch.sha256);
  if (d.ranges_given) {
    d.drop_lists();  // (the hashing thread is done with them too)
    return stream_download();
  }
  // The lists are held for the client, which may still be reading its
  // own copy (up to four times this file; 25 MB/s is slow): not for ever.
  const auto allowed = std::chrono::seconds(60) + std::chrono::seconds(d.size / 25'000'000 * 4);
  watch_ranges_deadline(d.id, d.serial, std::chrono::steady_clock::now() + allowed, allowed);
}

void files_session::watch_ranges_deadline(std::uint64_t id, std::uint64_t serial,
                                          std::chrono::steady_clock::time_point until, std::chrono::seconds allowed) {
  // Checked every few seconds rather than with one long timer, which would
  // keep the connection's state alive that long after it closed.
  conn_.run_after(std::chrono::seconds(5), [w = weak_from_this(), id, serial, until, allowed] {
    auto self = w.lock();
    if (!self || self->conn_.closing() || !self->download_ || self->download_->id != id ||
        self->download_->serial != serial || self->download_->ranges_given) {
      return;
    }
    if (std::chrono::steady_clock::now() < until) return self->watch_ranges_deadline(id, serial, until, allowed);
    self->finish_download(errc::bad_request, "no get.ranges within " + std::to_string(allowed.count()) +
                                                 " s of the description (get.groups with done)");
  });
}

files_session::download* files_session::delta_download(std::uint64_t id, const char* what) {
  if (!download_ || download_->id != id) return nullptr;  // over (and answered), or never: ignored
  if (!download_->delta()) {
    finish_download(errc::bad_request, std::string(what) + " for a download that is not a delta download");
    return nullptr;
  }
  return download_.get();
}

void files_session::get_chunks(std::uint64_t id, std::string_view body) {
  download* d = delta_download(id, "get.chunks");
  if (!d) return;
  if (!d->described || d->chunks_asked || d->ranges_given) {
    return finish_download(errc::bad_request,
                           "get.chunks comes once, after get.groups with done and before get.ranges");
  }
  const auto which = util::delta::decode_indices(body, d->groups.size());
  if (!which) {
    return finish_download(errc::bad_request, "get.chunks: the body must be group numbers (u32, big-endian), "
                                              "increasing, below " + std::to_string(d->groups.size()));
  }
  const std::string records = util::delta::encode_chunks(d->chunks, d->groups, *which);
  d->chunks_asked = true;
  d->drop_lists();
  reply(id, {{"type", "get.chunks.reply"}, {"count", records.size() / util::delta::chunk_record}}, records);
}

void files_session::get_ranges(std::uint64_t id, std::string_view body) {
  download* d = delta_download(id, "get.ranges");
  if (!d) return;
  if (d->ranges_given) return finish_download(errc::bad_request, "get.ranges comes once per download");
  auto ranges = util::delta::decode_ranges(body, d->size);
  // No more ranges than the file has chunks: each is a pread (and, under
  // TLS, part of a frame) for the server.
  const std::uint64_t most = d->size / d->describing->params.min + 1;
  if (!ranges || ranges->size() > most) {
    return finish_download(errc::bad_request, "get.ranges: the body must be at most " + std::to_string(most) +
                                              " ranges (offset, length: u64 big-endian), non-empty, increasing, "
                                              "within the file's " + std::to_string(d->size) + " bytes");
  }
  for (const auto& r : *ranges) {
    if (!d->ranges.empty() && d->ranges.back().offset + d->ranges.back().length == r.offset) {
      d->ranges.back().length += r.length;  // (ranges that touch are one)
    } else {
      d->ranges.push_back(r);
    }
  }
  d->ranges_given = true;
  if (d->described) {
    d->drop_lists();
  } else {
    d->chunks = {};  // (the memory stays counted until the hashing thread is done)
    d->groups = {};
  }
  stream_download();
}

void files_session::stream_download() {
  // With TLS in user space every byte is read into memory to be encrypted:
  // reading it once, digesting it there and sending what was read costs
  // one pass over the file; digesting a mapping of the page cache, then
  // letting send_file read the file again, costs two (docs/architecture.md).
  const bool copy_through = conn_.encrypts_in_user_space();
  const std::size_t high = copy_through ? tls_download_high : download_high;
  const std::size_t low = copy_through ? tls_download_low : download_low;
  if (download_ && download_->delta() && !(download_->described && download_->ranges_given)) return;
  while (download_ && download_->more()) {
    if (conn_.closing()) {
      if (download_audit_) {
        audit(*download_audit_, download_->sent, "interrupted",
              "the connection closed; the download can be resumed");
      }
      download_audit_.reset();
      download_.reset();
      return;
    }
    if (conn_.queued_bytes() > high) {
      conn_.when_queue_below(low, [w = weak_from_this()] {
        if (auto self = w.lock()) self->stream_download();
      });
      return;
    }
    download& d = *download_;
    if (d.delta()) {
      if (!send_ranges_read(d)) return;
      continue;
    }
    const auto [at, n] = d.next_piece(copy_through ? tls_piece : data_chunk);
    if (copy_through) {
      if (!send_piece_read(d, at, n)) return;
      d.advance(n);
      continue;
    }
    if (int e = util::hash_file_range(d.fd.get(), at, n, d.digest)) {
      return finish_download(errc::changed, e == EIO ? "the file shrank while it was being sent"
                                                     : errno_message(e, "reading the file"));
    }
    conn_.send_file({{"type", "get.data"}, {"id", d.id}}, d.fd.get(), at, n);
    d.advance(n);
  }
  if (!download_) return;
  struct stat now {};
  const auto& was = download_->st;
  if (::fstat(download_->fd.get(), &now) != 0 || now.st_size != was.st_size || now.st_mtim.tv_sec != was.st_mtim.tv_sec ||
      now.st_mtim.tv_nsec != was.st_mtim.tv_nsec) {
    return finish_download(errc::changed, "the file changed while it was being sent");
  }
  const download& d = *download_;
  json end = {{"type", "get.end"}, {"size", d.size}, {"xxh3", d.delta() ? d.xxh3 : d.digest.xxh3_hex()}};
  if (d.digest.has_sha256()) end["sha256"] = d.delta() ? d.sha256 : d.digest.sha256_hex();
  if (download_audit_) audit(*download_audit_, d.sent, "ok");
  download_audit_.reset();
  reply(download_->id, end);
  download_.reset();
  pump();
}

namespace {
// One buffer per loop thread for the pieces of downloads read into memory:
// each is encrypted into the connection's output by send() before the
// next is read.
char* download_buffer() {
  thread_local std::unique_ptr<char[]> buf(new char[tls_piece]);
  return buf.get();
}
}  // namespace

bool files_session::read_piece(download& d, char* into, std::uint64_t at, std::size_t n) {
  const long got = util::read_full(d.fd.get(), into, n, at);
  if (got < 0) {
    finish_download(errc_for_errno(static_cast<int>(-got)), errno_message(static_cast<int>(-got), "reading the file"));
    return false;
  }
  if (static_cast<std::size_t>(got) != n) {
    finish_download(errc::changed, "the file shrank while it was being sent");
    return false;
  }
  return true;
}

bool files_session::send_piece_read(download& d, std::uint64_t at, std::size_t n) {
  char* buf = download_buffer();
  if (!read_piece(d, buf, at, n)) return false;
  d.digest.update(buf, n);
  conn_.send({{"type", "get.data"}, {"id", d.id}}, std::string_view(buf, n));
  return true;
}

bool files_session::send_ranges_read(download& d) {
  // A delta's ranges are read into one frame of up to tls_piece bytes,
  // however small they are (a frame per range would cost a frame header,
  // and without TLS a descriptor for sendfile, per range); a bounded
  // number of reads per frame keeps each turn of the loop short.
  char* buf = download_buffer();
  std::size_t filled = 0;
  for (int reads = 0; filled < tls_piece && d.more() && reads < 1024; ++reads) {
    const auto [at, n] = d.next_piece(tls_piece - filled);
    if (!read_piece(d, buf + filled, at, n)) return false;
    filled += n;
    d.advance(n);
  }
  conn_.send({{"type", "get.data"}, {"id", d.id}}, std::string_view(buf, filled));
  return true;
}

void files_session::finish_download(errc code, std::string_view message) {
  if (download_audit_) audit(*download_audit_, download_->sent, proto::to_wire(code), message);
  download_audit_.reset();
  error(download_->id, code, message);
  download_.reset();
  pump();
}

}  // namespace cskit::service
