#include "net/connection.hpp"

#include "net/endpoint.hpp"
#include "net/tls.hpp"

#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace cskit::net {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

// Large reads: bulk uploads arrive at gigabytes per second, and the
// page-cache writes that follow cost less per byte in large pieces (1 MiB
// reads made uploads 1.7 -> 1.9 GB/s against 256 KiB). Shared per thread.
constexpr std::size_t read_chunk = 1024 * 1024;
// Fairness between connections on a loop: at most 2 MiB read per turn.
constexpr int max_reads_per_wakeup = 2;
// A drained send buffer larger than this is freed rather than kept: with 0,
// every heap buffer is (an idle connection holds none).
constexpr std::size_t keep_idle_buffer = 0;

// TLS: what is encrypted ahead of the socket, at most (the channel's
// output; a batch of records then leaves in one send), and the piece of a
// file read, encrypted and queued at a time.
constexpr std::size_t tls_batch = 256 * 1024;

char* thread_read_buffer() {
  // One buffer per loop thread, shared by all its connections: the reader
  // decodes everything it reads before it next suspends, so no connection
  // ever leaves bytes in it.
  thread_local std::unique_ptr<char[]> buf(new char[read_chunk]);
  return buf.get();
}

// TLS: the most plaintext one record carries (RFC 8446, 5.1).
constexpr std::size_t record_plain = 16 * 1024;

char* thread_record_buffer() {
  // Small queued pieces gathered into one record's plaintext; filled and
  // encrypted without a wait in between, so one per loop thread serves all.
  thread_local std::unique_ptr<char[]> buf(new char[record_plain]);
  return buf.get();
}

char* thread_plain_buffer() {
  // TLS: the plaintext of what was read into thread_read_buffer(), under
  // the same rule (decoded before the reader suspends). Also the buffer a
  // file piece is read into before it is encrypted, which is done before
  // the writer suspends.
  thread_local std::unique_ptr<char[]> buf(new char[read_chunk]);
  return buf.get();
}

}  // namespace

bool frame_handler::on_header(connection&, const proto::json&) { return false; }
void frame_handler::on_body_part(connection&, std::string_view) {}

void frame_handler::on_line(connection&, std::string_view) {}
void frame_handler::on_line_too_long(connection&) {}
void frame_handler::encode_failure(std::string& out, const proto::json& error) {
  (void)proto::encode_frame(out, error, {});
}
void frame_handler::send_ping(connection& c) { c.send({{"type", "ping"}}); }

void frame_handler::on_shutdown(connection& c, std::chrono::milliseconds grace) {
  c.send({{"type", "bye"}, {"code", "shutting_down"}, {"message", "server is shutting down"}});
  c.close_after_flush("server shutdown", grace);
}
void frame_handler::on_grace_over(connection& c) { c.close_now("server shutdown (grace period over)"); }
void frame_handler::on_reload(connection&) {}
void frame_handler::on_bytes(connection&, std::string_view) {}
void frame_handler::on_peer_eof(connection& c) { c.close_after_flush("peer closed"); }

void flush_queue::add(std::shared_ptr<connection> c) {
  dirty_.push_back(std::move(c));
  post();
}

void flush_queue::post() {
  if (posted_) return;
  posted_ = true;
  asio::post(executor_, [this] { run(); });
}

void flush_queue::run() {
  posted_ = false;
  if (next_ == running_.size()) {
    running_.clear();
    next_ = 0;
    running_.swap(dirty_);
  }
  // A connection stays listed (flush_listed_) until its turn, so frames
  // queued to it before then go out in this round's send.
  const std::size_t end = std::min(running_.size(), next_ + slice);
  for (; next_ < end; ++next_) {
    auto c = std::move(running_[next_]);
    c->flush_listed_ = false;
    c->guarded([&] { c->write_now(); });
  }
  if (next_ < running_.size() || !dirty_.empty()) post();
}

connection::connection(tcp::socket socket, const connection_limits& limits,
                       std::unique_ptr<frame_handler> handler, flush_queue* flush,
                       std::shared_ptr<const tls::context> tls)
    : executor_(socket.get_executor()),
      socket_(std::move(socket)),
      limits_(limits),
      handler_(std::move(handler)),
      watchdog_timer_(executor_),
      tls_context_(std::move(tls)),
      flush_queue_(flush) {
  error_code ec;
  auto ep = socket_.remote_endpoint(ec);
  if (!ec) {
    peer_address_ = ep.address().to_string();
    peer_ = format_host_port(peer_address_, ep.port());
  } else {
    peer_address_ = peer_ = "(unknown)";
  }
}

connection::~connection() { drop_segments(); }

void connection::drop_segments() noexcept {
  for (auto& seg : segments_) {
    if (!seg.bytes) ::close(seg.fd);
  }
  segments_.clear();
  file_bytes_queued_ = shared_bytes_queued_ = 0;
  file_segments_ = 0;
}

void connection::start(std::function<void(connection&)> on_finished) {
  on_finished_ = std::move(on_finished);
  error_code ec;
  socket_.non_blocking(true, ec);
  socket_.set_option(tcp::no_delay(true), ec);
  opened_ = last_activity_ = clock::now();
  decoder_.report_headers(true);  // lets the handler stream bulk bodies
  line_limit_ = handler_->line_limit();
  stream_mode_ = handler_->stream_mode();
  running_ = 1;  // the reader
  if (tls_context_) {
    // The handler hears of the connection once the TLS handshake is
    // complete (receive_tls); until then only handshake records move.
    try {
      tls_ = std::make_unique<tls::channel>(tls_context_, std::string_view(), socket_.native_handle());
    } catch (const std::exception& e) {
      spdlog::error("connection {}: {}", peer_, e.what());
      close_now("TLS set-up failed");
    }
  } else {
    // Greet before anything else can be queued (a shutdown posted right
    // after accept must not send `bye` ahead of `hello`).
    handler_->on_open(*this);
  }
  wait_readable();
  check_deadlines();
  if (!nothing_queued() && !flush_listed_) ensure_writer();
}

template <class F>
void connection::guarded(F&& f) noexcept {
  // Callbacks run straight from the event loop: an exception from a
  // handler (a drain waiter, a send) costs this connection, never the server.
  try {
    f();
  } catch (const std::exception& e) {
    spdlog::error("connection {}: internal error: {}", peer_, e.what());
    close_now("internal error");
  }
}

void connection::spawn(asio::awaitable<void> co) {
  ++running_;
  asio::co_spawn(executor_, std::move(co), [self = shared_from_this()](std::exception_ptr e) {
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        spdlog::error("connection {}: internal error: {}", self->peer_, ex.what());
      }
      self->close_now("internal error");
    }
    self->part_done();
  });
}

void connection::ensure_writer() {
  // The writer exists only while there is something it must wait for: a
  // socket that would block, file bodies, the final flush before closing.
  // Everything else is written directly (write_now), so an idle connection
  // holds no writer.
  if (writer_running_ || state_ == state::closed || running_ == 0) return;
  writer_running_ = true;
  spawn(write_loop());
}

void connection::part_done() {
  if (--running_ > 0) return;
  admission_.release();
  handler_->on_close(*this, close_reason_);
  if (on_finished_) {
    auto f = std::move(on_finished_);
    f(*this);
  }
}

void connection::wake(asio::steady_timer& t) noexcept { t.cancel(); }

std::size_t connection::tls_output_bytes() const noexcept { return tls_ ? tls_->output().size() : 0; }
bool connection::tls_handshaking() const noexcept { return tls_ && !tls_->handshake_done(); }
bool connection::encrypts_writes() const noexcept { return tls_ && !tls_->ktls_send(); }
bool connection::ktls_send() const noexcept { return tls_ && tls_->ktls_send(); }

std::string connection::channel_binding() const {
  if (!tls_ || !tls_->handshake_done()) return {};
  const auto b = tls_->exporter();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

std::string connection::tls_description() const {
  return tls_ && tls_->handshake_done() ? tls_->description() : std::string();
}

bool connection::send(const proto::json& header, std::string_view body) {
  if (state_ != state::open || tls_handshaking()) return false;
  if (body.size() >= direct_body_min && !writing_ && nothing_queued()) {
    return encrypts_writes() ? send_direct_tls(header, body) : send_direct(header, body);
  }
  proto::errc e = proto::encode_frame(pending_, header, body);
  if (e != proto::errc::ok) {
    spdlog::error("connection {}: cannot encode frame: {}", peer_, proto::default_message(e));
    return false;
  }
  return queued();
}

bool connection::send_direct(const proto::json& header, std::string_view body) {
  // Nothing is queued, so this frame is next on the wire: offer the header
  // and the caller's body to the kernel in one non-blocking sendmsg, and
  // copy into the queue only what the socket did not take. A bulk stream
  // (command output) then costs no copy through the queue.
  if (proto::errc e = proto::encode_frame_header(pending_, header, body.size()); e != proto::errc::ok) {
    pending_.clear();
    spdlog::error("connection {}: cannot encode frame: {}", peer_, proto::default_message(e));
    return false;
  }
  const std::size_t head = pending_.size();
  iovec iov[2] = {{pending_.data(), head}, {const_cast<char*>(body.data()), body.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  ssize_t n;
  do {
    n = ::sendmsg(socket_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      pending_.clear();
      close_now(std::string("write failed: ") + std::strerror(errno));
      return false;
    }
    n = 0;
  }
  const auto sent = static_cast<std::size_t>(n);
  if (sent > 0) write_progress_ = clock::now();
  if (sent >= head) {
    pending_.assign(body.substr(sent - head));
  } else {
    pending_.erase(0, sent);
    pending_.append(body);
  }
  if (pending_.empty()) {
    release_idle_buffers();
    return true;
  }
  return queued();
}

bool connection::send_direct_tls(const proto::json& header, std::string_view body) {
  // As send_direct: the body is encrypted straight from the caller's
  // buffer, and the records leave at once as far as the socket takes them.
  std::string head;
  if (proto::errc e = proto::encode_frame_header(head, header, body.size()); e != proto::errc::ok) {
    spdlog::error("connection {}: cannot encode frame: {}", peer_, proto::default_message(e));
    return false;
  }
  return write_direct_tls(head, body);
}

bool connection::write_direct_tls(std::string_view head, std::string_view body) {
  if ((!head.empty() && !tls_->write(head)) || !tls_->write(body)) {
    close_now("TLS error: " + tls_->error_text());
    return false;
  }
  error_code ec;
  send_tls_output(ec);
  if (ec && ec != asio::error::would_block) {
    close_now("write failed: " + ec.message());
    return false;
  }
  if (tls_output_bytes() == 0) return true;
  return queued();
}

bool connection::send_shared(std::shared_ptr<const std::string> frame) {
  if (state_ != state::open || tls_handshaking() || !frame || frame->empty()) return false;
  shared_bytes_queued_ += frame->size();
  segments_.push_back({pending_.size(), std::move(frame)});
  return queued();
}

bool connection::send_raw(std::string_view bytes) {
  if (state_ != state::open || tls_handshaking()) return false;
  if (bytes.size() >= direct_body_min && !writing_ && nothing_queued() && encrypts_writes()) {
    return write_direct_tls({}, bytes);  // as send_direct_tls: encrypted straight from the caller's buffer
  }
  pending_.append(bytes);
  return queued();
}

bool connection::send_file(const proto::json& header, int fd, std::uint64_t offset, std::size_t length) {
  if (state_ != state::open || tls_handshaking()) return false;
  if (length == 0) return send(header);
  const std::size_t before = pending_.size();
  if (proto::encode_frame_header(pending_, header, length) != proto::errc::ok) {
    pending_.resize(before);
    spdlog::error("connection {}: cannot encode a file frame", peer_);
    return false;
  }
  return queue_file(fd, offset, length, false);
}

bool connection::send_file_raw(int fd, std::uint64_t offset, std::size_t length) {
  if (state_ != state::open || tls_handshaking()) return false;
  if (length == 0) return true;
  return queue_file(fd, offset, length, true);
}

bool connection::queue_file(int fd, std::uint64_t offset, std::size_t length, bool raw) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) {
    spdlog::error("connection {}: cannot duplicate a file descriptor: {}", peer_, std::strerror(errno));
    close_now("out of file descriptors");
    return false;
  }
  segments_.push_back({pending_.size(), nullptr, 0, dup, offset, length, raw});
  file_bytes_queued_ += length;
  ++file_segments_;
  return queued();
}

void connection::report_progress(frame_handler::progress p, bool new_message) {
  using pr = frame_handler::progress;
  if (p == pr::body || (p == pr::header && (new_message || stream_progress_ != pr::header))) {
    frame_started_ = clock::now();
  }
  stream_progress_ = p;
}

bool connection::queued() {
  if (queued_bytes() > limits_.send_queue_max) {
    spdlog::warn("connection {}: send queue above {} bytes, peer is not reading; closing", peer_,
                 limits_.send_queue_max);
    close_now("send queue overflow");
    return false;
  }
  // Inside a read batch the reader writes the coalesced replies itself when
  // the batch ends (write_now). Otherwise the loop's flush queue writes
  // them after the work at hand (more may be queued by then), or, while
  // file bodies are queued, the writer.
  if (in_batch_ || flush_listed_ || writer_running_) return true;
  if (flush_queue_ && file_segments_ == 0) {
    flush_listed_ = true;
    flush_queue_->add(shared_from_this());
  } else {
    ensure_writer();
  }
  return true;
}

void connection::when_queue_below(std::size_t bytes, std::function<void()> fn) {
  if (state_ == state::closed) return;
  if (queued_bytes() <= bytes) {
    asio::post(executor_, [self = shared_from_this(), fn = std::move(fn)] {
      if (!self->closing()) fn();
    });
    return;
  }
  drain_waiters_.emplace_back(bytes, std::move(fn));
}

void connection::notify_drain_waiters() {
  if (drain_waiters_.empty() || state_ != state::open) return;
  const std::size_t queued = queued_bytes();
  std::vector<std::function<void()>> ready;
  for (auto it = drain_waiters_.begin(); it != drain_waiters_.end();) {
    if (queued <= it->first) {
      ready.push_back(std::move(it->second));
      it = drain_waiters_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& fn : ready) fn();  // may send, and so queue more
}

void connection::write_now() {
  if (state_ == state::closed || writing_ || nothing_queued()) return;
  if (!file_body_next() || tls_output_bytes() > 0) {
    error_code ec;
    write_gathered(ec);
    if (ec && ec != asio::error::would_block) {
      close_now("write failed: " + ec.message());
      return;
    }
  }
  // The socket is full, or a file body is next: the writer waits for it.
  if (!nothing_queued()) ensure_writer();
  after_progress();
}

int connection::gather(iovec* iov, int max_iov) const noexcept {
  // pending_ bytes and shared frames, in queue order, up to the first file
  // body (which goes by sendfile, or is encrypted piece by piece).
  int k = 0;
  std::size_t pos = 0;
  bool at_file = false;
  for (const auto& seg : segments_) {
    if (seg.at > pos) {
      iov[k++] = {const_cast<char*>(pending_.data()) + pos, seg.at - pos};
      pos = seg.at;
      if (k == max_iov) return k;
    }
    if (!seg.bytes) {
      at_file = true;
      break;
    }
    iov[k++] = {const_cast<char*>(seg.bytes->data()) + seg.sent, seg.bytes->size() - seg.sent};
    if (k == max_iov) return k;
  }
  if (!at_file && pos < pending_.size()) iov[k++] = {const_cast<char*>(pending_.data()) + pos, pending_.size() - pos};
  return k;
}

void connection::write_gathered(error_code& ec) {
  ec = {};
  if (encrypts_writes()) {
    if (!tls_handshaking()) encrypt_queued(tls_batch);
    send_tls_output(ec);
    return;
  }
  constexpr int max_iov = 64;
  iovec iov[max_iov];
  const int k = gather(iov, max_iov);
  if (k == 0) return;
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = static_cast<std::size_t>(k);
  ssize_t n;
  do {
    n = ::sendmsg(socket_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    ec = (errno == EAGAIN || errno == EWOULDBLOCK) ? error_code(asio::error::would_block)
                                                   : error_code(errno, boost::system::system_category());
    return;
  }
  consume(static_cast<std::size_t>(n));
}

void connection::encrypt_queued(std::size_t budget) {
  constexpr int max_iov = 64;
  iovec iov[max_iov];
  while (state_ != state::closed && tls_output_bytes() < budget) {
    const int k = gather(iov, max_iov);
    if (k == 0) return;
    const std::size_t took = encrypt_pieces(iov, k, budget);
    if (took == 0) return;  // the channel failed (and closed the connection)
    consume(took);
  }
}

std::size_t connection::encrypt_pieces(const iovec* iov, int k, std::size_t budget) {
  // Small pieces in a row (chat deliveries, replies) are sealed together,
  // as one record of up to record_plain bytes, instead of one record each:
  // a receiver that fell a few messages behind costs one AEAD operation
  // and one record header per batch. A large piece (a file body in
  // pending_) is sealed where it lies.
  char* scratch = thread_record_buffer();
  std::size_t took = 0;
  int i = 0;
  while (i < k && tls_output_bytes() < budget) {
    const std::size_t room = budget - tls_output_bytes();
    std::size_t n = 0;
    while (i < k && iov[i].iov_len < record_plain && n + iov[i].iov_len <= std::min(record_plain, room)) {
      std::memcpy(scratch + n, iov[i].iov_base, iov[i].iov_len);
      n += iov[i].iov_len;
      ++i;
    }
    std::string_view piece(scratch, n);
    bool whole = true;
    if (n == 0) {  // a large piece, or one that does not fit in the budget left: what fits of it
      const std::size_t len = std::min(iov[i].iov_len, room);
      piece = std::string_view(static_cast<const char*>(iov[i].iov_base), len);
      whole = len == iov[i].iov_len;
      ++i;
    }
    if (!tls_->write(piece)) {
      close_now("TLS error: " + tls_->error_text());
      return 0;
    }
    took += piece.size();
    if (!whole) break;
  }
  return took;
}

void connection::send_tls_output(error_code& ec) {
  ec = {};
  const std::string_view out = tls_->output();
  if (out.empty()) return;
  ssize_t n;
  do {
    n = ::send(socket_.native_handle(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    ec = (errno == EAGAIN || errno == EWOULDBLOCK) ? error_code(asio::error::would_block)
                                                   : error_code(errno, boost::system::system_category());
    return;
  }
  if (n > 0) write_progress_ = clock::now();
  tls_->consumed(static_cast<std::size_t>(n));
}

void connection::consume(std::size_t n) noexcept {
  // Walks the queue as write_gathered laid it out: `pos` bytes of pending_
  // and the first `done` segments were sent in full.
  std::size_t pos = 0, done = 0;
  while (n > 0) {
    const std::size_t next_at = done < segments_.size() ? segments_[done].at : pending_.size();
    if (pos < next_at) {
      const std::size_t take = std::min(n, next_at - pos);
      pos += take;
      n -= take;
      continue;
    }
    auto& seg = segments_[done];  // a shared frame: a file body is never in a gathered write
    const std::size_t take = std::min(n, seg.bytes->size() - seg.sent);
    seg.sent += take;
    n -= take;
    shared_bytes_queued_ -= take;
    if (seg.sent == seg.bytes->size()) ++done;
  }
  segments_.erase(segments_.begin(), segments_.begin() + static_cast<std::ptrdiff_t>(done));
  pending_.erase(0, pos);
  for (auto& seg : segments_) seg.at -= pos;
}

void connection::after_progress() {
  release_idle_buffers();
  if (reader_waiting_ && queued_bytes() <= limits_.send_queue_high / 2) resume_reader();
  notify_drain_waiters();
}

void connection::release_idle_buffers() noexcept {
  // Drained: give back what grew during a burst (a long member list, a
  // backlog of chat messages), so that a thousand idle connections do not
  // each keep kilobytes of send buffer.
  if (writing_ || !nothing_queued()) return;
  if (pending_.capacity() > keep_idle_buffer) std::string().swap(pending_);
  if (segments_.capacity() > 0) std::vector<segment>().swap(segments_);
  if (tls_) tls_->release_buffers();
}

void connection::fail(proto::errc code, std::string_view message, std::optional<std::uint64_t> id,
                      std::chrono::milliseconds delay) {
  if (state_ != state::open || delayed_error_) return;
  if (tls_handshaking()) {  // no frame can be sent before TLS is up
    close_now(proto::to_wire(code));
    return;
  }
  auto err = proto::make_error(code, message, id);
  if (delay.count() > 0) {
    delayed_error_ = std::move(err);
    delayed_error_at_ = clock::now() + delay;
    if (delayed_error_at_ < watchdog_armed_for_) wake(watchdog_timer_);
    return;
  }
  handler_->encode_failure(pending_, err);
  close_after_flush(proto::to_wire(code));
}

void connection::close_after_flush(std::string_view reason, std::chrono::milliseconds flush_limit) {
  if (state_ != state::open) return;
  state_ = state::draining;
  if (close_reason_.empty()) close_reason_ = reason;
  linger_until_ = clock::now() + (flush_limit.count() > 0 ? flush_limit : limits_.linger_timeout);
  ensure_writer();  // flushes, then sends FIN
  resume_reader();
  wake(watchdog_timer_);
}

void connection::close_now(std::string_view reason) {
  if (state_ == state::closed) return;
  state_ = state::closed;
  if (close_reason_.empty()) close_reason_ = reason;
  drain_waiters_.clear();
  if (!writing_) drop_segments();  // otherwise the writer drops them when it returns
  error_code ec;
  socket_.close(ec);
  wake(watchdog_timer_);
  resume_reader();
}

void connection::run_after(std::chrono::milliseconds delay, std::function<void()> fn) {
  auto timer = std::make_shared<asio::steady_timer>(executor_, delay);
  timer->async_wait([self = shared_from_this(), timer, fn = std::move(fn)](const error_code& ec) {
    if (!ec && !self->closing()) self->guarded(fn);
  });
}

void connection::set_authenticated() noexcept {
  authenticated_ = true;
  admission_.release();
  last_activity_ = clock::now();
  // The watchdog may be waiting for the handshake deadline: an idle
  // deadline that comes sooner must not wait for it.
  if (last_activity_ + limits_.idle_timeout < watchdog_armed_for_) wake(watchdog_timer_);
}

void connection::end_grace() {
  if (state_ == state::open) {
    handler_->on_grace_over(*this);
  } else if (state_ != state::closed) {
    close_now("server shutdown (grace period over)");
  }
}

void connection::begin_shutdown(std::chrono::milliseconds grace) {
  if (state_ != state::open) return;
  if (tls_handshaking() || sniffing_) {  // (no handler has heard of it yet)
    close_now("server shutdown");
    return;
  }
  handler_->on_shutdown(*this, grace);
}

void connection::reload() {
  // A connection still in its TLS handshake has not logged in: its login
  // will see the new configuration.
  if (state_ != state::open || tls_handshaking()) return;
  guarded([this] { handler_->on_reload(*this); });
}

void connection::process_lines(std::string_view in) {
  // A line that arrived whole in this read is handed over where it lies;
  // only a line split across reads is gathered in line_.
  const auto now = clock::now();
  while (!in.empty() && state_ == state::open && !delayed_error_) {
    if (line_.empty() && !skipping_line_) frame_started_ = now;
    const auto lf = in.find('\n');
    const std::string_view piece = in.substr(0, lf);
    in.remove_prefix(lf == std::string_view::npos ? in.size() : lf + 1);
    const bool too_long = !skipping_line_ && line_.size() + piece.size() > line_limit_;
    if (too_long) {
      std::string().swap(line_);
      skipping_line_ = true;
      handler_->on_line_too_long(*this);
    }
    if (lf == std::string_view::npos) {  // the rest comes later
      if (!skipping_line_) line_.append(piece);
      return;
    }
    last_activity_ = now;
    if (skipping_line_) {
      skipping_line_ = false;
      continue;
    }
    std::string_view line = piece;
    if (!line_.empty()) line = line_.append(piece);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    handler_->on_line(*this, line);
    if (!line_.empty()) std::string().swap(line_);  // an idle connection keeps no buffer
  }
}

void connection::process_stream(std::string_view in) {
  last_activity_ = clock::now();
  handler_->on_bytes(*this, in);  // it reports its progress (report_progress)
}

void connection::choose_protocol() {
  if (router_) {
    const std::string alpn = tls_->alpn();
    if (alpn.empty()) {
      sniffing_ = true;
      run_after(sniff_window, [this] {
        if (!sniffing_) return;
        std::string first = std::move(sniffed_);
        end_sniff(first);
        if (!first.empty() && state_ == state::open) process(first);
      });
      return;
    }
    if (auto h = router_(alpn, {})) adopt_handler(std::move(h));
  }
  handler_->on_open(*this);
}

void connection::end_sniff(std::string_view first_bytes) {
  sniffing_ = false;
  if (auto h = router_({}, first_bytes)) adopt_handler(std::move(h));
  handler_->on_open(*this);
}

namespace {
// A first read of a few capitals only ("GE"): the start of a request line,
// or not; more bytes tell.
bool undecided(std::string_view first) {
  return first.size() < 16 &&
         std::all_of(first.begin(), first.end(), [](char ch) { return ch >= 'A' && ch <= 'Z'; });
}
}  // namespace

void connection::adopt_handler(std::unique_ptr<frame_handler> h) {
  handler_ = std::move(h);
  line_limit_ = handler_->line_limit();
  stream_mode_ = handler_->stream_mode();
}

void connection::process(std::string_view in) {
  if (sniffing_) {
    if (!sniffed_.empty() || undecided(in)) {
      sniffed_.append(in);
      if (undecided(sniffed_)) return;  // the window's end decides, if nothing more comes
      const std::string first = std::move(sniffed_);
      end_sniff(first);
      if (state_ == state::open) process(first);
      return;
    }
    end_sniff(in);
    if (state_ != state::open) return;
  }
  if (stream_mode_) return process_stream(in);
  if (line_limit_ > 0) return process_lines(in);
  const auto now = clock::now();
  proto::frame f;
  using st = proto::frame_decoder::status;
  while ((!in.empty() || decoder_.frame_pending()) && state_ == state::open && !delayed_error_) {
    if (!decoder_.mid_frame()) frame_started_ = now;
    switch (decoder_.decode(in, f)) {
      case st::need_more: return;
      case st::error:
        spdlog::info("connection {}: protocol error: {}", peer_, proto::default_message(decoder_.error()));
        fail(decoder_.error());
        return;
      case st::header:
        if (handler_->on_header(*this, decoder_.current_header())) decoder_.stream_body();
        break;
      case st::body_part:
        // A streamed body is bulk data: its deadline is progress, not the
        // whole frame within frame_timeout.
        frame_started_ = last_activity_ = now;
        handler_->on_body_part(*this, decoder_.body_part());
        break;
      case st::frame:
        last_activity_ = now;
        handler_->on_frame(*this, std::move(f));
        break;
    }
  }
}

void connection::wait_readable() {
  // At most one callback is outstanding: this wait, or (backpressure) none
  // until resume_reader() posts one.
  if (state_ == state::closed) {
    part_done();
    return;
  }
  if (state_ == state::open && queued_bytes() > limits_.send_queue_high) {
    // Backpressure: take no more requests until the peer reads replies.
    reader_waiting_ = true;
    return;
  }
  socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    self->on_readable(ec);
  });
}

void connection::resume_reader() {
  if (!reader_waiting_) return;
  reader_waiting_ = false;
  // Posted, never called inline: this may run inside the reader's own batch.
  asio::post(executor_, [self = shared_from_this()] { self->wait_readable(); });
}

void connection::on_readable(error_code ec) {
  if (ec || state_ == state::closed) {
    part_done();
    return;
  }
  char* buf = thread_read_buffer();
  // Stop early once replies pile up, so the queue overshoots its high-water
  // mark by at most one read's worth of replies.
  for (int i = 0; i < max_reads_per_wakeup && state_ != state::closed && queued_bytes() <= limits_.send_queue_high;
       ++i) {
    std::size_t n = socket_.read_some(asio::buffer(buf, read_chunk), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) break;
    if (ec) {
      if (state_ == state::open && decoder_.mid_frame()) {
        spdlog::info("connection {}: peer closed the connection in the middle of a frame", peer_);
      }
      if (ec == asio::error::eof) peer_eof_ = true;
      if (ec == asio::error::eof && state_ == state::open) {
        // Half-close: the peer may still read our replies.
        guarded([this] { handler_->on_peer_eof(*this); });
      } else {
        close_now(ec == asio::error::eof ? "peer closed" : ec.message());
      }
      break;
    }
    if (tls_) {
      guarded([&] { receive_tls(std::string_view(buf, n)); });
      in_batch_ = false;
      guarded([&] { write_now(); });
    } else if (state_ == state::open) {
      in_batch_ = true;
      guarded([&] { process(std::string_view(buf, n)); });
      in_batch_ = false;
      guarded([&] { write_now(); });
    }  // draining: discard
    if (n < read_chunk) break;
  }
  if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
    part_done();
    return;
  }
  wait_readable();
}

void connection::receive_tls(std::string_view cipher) {
  if (state_ != state::open) return;  // draining: discard, as for cleartext
  tls_->feed(cipher);
  using result = tls::channel::result;
  if (!tls_->handshake_done()) {
    const result r = tls_->handshake();
    if (r == result::want_input) return;  // the reader's write_now() sends our flight
    if (r != result::ok) {
      // A handshake record can always be written to a fresh socket; a
      // full one (want_write, kernel TLS only) is treated as a failure.
      spdlog::info("connection {}: TLS handshake failed: {}", peer_,
                   r == result::want_write ? "the socket's send buffer is full" : tls_->error_text());
      error_code ec;
      send_tls_output(ec);  // the alert, if OpenSSL made one
      close_now("TLS handshake failed");
      return;
    }
    spdlog::debug("connection {}: {}{}", peer_, tls_->description(),
                  tls_->ktls_send() ? ", kernel TLS for sending" : ", TLS in user space");
    in_batch_ = true;
    choose_protocol();
  }
  in_batch_ = true;
  char* plain = thread_plain_buffer();
  std::size_t have = 0;
  result r = result::ok;
  while (state_ == state::open) {
    have += tls_->read(plain + have, read_chunk - have, r);
    if (r == result::ok && have < read_chunk) continue;
    if (have > 0) process(std::string_view(plain, have));
    have = 0;
    if (r != result::ok) break;
  }
  in_batch_ = false;
  // A record begun and not finished is a frame in progress (frame deadline).
  const bool partial = state_ == state::open && tls_->partial_record();
  if (partial && !mid_frame()) frame_started_ = clock::now();
  tls_partial_ = partial;
  if (r == result::closed && state_ == state::open) {
    peer_eof_ = true;  // close_notify: the peer sends nothing more, but may read our replies
    guarded([this] { handler_->on_peer_eof(*this); });
  } else if (r == result::failed && state_ != state::closed) {
    spdlog::info("connection {}: TLS error: {}", peer_, tls_->error_text());
    close_now("TLS error: " + tls_->error_text());
  }
}

asio::awaitable<void> connection::write_loop() {
  error_code ec;
  bool stalled = false;  // the last gathered write found the socket full
  for (;;) {
    if (nothing_queued() && state_ == state::draining && tls_ && tls_->handshake_done() && !close_notify_sent_) {
      // Flushed: end the TLS stream properly before the FIN.
      close_notify_sent_ = true;
      tls_->close_notify();
    }
    if (nothing_queued()) break;
    if (state_ == state::closed) break;
    writing_ = true;
    if (!stalled) write_progress_ = clock::now();
    if (file_body_next()) {
      // sendfile it, or encrypt it piece by piece.
      // (Two statements: GCC 12 mishandles a co_await of a conditional expression.)
      if (encrypts_writes()) {
        ec = co_await write_segment_tls();
      } else {
        ec = co_await write_segment();
      }
      ::close(segments_.front().fd);
      file_bytes_queued_ -= segments_.front().length;
      --file_segments_;
      segments_.erase(segments_.begin());
      stalled = false;
    } else {
      // Frames up to the next file body, or everything; nothing is
      // borrowed across the wait, so more can be queued meanwhile.
      write_gathered(ec);  // without an error, it sent something
      stalled = ec == asio::error::would_block;
      if (stalled) {
        co_await socket_.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      } else if (!ec) {
        write_progress_ = clock::now();
      }
    }
    writing_ = false;
    if (ec) {
      drop_segments();
      close_now(state_ == state::closed ? close_reason_ : "write failed: " + ec.message());
      break;
    }
    if (state_ == state::closed) {
      drop_segments();
      break;
    }
    after_progress();
  }
  writer_running_ = false;
  if (state_ == state::draining) {
    // Everything is flushed: send FIN, then let the reader drain the peer's
    // remaining bytes until EOF or linger_timeout, so that closing does not
    // turn into a reset that could destroy our last frame in flight.
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (peer_eof_) {
      close_now(close_reason_);
    } else {
      // Flushed: give the peer linger_timeout to read it and send its FIN.
      linger_until_ = std::min(linger_until_, clock::now() + limits_.linger_timeout);
    }
  }
}

asio::awaitable<error_code> connection::write_segment() {
  // segments_.front() is looked up again after every wait: send_file may
  // append to segments_ meanwhile (and move its elements).
  error_code ec;
  off_t off = static_cast<off_t>(segments_.front().offset);
  std::size_t left = segments_.front().length;
  const int sock = socket_.native_handle();
  constexpr std::size_t raw_fallback_size = 64 * 1024;
  std::unique_ptr<char[]> raw_fallback;
  while (left > 0 && state_ != state::closed) {
    ssize_t n = ::sendfile(sock, segments_.front().fd, &off, left);
    if (n > 0) {
      left -= static_cast<std::size_t>(n);
      file_bytes_queued_ -= static_cast<std::size_t>(n);
      segments_.front().length -= static_cast<std::size_t>(n);
      write_progress_ = clock::now();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      co_await socket_.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return ec;
      continue;
    }
    if (n < 0 && errno != EINVAL && errno != ENOSYS) co_return error_code(errno, boost::system::system_category());
    // A raw body has no digest to catch made-up bytes: the peer gets a
    // short body (the connection closes) instead.
    if (segments_.front().raw) {
      // No made-up bytes in a raw body: what sendfile cannot send is read
      // and written; a file that ended early closes the connection.
      if (n == 0) co_return error_code(ENODATA, boost::system::system_category());
      // (A buffer of its own: the thread's may be another connection's by
      // the time the write completes.) A rare path: sendfile refused.
      if (!raw_fallback) raw_fallback = std::make_unique_for_overwrite<char[]>(raw_fallback_size);
      const ssize_t r = ::pread(segments_.front().fd, raw_fallback.get(), std::min(left, raw_fallback_size), off);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) co_return error_code(r == 0 ? ENODATA : errno, boost::system::system_category());
      std::size_t w = co_await asio::async_write(socket_, asio::buffer(raw_fallback.get(), static_cast<std::size_t>(r)),
                                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return ec;
      off += static_cast<off_t>(w);
      left -= w;
      file_bytes_queued_ -= w;
      segments_.front().length -= w;
      write_progress_ = clock::now();
      continue;
    }
    // The file ended early (it shrank), or cannot be sendfile'd: keep the
    // framing intact with zeros; the receiver's digest check fails the file.
    static const char zeros[64 * 1024] = {};
    std::size_t z = std::min(left, sizeof zeros);
    std::size_t w = co_await socket_.async_write_some(asio::buffer(zeros, z), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return ec;
    left -= w;
    file_bytes_queued_ -= w;
    segments_.front().length -= w;
    write_progress_ = clock::now();
  }
  co_return ec;
}

asio::awaitable<error_code> connection::write_segment_tls() {
  // What is already encrypted goes first; then the file is read, encrypted
  // and sent tls_batch at a time. The plaintext buffer is the thread's:
  // each piece is encrypted into the channel's output before any wait.
  // segments_.front() is looked up again after every wait (see write_segment).
  error_code ec;
  for (;;) {
    while (tls_output_bytes() > 0) {
      send_tls_output(ec);
      if (ec == asio::error::would_block) {
        co_await socket_.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) co_return ec;
      if (state_ == state::closed) co_return ec;
    }
    auto& seg = segments_.front();
    if (seg.length == 0 || state_ == state::closed) co_return ec;
    const std::size_t want = std::min(seg.length, tls_batch);
    char* buf = thread_plain_buffer();
    ssize_t n = ::pread(seg.fd, buf, want, static_cast<off_t>(seg.offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) co_return error_code(errno, boost::system::system_category());
    if (n == 0 && seg.raw) co_return error_code(ENODATA, boost::system::system_category());  // see above
    if (n == 0) {
      // The file ended early (it shrank): keep the framing intact with
      // zeros; the receiver's digest check fails the file.
      std::memset(buf, 0, want);
      n = static_cast<ssize_t>(want);
    }
    if (!tls_->write(std::string_view(buf, static_cast<std::size_t>(n)))) {
      co_return error_code(EPROTO, boost::system::system_category());
    }
    seg.offset += static_cast<std::uint64_t>(n);
    seg.length -= static_cast<std::size_t>(n);
    file_bytes_queued_ -= static_cast<std::size_t>(n);
  }
}

clock::time_point connection::next_deadline(due& what) const noexcept {
  auto best = clock::time_point::max();
  what = due::none;
  auto consider = [&](clock::time_point t, due w) {
    if (t < best) best = t, what = w;
  };
  if (delayed_error_) consider(delayed_error_at_, due::delayed_error);
  if (state_ == state::draining) consider(linger_until_, due::linger);
  if (writing_) consider(write_progress_ + limits_.write_timeout, due::write_stall);
  if (state_ == state::open && !delayed_error_) {
    if (!authenticated_) consider(opened_ + limits_.handshake_timeout, due::handshake);
    if (mid_frame()) consider(frame_started_ + limits_.frame_timeout, due::frame);
    // Idle: nothing from the peer, and nothing it took from us, for that
    // long (a long download to a peer that only reads is not idle).
    if (authenticated_ && !mid_frame()) {
      consider(std::max(last_activity_, write_progress_) + limits_.idle_timeout, due::idle);
    }
    if (keepalive_drop_.count() > 0) {
      if (pinged_for_ != last_activity_) consider(last_activity_ + keepalive_ping_, due::ping);
      consider(last_activity_ + keepalive_drop_, due::ping_timeout);
    }
  }
  return best;
}

void connection::fail_deadline(proto::errc why) {
  spdlog::info("connection {}: {}", peer_, proto::default_message(why));
  fail(why);
}

void connection::set_keepalive(std::chrono::milliseconds ping_after, std::chrono::milliseconds drop_after) {
  keepalive_ping_ = ping_after;
  keepalive_drop_ = drop_after;
  if (clock::now() + ping_after < watchdog_armed_for_) wake(watchdog_timer_);
}

void connection::check_deadlines() {
  // Runs from start() and then only from its own timer callback, so exactly
  // one callback is outstanding; others move it earlier with
  // wake(watchdog_timer_). Deadlines that start later (a frame begun, a
  // write begun) are never earlier than now + min(frame_timeout,
  // write_timeout), so sleeping at most that long means nobody has to
  // re-arm this timer on the hot path.
  const auto max_sleep = std::min(limits_.frame_timeout, limits_.write_timeout);
  while (state_ != state::closed) {
    const auto now = clock::now();
    due what;
    const auto at = next_deadline(what);
    if (at > now) {
      watchdog_armed_for_ = std::min(at, now + max_sleep);
      watchdog_timer_.expires_at(watchdog_armed_for_);
      watchdog_timer_.async_wait([self = shared_from_this()](const error_code&) { self->check_deadlines(); });
      return;
    }
    guarded([&] { act_on(what); });
  }
}

void connection::act_on(due what) {
  {
    switch (what) {
      case due::none: return;  // not reached: none is never due
      case due::delayed_error: {
        auto err = std::move(*delayed_error_);
        delayed_error_.reset();
        handler_->encode_failure(pending_, err);
        close_after_flush(err.value("code", "error"));
        break;
      }
      case due::linger: close_now(close_reason_.empty() ? "linger timeout" : close_reason_); break;
      case due::write_stall:
        spdlog::info("connection {}: write made no progress for {} ms; closing", peer_, limits_.write_timeout.count());
        close_now("write timeout");
        break;
      case due::ping:
        pinged_for_ = last_activity_;
        handler_->send_ping(*this);
        break;
      case due::ping_timeout:
        spdlog::info("connection {}: silent for {} ms, no answer to ping; closing", peer_, keepalive_drop_.count());
        close_now("ping timeout");
        break;
      case due::handshake:
        if (tls_handshaking()) {
          spdlog::info("connection {}: TLS handshake not completed within {} ms; closing", peer_,
                       limits_.handshake_timeout.count());
          close_now("TLS handshake timeout");
        } else {
          fail_deadline(proto::errc::handshake_timeout);
        }
        break;
      case due::frame: fail_deadline(proto::errc::frame_timeout); break;
      case due::idle: fail_deadline(proto::errc::idle_timeout); break;
    }
  }
}

}  // namespace cskit::net
