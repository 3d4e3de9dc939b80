// libFuzzer target for what the server parses after framing: the login
// exchange and the request headers of every service (core, files, chat,
// exec), through the real session over a real loopback connection.
//
// The first input byte picks the mode. Bit 0 clear: the rest is sent as
// the client's first bytes, so the fuzzer speaks the login exchange
// itself. Set: the harness logs in first (a correct cleartext proof) and
// the rest is the client's requests, so every service's request parsing is
// reached. Bit 1 set: the same over the IRC front end (server/irc_session:
// CAP, SASL, PASS and registration; logged in, every chat command).
// The server must answer or close, never crash, hang or leak (ASan, UBSan
// and libFuzzer's own leak and timeout checks). Seeds: fuzz/corpus-session,
// recorded from real sessions by scripts/fuzz-seeds.py.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>

#include "net/connection.hpp"
#include "proto/auth.hpp"
#include "proto/frame.hpp"
#include "server/chat_routes.hpp"
#include "server/exec_routes.hpp"
#include "server/file_routes.hpp"
#include "server/irc_session.hpp"
#include "server/session.hpp"
#include "service/chat.hpp"
#include "service/exec.hpp"
#include "service/files.hpp"

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace cskit;

namespace {

constexpr std::string_view user = "fuzz";
constexpr std::string_view token = "fuzz-token-0123456789abcdef0123";

// Logins that fail stay cheap: the fuzzer's inputs reach the proof check
// instead of being refused untried by the throttle.
server::auth_throttle::policy unthrottled() {
  server::auth_throttle::policy p;
  p.free_failures = 1 << 30;
  return p;
}

// The server side, built once: every service registered, exec disabled
// (its requests are parsed and refused, never run).
struct server_side {
  asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
  std::filesystem::path share_dir;
  std::unique_ptr<service::file_share> share;
  service::chat_hub chat{service::chat_options{}};
  service::exec_options exec_options;
  service::exec_policy exec_policy = service::exec_policy::resolve(exec_options);
  service::exec_limiter exec_limiter{exec_options};
  // Two contexts: the failures of the login exchange's inputs must not
  // slow down (auth_throttle) the logins of the requests' inputs.
  server::server_context login_ctx{unthrottled()}, requests_ctx;
  net::connection_limits limits;
  server::irc_front irc_login{login_ctx, chat, {}}, irc_requests{requests_ctx, chat, {}};

  server_side() {
    spdlog::set_level(spdlog::level::off);
    char tmpl[] = "/tmp/cskit-fuzz-share-XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    share_dir = tmpl;
    service::files_options fo;
    fo.max_file_size = 1 << 20;
    fo.quota = 64 << 20;
    fo.fsync = false;
    share = std::make_unique<service::file_share>(share_dir, fo);
    chat.set_accounts({std::string(user)});
    for (auto* ctx : {&login_ctx, &requests_ctx}) {
      ctx->name = "fuzz";
      proto::permission_set all;
      for (auto p : {proto::permission::files_read, proto::permission::files_write, proto::permission::exec,
                     proto::permission::chat}) {
        all.add(p);
      }
      ctx->set_accounts(std::make_shared<const server::account_table>(
          std::vector<server::user_account>{{std::string(user), std::string(token), all, "fuzz"}}));
      server::register_core_service(*ctx);
      server::register_file_service(*ctx, *share);
      server::register_exec_service(*ctx, exec_policy, exec_limiter);
      server::register_chat_service(*ctx, chat);
    }
  }
};

server_side& the_server() {
  // Never destroyed (the committer thread runs to the end); its share is
  // removed at exit.
  static server_side* s = [] {
    auto* made = new server_side();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(the_server().share_dir, ec);
    });
    return made;
  }();
  return *s;
}

// Reads what the server sent so far (non-blocking); returns the bytes.
std::string drain(int fd) {
  std::string got;
  char buf[65536];
  for (int i = 0; i < 64; ++i) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

// Runs the server's handlers until nothing is ready (bounded).
void settle(asio::io_context& io, int client_fd) {
  for (int i = 0; i < 256; ++i) {
    io.restart();
    const std::size_t ran = io.poll();
    drain(client_fd);
    if (ran == 0) break;
  }
}

// The first frame in `bytes` (the server's hello), or an empty header.
proto::json first_frame(const std::string& bytes) {
  proto::frame_decoder d;
  std::string_view in(bytes);
  proto::frame f;
  return d.decode(in, f) == proto::frame_decoder::status::frame ? f.header : proto::json();
}

// Logs in as the real client would over cleartext; false if the server
// did not greet as expected.
bool log_in(asio::io_context& io, int fd) {
  io.restart();
  io.poll();
  const proto::json hello = first_frame(drain(fd));
  if (!hello.is_object() || !hello.contains("nonce")) return false;
  const auto server_nonce = proto::from_hex<proto::nonce_size>(hello["nonce"].get<std::string>());
  if (!server_nonce) return false;
  proto::nonce client_nonce{};
  client_nonce.fill(7);
  const auto proof = proto::compute_proof(proto::proof_role::client, token, user, proto::binding_kind::nonces,
                                          proto::nonce_binding(*server_nonce, client_nonce));
  const std::string auth = proto::encode_frame({{"type", "auth"},
                                                {"id", 1},
                                                {"proto", proto::protocol_version},
                                                {"user", user},
                                                {"nonce", proto::to_hex(client_nonce)},
                                                {"proof", proto::to_hex(proof)}});
  if (::send(fd, auth.data(), auth.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(auth.size())) return false;
  settle(io, fd);
  return true;
}

// Registers on the IRC front end with PASS and joins a room.
bool irc_log_in(asio::io_context& io, int fd) {
  const std::string lines = "PASS " + std::string(user) + ":" + std::string(token) +
                            "\r\nNICK fz\r\nUSER fz 0 * :fuzz\r\nJOIN #fuzz\r\n";
  if (::send(fd, lines.data(), lines.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(lines.size())) return false;
  settle(io, fd);
  return true;
}

// Sends `data` to the server, letting it run whenever the socket is full.
void feed(asio::io_context& io, int fd, std::string_view data) {
  for (int rounds = 0; !data.empty() && rounds < 10000; ++rounds) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) data.remove_prefix(static_cast<std::size_t>(n));
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return;
    settle(io, fd);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  auto& s = the_server();
  const bool logged_in = data[0] & 1;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  tcp::socket client(s.io), accepted(s.io);
  client.connect(s.acceptor.local_endpoint());
  s.acceptor.accept(accepted);
  const bool irc = data[0] & 2;
  std::unique_ptr<net::frame_handler> handler;
  if (irc) handler = std::make_unique<server::irc_session>(logged_in ? s.irc_requests : s.irc_login);
  else handler = std::make_unique<server::session>(logged_in ? s.requests_ctx : s.login_ctx);
  auto conn = std::make_shared<net::connection>(std::move(accepted), s.limits, std::move(handler));
  conn->start([](net::connection&) {});
  const int fd = client.native_handle();
  if (!logged_in || (irc ? irc_log_in(s.io, fd) : log_in(s.io, fd))) {
    feed(s.io, fd, input);
    ::shutdown(fd, SHUT_WR);
    settle(s.io, fd);
  }
  conn->close_now("fuzz input done");
  client.close();
  settle(s.io, -1);
  return 0;
}
