// Chat fan-out load generator for `make bench`: one sender, N receivers in
// one room, M messages at a fixed rate. The same program drives cskit (its
// chat protocol, through the client library) and an IRC server (ngircd), so
// the comparison is between servers. Each message carries its send time;
// every receiver records the delivery latency. Prints one JSON object.
//
//   bench_chat cskit|irc|cskit-irc HOST:PORT TOKEN RECEIVERS MESSAGES RATE [tls|plain]
//
// tls (the default): every connection is TLS 1.3 (cskit's by default; an
// IRC server's TLS port); the server's key is not checked (loopback).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "client/client.hpp"
#include "net/tls.hpp"
#include "proto/auth.hpp"
#include "proto/frame.hpp"
#include "proto/limits.hpp"
#include "util/clock.hpp"

using namespace cskit;

namespace {

std::vector<double> latencies_ms;
std::uint64_t delivered = 0;
std::int64_t last_delivery_ns = 0;

void record(std::string_view text) {
  // "SEQ SEND_NS filler"
  auto sp = text.find(' ');
  if (sp == std::string_view::npos) return;
  auto rest = text.substr(sp + 1);
  const std::int64_t sent = std::atoll(std::string(rest.substr(0, rest.find(' '))).c_str());
  const std::int64_t now = util::realtime_ns();
  if (latencies_ms.size() < 20'000'000) latencies_ms.push_back(static_cast<double>(now - sent) / 1e6);
  ++delivered;
  last_delivery_ns = now;
}

std::string message_text(std::uint64_t seq) {
  std::string t = std::to_string(seq) + " " + std::to_string(util::realtime_ns()) + " ";
  t.resize(64, 'x');  // a typical short chat line
  return t;
}

// ------------------------------------------------------------------ links

// One connection of the generator: a socket, what was read and not yet
// used, and TLS when asked for (a channel from cskit's own TLS code, driven
// by blocking writes and non-blocking reads).
struct link {
  int fd = -1;
  std::string in;
  std::unique_ptr<net::tls::channel> tls;
};

bool use_tls = true;

std::shared_ptr<const net::tls::context> tls_context() {
  static const auto ctx = net::tls::context::for_client({});
  return ctx;
}

int tcp_connect(const net::host_port& where) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(where.port);
  ::inet_pton(AF_INET, where.host.c_str(), &sa.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::perror("connect");
    std::exit(1);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void write_raw(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::write(fd, s.data(), s.size());
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, 1000);
        continue;
      }
      std::perror("write");
      std::exit(1);
    }
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

void flush_tls(link& l) {
  const std::string out(l.tls->output());
  l.tls->consumed(out.size());
  write_raw(l.fd, out);
}

void write_all(link& l, std::string_view s) {
  if (!l.tls) return write_raw(l.fd, s);
  if (!l.tls->write(s)) {
    std::fprintf(stderr, "bench_chat: TLS: %s\n", l.tls->error_text().c_str());
    std::exit(1);
  }
  flush_tls(l);
}

// Reads what is there (waiting at most `wait_ms`) and appends the
// plaintext to l.in. False on EOF or error.
bool read_some(link& l, int wait_ms = 0) {
  if (wait_ms > 0) {
    pollfd p{l.fd, POLLIN, 0};
    ::poll(&p, 1, wait_ms);
  }
  char buf[65536];
  ssize_t n = ::recv(l.fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (!l.tls) {
    l.in.append(buf, static_cast<std::size_t>(n));
    return true;
  }
  l.tls->feed(std::string_view(buf, static_cast<std::size_t>(n)));
  if (!l.tls->handshake_done()) {
    const auto r = l.tls->handshake();
    flush_tls(l);
    if (r == net::tls::channel::result::want_input) return true;
    if (r != net::tls::channel::result::ok) return false;
  }
  char plain[65536];
  for (;;) {
    net::tls::channel::result r;
    const std::size_t got = l.tls->read(plain, sizeof plain, r);
    l.in.append(plain, got);
    if (r == net::tls::channel::result::ok) continue;
    return r == net::tls::channel::result::want_input;
  }
}

link open_link(const net::host_port& where) {
  link l{tcp_connect(where), {}, nullptr};
  if (!use_tls) return l;
  l.tls = std::make_unique<net::tls::channel>(tls_context(), where.host);
  l.tls->handshake();  // the ClientHello
  flush_tls(l);
  const std::int64_t deadline = util::monotonic_ns() + 30'000'000'000;
  while (!l.tls->handshake_done() && util::monotonic_ns() < deadline) {
    if (!read_some(l, 1000)) break;
  }
  if (!l.tls->handshake_done()) {
    std::fprintf(stderr, "bench_chat: TLS handshake failed: %s\n", l.tls->error_text().c_str());
    std::exit(1);
  }
  return l;
}

// ------------------------------------------------------------------ IRC

using irc_conn = link;

// Reads what is there; calls on_line for each complete line. False on EOF.
template <class F>
bool irc_read(irc_conn& c, F&& on_line) {
  if (!read_some(c)) return false;
  std::size_t start = 0, nl;
  while ((nl = c.in.find('\n', start)) != std::string::npos) {
    std::string_view line(c.in.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.rfind("PING", 0) == 0) write_all(c, "PONG" + std::string(line.substr(4)) + "\r\n");
    on_line(line);
    start = nl + 1;
  }
  c.in.erase(0, start);
  return true;
}

// cskit's IRC front end wants a login (PASS user:token); ngircd none.
std::string irc_pass;

irc_conn irc_login(const net::host_port& where, const std::string& nick) {
  irc_conn c = open_link(where);
  write_all(c, (irc_pass.empty() ? std::string() : "PASS " + irc_pass + "\r\n") + "NICK " + nick + "\r\nUSER " +
                   nick + " 0 * :" + nick + "\r\n");
  bool welcomed = false, joined = false;
  const std::int64_t deadline = util::monotonic_ns() + 30'000'000'000;
  while (!joined && util::monotonic_ns() < deadline) {
    pollfd p{c.fd, POLLIN, 0};
    ::poll(&p, 1, 1000);
    irc_read(c, [&](std::string_view line) {
      if (!welcomed && line.find(" 001 ") != std::string_view::npos) {
        welcomed = true;
        write_all(c, "JOIN #bench\r\n");
      }
      if (welcomed && line.find(" JOIN ") != std::string_view::npos && line.find(":" + nick + "!") == 0) {
        joined = true;
      }
    });
  }
  if (!joined) {
    std::fprintf(stderr, "bench_chat: %s could not join\n", nick.c_str());
    std::exit(1);
  }
  return c;
}

// ------------------------------------------------------------------ cskit, raw
// Receivers log in with the library's proof code but read frames with a
// scanner that only finds "body" and the type in the header, as cheap as
// splitting IRC lines: the generator must not be the slower side.

using raw_cskit = link;

proto::frame read_one(raw_cskit& c, proto::frame_decoder& d) {
  for (;;) {
    std::string_view view(c.in);
    proto::frame f;
    if (!view.empty()) {
      const auto st = d.decode(view, f);
      c.in.erase(0, c.in.size() - view.size());
      if (st == proto::frame_decoder::status::frame) return f;
      if (st == proto::frame_decoder::status::error) {
        std::fprintf(stderr, "bench_chat: bad frame during login\n");
        std::exit(1);
      }
    }
    if (!read_some(c, 1000)) {
      std::fprintf(stderr, "bench_chat: connection closed during login\n");
      std::exit(1);
    }
  }
}

void send_frame(raw_cskit& c, const proto::json& h) {
  std::string out;
  proto::encode_frame(out, h, {});
  write_all(c, out);
}

raw_cskit cskit_login(const net::host_port& where, const std::string& token, const std::string& nick) {
  raw_cskit c = open_link(where);
  proto::frame_decoder d;
  proto::json auth = {{"type", "auth"}, {"id", 1}, {"proto", proto::protocol_version}, {"user", "admin"}};
  if (c.tls) {
    const auto e = c.tls->exporter();
    const std::string b(reinterpret_cast<const char*>(e.data()), e.size());
    auth["proof"] = proto::to_hex(
        proto::compute_proof(proto::proof_role::client, token, "admin", proto::binding_kind::tls_exporter, b));
    send_frame(c, auth);
    read_one(c, d);  // hello
  } else {
    proto::frame hello = read_one(c, d);
    auto sn = proto::from_hex<proto::nonce_size>(hello.header.value("nonce", ""));
    const auto cn = proto::random_nonce();
    auth["nonce"] = proto::to_hex(cn);
    auth["proof"] = proto::to_hex(proto::compute_proof(proto::proof_role::client, token, "admin",
                                                       proto::binding_kind::nonces, proto::nonce_binding(*sn, cn)));
    send_frame(c, auth);
  }
  if (read_one(c, d).type() != "welcome") std::exit(1);
  send_frame(c, {{"type", "chat.hello"}, {"id", 2}, {"nick", nick}});
  while (read_one(c, d).id() != 2) {
  }
  send_frame(c, {{"type", "chat.join"}, {"id", 3}, {"room", "bench"}});
  while (read_one(c, d).id() != 3) {
  }
  // Whatever follows in c.in starts at a frame boundary.
  return c;
}

bool cskit_read(raw_cskit& c, bool count) {
  if (!read_some(c)) return false;
  std::size_t off = 0;
  while (c.in.size() - off >= 4) {
    const auto* p = reinterpret_cast<const unsigned char*>(c.in.data() + off);
    const std::size_t hl = (std::size_t{p[0]} << 24) | (std::size_t{p[1]} << 16) | (std::size_t{p[2]} << 8) | p[3];
    if (c.in.size() - off < 4 + hl) break;
    std::string_view header(c.in.data() + off + 4, hl);
    std::size_t bl = 0;
    if (auto b = header.find("\"body\":"); b != std::string_view::npos) bl = std::strtoull(header.data() + b + 7, nullptr, 10);
    if (c.in.size() - off < 4 + hl + bl) break;
    if (count && header.find("\"chat.message\"") != std::string_view::npos) {
      record(std::string_view(c.in.data() + off + 4 + hl, bl));
    }
    off += 4 + hl + bl;
  }
  c.in.erase(0, off);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: bench_chat cskit|irc|cskit-irc HOST:PORT TOKEN RECEIVERS MESSAGES RATE [tls|plain]\n");
    return 2;
  }
  // irc: an IRC server (ngircd); cskit-irc: cskit's IRC front end (PASS admin:TOKEN).
  const bool irc = std::string(argv[1]) == "irc" || std::string(argv[1]) == "cskit-irc";
  use_tls = argc < 8 || std::string(argv[7]) != "plain";
  auto where = net::parse_host_port(argv[2], proto::default_port);
  const std::string token = argv[3];
  if (std::string(argv[1]) == "cskit-irc") irc_pass = "admin:" + token;
  const int receivers = std::atoi(argv[4]);
  const std::uint64_t messages = std::strtoull(argv[5], nullptr, 10);
  const double rate = std::atof(argv[6]);
  if (!where || receivers < 1 || rate <= 0) return 2;
  latencies_ms.reserve(static_cast<std::size_t>(receivers) * messages);

  std::vector<raw_cskit> cs;
  std::vector<irc_conn> is;
  std::optional<client::connection> sender;
  irc_conn irc_sender;
  const proto::json join = {{"type", "chat.join"}, {"room", "bench"}};
  try {
    for (int i = 0; i < receivers; ++i) {
      const std::string nick = "r" + std::to_string(i);
      if (irc) {
        is.push_back(irc_login(*where, nick));
      } else {
        cs.push_back(cskit_login(*where, token, nick));
      }
    }
    if (irc) {
      irc_sender = irc_login(*where, "sender");
    } else {
      client::connect_options opts;
      opts.plaintext = !use_tls;
      opts.trust.accept_new = true;  // loopback; the known_hosts of this run's HOME
      sender.emplace(client::connection::open(*where, {"admin", token}, opts));
      sender->request({{"type", "chat.hello"}, {"nick", "sender"}});
      sender->request(join);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_chat: setup: %s\n", e.what());
    return 1;
  }
  // Drain the join notices of everyone who came later. epoll, not poll():
  // poll() over a thousand sockets costs the generator O(receivers) per
  // wake-up, CPU that the server under test then lacks.
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  const std::size_t nfds = irc ? is.size() : cs.size();
  for (std::size_t i = 0; i < nfds; ++i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, irc ? is[i].fd : cs[i].fd, &ev) != 0) {
      std::perror("epoll_ctl");
      return 1;
    }
  }
  std::vector<epoll_event> ready(nfds);
  auto drain = [&](int timeout_ms, bool count) {
    const int n = ::epoll_wait(ep, ready.data(), static_cast<int>(ready.size()), timeout_ms);
    for (int k = 0; k < n; ++k) {
      const std::size_t i = ready[static_cast<std::size_t>(k)].data.u64;
      if (irc) {
        if (!irc_read(is[i], [&](std::string_view line) {
              auto p = line.find(" PRIVMSG #bench :");
              if (count && p != std::string_view::npos) record(line.substr(p + 17));
            })) {
          std::fprintf(stderr, "bench_chat: receiver %zu disconnected\n", i);
          std::exit(1);
        }
      } else if (!cskit_read(cs[i], count)) {
        std::fprintf(stderr, "bench_chat: receiver %zu disconnected\n", i);
        std::exit(1);
      }
    }
  };
  for (int k = 0; k < 20; ++k) drain(50, false);

  const std::int64_t start = util::monotonic_ns();
  const std::int64_t start_real = util::realtime_ns();
  const double interval_ns = 1e9 / rate;
  std::uint64_t sent = 0;
  const std::uint64_t expected = static_cast<std::uint64_t>(receivers) * messages;
  std::int64_t give_up = 0;
  while (delivered < expected) {
    const std::int64_t now = util::monotonic_ns();
    while (sent < messages && now - start >= static_cast<std::int64_t>(static_cast<double>(sent) * interval_ns)) {
      const std::string text = message_text(sent);
      if (irc) {
        write_all(irc_sender, "PRIVMSG #bench :" + text + "\r\n");
      } else {
        sender->send({{"type", "chat.say"}, {"id", sender->next_id()}, {"room", "bench"}}, text);
        while (sender->try_receive()) {
        }
      }
      ++sent;
    }
    if (sent == messages && give_up == 0) give_up = util::monotonic_ns() + 60'000'000'000;
    if (give_up && util::monotonic_ns() > give_up) break;
    if (irc) {
      irc_read(irc_sender, [](std::string_view) {});
    }
    drain(1, true);
  }
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto pct = [&](double q) {
    return latencies_ms.empty() ? 0.0 : latencies_ms[static_cast<std::size_t>(q * static_cast<double>(latencies_ms.size() - 1))];
  };
  const double seconds = static_cast<double>(last_delivery_ns - start_real) / 1e9;
  std::printf("{\"tls\": %s, \"protocol\": \"%s\", \"receivers\": %d, \"messages\": %llu, \"rate\": %.0f, \"expected\": %llu, "
              "\"delivered\": %llu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"deliveries_per_second\": %.0f}\n",
              use_tls ? "true" : "false", irc ? "irc" : "cskit", receivers, static_cast<unsigned long long>(messages), rate,
              static_cast<unsigned long long>(expected), static_cast<unsigned long long>(delivered), pct(0.5), pct(0.99),
              pct(1.0), seconds > 0 ? static_cast<double>(delivered) / seconds : 0.0);
  return delivered == expected ? 0 : 1;
}
