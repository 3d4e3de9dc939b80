#include "client/client.hpp"


#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <sys/sendfile.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

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

struct connection::impl {
  asio::io_context ioc{1};
  tcp::socket socket{ioc};
  tcp::resolver resolver{ioc};
  connect_options opts;
  server_greeting greeting;
  std::string peer;
  std::uint64_t last_id = 0;
  proto::frame_decoder decoder;
  static constexpr std::size_t rbuf_size = 256 * 1024;  // bulk streams (exec output) arrive in large reads
  std::unique_ptr<char[]> rbuf{new char[rbuf_size]};
  std::size_t rpos = 0, rlen = 0;
  std::string wbuf;
  std::string queued;  // frames waiting for one write (queue())
  static constexpr std::size_t queue_flush_bytes = 256 << 10;

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

  void connect(const net::host_port& where) {
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
  }

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
    // Write directly while the socket accepts data (the common case); wait
    // through the event loop, with a deadline, only when it is full.
    std::size_t off = 0;
    error_code ec;
    while (off < wbuf.size()) {
      std::size_t n = socket.write_some(asio::buffer(wbuf.data() + off, wbuf.size() - off), ec);
      if (!ec) {
        off += n;
        continue;
      }
      if (ec != asio::error::would_block && ec != asio::error::try_again) break;
      ec = run(
          [&](auto handler) {
            asio::async_write(socket, asio::buffer(wbuf.data() + off, wbuf.size() - off), handler);
          },
          opts.io_timeout, "sending to " + peer);
      off = wbuf.size();
      break;
    }
    if (ec) throw client_error(failure::connect, "connection to " + peer + " lost: " + ec.message());
  }

  std::size_t send_file(const json& header, int fd, std::uint64_t offset, std::size_t length) {
    flush();
    wbuf.clear();
    proto::errc e = proto::encode_frame_header(wbuf, header, length);
    if (e != proto::errc::ok) {
      throw client_error(failure::protocol, "cannot encode frame: " + std::string(proto::default_message(e)), e);
    }
    write_raw(wbuf.data(), wbuf.size());
    off_t off = static_cast<off_t>(offset);
    std::size_t left = length, sent = 0;
    bool short_file = false;
    while (left > 0) {
      ssize_t n = short_file ? 0 : ::sendfile(socket.native_handle(), fd, &off, left);
      if (n > 0) {
        left -= static_cast<std::size_t>(n);
        sent += static_cast<std::size_t>(n);
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

  void wait_writable() {
    error_code ec = run([&](auto handler) { socket.async_wait(tcp::socket::wait_write, handler); }, opts.io_timeout,
                        "sending to " + peer);
    if (ec) throw client_error(failure::connect, "connection to " + peer + " lost: " + ec.message());
  }

  void write_raw(const char* data, std::size_t size) {
    std::size_t off = 0;
    error_code ec;
    while (off < size) {
      std::size_t n = socket.write_some(asio::buffer(data + off, size - off), ec);
      if (!ec) {
        off += n;
        continue;
      }
      if (ec != asio::error::would_block && ec != asio::error::try_again) {
        throw client_error(failure::connect, "connection to " + peer + " lost: " + ec.message());
      }
      wait_writable();
    }
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
      error_code ec = run(
          [&](auto handler) {
            socket.async_read_some(asio::buffer(rbuf.get(), rbuf_size),
                                   [&, handler](const error_code& e, std::size_t got) mutable {
                                     n = got;
                                     handler(e);
                                   });
          },
          opts.io_timeout, "waiting for " + (peer.empty() ? std::string("server") : peer));
      if (ec) {
        throw client_error(failure::connect, ec == asio::error::eof
                                                 ? "connection closed by " + peer
                                                 : "connection to " + peer + " lost: " + ec.message());
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
      n = socket.read_some(asio::buffer(rbuf.get(), rbuf_size), ec);
      if (!ec) return true;
      if (ec != asio::error::would_block && ec != asio::error::try_again) return false;
    } while (std::chrono::steady_clock::now() < until);
    return false;
  }

  // Reads once without blocking into the (fully decoded) buffer; false
  // when nothing has arrived.
  bool read_available() {
    error_code ec;
    std::size_t n = socket.read_some(asio::buffer(rbuf.get(), rbuf_size), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return false;
    if (ec) {
      throw client_error(failure::connect, ec == asio::error::eof ? "connection closed by " + peer
                                                                  : "connection to " + peer + " lost: " + ec.message());
    }
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

  void handshake(const credentials& creds) {
    proto::frame hello = read_frame();
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
    auto server_nonce = proto::from_hex<proto::nonce_size>(h.value("nonce", ""));
    if (!server_nonce) throw client_error(failure::protocol, "server hello carries no valid nonce");
    const auto methods = h.value("auth", std::vector<std::string>{});
    if (std::find(methods.begin(), methods.end(), "hmac-sha256") == methods.end()) {
      throw client_error(failure::protocol, "server does not offer hmac-sha256 authentication");
    }

    const auto client_nonce = proto::random_nonce();
    const auto proof =
        proto::compute_proof(proto::proof_role::client, creds.token, creds.user, *server_nonce, client_nonce);
    const std::uint64_t id = ++last_id;
    write({{"type", proto::type::auth},
           {"id", id},
           {"proto", proto::protocol_version},
           {"user", creds.user},
           {"nonce", proto::to_hex(client_nonce)},
           {"proof", proto::to_hex(proof)}},
          {});
    proto::frame reply = read_frame();
    if (reply.type() == proto::type::error) {
      client_error e = error_from_frame(reply);
      if (e.kind() == failure::auth) {
        throw client_error(failure::auth,
                           "authentication failed for user '" + creds.user + "' at " + peer +
                               ": check --user and the token (--token, CSKIT_TOKEN or the client config)",
                           e.code());
      }
      throw e;
    }
    if (reply.type() != proto::type::welcome) {
      throw client_error(failure::protocol, "expected 'welcome', got '" + std::string(reply.type()) + "'");
    }
    auto server_proof = proto::from_hex<32>(reply.header.value("proof", ""));
    const auto expected =
        proto::compute_proof(proto::proof_role::server, creds.token, creds.user, *server_nonce, client_nonce);
    if (!server_proof || !proto::proofs_equal(*server_proof, expected)) {
      throw client_error(failure::auth, "the server at " + peer +
                                            " could not prove it knows your token: it may not be the server "
                                            "you meant to reach; nothing was sent");
    }
    greeting.user = reply.header.value("user", creds.user);
    greeting.permissions = reply.header.value("permissions", std::vector<std::string>{});
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

credentials resolve_credentials(const credential_sources& src) {
  std::optional<std::string> user = src.flag_user ? src.flag_user : env("CSKIT_USER");
  std::optional<std::string> token = src.flag_token ? src.flag_token : env("CSKIT_TOKEN");

  const auto path = src.config_file.empty() ? default_client_config() : src.config_file;
  if ((!user || !token) && !path.empty()) {
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      toml::table doc;
      try {
        doc = toml::parse_file(path.string());
      } catch (const toml::parse_error& e) {
        std::ostringstream os;
        os << path.string() << ":" << e.source().begin.line << ": " << e.description();
        throw client_error(failure::auth, os.str());
      }
      if (const auto* host = doc["hosts"][src.host_key].as_table()) {
        if (!user) user = (*host)["user"].value<std::string>();
        if (!token) token = (*host)["token"].value<std::string>();
      }
      if (!user) user = doc["user"].value<std::string>();
      if (!token) token = doc["token"].value<std::string>();
    } else if (!src.config_file.empty()) {
      throw client_error(failure::auth, "client config " + path.string() + " does not exist");
    }
  }
  credentials c;
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
  return c;
}

}  // namespace cskit::client
