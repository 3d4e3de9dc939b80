#include "client/client.hpp"


#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <sys/sendfile.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <toml++/toml.h>

#include "client/server_identity.hpp"
#include "net/tls.hpp"
#include "proto/auth.hpp"
#include "proto/messages.hpp"
#include "util/paths.hpp"
#include "util/token_file.hpp"

namespace cskit::client {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using proto::json;

client_error error_from_frame(const proto::frame& f) {
  const std::string code_name = f.header.value("code", "");
  const std::string message = f.header.value("message", "the server reported an error");
  auto code = proto::errc_from_wire(code_name);
  failure kind = failure::remote;
  if (code) {
    switch (*code) {
      case proto::errc::auth_failed: kind = failure::auth; break;
      case proto::errc::permission_denied: kind = failure::permission; break;
      case proto::errc::too_many_connections:
      case proto::errc::shutting_down: kind = failure::connect; break;
      case proto::errc::handshake_timeout:
      case proto::errc::idle_timeout:
      case proto::errc::frame_timeout: kind = failure::timeout; break;
      case proto::errc::header_too_large:
      case proto::errc::empty_header:
      case proto::errc::invalid_utf8:
      case proto::errc::bad_json:
      case proto::errc::header_not_object:
      case proto::errc::missing_type:
      case proto::errc::bad_body_length:
      case proto::errc::body_too_large:
      case proto::errc::bad_id:
      case proto::errc::handshake_required:
      case proto::errc::unsupported_version: kind = failure::protocol; break;
      default: break;
    }
  }
  return client_error(kind, "server: " + message + (code_name.empty() ? "" : " [" + code_name + "]"), code);
}

namespace {

std::shared_ptr<const net::tls::context> client_tls_context() {
  // One per process, made at the first connection: `cskit --version`,
  // `help` and the UDP commands never set TLS up.
  static const std::shared_ptr<const net::tls::context> ctx = [] {
    net::tls::client_settings s;
    s.try_ktls = net::tls::kernel_offers_ktls();
    return net::tls::context::for_client(s);
  }();
  return ctx;
}

}  // namespace

// --bwlimit: a token bucket over the bytes that cross the socket, either
// way. Each read and write is at most piece() bytes, and after each one the
// caller sleeps for as long as it ran ahead of the rate; a piece is a tenth
// of a second's worth, so no pause is long and no peer deadline is near.
class pacer {
 public:
  explicit pacer(std::uint64_t bytes_per_second)
      : rate_(static_cast<double>(bytes_per_second)), last_(std::chrono::steady_clock::now()) {}

  std::size_t piece() const noexcept {
    return static_cast<std::size_t>(std::clamp(rate_ / 10, 512.0, 4.0 * 1024 * 1024));
  }

  void spend(std::size_t bytes) {
    const auto now = std::chrono::steady_clock::now();
    const double idle = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(tokens_ + idle * rate_, static_cast<double>(piece())) - static_cast<double>(bytes);
    last_ = now;
    if (tokens_ >= 0) return;
    std::this_thread::sleep_for(std::chrono::duration<double>(-tokens_ / rate_));
    tokens_ = 0;
    last_ = std::chrono::steady_clock::now();
  }

 private:
  double rate_;
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_;
};

struct connection::impl {
  asio::io_context ioc{1};
  tcp::socket socket{ioc};
  tcp::resolver resolver{ioc};
  connect_options opts;
  net::host_port where;
  server_greeting greeting;
  std::string peer;
  std::uint64_t last_id = 0;
  std::chrono::steady_clock::time_point last_keep_alive = std::chrono::steady_clock::now();
  proto::frame_decoder decoder;
  static constexpr std::size_t rbuf_size = 256 * 1024;  // bulk streams (exec output) arrive in large reads
  std::unique_ptr<char[]> rbuf{new char[rbuf_size]};
  std::size_t rpos = 0, rlen = 0;
  std::string wbuf;
  std::string queued;  // frames waiting for one write (queue())
  static constexpr std::size_t queue_flush_bytes = 256 << 10;

  // TLS (null: the cleartext opt-in). Ciphertext is read in pieces smaller
  // than rbuf by more than a record, so that all a read decrypts (with a
  // record begun before it) fits in rbuf, and nothing decrypted is ever
  // left inside OpenSSL where poll() on the socket could not see it.
  std::unique_ptr<net::tls::channel> tls;
  static constexpr std::size_t cipher_chunk = rbuf_size - 64 * 1024;
  std::unique_ptr<char[]> cbuf;
  static constexpr std::size_t tls_chunk = 256 * 1024;  // plaintext encrypted and sent at a time
  std::unique_ptr<char[]> fbuf;  // a file piece, before it is encrypted
  bool encrypts() const noexcept { return tls && !tls->ktls_send(); }
  std::optional<pacer> pace;  // --bwlimit
  // At most one piece of the rate limit at a time (all of `want` without one).
  std::size_t paced(std::size_t want) const noexcept { return pace ? std::min(want, pace->piece()) : want; }

  // Runs one asynchronous operation to completion or until the deadline.
  template <class Start>
  error_code run(Start start, std::chrono::milliseconds timeout, const std::string& what) {
    bool done = false;
    error_code result;
    start([&](const error_code& ec, auto&&...) {
      result = ec;
      done = true;
    });
    ioc.restart();
    ioc.run_for(timeout);
    if (!done) {
      error_code ignored;
      socket.cancel(ignored);
      resolver.cancel();
      ioc.restart();
      ioc.run();
      throw client_error(failure::timeout, what + ": no answer within " + std::to_string(timeout.count()) + " ms");
    }
    return result;
  }

  client_error lost(const error_code& ec) const {
    return client_error(failure::connect, ec == asio::error::eof ? "connection closed by " + peer
                                                                 : "connection to " + peer + " lost: " + ec.message());
  }

  void connect(const net::host_port& to) {
    where = to;
    std::vector<tcp::endpoint> endpoints;
    error_code ec;
    // An IP literal needs no resolver (whose thread costs a millisecond).
    if (auto addr = asio::ip::make_address(where.host, ec); !ec) {
      endpoints.emplace_back(addr, where.port);
    } else {
      ec = run(
          [&](auto handler) {
            resolver.async_resolve(where.host, std::to_string(where.port),
                                   [&, handler](const error_code& e, tcp::resolver::results_type r) mutable {
                                     for (const auto& entry : r) endpoints.push_back(entry.endpoint());
                                     handler(e);
                                   });
          },
          opts.connect_timeout, "resolving " + where.host);
      if (ec) throw client_error(failure::connect, "cannot resolve '" + where.host + "': " + ec.message());
    }
    tcp::endpoint connected;
    ec = run(
        [&](auto handler) {
          asio::async_connect(socket, endpoints, [&, handler](const error_code& e, const tcp::endpoint& ep) mutable {
            connected = ep;
            handler(e);
          });
        },
        opts.connect_timeout, "connecting to " + net::format_host_port(where.host, where.port));
    if (ec) {
      throw client_error(failure::connect, "cannot connect to " + net::format_host_port(where.host, where.port) +
                                               ": " + ec.message() + " (is `cskit serve` running there?)");
    }
    socket.set_option(tcp::no_delay(true), ec);
    socket.non_blocking(true, ec);  // for the spin in read_frame; async ops are unaffected
    peer = net::format_host_port(connected.address().to_string(), connected.port());
    if (opts.plaintext && !connected.address().is_loopback()) {
      throw client_error(failure::connect, "refusing to log in to " + peer +
                                               " over cleartext: --plaintext is for loopback addresses only; "
                                               "everywhere else cskit uses TLS");
    }
  }

  // --- TLS set-up ---------------------------------------------------------

  void tls_handshake() {
    tls = std::make_unique<net::tls::channel>(client_tls_context(), where.host, socket.native_handle());
    cbuf.reset(new char[cipher_chunk]);
    std::string first;  // the server's first bytes, to explain a failure
    for (;;) {
      const auto r = tls->handshake();
      send_cipher();
      if (r == net::tls::channel::result::ok) break;
      if (r != net::tls::channel::result::want_input) handshake_failed(first, tls->error_text());
      error_code ec = run([&](auto handler) { socket.async_wait(tcp::socket::wait_read, handler); },
                          opts.io_timeout, "TLS handshake with " + peer);
      std::size_t n = 0;
      if (!ec) n = socket.read_some(asio::buffer(cbuf.get(), cipher_chunk), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
      if (ec) handshake_failed(first, ec == asio::error::eof ? "the server closed the connection" : ec.message());
      if (first.size() < 4096) first.append(cbuf.get(), std::min(n, 4096 - first.size()));
      tls->feed(std::string_view(cbuf.get(), n));
    }
    if (tls->alpn() != net::tls::alpn_id) {
      throw client_error(failure::protocol, "the TLS server at " + peer + " did not agree to speak cskit (ALPN)");
    }
  }

  [[noreturn]] void handshake_failed(const std::string& first, const std::string& why) {
    const std::string non_tls = net::tls::describe_non_tls(first);
    if (non_tls.empty()) throw client_error(failure::protocol, "TLS handshake with " + peer + " failed: " + why);
    // A cskit server that answered in cleartext: its error (at its
    // connection limit, say) is worth showing, unauthenticated as it is.
    proto::frame_decoder d;
    proto::frame f;
    std::string_view in(first);
    if (d.decode(in, f) == proto::frame_decoder::status::frame && f.type() == proto::type::error) {
      client_error e = error_from_frame(f);
      throw client_error(e.kind(), std::string(e.what()) + " (sent before TLS, unauthenticated)", e.code());
    }
    throw client_error(failure::protocol,
                       "the server at " + peer + " does not speak TLS: " + non_tls +
                           (f.type() == proto::type::hello ? " (it runs with --plaintext)" : "") +
                           ". cskit never falls back to cleartext by itself; --plaintext connects without TLS "
                           "(loopback only)");
  }

  // --- bytes on the socket ------------------------------------------------

  void wait_writable() {
    error_code ec = run([&](auto handler) { socket.async_wait(tcp::socket::wait_write, handler); }, opts.io_timeout,
                        "sending to " + peer);
    if (ec) throw lost(ec);
  }

  // Writes all of `data` to the socket, waiting (with the io deadline)
  // while it is full.
  void socket_write(const char* data, std::size_t size) {
    std::size_t off = 0;
    error_code ec;
    while (off < size) {
      std::size_t n = socket.write_some(asio::buffer(data + off, paced(size - off)), ec);
      if (!ec) {
        off += n;
        if (pace) pace->spend(n);
        continue;
      }
      if (ec != asio::error::would_block && ec != asio::error::try_again) throw lost(ec);
      wait_writable();
    }
  }

  void send_cipher() {
    const std::string_view out = tls->output();
    if (out.empty()) return;
    socket_write(out.data(), out.size());
    tls->consumed(out.size());
  }

  // Writes plaintext: encrypted a piece at a time over TLS.
  void write_raw(const char* data, std::size_t size) {
    if (!encrypts()) {
      socket_write(data, size);
      return;
    }
    for (std::size_t off = 0; off < size;) {
      const std::size_t k = std::min(size - off, tls_chunk);
      if (!tls->write(std::string_view(data + off, k))) {
        throw client_error(failure::connect, "TLS error on the connection to " + peer + ": " + tls->error_text());
      }
      off += k;
      send_cipher();
    }
  }

  // Decrypts what OpenSSL has into rbuf (fully decoded before this call).
  std::size_t drain_tls(error_code& ec) {
    std::size_t got = 0;
    for (;;) {
      net::tls::channel::result r;
      got += tls->read(rbuf.get() + got, rbuf_size - got, r);
      switch (r) {
        case net::tls::channel::result::ok:
          if (got == rbuf_size) return got;
          continue;
        case net::tls::channel::result::closed:
          if (got == 0) ec = asio::error::eof;
          return got;
        case net::tls::channel::result::failed:
          throw client_error(failure::connect, "TLS error on the connection to " + peer + ": " + tls->error_text());
        default: return got;
      }
    }
  }

  // One non-blocking read of plaintext into rbuf (fully decoded before
  // this call). would_block: nothing yet.
  std::size_t read_plain(error_code& ec) {
    ec = {};
    if (!tls) {
      const std::size_t n = socket.read_some(asio::buffer(rbuf.get(), paced(rbuf_size)), ec);
      if (pace && !ec) pace->spend(n);
      return n;
    }
    if (std::size_t got = drain_tls(ec); got > 0 || ec) return got;
    for (;;) {
      std::size_t n = socket.read_some(asio::buffer(cbuf.get(), paced(cipher_chunk)), ec);
      if (ec) return 0;
      if (pace) pace->spend(n);
      tls->feed(std::string_view(cbuf.get(), n));
      if (std::size_t got = drain_tls(ec); got > 0 || ec) return got;
      // a record begun, or a TLS message with no data for us: read on
    }
  }

  // --- frames ---------------------------------------------------------------

  void queue(const json& header, std::string_view body) {
    proto::errc e = proto::encode_frame(queued, header, body);
    if (e != proto::errc::ok) {
      throw client_error(failure::protocol, "cannot encode frame: " + std::string(proto::default_message(e)), e);
    }
    if (queued.size() >= queue_flush_bytes) flush();
  }

  void flush() {
    if (queued.empty()) return;
    write_raw(queued.data(), queued.size());
    queued.clear();
  }

  void write(const json& header, std::string_view body) {
    flush();
    wbuf.clear();
    proto::errc e = proto::encode_frame(wbuf, header, body);
    if (e != proto::errc::ok) {
      throw client_error(failure::protocol, "cannot encode frame: " + std::string(proto::default_message(e)), e);
    }
    write_raw(wbuf.data(), wbuf.size());
  }

  std::size_t send_file(const json& header, int fd, std::uint64_t offset, std::size_t length,
                        const std::function<void(std::string_view)>& observe = {}) {
    flush();
    wbuf.clear();
    proto::errc e = proto::encode_frame_header(wbuf, header, length);
    if (e != proto::errc::ok) {
      throw client_error(failure::protocol, "cannot encode frame: " + std::string(proto::default_message(e)), e);
    }
    write_raw(wbuf.data(), wbuf.size());
    return encrypts() ? send_file_encrypted(fd, offset, length, observe) : send_file_plain(fd, offset, length);
  }

  std::size_t send_file_plain(int fd, std::uint64_t offset, std::size_t length) {
    off_t off = static_cast<off_t>(offset);
    std::size_t left = length, sent = 0;
    bool short_file = false;
    while (left > 0) {
      ssize_t n = short_file ? 0 : ::sendfile(socket.native_handle(), fd, &off, paced(left));
      if (n > 0) {
        left -= static_cast<std::size_t>(n);
        sent += static_cast<std::size_t>(n);
        if (pace) pace->spend(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        wait_writable();
        continue;
      }
      if (n < 0 && errno != EINVAL && errno != ENOSYS) {
        throw client_error(failure::connect, "connection to " + peer + " lost: " + std::strerror(errno));
      }
      // The file ended early: keep the framing with zeros.
      short_file = true;
      static const char zeros[64 * 1024] = {};
      std::size_t z = std::min(left, sizeof zeros);
      write_raw(zeros, z);
      left -= z;
    }
    return sent;
  }

  std::size_t send_file_encrypted(int fd, std::uint64_t offset, std::size_t length,
                                  const std::function<void(std::string_view)>& observe) {
    if (!fbuf) fbuf.reset(new char[tls_chunk]);
    std::size_t left = length, sent = 0;
    bool short_file = false;
    while (left > 0) {
      const std::size_t want = std::min(left, tls_chunk);
      ssize_t n = short_file ? 0 : ::pread(fd, fbuf.get(), want, static_cast<off_t>(offset + sent));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw client_error(failure::local, std::string("cannot read the file being sent: ") + std::strerror(errno));
      if (n == 0) {
        // The file ended early: keep the framing with zeros.
        short_file = true;
        std::memset(fbuf.get(), 0, want);
        write_raw(fbuf.get(), want);
        left -= want;
        continue;
      }
      if (observe) observe(std::string_view(fbuf.get(), static_cast<std::size_t>(n)));
      write_raw(fbuf.get(), static_cast<std::size_t>(n));
      left -= static_cast<std::size_t>(n);
      sent += static_cast<std::size_t>(n);
    }
    return sent;
  }

  // Decodes what has been read, handing the bodies `stream` accepts to
  // `on_part` as they arrive; true when `f` is a whole frame.
  bool decode_streamed(proto::frame& f, const std::function<bool(const json&)>& stream,
                       const std::function<void(std::string_view)>& on_part) {
    decoder.report_headers(true);
    struct off_switch {
      proto::frame_decoder& d;
      ~off_switch() { d.report_headers(false); }
    } guard{decoder};
    while (rpos < rlen || decoder.frame_pending()) {
      std::string_view in(rbuf.get() + rpos, rlen - rpos);
      auto st = decoder.decode(in, f);
      rpos = rlen - in.size();
      using S = proto::frame_decoder::status;
      if (st == S::error) {
        throw client_error(failure::protocol,
                           "bad frame from " + peer + ": " + std::string(proto::default_message(decoder.error())),
                           decoder.error());
      }
      if (st == S::frame) return true;
      if (st == S::header) {
        if (stream(decoder.current_header())) decoder.stream_body();
        continue;
      }
      if (st == S::body_part) {
        on_part(decoder.body_part());
        continue;
      }
      break;  // need_more
    }
    return false;
  }

  // Like read_frame, but streams the bodies `stream` accepts to `on_part`.
  proto::frame read_frame_streamed(const std::function<bool(const json&)>& stream,
                                   const std::function<void(std::string_view)>& on_part) {
    proto::frame f;
    while (!decode_streamed(f, stream, on_part)) fill();
    return f;
  }

  // Like try_read_frame, streaming as read_frame_streamed does.
  std::optional<proto::frame> try_read_frame_streamed(const std::function<bool(const json&)>& stream,
                                                      const std::function<void(std::string_view)>& on_part) {
    proto::frame f;
    if (decode_streamed(f, stream, on_part)) return f;
    if (rpos < rlen || !read_available()) return std::nullopt;
    if (decode_streamed(f, stream, on_part)) return f;
    return std::nullopt;
  }

  // Decodes from what has been read; true when `f` is a whole frame.
  bool decode_buffered(proto::frame& f) {
    if (rpos >= rlen) return false;
    std::string_view in(rbuf.get() + rpos, rlen - rpos);
    auto st = decoder.decode(in, f);
    rpos = rlen - in.size();
    if (st == proto::frame_decoder::status::error) {
      throw client_error(failure::protocol,
                         "bad frame from " + peer + ": " + std::string(proto::default_message(decoder.error())),
                         decoder.error());
    }
    return st == proto::frame_decoder::status::frame;
  }

  proto::frame read_frame() {
    proto::frame f;
    while (!decode_buffered(f)) fill();
    return f;
  }

  // Replaces the (fully decoded) read buffer with the next bytes from the
  // socket: spins briefly, then waits with the io deadline.
  void fill() {
    flush();  // never wait for a reply to a request still in our queue
    std::size_t n = 0;
    if (!spin_read(n)) {
      for (;;) {
        error_code ec = run([&](auto handler) { socket.async_wait(tcp::socket::wait_read, handler); },
                            opts.io_timeout, "waiting for " + (peer.empty() ? std::string("server") : peer));
        if (!ec) n = read_plain(ec);
        if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
        if (ec) throw lost(ec);
        break;
      }
    }
    rpos = 0;
    rlen = n;
  }

  // Polls the non-blocking socket for up to spin_before_block. True when
  // bytes arrived; false to fall back to a blocking wait (also on errors,
  // which the blocking read then reports).
  bool spin_read(std::size_t& n) {
    if (opts.spin_before_block.count() <= 0) return false;
    const auto until = std::chrono::steady_clock::now() + opts.spin_before_block;
    error_code ec;
    do {
      n = read_plain(ec);
      if (!ec) return true;
      if (ec != asio::error::would_block && ec != asio::error::try_again) return false;
    } while (std::chrono::steady_clock::now() < until);
    return false;
  }

  // Reads once without blocking into the (fully decoded) buffer; false
  // when nothing has arrived.
  bool read_available() {
    error_code ec;
    std::size_t n = read_plain(ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return false;
    if (ec) throw lost(ec);
    rpos = 0;
    rlen = n;
    return true;
  }

  // Decodes what is buffered, then reads once without blocking.
  std::optional<proto::frame> try_read_frame() {
    proto::frame f;
    if (decode_buffered(f)) return f;
    if (!read_available()) return std::nullopt;
    if (decode_buffered(f)) return f;
    return std::nullopt;
  }

  // Server pings are answered, `bye` and fatal errors thrown; true when `f`
  // is for the caller.
  bool filter(proto::frame& f) {
    const auto type = f.type();
    if (type == proto::type::ping) {
      json pong = {{"type", proto::type::pong}};
      if (auto id = f.id()) pong["id"] = *id;
      write(pong, f.body);
      return false;
    }
    if (type == proto::type::bye) {
      throw client_error(failure::connect, "server closed the session: " + f.header.value("message", "bye"));
    }
    if (type == proto::type::error && !f.id()) throw error_from_frame(f);
    return true;
  }

  proto::frame receive() {
    for (;;) {
      proto::frame f = read_frame();
      if (filter(f)) return f;
    }
  }

  // --- login ----------------------------------------------------------------

  // Checks `hello`; returns the server nonce (cleartext only).
  std::optional<proto::nonce> check_hello(const proto::frame& hello, proto::binding_kind kind) {
    if (hello.type() == proto::type::error) throw error_from_frame(hello);
    if (hello.type() != proto::type::hello) {
      throw client_error(failure::protocol, "expected 'hello' from " + peer + ", got '" +
                                                std::string(hello.type()) + "' (is this a cskit server?)");
    }
    const json& h = hello.header;
    greeting.proto = h.value("proto", 0);
    greeting.software = h.value("server", "");
    greeting.version = h.value("version", "");
    greeting.name = h.value("name", "");
    if (greeting.proto != proto::protocol_version) {
      throw client_error(failure::protocol,
                         "server speaks protocol version " + std::to_string(greeting.proto) +
                             ", this client speaks " + std::to_string(proto::protocol_version) +
                             ": upgrade the older side",
                         proto::errc::unsupported_version);
    }
    const auto methods = h.value("auth", std::vector<std::string>{});
    if (std::find(methods.begin(), methods.end(), "hmac-sha256") == methods.end()) {
      throw client_error(failure::protocol, "server does not offer hmac-sha256 authentication");
    }
    if (h.value("binding", "") != proto::to_wire(kind)) {
      throw client_error(failure::protocol, "server binds its login to '" + h.value("binding", std::string("?")) +
                                                "', expected '" + std::string(proto::to_wire(kind)) + "'");
    }
    if (kind == proto::binding_kind::tls_exporter) return std::nullopt;
    auto server_nonce = proto::from_hex<proto::nonce_size>(h.value("nonce", ""));
    if (!server_nonce) throw client_error(failure::protocol, "server hello carries no valid nonce");
    return server_nonce;
  }

  void check_welcome(const proto::frame& reply, const credentials& creds, proto::binding_kind kind,
                     const std::string& binding) {
    if (reply.type() == proto::type::error) {
      client_error e = error_from_frame(reply);
      if (e.kind() == failure::auth) {
        throw client_error(failure::auth,
                           "authentication failed for user '" + creds.user + "' at " + peer + ": " +
                               reply.header.value("message", "") +
                               " (check --user and the token: --token, CSKIT_TOKEN or the client config)",
                           e.code());
      }
      throw e;
    }
    if (reply.type() != proto::type::welcome) {
      throw client_error(failure::protocol, "expected 'welcome', got '" + std::string(reply.type()) + "'");
    }
    auto server_proof = proto::from_hex<32>(reply.header.value("proof", ""));
    const auto expected = proto::compute_proof(proto::proof_role::server, creds.token, creds.user, kind, binding);
    if (!server_proof || !proto::proofs_equal(*server_proof, expected)) {
      throw client_error(failure::auth, "the server at " + peer +
                                            " could not prove it knows your token: it may not be the server "
                                            "you meant to reach; nothing was sent");
    }
    greeting.user = reply.header.value("user", creds.user);
    greeting.permissions = reply.header.value("permissions", std::vector<std::string>{});
  }

  json auth_frame(const credentials& creds, proto::binding_kind kind, const std::string& binding) {
    const auto proof = proto::compute_proof(proto::proof_role::client, creds.token, creds.user, kind, binding);
    return {{"type", proto::type::auth},
            {"id", ++last_id},
            {"proto", proto::protocol_version},
            {"user", creds.user},
            {"proof", proto::to_hex(proof)}};
  }

  // TLS: the proof is bound to this TLS session, which both ends already
  // share, so it goes out at once, with no round trip for a nonce.
  void login_tls(const credentials& creds) {
    const auto exported = tls->exporter();
    const std::string binding(reinterpret_cast<const char*>(exported.data()), exported.size());
    json auth = auth_frame(creds, proto::binding_kind::tls_exporter, binding);
    auth["binding"] = proto::binding_check(binding);
    write(auth, {});
    check_hello(read_frame(), proto::binding_kind::tls_exporter);
    check_welcome(read_frame(), creds, proto::binding_kind::tls_exporter, binding);
  }

  void login_cleartext(const credentials& creds) {
    const auto server_nonce = check_hello(read_frame(), proto::binding_kind::nonces);
    const auto client_nonce = proto::random_nonce();
    const std::string binding = proto::nonce_binding(*server_nonce, client_nonce);
    json auth = auth_frame(creds, proto::binding_kind::nonces, binding);
    auth["nonce"] = proto::to_hex(client_nonce);
    write(auth, {});
    check_welcome(read_frame(), creds, proto::binding_kind::nonces, binding);
  }

  void handshake(const credentials& creds) {
    if (opts.plaintext) {
      greeting.transport = "cleartext";
      login_cleartext(creds);
      return;
    }
    tls_handshake();
    greeting.fingerprint = tls->peer_fingerprint();
    greeting.verified_by = check_server_identity(*tls, where, opts.trust);
    greeting.transport = tls->description();
    greeting.kernel_tls_send = tls->ktls_send();
    login_tls(creds);
  }
};

namespace {
// A frame whose fields have the wrong JSON types is a protocol error, not a crash.
template <class F>
auto guard_json(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const nlohmann::json::exception& e) {
    throw client_error(failure::protocol, std::string("malformed frame from server: ") + e.what());
  }
}
}  // namespace

connection::connection(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
connection::connection(connection&&) noexcept = default;
connection& connection::operator=(connection&&) noexcept = default;
connection::~connection() = default;

connection connection::open(const net::host_port& where, const credentials& creds, const connect_options& opts) {
  if (creds.token.empty()) {
    throw client_error(failure::auth, "no token: give --token, set CSKIT_TOKEN, or put token = \"...\" in " +
                                          util::default_client_config().string());
  }
  auto p = std::make_unique<impl>();
  p->opts = opts;
  p->connect(where);
  guard_json([&] { p->handshake(creds); });
  if (opts.rate_limit) p->pace.emplace(opts.rate_limit);  // the transfer's bytes, not the login's
  return connection(std::move(p));
}

const server_greeting& connection::greeting() const noexcept { return impl_->greeting; }
const std::string& connection::peer() const noexcept { return impl_->peer; }
std::uint64_t connection::next_id() noexcept { return ++impl_->last_id; }
void connection::send(const json& header, std::string_view body) { impl_->write(header, body); }
void connection::queue(const json& header, std::string_view body) { impl_->queue(header, body); }
void connection::flush() { impl_->flush(); }
proto::frame connection::receive() {
  return guard_json([&] { return impl_->receive(); });
}

std::optional<proto::frame> connection::try_receive() {
  return guard_json([&]() -> std::optional<proto::frame> {
    while (auto f = impl_->try_read_frame()) {
      if (impl_->filter(*f)) return f;
    }
    return std::nullopt;
  });
}

std::optional<proto::frame> connection::try_receive_streamed(const std::function<bool(const json&)>& stream,
                                                            const std::function<void(std::string_view)>& on_part) {
  return guard_json([&]() -> std::optional<proto::frame> {
    while (auto f = impl_->try_read_frame_streamed(stream, on_part)) {
      if (impl_->filter(*f)) return f;
    }
    return std::nullopt;
  });
}

std::size_t connection::send_file(const json& header, int fd, std::uint64_t offset, std::size_t length) {
  return impl_->send_file(header, fd, offset, length);
}

std::size_t connection::send_file(const json& header, int fd, std::uint64_t offset, std::size_t length,
                                  const std::function<void(std::string_view)>& observe) {
  return impl_->send_file(header, fd, offset, length, observe);
}

bool connection::encrypts_in_user_space() const noexcept { return impl_->encrypts(); }
std::uint64_t connection::rate_limit() const noexcept { return impl_->opts.rate_limit; }

void connection::keep_alive() {
  const auto now = std::chrono::steady_clock::now();
  if (now - impl_->last_keep_alive < std::chrono::seconds(10)) return;
  impl_->last_keep_alive = now;
  impl_->write({{"type", proto::type::ping}}, {});
}

proto::frame connection::receive_streamed(const std::function<bool(const json&)>& stream,
                                          const std::function<void(std::string_view)>& on_part) {
  return guard_json([&] {
    for (;;) {
      proto::frame f = impl_->read_frame_streamed(stream, on_part);
      if (impl_->filter(f)) return f;
    }
  });
}

int connection::native_handle() const noexcept { return impl_->socket.native_handle(); }

proto::frame connection::request(json header, std::string_view body) {
  const std::uint64_t id = next_id();
  header["id"] = id;
  impl_->write(header, body);
  return guard_json([&] {
    for (;;) {
      proto::frame f = impl_->receive();
      if (f.id() != id) continue;  // a stray reply to an abandoned request
      if (f.type() == proto::type::error) throw error_from_frame(f);
      return f;
    }
  });
}

void connection::close() noexcept {
  if (!impl_) return;
  error_code ec;
  if (impl_->tls && impl_->tls->handshake_done() && impl_->socket.is_open()) {
    // End the TLS stream properly (close_notify), without waiting.
    impl_->tls->close_notify();
    const auto out = impl_->tls->output();
    if (!out.empty()) impl_->socket.write_some(asio::buffer(out.data(), out.size()), ec);
  }
  impl_->socket.shutdown(tcp::socket::shutdown_both, ec);
  impl_->socket.close(ec);
}

std::filesystem::path default_client_config() { return util::default_client_config(); }

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v && *v) return std::string(v);
  return std::nullopt;
}

}  // namespace

namespace {

// "box:17701" -> {"box", "17701"}; "[::1]:7701" -> {"[::1]", "7701"}; no port: {"box", ""}.
std::pair<std::string, std::string> split_port(const std::string& host) {
  const auto colon = host.rfind(':');
  const bool bracketed = !host.empty() && host.front() == '[';
  if (colon == std::string::npos || (bracketed && host.find(']') > colon) ||
      (!bracketed && host.find(':') != colon)) {
    return {host, ""};
  }
  return {host.substr(0, colon), host.substr(colon + 1)};
}

[[noreturn]] void bad_config(const std::filesystem::path& path, const toml::node& at, const std::string& why) {
  throw client_error(failure::local, path.string() + ":" + std::to_string(at.source().begin.line) + ": " + why);
}

// As strict as the server's config: a key it does not know is an error
// naming the file and the line (a typo must not silently drop a pin).
void check_client_config(const std::filesystem::path& path, const toml::table& doc, bool& has_token) {
  static constexpr std::string_view top_keys[] = {"user", "token", "ca_file", "hosts"};
  static constexpr std::string_view host_keys[] = {"address", "port", "user", "token", "token_file", "fingerprint",
                                                   "ca_file"};
  auto known = [](const auto& keys, std::string_view k) { return std::find(std::begin(keys), std::end(keys), k) != std::end(keys); };
  for (auto&& [k, v] : doc) {
    if (!known(top_keys, k.str())) {
      bad_config(path, v, "unknown key '" + std::string(k.str()) + "'" +
                              (k.str() == "fingerprint" ? " (a pinned key belongs in a [hosts.NAME] table)" : ""));
    }
    has_token |= k.str() == "token";
  }
  const toml::node* hosts = doc.get("hosts");
  if (!hosts) return;
  if (!hosts->is_table()) bad_config(path, *hosts, "'hosts' must be tables: [hosts.NAME]");
  for (auto&& [name, t] : *hosts->as_table()) {
    if (!t.is_table()) bad_config(path, t, "[hosts." + std::string(name.str()) + "] must be a table");
    for (auto&& [k, v] : *t.as_table()) {
      if (!known(host_keys, k.str())) {
        bad_config(path, v, "unknown key '" + std::string(k.str()) + "' in [hosts." + std::string(name.str()) + "]");
      }
      has_token |= k.str() == "token";
    }
  }
}

// `secrets`: the caller takes a token from it (the UDP commands do not,
// so a file others may read is no reason to refuse them).
toml::table load_client_config(const std::filesystem::path& path, bool named, bool secrets = true) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (named) throw client_error(failure::local, "client config " + path.string() + " does not exist");
    return {};
  }
  toml::table doc;
  try {
    doc = toml::parse_file(path.string());
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << path.string() << ":" << e.source().begin.line << ": " << e.description();
    throw client_error(failure::local, os.str());
  }
  bool has_token = false;
  check_client_config(path, doc, has_token);
  // A file that holds a token is refused when others may read it, as ssh
  // refuses such a private key (and as token_file is).
  struct stat st {};
  if (secrets && has_token && ::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    throw client_error(failure::local, path.string() + " holds a token and may be read by others (chmod 600 " +
                                           path.string() + ")");
  }
  return doc;
}

[[noreturn]] void bad_host_entry(const std::filesystem::path& path, const std::string& name, const std::string& why) {
  throw client_error(failure::local, path.string() + ": [hosts.\"" + name + "\"]: " + why);
}

// Where an alias's table says the host is: its address, and its port unless
// the command line named one.
// A host's `address` in its table (IPv6 in brackets), or `name` without one.
std::string alias_address(const std::filesystem::path& path, const std::string& table_name, const toml::table& t,
                          const std::string& name) {
  const auto* a = t.get("address");
  if (!a) return name;
  const auto v = a->value<std::string>();
  if (!v || v->empty()) bad_host_entry(path, table_name, "'address' must be a host name or an IP address");
  return v->find(':') != std::string::npos && v->front() != '[' ? "[" + *v + "]" : *v;
}

std::string connect_target(const std::filesystem::path& path, const std::string& table_name, const toml::table& t,
                           const std::string& typed) {
  auto [name, port] = split_port(typed);
  const std::string address = alias_address(path, table_name, t, name);
  if (port.empty()) {
    if (const auto* pn = t.get("port")) {
      const auto v = pn->value<std::int64_t>();
      if (!v || *v < 1 || *v > 65535) bad_host_entry(path, table_name, "'port' must be a number from 1 to 65535");
      port = std::to_string(*v);
    }
  }
  return port.empty() ? address : address + ":" + port;
}

std::optional<std::string> token_from_file(const std::filesystem::path& config, const std::string& table_name,
                                           std::string file) {
  if (file.starts_with("~/")) {  // as ssh_config's IdentityFile
    const char* home = std::getenv("HOME");
    if (!home || !*home) bad_host_entry(config, table_name, "token_file " + file + ": HOME is not set");
    file = std::string(home) + file.substr(1);
  }
  std::string token;
  switch (util::read_private_token(file, token)) {
    case util::token_file_status::ok: return token;
    case util::token_file_status::missing: bad_host_entry(config, table_name, "token_file " + file + " does not exist");
    case util::token_file_status::not_private:
      bad_host_entry(config, table_name, "token_file " + file + " may be read by others (chmod 600 it)");
    case util::token_file_status::empty: bad_host_entry(config, table_name, "token_file " + file + " is empty");
    case util::token_file_status::unreadable: bad_host_entry(config, table_name, "cannot read token_file " + file);
  }
  return std::nullopt;
}

}  // namespace

std::string udp_target(const std::string& typed) {
  // Only where the host is: the alias's port is its cskit (TCP) port, not
  // the echo or NTP one.
  const auto path = default_client_config();
  if (path.empty()) return typed;
  const toml::table doc = load_client_config(path, false, false);
  auto [name, port] = split_port(typed);
  const toml::table* host = doc["hosts"][name].as_table();
  if (!host) return typed;
  const std::string address = alias_address(path, name, *host, name);
  return port.empty() ? address : address + ":" + port;
}

client_profile resolve_profile(const credential_sources& src) {
  std::optional<std::string> user = src.flag_user ? src.flag_user : env("CSKIT_USER");
  std::optional<std::string> token = src.flag_token ? src.flag_token : env("CSKIT_TOKEN");
  std::optional<std::string> fingerprint = src.flag_fingerprint;
  std::optional<std::string> ca_file = src.flag_ca_file;
  client_profile p;
  p.connect_to = src.host_key;

  const auto path = src.config_file.empty() ? default_client_config() : src.config_file;
  if (!path.empty()) {
    const toml::table doc = load_client_config(path, !src.config_file.empty());
    std::string table_name = src.host_key;
    const toml::table* host = doc["hosts"][table_name].as_table();
    if (!host) {
      // HOST:PORT also finds an alias's table [hosts.HOST] (one that says
      // where HOST is); a plain host's table stays with the host as typed.
      table_name = split_port(src.host_key).first;
      host = doc["hosts"][table_name].as_table();
      if (host && !host->contains("address") && !host->contains("port")) host = nullptr;
    }
    auto take = [&](std::optional<std::string>& v, const char* key) {
      if (v) return;
      if (host) v = (*host)[key].value<std::string>();
      // A pinned key belongs to one host: never taken from the top level.
      if (!v && std::string_view(key) != "fingerprint") v = doc[key].value<std::string>();
    };
    take(user, "user");
    if (!token && host) {
      if (auto file = (*host)["token_file"].value<std::string>()) token = token_from_file(path, table_name, *file);
    }
    take(token, "token");
    take(fingerprint, "fingerprint");
    take(ca_file, "ca_file");
    if (host) p.connect_to = connect_target(path, table_name, *host, src.host_key);
  }
  if (fingerprint && !net::tls::is_fingerprint(*fingerprint)) {
    throw client_error(failure::host_key_unknown, "'" + *fingerprint +
                                                      "' is not a key fingerprint (SHA256: and 43 characters of "
                                                      "base64, as `cskit serve --print-fingerprint` prints it)");
  }
  p.fingerprint = fingerprint;
  if (ca_file) p.ca_file = *ca_file;
  credentials& c = p.creds;
  if (user) c.user = *user;
  if (token) {
    c.token = *token;
  } else if (c.user == "admin") {
    // Same machine, same account as a default `cskit serve`: use its token.
    std::string t;
    if (util::read_private_token(util::default_state_dir() / "admin.token", t) == util::token_file_status::ok) {
      c.token = std::move(t);
    }
  }
  return p;
}

credentials resolve_credentials(const credential_sources& src) { return resolve_profile(src).creds; }

}  // namespace cskit::client
