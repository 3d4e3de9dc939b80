// libFuzzer target for what the client parses from a server: listings
// (fs.list.reply bodies), stat entries, get headers and data (single files
// and trees, written into a scratch directory), and the chat text a
// terminal shows. A fake server on loopback logs the real client in (a
// correct cleartext proof) and then sends the input as its answers.
//
// The first input byte picks the operation; the rest is what the server
// says after `welcome`. The client must fail cleanly (client_error) or
// succeed, never crash, hang or write outside its destination (checked:
// nothing appears next to it). Seeds: fuzz/corpus-client, recorded from
// real sessions by scripts/fuzz-seeds.py.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <spdlog/spdlog.h>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "app/line_editor.hpp"
#include "client/client.hpp"
#include "client/files.hpp"
#include "proto/auth.hpp"
#include "proto/frame.hpp"
#include "proto/utf8.hpp"

using namespace cskit;

namespace {

constexpr std::string_view user = "fuzz";
constexpr std::string_view token = "fuzz-token-0123456789abcdef0123";

void check(bool ok) {
  if (!ok) std::abort();
}

int listener(std::uint16_t& port) {
  static int fd = -1;
  static std::uint16_t bound = 0;
  if (fd < 0) {
    spdlog::set_level(spdlog::level::off);
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 4) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      std::abort();
    }
    bound = ntohs(a.sin_port);
  }
  port = bound;
  return fd;
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads frames until one is complete (bounded by a deadline); its header.
proto::json read_frame(int fd) {
  proto::frame_decoder d;
  std::string buf;
  for (int i = 0; i < 100; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) break;
    char chunk[4096];
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) break;
    buf.append(chunk, static_cast<std::size_t>(n));
    std::string_view in(buf);
    proto::frame f;
    if (d.decode(in, f) == proto::frame_decoder::status::frame) return f.header;
  }
  return {};
}

// The fake server: hello, a correct welcome, then `answers`; then it reads
// until the client closes (so that the client's writes never block).
void serve(int listen_fd, std::string_view answers) {
  const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return;
  const proto::nonce server_nonce = proto::random_nonce();
  send_all(fd, proto::encode_frame({{"type", "hello"},
                                    {"proto", proto::protocol_version},
                                    {"server", "cskit"},
                                    {"version", "fuzz"},
                                    {"name", "fuzz"},
                                    {"auth", {"hmac-sha256"}},
                                    {"binding", "nonces"},
                                    {"nonce", proto::to_hex(server_nonce)}}));
  const proto::json auth = read_frame(fd);
  if (auth.is_object() && auth.contains("nonce") && auth["nonce"].is_string()) {
    if (auto client_nonce = proto::from_hex<proto::nonce_size>(auth["nonce"].get<std::string>())) {
      const auto proof = proto::compute_proof(proto::proof_role::server, token, user, proto::binding_kind::nonces,
                                              proto::nonce_binding(server_nonce, *client_nonce));
      send_all(fd, proto::encode_frame({{"type", "welcome"},
                                        {"id", auth.value("id", 1)},
                                        {"user", user},
                                        {"permissions", {"files-read", "files-write", "chat"}},
                                        {"proof", proto::to_hex(proof)}}));
      send_all(fd, answers);
    }
  }
  ::shutdown(fd, SHUT_WR);
  char sink[65536];
  for (int i = 0; i < 1000; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0 || ::recv(fd, sink, sizeof sink, 0) <= 0) break;
  }
  ::close(fd);
}

// What a terminal shows of received text carries no control, invisible or
// direction-changing character, and is valid UTF-8.
void check_shown(std::string_view text) {
  const std::string shown = app::neutralize(text);
  check(proto::is_valid_utf8(shown));
  for (std::size_t i = 0; i < shown.size(); ++i) {
    const auto c = static_cast<unsigned char>(shown[i]);
    check(c >= 0x20 && c != 0x7f);
    if (c == 0xe2 && i + 2 < shown.size()) {
      const auto b1 = static_cast<unsigned char>(shown[i + 1]), b2 = static_cast<unsigned char>(shown[i + 2]);
      check(!(b1 == 0x80 && ((b2 >= 0x8b && b2 <= 0x8c) || (b2 >= 0x8e && b2 <= 0x8f) || (b2 >= 0xa8 && b2 <= 0xae))));
      check(!(b1 == 0x81 && b2 >= 0xa0 && b2 <= 0xaf));
    }
  }
}

std::filesystem::path scratch_dir() {
  return std::filesystem::temp_directory_path() / ("cskit-fuzz-client-" + std::to_string(::getpid()));
}

// The destination sits three levels below the scratch directory, so that a
// link to "..", "../..", or "../../.." climbing out of it lands in a
// directory the check below can see.
std::filesystem::path prepare_destination() {
  const auto scratch = scratch_dir();
  std::filesystem::remove_all(scratch);
  std::filesystem::create_directories(scratch / "a" / "b" / "dest");
  return scratch / "a" / "b" / "dest";
}

// Nothing but the chain scratch/a/b/dest exists outside the destination,
// however the client's run ended: a lying server cannot write there.
void check_nothing_escaped() {
  const auto scratch = scratch_dir();
  const std::pair<std::filesystem::path, const char*> chain[] = {
      {scratch, "a"}, {scratch / "a", "b"}, {scratch / "a" / "b", "dest"}};
  for (const auto& [dir, only] : chain)
    for (const auto& e : std::filesystem::directory_iterator(dir)) check(e.path().filename() == only);
  // ... and the destination is still the directory it was, not a link.
  const auto dest = std::filesystem::symlink_status(scratch / "a" / "b" / "dest");
  check(dest.type() == std::filesystem::file_type::directory);
  std::filesystem::remove_all(scratch);
}

void run_client(std::uint8_t op, std::uint16_t port, const std::filesystem::path& dest) {
  client::connect_options opts;
  opts.plaintext = true;
  opts.io_timeout = std::chrono::milliseconds(500);
  opts.connect_timeout = std::chrono::milliseconds(500);
  opts.spin_before_block = std::chrono::microseconds(0);
  auto c = client::connection::open({"127.0.0.1", port}, {std::string(user), std::string(token)}, opts);
  client::file_client files(c);
  client::transfer_options o;
  o.fsync = false;
  switch (op % 5) {
    case 0: (void)files.list("tree", true, false); break;
    case 1: (void)files.list("dir", false, false); break;
    case 2: (void)files.stat("file"); break;
    case 3: o.recursive = true; (void)files.get({"tree"}, dest.string(), o); break;
    default: (void)files.get({"file"}, (dest / "one").string(), o); break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view answers(reinterpret_cast<const char*>(data + 1), size - 1);
  check_shown(answers);
  std::uint16_t port = 0;
  const auto dest = prepare_destination();
  const int fd = listener(port);
  std::thread server([&] { serve(fd, answers); });
  try {
    run_client(data[0], port, dest);
  } catch (const std::exception&) {
    // A refusal is a correct answer to a bad server.
  }
  server.join();
  check_nothing_escaped();
  return 0;
}
