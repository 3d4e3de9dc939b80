#pragma once
// A server-side framed connection on its own single-threaded io_context, so
// it needs no locks. The reader and the deadline watchdog are callbacks (at
// most one outstanding wait each, none for a reader parked by backpressure;
// no coroutine frame); a writer coroutine exists only while a write has to
// wait. Every member function must be called on that
// thread (from the handler's callbacks, or via post(executor(), ...)).
//
// Memory: an idle connection holds no read buffer (the reader waits for
// readability, then reads into a per-thread buffer and decodes at once) and
// no write buffer (released when the queue drains). A frame shared by many
// receivers (a chat broadcast) is queued by reference, not copied.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/admission.hpp"
#include "proto/frame.hpp"

namespace cskit::net {

namespace tls {
class context;
class channel;
}  // namespace tls

using clock = std::chrono::steady_clock;

struct connection_limits {
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(10)};
  std::chrono::milliseconds idle_timeout{std::chrono::seconds(300)};
  std::chrono::milliseconds frame_timeout{std::chrono::seconds(30)};
  /// A write that makes no progress for this long means the peer stopped reading.
  std::chrono::milliseconds write_timeout{std::chrono::seconds(30)};
  /// Time to flush a final error frame before the socket is closed anyway.
  std::chrono::milliseconds linger_timeout{std::chrono::seconds(2)};
  /// The reader stops taking requests while more than this is queued to send.
  std::size_t send_queue_high = 4u << 20;
  /// Hard bound: a send that would exceed it closes the connection (overloaded).
  std::size_t send_queue_max = 64u << 20;
};

class connection;

/// One per event loop: connections that had frames queued from outside
/// their own reader (a chat broadcast, a notice) and are written together
/// by a task behind the loop's current work. A receiver then gets one send
/// for everything queued to it meanwhile, and no coroutine has to be woken
/// for it. Used only on its loop's thread.
///
/// A round writes `slice` connections per task and then yields to the
/// loop, so a message that arrives while a round of a large fan-out is
/// under way is read at once: the receivers the round has not reached yet
/// take it in the same send, and only those already written wait for the
/// next round. A delivery then waits at most about one round, not two.
class flush_queue {
 public:
  static constexpr std::size_t slice = 64;
  explicit flush_queue(boost::asio::any_io_executor ex) : executor_(std::move(ex)) {}
  flush_queue(const flush_queue&) = delete;
  flush_queue& operator=(const flush_queue&) = delete;
  void add(std::shared_ptr<connection> c);

 private:
  void run();
  void post();
  boost::asio::any_io_executor executor_;
  std::vector<std::shared_ptr<connection>> dirty_;    // listed since the round began
  std::vector<std::shared_ptr<connection>> running_;  // the round; [next_, end) still to write
  std::size_t next_ = 0;
  bool posted_ = false;
};

/// The session logic behind a connection (server/session.hpp implements it).
/// All callbacks run on the connection's thread.
class frame_handler {
 public:
  virtual ~frame_handler() = default;
  virtual void on_open(connection& c) = 0;
  virtual void on_frame(connection& c, proto::frame&& f) = 0;
  /// A frame that declares a body has a complete header. Return true to get
  /// the body in pieces, as it arrives, through on_body_part (bulk data
  /// goes straight to its destination); on_frame then follows with an
  /// empty body. Default: false (the body is buffered whole).
  virtual bool on_header(connection& c, const proto::json& header);
  virtual void on_body_part(connection& c, std::string_view part);
  /// Graceful server shutdown has begun: finish what is in flight within
  /// `grace`. Default: send `bye`, flush the queue (up to `grace`), close.
  virtual void on_shutdown(connection& c, std::chrono::milliseconds grace);
  /// The grace period is over and the connection is still open: say what
  /// was cut, and close. Default: close at once.
  virtual void on_grace_over(connection& c);
  /// The server re-read its configuration (SIGHUP): check that what this
  /// connection was allowed still holds, and close it if not. Default:
  /// nothing to check.
  virtual void on_reload(connection& c);
  /// Called exactly once, after the socket is closed.
  virtual void on_close(connection& c, std::string_view reason) = 0;

  // A line protocol (IRC) instead of frames: when line_limit() is not 0,
  // the connection splits what it reads at LF (a CR before it is dropped)
  // and hands each line to on_line; a line longer than line_limit() bytes
  // is discarded up to its LF and reported by on_line_too_long. A partial
  // line is a frame in progress for the frame deadline.
  virtual std::size_t line_limit() const { return 0; }
  virtual void on_line(connection& c, std::string_view line);
  virtual void on_line_too_long(connection& c);
  // A byte stream (HTTP) instead of frames or lines: when stream_mode() is
  // true, what is read goes to on_bytes as it arrives. The handler tells
  // the connection where the peer's messages stand (report_progress).
  enum class progress { idle, header, body };
  virtual bool stream_mode() const { return false; }
  virtual void on_bytes(connection& c, std::string_view bytes);
  /// The peer sent its last byte (a FIN, or TLS close_notify); it may still
  /// read. Default: close once what is queued is sent.
  virtual void on_peer_eof(connection& c);

  /// What the connection says in its protocol when it gives up on the peer
  /// (a deadline, an error) just before closing. Default: the cskit
  /// `error` frame `error`.
  virtual void encode_failure(std::string& out, const proto::json& error);
  /// The keepalive ping (set_keepalive). Default: a cskit `ping` frame.
  virtual void send_ping(connection& c);
};

class connection : public std::enable_shared_from_this<connection> {
 public:
  /// `flush`: the loop's flush queue (null: each send wakes the writer).
  /// `tls`: the server's TLS context; null serves cleartext (the explicit
  /// opt-in). With TLS, nothing reaches the handler before the TLS
  /// handshake is complete: on_open() follows it.
  connection(boost::asio::ip::tcp::socket socket, const connection_limits& limits,
             std::unique_ptr<frame_handler> handler, flush_queue* flush = nullptr,
             std::shared_ptr<const tls::context> tls = nullptr);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Chooses the handler by the protocol the TLS handshake agreed on: once
  /// it is done, `router(alpn, {})` may return the handler that replaces
  /// the one given (null keeps it). A client that offered no ALPN (wget,
  /// openssl s_client) gets `sniff_window` to speak first: `router("",
  /// first_bytes)` then decides by what it sent (nothing: by no bytes).
  /// Call before start().
  using protocol_router =
      std::function<std::unique_ptr<frame_handler>(std::string_view alpn, std::string_view first_bytes)>;
  static constexpr std::chrono::milliseconds sniff_window{100};
  void set_protocol_router(protocol_router router) { router_ = std::move(router); }

  /// Starts reading and the deadline timer. `on_finished` runs once
  /// everything has stopped.
  void start(std::function<void(connection&)> on_finished);

  /// Queues one frame. Returns false (and drops it) when the connection is
  /// closing, or closes the connection with `overloaded` when the queue
  /// would exceed send_queue_max.
  bool send(const proto::json& header, std::string_view body = {});
  /// Queues a frame that is already encoded (one encoding shared by many
  /// receivers, as in a chat broadcast) by reference: the connection keeps
  /// `frame` alive until it is written, and never copies it. Same rules as
  /// send().
  bool send_shared(std::shared_ptr<const std::string> frame);
  /// Queues bytes as they are (a line protocol's output). Same rules as send().
  bool send_raw(std::string_view bytes);
  /// Queues a frame whose body is `length` bytes of the open file `fd`
  /// from `offset`, sent with sendfile (no copy through user space). `fd`
  /// is duplicated, so the caller may close its own. Should the file
  /// turn out shorter, zeros are sent in its place so the framing stays
  /// intact (the content digest then tells the receiver). Same rules as
  /// send(); `length` counts against the queue bounds.
  bool send_file(const proto::json& header, int fd, std::uint64_t offset, std::size_t length);
  /// `length` bytes of `fd` from `offset`, as they are (a stream protocol's
  /// body, after its header sent with send_raw). Should the file end
  /// early, the connection is closed: the peer sees a short body, never
  /// made-up bytes.
  bool send_file_raw(int fd, std::uint64_t offset, std::size_t length);
  /// Stream mode: where the peer's messages stand: none in progress, a
  /// header coming (the frame deadline runs from its first byte;
  /// `new_message`: one began since the last report), or a body streaming
  /// (the deadline is progress, as for a streamed frame body).
  void report_progress(frame_handler::progress p, bool new_message);

  /// Sends an `error` frame, stops reading, flushes, closes. With a delay,
  /// the error is held back that long first (slows password guessing).
  void fail(proto::errc code, std::string_view message = {}, std::optional<std::uint64_t> id = {},
            std::chrono::milliseconds delay = {});

  /// Stops reading requests, flushes what is queued, sends FIN, then waits
  /// for the peer's FIN (linger_timeout) before closing. The whole drain is
  /// capped at `flush_limit` (default: linger_timeout).
  void close_after_flush(std::string_view reason, std::chrono::milliseconds flush_limit = {});
  /// Closes the socket at once; queued data is dropped.
  void close_now(std::string_view reason);

  /// After authentication the read deadline changes from the handshake
  /// deadline to the idle deadline, and the admission slot is given back.
  void set_authenticated() noexcept;
  /// The connection's slot among those not logged in yet (given back when
  /// it logs in or closes).
  void hold_admission(admission_slot slot) noexcept { admission_ = std::move(slot); }
  /// When the connection must have logged in (the handshake deadline).
  clock::time_point login_deadline() const noexcept { return opened_ + limits_.handshake_timeout; }
  /// Runs `fn` on this connection's thread after `delay`, unless the
  /// connection is closing by then.
  void run_after(std::chrono::milliseconds delay, std::function<void()> fn);
  /// Counts as activity for the idle deadline (long server-side streams).
  void touch() noexcept { last_activity_ = clock::now(); }
  /// When a frame last arrived from the peer (or touch() was called).
  clock::time_point last_activity() const noexcept { return last_activity_; }
  void begin_shutdown(std::chrono::milliseconds grace);
  /// The server's grace period ended with this connection still open.
  void end_grace();
  /// The server's configuration was re-read: the handler re-checks (on_reload).
  void reload();

  /// Keepalive (dead and half-open peers): a `ping` after `ping_after` of
  /// silence, and the connection closed ("ping timeout") after
  /// `drop_after`. Any frame from the peer counts as life.
  void set_keepalive(std::chrono::milliseconds ping_after, std::chrono::milliseconds drop_after);

  /// TLS: the RFC 9266 tls-exporter value of this connection (32 bytes);
  /// empty for a cleartext connection.
  std::string channel_binding() const;
  /// TLS: "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"; "" for cleartext.
  std::string tls_description() const;
  /// TLS: whether the kernel encrypts what this connection sends (kTLS).
  bool ktls_send() const noexcept;
  /// TLS in user space: every byte sent is encrypted here, so a file body
  /// passes through this process anyway (send_file reads it with pread).
  /// A sender that must also digest what it sends does better reading the
  /// file once itself and sending the bytes it read.
  bool encrypts_in_user_space() const noexcept { return encrypts_writes(); }

  const std::string& peer_address() const noexcept { return peer_address_; }
  const std::string& peer() const noexcept { return peer_; }
  std::size_t queued_bytes() const noexcept {
    return pending_.size() + shared_bytes_queued_ + file_bytes_queued_ + tls_output_bytes();
  }
  /// Runs `fn` once (on this connection's thread) as soon as no more than
  /// `bytes` are queued to send: how a producer (command output) waits for
  /// a slow peer instead of growing the queue. Dropped if the connection
  /// closes first.
  void when_queue_below(std::size_t bytes, std::function<void()> fn);
  bool closing() const noexcept { return state_ != state::open; }
  boost::asio::any_io_executor executor() const { return executor_; }

 private:
  friend class flush_queue;
  enum class state { open, draining, closed };
  void wait_readable();
  void on_readable(boost::system::error_code ec);
  void resume_reader();
  void check_deadlines();
  boost::asio::awaitable<void> write_loop();
  void process(std::string_view bytes);
  void write_now();
  void after_progress();
  void spawn(boost::asio::awaitable<void> co);
  void ensure_writer();
  void release_idle_buffers() noexcept;
  /// After a frame was appended to pending_: enforce the bound, then see
  /// that it gets written (end of read batch, flush queue or writer).
  bool queued();
  void wake(boost::asio::steady_timer& t) noexcept;
  /// The reader or the writer has stopped; the last one closes the books.
  void part_done();
  enum class due { none, delayed_error, linger, write_stall, ping, ping_timeout, handshake, frame, idle };
  clock::time_point next_deadline(due& what) const noexcept;
  void fail_deadline(proto::errc why);
  void act_on(due what);
  template <class F>
  void guarded(F&& f) noexcept;

  boost::asio::any_io_executor executor_;
  boost::asio::ip::tcp::socket socket_;
  const connection_limits& limits_;
  std::unique_ptr<frame_handler> handler_;
  std::function<void(connection&)> on_finished_;
  std::string peer_address_;  // IP only
  std::string peer_;          // ip:port

  proto::frame_decoder decoder_;
  // Line mode (frame_handler::line_limit): the partial line read so far,
  // and whether the rest of an over-long line is being skipped.
  std::size_t line_limit_ = 0;
  std::string line_;
  bool skipping_line_ = false;
  void process_lines(std::string_view bytes);
  // Stream mode (frame_handler::stream_mode).
  bool stream_mode_ = false;
  frame_handler::progress stream_progress_ = frame_handler::progress::idle;
  void process_stream(std::string_view bytes);
  protocol_router router_;
  bool sniffing_ = false;  // no ALPN: waiting for the client's first bytes (sniff_window)
  void adopt_handler(std::unique_ptr<frame_handler> h);
  void choose_protocol();
  void end_sniff(std::string_view first_bytes);
  bool queue_file(int fd, std::uint64_t offset, std::size_t length, bool raw);
  std::string sniffed_;  // a first read too short to tell (a few capitals)
  state state_ = state::open;
  bool authenticated_ = false;
  admission_slot admission_;
  bool peer_eof_ = false;  // the peer half-closed (FIN received)
  int running_ = 0;  // reader and writer still active
  std::string close_reason_;

  // deadlines
  boost::asio::steady_timer watchdog_timer_;
  clock::time_point opened_;
  clock::time_point last_activity_;
  clock::time_point frame_started_;
  clock::time_point write_progress_;
  clock::time_point linger_until_;
  clock::time_point watchdog_armed_for_;
  std::chrono::milliseconds keepalive_ping_{0};
  std::chrono::milliseconds keepalive_drop_{0};  // 0: no keepalive
  clock::time_point pinged_for_;  // the last_activity_ a ping was sent for

  // producers waiting for the send queue to drain (when_queue_below)
  std::vector<std::pair<std::size_t, std::function<void()>>> drain_waiters_;
  void notify_drain_waiters();

  // delayed error (fail with delay)
  std::optional<proto::json> delayed_error_;
  clock::time_point delayed_error_at_;

  // Send queue: frames are encoded straight into pending_. Shared frames
  // (send_shared) and file bodies (send_file) are segments that go right
  // after pending_[0, at), in order. Everything up to the first file body
  // leaves in one gathered sendmsg.
  std::string pending_;
  struct segment {
    std::size_t at;
    std::shared_ptr<const std::string> bytes;  // a shared frame; null for a file body
    std::size_t sent = 0;                      // of *bytes
    int fd = -1;                               // file body: owned
    std::uint64_t offset = 0;
    std::size_t length = 0;
    bool raw = false;  // send_file_raw: a file that ends early closes the connection
  };
  std::vector<segment> segments_;  // not a deque, which allocates 576 bytes up front
  std::size_t file_bytes_queued_ = 0;
  std::size_t shared_bytes_queued_ = 0;
  int file_segments_ = 0;
  bool nothing_queued() const noexcept { return pending_.empty() && segments_.empty() && tls_output_bytes() == 0; }
  bool file_body_next() const noexcept { return !segments_.empty() && segments_.front().at == 0 && !segments_.front().bytes; }
  /// One non-blocking gathered send of everything before the first file
  /// body; drops what was sent from the queue. would_block is an error code.
  void write_gathered(boost::system::error_code& ec);
  /// The queue up to the first file body as iovecs; returns how many.
  int gather(struct iovec* iov, int max_iov) const noexcept;
  void consume(std::size_t n) noexcept;
  boost::asio::awaitable<boost::system::error_code> write_segment();
  void drop_segments() noexcept;
  /// Bodies at least this large are offered to the socket straight from
  /// the caller's buffer when nothing is queued ahead of them.
  static constexpr std::size_t direct_body_min = 32u << 10;
  bool send_direct(const proto::json& header, std::string_view body);
  // Encrypts `head` (may be empty) and `body` into the TLS output and sends
  // what the socket takes at once; the rest is queued.
  bool write_direct_tls(std::string_view head, std::string_view body);
  // TLS (null for cleartext). The queue above holds plaintext; what is
  // encrypted waits in the channel's output until the socket takes it.
  std::shared_ptr<const tls::context> tls_context_;
  std::unique_ptr<tls::channel> tls_;
  bool close_notify_sent_ = false;
  bool tls_partial_ = false;  // part of a TLS record waits for the rest (frame deadline)
  bool mid_frame() const noexcept {
    return decoder_.mid_frame() || tls_partial_ || !line_.empty() || skipping_line_ ||
           stream_progress_ != frame_handler::progress::idle;
  }
  /// TLS and the kernel does not encrypt: records are made in user space.
  bool encrypts_writes() const noexcept;
  std::size_t tls_output_bytes() const noexcept;
  bool tls_handshaking() const noexcept;
  /// Ciphertext from the socket: the handshake, then decrypted frames.
  void receive_tls(std::string_view cipher);
  /// Encrypts queued plaintext (up to the first file body) until about
  /// `budget` bytes wait in the channel's output.
  void encrypt_queued(std::size_t budget);
  /// Encrypts the gathered pieces into the channel's output while it holds
  /// less than `budget`; returns the plaintext bytes taken (0: it failed).
  std::size_t encrypt_pieces(const iovec* iov, int k, std::size_t budget);
  /// One non-blocking send of the channel's output. would_block is an error code.
  void send_tls_output(boost::system::error_code& ec);
  boost::asio::awaitable<boost::system::error_code> write_segment_tls();
  bool send_direct_tls(const proto::json& header, std::string_view body);

  bool writing_ = false;
  bool writer_running_ = false;
  bool in_batch_ = false;  // the reader is dispatching frames from one read
  bool reader_waiting_ = false;  // backpressure: no read outstanding until the queue drains
  flush_queue* flush_queue_;
  bool flush_listed_ = false;  // in flush_queue_, not yet written
};

}  // namespace cskit::net
