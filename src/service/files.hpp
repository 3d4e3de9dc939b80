#pragma once
// File transfer and remote file operations on the share (docs/protocol.md,
// "Files"). Every path goes through the jail (util/jail.hpp): syntax first,
// then openat2(RESOLVE_BENEATH) at open time.
//
// Uploads are written to a part file in the destination directory
// (".cskit-part.<hash of the name>"), digested while written, and only
// committed (fsync, then rename over the target) when the sender's digest
// matches. A part file survives a crash on either side and is offered for
// resumption. Commits go through one committer thread per share that
// groups them: one syncfs() covers every file that is waiting, so many
// small files cost one flush, not one each.
//
// Downloads are sent with sendfile; the content is digested in place
// through a read-only mapping, never copied through user space.

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <sys/stat.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "proto/errc.hpp"
#include "proto/frame.hpp"
#include "util/delta.hpp"
#include "util/digest.hpp"
#include "util/file_io.hpp"
#include "service/part_registry.hpp"
#include "util/jail.hpp"

namespace cskit::net {
class connection;
}

namespace cskit::service {

struct files_options {
  std::uint64_t max_file_size = 0;  ///< bytes; 0: no limit
  std::uint64_t quota = 0;          ///< bytes of regular files in the share; 0: no quota
  bool fsync = true;                ///< flush to disk before a file is renamed into place
};

/// Files up to this size may be sent in one frame (put with a body, get.file).
inline constexpr std::uint64_t inline_file_max = 256 * 1024;
/// Paths one fs.digest may name.
inline constexpr std::size_t max_digest_paths = 1000;
/// Body size of each get.data frame.
inline constexpr std::size_t data_chunk = 4u << 20;

/// A rename (or link) into place, waiting for the committer thread.
struct commit_job {
  util::unique_fd file;  ///< the part file, open for writing
  util::unique_fd dir;   ///< its directory
  std::string part;      ///< part file name in dir; empty: `file` is unnamed (util::open_unnamed), to be linked
  std::string target;    ///< final name in dir
  bool no_clobber = false;
  std::optional<mode_t> mode;
  std::optional<std::int64_t> mtime_ns;
  std::uint64_t size = 0;
  std::uint64_t reserved = 0;  ///< quota reservation to release
  /// When the upload ended: a part of this target held since before is
  /// superseded by the commit.
  std::chrono::steady_clock::time_point submitted = std::chrono::steady_clock::now();
  /// Called on the committer thread with 0 or an errno (EEXIST: no_clobber).
  /// A part refused for good (EEXIST, EISDIR) has been removed by then;
  /// after any other error it stays, for a later retry. (An unnamed file
  /// is gone either way once the job is done.)
  std::function<void(int err)> done;
};

/// The share: the jail, the quota and the committer. Shared by every
/// connection; thread-safe.
/// What a share operation offered by more than one protocol (the cskit
/// protocol's fs.*, the web page's API) came to: its error, or what it did.
struct fs_outcome {
  proto::errc code = proto::errc::ok;
  std::string message;      ///< the refusal, for the client
  std::uint64_t bytes = 0;  ///< rm: what was freed (even partway); mv: a moved file's size
  std::uint64_t count = 0;  ///< rm: entries removed
  std::string path;         ///< mv: where it went (into a directory: its new path)
  bool ok() const noexcept { return code == proto::errc::ok; }
};

class file_share {
 public:
  /// Opens `root`; when a quota is set, adds up the sizes already there.
  file_share(const std::filesystem::path& root, files_options options);
  ~file_share();
  file_share(const file_share&) = delete;
  file_share& operator=(const file_share&) = delete;

  const util::dir_jail& jail() const noexcept { return jail_; }
  const files_options& options() const noexcept { return options_; }
  /// The limits now (a reload may change them); 0: none.
  std::uint64_t max_file_size() const noexcept { return max_file_size_.load(std::memory_order_relaxed); }
  std::uint64_t quota() const noexcept { return quota_.load(std::memory_order_relaxed); }
  /// New limits (a configuration reload). The quota can change, but not
  /// be turned on or off (usage is counted only with a quota from the
  /// start): false, and the quota unchanged, when that was asked.
  bool set_limits(std::uint64_t max_file_size, std::uint64_t quota) noexcept;

  /// Reserves `bytes` against the quota; false when it would be exceeded.
  bool reserve(std::uint64_t bytes) noexcept;
  void release(std::uint64_t bytes) noexcept;
  void adjust_usage(std::int64_t delta) noexcept;
  std::uint64_t usage() const noexcept { return usage_.load(); }

  /// Memory for the descriptions of delta uploads' old contents (their
  /// chunk and group lists), bounded for the whole share: false when
  /// `bytes` more would pass the bound (the upload then goes whole).
  bool reserve_basis_memory(std::uint64_t bytes) noexcept;
  void release_basis_memory(std::uint64_t bytes) noexcept { basis_memory_ -= bytes; }
  static constexpr std::uint64_t max_basis_memory = 256u << 20;

  /// Queues a commit; job.done runs on the committer thread. With `wake`
  /// false the committer is not woken: the caller calls wake_committer()
  /// once for many jobs, so that they are flushed and renamed as one batch.
  void commit(commit_job job, bool wake = true);
  void wake_committer();
  /// Asks the committer thread to start writing back `length` bytes of
  /// `file` from `offset` (sync_file_range), so that the flush at commit
  /// finds little left to do: the disk works while the network does. Takes
  /// a duplicate of `file`; the caller's thread never waits for the disk.
  void start_writeback(int file, std::uint64_t offset, std::uint64_t length);
  // The operations on names, for any protocol: `path`s are relative, checked
  // and normalized by the caller (util::check_relative_path), and name no
  // part file. Quota usage follows what they remove or replace.
  /// rm (-r with `recursive`): a file, an empty directory, or a tree.
  fs_outcome remove(const std::string& path, bool recursive);
  /// mv: to a new name, or into `to` when it is a directory (as mv does).
  fs_outcome move(const std::string& from, const std::string& to, bool no_clobber);
  /// mkdir of one directory (its parent must exist), mode 0777 less the umask.
  fs_outcome make_directory(const std::string& path);

  /// Who holds which part (see part_registry).
  part_registry& parts() noexcept { return parts_; }
  /// Runs `job` on the share's hashing thread, one job after another:
  /// digests of whole files (fs.list's `digests`) read the disk there,
  /// never on an event loop. False (nothing queued) when max_hash_jobs are
  /// waiting already. Jobs still queued at stop() are dropped; a running
  /// one sees stopping() and ends early.
  bool hash_in_background(std::function<void()> job);
  bool stopping() const noexcept { return stop_requested_.load(std::memory_order_relaxed); }
  static constexpr std::size_t max_hash_jobs = 64;
  /// Stops and joins the committer (after its queue) and the hashing
  /// thread; called once the event loops have stopped, before they are
  /// destroyed (both threads post to them). The destructor does it too.
  void stop();

 private:
  void committer();
  // The committer's steps: mode, time and one flush for the batch (an
  // errno per job), the rename (or link) of one, and its answer.
  std::vector<int> make_durable(std::deque<commit_job>& batch);
  int rename_into_place(commit_job& j);
  void finish_commit(commit_job& j, int result);
  void hasher();

  util::dir_jail jail_;
  files_options options_;
  const bool counted_;  // a quota from the start: usage is counted
  std::atomic<std::uint64_t> max_file_size_;
  std::atomic<std::uint64_t> quota_;
  std::atomic<std::uint64_t> usage_{0};
  std::atomic<std::uint64_t> reserved_{0};
  std::atomic<std::uint64_t> basis_memory_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<commit_job> jobs_;
  struct writeback {
    util::unique_fd file;
    std::uint64_t offset, length;
  };
  std::deque<writeback> writebacks_;
  bool stopping_ = false;
  part_registry parts_;
  std::deque<std::function<void()>> hash_jobs_;  // guarded by mu_
  std::atomic<bool> stop_requested_{false};
  std::condition_variable hash_cv_;
  std::thread thread_;
  std::thread hash_thread_;
};

/// Maps an errno from a file operation to a protocol error and message.
proto::errc errc_for_errno(int err) noexcept;
std::string errno_message(int err, std::string_view what);

/// One connection's file requests. Lives in the connection's scope; every
/// member runs on the connection's thread.
class files_session : public std::enable_shared_from_this<files_session> {
 public:
  /// `may_read`: the user has files-read too (a put's old content, which
  /// delta transfer describes and copies from, is only offered then).
  /// `user` names the account in the audit records (service/audit.hpp).
  files_session(file_share& share, net::connection& conn, bool may_read = true, std::string user = {});
  ~files_session();

  // Requests (header = the request's frame header, id its id). Replies and
  // errors go to the connection.
  void request(std::uint64_t id, proto::json header, std::string body);
  void put_data(std::uint64_t id, const proto::json& header, std::string_view part);
  void put_data_done(std::uint64_t id);
  void put_end(std::uint64_t id, const proto::json& header);
  void put_abort(std::uint64_t id, const proto::json& header);
  /// Delta: the chunk lists of basis groups (put.chunks), and a piece of
  /// the new content copied from the basis (put.copy).
  void put_chunks(std::uint64_t id, std::string_view body);
  void put_copy(std::uint64_t id, const proto::json& header);
  /// Delta downloads: the chunk lists of some of the file's groups
  /// (get.chunks), and the byte ranges the client lacks (get.ranges).
  void get_chunks(std::uint64_t id, std::string_view body);
  void get_ranges(std::uint64_t id, std::string_view body);

  /// Uploads in progress (for tests and logging).
  std::size_t uploads() const noexcept { return uploads_.size(); }

  /// A transfer or a request is in flight (the server's grace period
  /// waits for it).
  bool busy() const noexcept;
  /// The grace period is over: every transfer in flight is answered with
  /// shutting_down and `why` (its part stays, so it can be resumed).
  void abandon_transfers(std::string_view why);

 private:
  struct upload;
  struct download;
  struct queued_request {
    std::uint64_t id;
    proto::json header;
    std::string body;
  };

  void pump();
  bool run(queued_request& q);  // false: must wait (the request stays queued)
  /// A resumable put whose part another upload holds waits (true) until
  /// that holder's peer is found alive or gone.
  bool wait_for_part_holder(const queued_request& q);
  /// The upload of another connection that holds the part `h` would
  /// resume (nullptr: none, or free).
  std::shared_ptr<part_registry::claim> holder_of_part(const proto::json& h) const;
  /// As the holder: whether this connection's peer is alive (`done(true)`
  /// at its next sign of life); one that stays silent is closed.
  void probe_peer(std::function<void(bool alive)> done);
  void watch_peer(std::chrono::steady_clock::time_point since, std::chrono::steady_clock::time_point until,
                  std::function<void(bool alive)> done);
  /// TLS in user space: reads the next piece of a download, digests it and
  /// sends it. False when the download ended with an error.
  bool send_piece_read(download& d, std::uint64_t at, std::size_t n);
  /// Reads n bytes of the download's file at `at`; false (and the download
  /// ended with an error) when it cannot be read as that long.
  bool read_piece(download& d, char* into, std::uint64_t at, std::size_t n);
  /// A delta download's ranges: as many as fill a frame, read and sent.
  bool send_ranges_read(download& d);
  void error(std::uint64_t id, proto::errc code, std::string_view message);
  /// `too_large` with the `limit` it went over.
  void error_over_limit(std::uint64_t id, std::uint64_t limit, std::string_view message);
  /// error() for an errno from the file system, with `what` as context.
  void fail_errno(std::uint64_t id, int err, const std::string& what);
  void reply(std::uint64_t id, proto::json header, std::string_view body = {});

  void do_stat(std::uint64_t id, const proto::json& h);
  void do_list(std::uint64_t id, const proto::json& h);
  struct list_output;
  void list_tree(list_output& out, const std::string& path, bool recursive, util::unique_fd top);
  void report_list_failure(std::uint64_t id, const std::string& where, int err);
  /// fs.list with `digests`: the listing is complete in `work`; its files
  /// are hashed on the share's hashing thread, then the frames are sent.
  struct digest_listing;
  void list_with_digests(std::shared_ptr<digest_listing> work);
  void report_progress(std::uint64_t id, std::function<std::optional<proto::json>()> frame);
  /// fs.digest: whole-file digests of named files, on the hashing thread.
  struct digest_request;
  void do_digest(std::uint64_t id, const std::string& body);
  void send_digests(digest_request& work);
  void send_listing(digest_listing& work);
  void send_list_frame(std::uint64_t id, const proto::json& entries, bool done, std::size_t skipped, bool packed);
  void do_mkdir(std::uint64_t id, const proto::json& h);
  void finish_mkdir(std::uint64_t id, int dirfd, bool created, const std::string& path,
                    const std::optional<std::string>& tree_of);
  void do_rm(std::uint64_t id, const proto::json& h);
  void do_mv(std::uint64_t id, const proto::json& h);
  void do_symlink(std::uint64_t id, const proto::json& h);
  void do_setattr(std::uint64_t id, const proto::json& h);
  void do_put(std::uint64_t id, const proto::json& h, std::string& body);
  // do_put's steps; each answers the request itself when it fails.
  struct put_request;
  std::optional<put_request> parse_put(std::uint64_t id, const proto::json& h, const std::string& body);
  /// Whether the target name cannot be taken (a directory, or no_clobber and it exists); answered.
  bool refuse_put_target(std::uint64_t id, const upload& u, const put_request& req);
  std::unique_ptr<upload> open_put_target(std::uint64_t id, const put_request& req);
  bool open_put_part(std::uint64_t id, upload& u, const put_request& req, struct stat& st);
  void put_inline(std::uint64_t id, std::unique_ptr<upload> u, const proto::json& h, const std::string& body,
                  const struct stat& st);
  void put_streamed(std::uint64_t id, std::unique_ptr<upload> u, const put_request& req, const struct stat& st);
  proto::json ready_frame(const upload& u) const;
  struct basis_job;
  struct basis_batch {
    std::vector<util::delta::chunk> chunks;
    std::vector<util::delta::group> groups;
    bool done = false, failed = false;
    std::string xxh3, sha256;  // a download's whole content (done)
  };
  bool offer_basis(std::uint64_t id, upload& u);
  /// Starts the hashing thread's description of `fd` (a put's basis, a
  /// get's file) for request `id`; its batches go to `arrived`, and
  /// `progress_type` frames report it once a second. nullptr when the
  /// thread is too busy.
  std::shared_ptr<basis_job> describe_in_background(std::uint64_t id, std::uint64_t serial, int fd, std::uint64_t size,
                                                    const util::delta::params& params, std::optional<bool> digest_sha,
                                                    void (files_session::*arrived)(const basis_job&, basis_batch),
                                                    const char* progress_type);
  util::unique_fd basis_candidate(const upload& u, const util::delta::params& params, struct stat& st) const;
  // On the hashing thread: reads the basis and hands its groups to
  // `deliver` in batches; `gone` says when nobody needs them any more.
  static void describe_basis(basis_job& job, const std::function<bool()>& gone,
                             const std::function<void(basis_batch)>& deliver);
  void basis_arrived(const basis_job& job, basis_batch batch);
  bool append(upload& u, std::string_view bytes);  // false: the upload failed (and was answered)
  bool copy_from_basis(upload& u, std::uint64_t from, std::uint64_t size);  // likewise
  void drain_copies(std::uint64_t id, std::uint64_t budget);
  void schedule_copies(std::uint64_t id);
  void do_get(std::uint64_t id, const proto::json& h);
  /// A get with "delta": describes the file (get.groups) instead of
  /// streaming it, if it may; the client then asks for ranges.
  bool offer_description(download& d);
  void description_arrived(const basis_job& job, basis_batch batch);
  /// Ends the delta download `id` if its get.ranges has not come by `until`.
  void watch_ranges_deadline(std::uint64_t id, std::uint64_t serial, std::chrono::steady_clock::time_point until,
                             std::chrono::seconds allowed);
  /// The current download, if it is the delta download `id` (else answered or ignored).
  download* delta_download(std::uint64_t id, const char* what);
  void stream_download();
  void finish_download(proto::errc code, std::string_view message);
  void fail_upload(upload& u, proto::errc code, const std::string& message,
                   std::optional<std::uint64_t> limit = std::nullopt);
  void submit_commit(upload& u, std::uint64_t id);

  /// Checks a request path: on failure replies bad_path and returns nullopt.
  std::optional<std::string> checked_path(std::uint64_t id, const proto::json& h, const char* key);

  // The audit trail (service/audit.hpp). A request is recorded when it is
  // answered: rm, mv and mkdir by their one reply; put and get by their
  // refusal, or later, by the end of the transfer (or its failure).
  struct audit_entry {
    std::uint64_t id;
    std::string op, path, to;
    std::uint64_t bytes = 0;  // rm: what was freed; mv: a moved file's size
  };
  void audit(const audit_entry& a, std::uint64_t bytes, std::string_view result, std::string_view detail = {});
  /// The request being dispatched, recorded by its reply or error (once).
  void audit_answer(std::uint64_t id, const proto::json* reply, std::string_view result, std::string_view detail);
  std::optional<audit_entry> pending_audit_;
  std::optional<audit_entry> download_audit_;  // the download in progress
  std::string user_;
  std::string peer_;  // copied: the destructor may outlive the connection

  file_share& share_;
  net::connection& conn_;
  std::deque<queued_request> queue_;
  std::size_t queued_bytes_ = 0;
  std::map<std::uint64_t, std::unique_ptr<upload>> uploads_;
  std::unique_ptr<download> download_;
  // An fs.list with digests the hashing thread works for: the requests
  // after it wait.
  std::shared_ptr<void> line_held_;
  bool may_read_ = true;
  std::shared_ptr<basis_job> basis_job_;  // the last put basis read for this connection
  std::uint64_t upload_serial_ = 0;
  std::string copy_buffer_;  // put.copy's reads of a basis
  int commits_pending_ = 0;
  bool commit_wake_posted_ = false;
  bool pumping_ = false;
  struct part_wait {
    std::uint64_t id;
    std::chrono::steady_clock::time_point until;
    std::shared_ptr<bool> alive;  // the holder's answer (set on this thread)
  };
  std::optional<part_wait> part_wait_;
  std::optional<std::uint64_t> part_checked_;  // the put whose part holder was looked for
  bool part_poll_armed_ = false;               // a timer will pump the queue again
};

}  // namespace cskit::service
