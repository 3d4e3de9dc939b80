#include "net/listeners.hpp"

#include <ifaddrs.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cerrno>
#include <algorithm>
#include <cstring>
#include <spdlog/spdlog.h>
#include <unordered_set>
#include <vector>

#include "net/endpoint.hpp"

namespace cskit::net {

namespace asio = boost::asio;
using asio::ip::tcp;
using asio::ip::udp;
using boost::system::error_code;

std::string udp_source::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (is_v4) {
    ::inet_ntop(AF_INET, address.data() + 12, buf, sizeof buf);
  } else {
    ::inet_ntop(AF_INET6, address.data(), buf, sizeof buf);
  }
  return format_host_port(buf, port);
}

namespace {

std::string bind_hint(const error_code& ec, std::uint16_t port) {
  if (ec == asio::error::access_denied && port < 1024) {
    return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
  }
  return "";
}

asio::ip::address parse_bind_address(const std::string& host) {
  error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) throw std::system_error(ec, "invalid listen address '" + host + "' (give an IP address)");
  return addr;
}

udp_source source_of(const sockaddr_storage& ss) {
  udp_source s;
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    s.is_v4 = true;
    s.address[10] = s.address[11] = 0xff;
    std::memcpy(s.address.data() + 12, &a.sin_addr, 4);
    s.port = ntohs(a.sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    std::memcpy(s.address.data(), &a.sin6_addr, 16);
    s.port = ntohs(a.sin6_port);
  }
  return s;
}

std::int64_t realtime_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// The local address a datagram was sent to, from its packet info.
template <class Destination>
std::array<std::uint8_t, 16> destination_address(const Destination& d) {
  std::array<std::uint8_t, 16> a{};
  if (d.family == AF_INET) {
    a[10] = a[11] = 0xff;
    std::memcpy(a.data() + 12, &d.v4.ipi_addr, 4);
  } else {
    std::memcpy(a.data(), &d.v6.ipi6_addr, 16);
  }
  return a;
}

// Room for a timestamp and a packet-info control message.
constexpr std::size_t control_size = 256;

}  // namespace

// ------------------------------------------------------------------ UDP

struct udp_endpoint::batch {
  struct destination {
    bool valid = false;
    int family = 0;
    in_pktinfo v4{};
    in6_pktinfo v6{};
  };
  unsigned n;
  std::size_t slot;
  std::vector<std::uint8_t> data;
  std::vector<sockaddr_storage> names;
  std::vector<iovec> iov;
  std::vector<mmsghdr> in;
  std::vector<std::uint64_t> in_control;  // uint64 for cmsghdr alignment
  std::vector<destination> dst;
  std::vector<mmsghdr> out;
  std::vector<iovec> out_iov;
  std::vector<std::uint64_t> out_control;

  batch(unsigned count, std::size_t slot_size)
      : n(count),
        slot(slot_size),
        data(count * slot_size),
        names(count),
        iov(count),
        in(count),
        in_control(count * control_size / 8),
        dst(count),
        out(count),
        out_iov(count),
        out_control(count * control_size / 8) {
    for (unsigned i = 0; i < n; ++i) {
      iov[i] = {data.data() + i * slot, slot};
      in[i].msg_hdr.msg_iov = &iov[i];
      in[i].msg_hdr.msg_iovlen = 1;
      in[i].msg_hdr.msg_name = &names[i];
    }
  }

  void reset_for_receive() {
    for (unsigned i = 0; i < n; ++i) {
      auto& h = in[i].msg_hdr;
      h.msg_namelen = sizeof(sockaddr_storage);
      h.msg_control = in_control.data() + i * control_size / 8;
      h.msg_controllen = control_size;
      h.msg_flags = 0;
      in[i].msg_len = 0;
    }
  }
};

udp_endpoint::udp_endpoint(asio::io_context& ioc, udp_options options, std::shared_ptr<datagram_handler> handler)
    : socket_(ioc),
      options_(options),
      handler_(std::move(handler)),
      batch_(std::make_unique<batch>(std::max(1u, options.batch), std::max<std::size_t>(options.max_datagram, 1))) {}

udp_endpoint::~udp_endpoint() {
  if (from_self_ > 0) {
    spdlog::warn("UDP port {}: dropped {} datagram(s) that claimed to come from this server's own UDP endpoints",
                 local_port_, from_self_);
  }
}

void udp_endpoint::bind(const std::string& host, std::uint16_t port) {
  auto addr = parse_bind_address(host);
  udp::endpoint ep(addr, port);
  error_code ec;
  socket_.open(ep.protocol(), ec);
  if (ec) throw std::system_error(ec, "cannot open UDP socket");
  if (addr.is_v6()) socket_.set_option(asio::ip::v6_only(true), ec);
  socket_.bind(ep, ec);
  if (ec) {
    throw std::system_error(ec, "cannot bind UDP " + format_host_port(addr.to_string(), port) + bind_hint(ec, port));
  }
  socket_.non_blocking(true, ec);
  const int fd = socket_.native_handle();
  const int on = 1;
  if (options_.kernel_timestamps && ::setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) != 0) {
    spdlog::warn("UDP {}: no kernel receive timestamps ({}); using user-space time", local_address(),
                 std::strerror(errno));
  }
  wildcard_ = addr.is_unspecified();
  if (wildcard_) {
    // Answer from the address the request was sent to (multi-homed hosts).
    if (addr.is_v4()) ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on);
    else ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on);
  }
}

std::uint16_t udp_endpoint::local_port() const { return socket_.local_endpoint().port(); }

std::string udp_endpoint::local_address() const {
  auto ep = socket_.local_endpoint();
  return format_host_port(ep.address().to_string(), ep.port());
}

void udp_endpoint::start() {
  local_port_ = local_port();
  bound_ = bound_address();
  bound_valid_ = true;
  asio::co_spawn(socket_.get_executor(), receive_loop(), asio::detached);
}

void udp_endpoint::stop() {
  error_code ec;
  socket_.close(ec);
}

std::array<std::uint8_t, 16> udp_endpoint::bound_address() const {
  if (bound_valid_) return bound_;
  error_code ec;
  auto ep = socket_.local_endpoint(ec);
  std::array<std::uint8_t, 16> a{};
  if (ec) return a;
  if (ep.address().is_v4()) {
    a[10] = a[11] = 0xff;
    const auto v4 = ep.address().to_v4().to_bytes();
    std::memcpy(a.data() + 12, v4.data(), 4);
  } else {
    const auto v6 = ep.address().to_v6().to_bytes();
    std::memcpy(a.data(), v6.data(), 16);
  }
  return a;
}

bool udp_endpoint::from_outside(const datagram& d) {
  if (!own_ || !own_->contains(d.source, d.destination.address)) return true;
  if (from_self_++ == 0) {
    spdlog::warn("UDP {}: dropped a datagram that claims to come from {}, one of this server's own UDP endpoints "
                 "(a forged source; it is never answered)",
                 local_address(), d.source.to_string());
  }
  return false;
}

bool own_endpoints::contains(const udp_source& source, const std::array<std::uint8_t, 16>& destination) const noexcept {
  if (std::find(ports.begin(), ports.end(), source.port) == ports.end()) return false;
  if (source.address == destination) return true;
  // Loopback: 127.0.0.0/8 (IPv4-mapped) and ::1.
  const auto& a = source.address;
  const bool mapped = std::all_of(a.begin(), a.begin() + 10, [](std::uint8_t b) { return b == 0; }) && a[10] == 0xff &&
                      a[11] == 0xff;
  if (mapped && a[12] == 127) return true;
  if (std::all_of(a.begin(), a.begin() + 15, [](std::uint8_t b) { return b == 0; }) && a[15] == 1) return true;
  return std::find(addresses.begin(), addresses.end(), a) != addresses.end();
}

std::vector<std::array<std::uint8_t, 16>> host_addresses() {
  std::vector<std::array<std::uint8_t, 16>> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr) continue;
    std::array<std::uint8_t, 16> a{};
    if (i->ifa_addr->sa_family == AF_INET) {
      a[10] = a[11] = 0xff;
      std::memcpy(a.data() + 12, &reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr, 4);
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      std::memcpy(a.data(), &reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr, 16);
    } else {
      continue;
    }
    out.push_back(a);
  }
  ::freeifaddrs(list);
  return out;
}

asio::awaitable<void> udp_endpoint::receive_loop() {
  auto& b = *batch_;
  error_code ec;
  while (socket_.is_open()) {
    co_await socket_.async_wait(udp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // closed at shutdown
    // Drain what is queued, a bounded number of batches per wake-up so that
    // the other sockets on this loop get their turn.
    for (int round = 0; round < 64 && socket_.is_open(); ++round) {
      b.reset_for_receive();
      // MSG_TRUNC: msg_len reports the datagram's real size, so truncation
      // is detected rather than a cut datagram being echoed.
      int got = ::recvmmsg(socket_.native_handle(), b.in.data(), b.n, MSG_DONTWAIT | MSG_TRUNC, nullptr);
      if (got < 0) {
        if (errno == EINTR) continue;
        // ECONNREFUSED and friends: an ICMP error for an earlier reply.
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) continue;
        spdlog::warn("UDP {}: receive failed: {}", local_address(), std::strerror(errno));
        break;
      }
      serve_batch(static_cast<unsigned>(got));
      if (static_cast<unsigned>(got) < b.n) break;
    }
  }
}

void udp_endpoint::serve_batch(unsigned got) {
  auto& b = *batch_;
  const std::int64_t fallback_time = realtime_ns();
  unsigned replies = 0;
  for (unsigned i = 0; i < got; ++i) {
    auto& h = b.in[i].msg_hdr;
    datagram d;
    d.wire_size = b.in[i].msg_len;
    d.truncated = (h.msg_flags & MSG_TRUNC) != 0 || d.wire_size > b.slot;
    d.data = {b.data.data() + i * b.slot, std::min(d.wire_size, b.slot)};
    d.source = source_of(b.names[i]);
    d.destination.address = bound_address();
    d.destination.port = local_port_;
    d.rx_time_ns = fallback_time;
    b.dst[i].valid = false;
    if ((h.msg_flags & MSG_CTRUNC) == 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
          timespec ts;
          std::memcpy(&ts, CMSG_DATA(c), sizeof ts);
          d.rx_time_ns = static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
          d.rx_time_from_kernel = true;
        } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
          std::memcpy(&b.dst[i].v4, CMSG_DATA(c), sizeof(in_pktinfo));
          b.dst[i].valid = true;
          b.dst[i].family = AF_INET;
        } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
          std::memcpy(&b.dst[i].v6, CMSG_DATA(c), sizeof(in6_pktinfo));
          b.dst[i].valid = true;
          b.dst[i].family = AF_INET6;
        }
      }
    }
    if (b.dst[i].valid) d.destination.address = destination_address(b.dst[i]);
    if (!from_outside(d)) continue;
    std::size_t size = handler_->on_datagram(d);
    if (size == datagram_handler::no_reply) continue;
    size = std::min(size, d.data.size());  // never larger than the request
    auto& o = b.out[replies];
    o = mmsghdr{};
    b.out_iov[replies] = {d.data.data(), size};
    o.msg_hdr.msg_iov = &b.out_iov[replies];
    o.msg_hdr.msg_iovlen = 1;
    o.msg_hdr.msg_name = &b.names[i];
    o.msg_hdr.msg_namelen = h.msg_namelen;
    if (wildcard_ && b.dst[i].valid) {
      auto* ctl = b.out_control.data() + replies * control_size / 8;
      o.msg_hdr.msg_control = ctl;
      cmsghdr* c;
      if (b.dst[i].family == AF_INET) {
        o.msg_hdr.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
        c = CMSG_FIRSTHDR(&o.msg_hdr);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
        in_pktinfo pi{};
        pi.ipi_spec_dst = b.dst[i].v4.ipi_addr;
        std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
      } else {
        o.msg_hdr.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
        c = CMSG_FIRSTHDR(&o.msg_hdr);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
        std::memcpy(CMSG_DATA(c), &b.dst[i].v6, sizeof(in6_pktinfo));
      }
    }
    ++replies;
  }
  if (replies == 0) return;
  for (unsigned i = 0; i < replies; ++i) {
    handler_->before_send({static_cast<std::uint8_t*>(b.out_iov[i].iov_base), b.out_iov[i].iov_len});
  }
  unsigned sent = 0;
  while (sent < replies) {
    int r = ::sendmmsg(socket_.native_handle(), b.out.data() + sent, replies - sent, MSG_DONTWAIT);
    if (r > 0) {
      sent += static_cast<unsigned>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
      // Send buffer full: UDP may drop, and so do we rather than block.
      spdlog::debug("UDP {}: send buffer full, {} repl{} dropped", local_address(), replies - sent,
                    replies - sent == 1 ? "y" : "ies");
      return;
    }
    // This one datagram cannot be sent (unreachable, not permitted): skip it.
    ++sent;
  }
}

// ------------------------------------------------------------- TCP echo

struct tcp_echo_listener::shared {
  tcp_echo_options options;
  std::size_t live = 0;
  bool stopping = false;
  std::unordered_set<tcp::socket*> sockets;
};

tcp_echo_listener::tcp_echo_listener(asio::io_context& ioc, tcp_echo_options options)
    : acceptor_(ioc), shared_(std::make_shared<shared>()) {
  shared_->options = options;
}

tcp_echo_listener::~tcp_echo_listener() = default;

void tcp_echo_listener::bind(const std::string& host, std::uint16_t port) {
  auto addr = parse_bind_address(host);
  tcp::endpoint ep(addr, port);
  error_code ec;
  acceptor_.open(ep.protocol(), ec);
  if (ec) throw std::system_error(ec, "cannot open socket");
  acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (addr.is_v6()) acceptor_.set_option(asio::ip::v6_only(true), ec);
  acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::system_error(ec,
                            "cannot listen on TCP " + format_host_port(addr.to_string(), port) + bind_hint(ec, port));
  }
}

std::uint16_t tcp_echo_listener::local_port() const { return acceptor_.local_endpoint().port(); }

void tcp_echo_listener::start() { asio::co_spawn(acceptor_.get_executor(), accept_loop(), asio::detached); }

void tcp_echo_listener::stop() {
  error_code ec;
  acceptor_.close(ec);
  shared_->stopping = true;
  for (auto* s : shared_->sockets) s->close(ec);
}

asio::awaitable<void> tcp_echo_listener::accept_loop() {
  error_code ec;
  for (;;) {
    tcp::socket s = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (shared_->stopping || ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // Out of descriptors or similar: back off instead of spinning.
      asio::steady_timer t(acceptor_.get_executor(), std::chrono::milliseconds(100));
      co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (shared_->live >= shared_->options.max_connections) {
      spdlog::warn("TCP echo: refusing a connection, {} already open", shared_->live);
      s.close(ec);
      continue;
    }
    asio::co_spawn(acceptor_.get_executor(), serve(shared_, std::move(s)), asio::detached);
  }
}

asio::awaitable<void> tcp_echo_listener::serve(std::shared_ptr<shared> sh, tcp::socket sock) {
  sh->live++;
  sh->sockets.insert(&sock);
  asio::steady_timer deadline(sock.get_executor());
  // No progress either way for idle_timeout closes the socket, which ends
  // whichever read or write is pending.
  auto arm = [&] {
    deadline.expires_after(sh->options.idle_timeout);
    deadline.async_wait([&sock](const error_code& e) {
      if (e) return;
      error_code ignored;
      sock.close(ignored);
    });
  };
  std::vector<char> buf(16 * 1024);
  error_code ec;
  for (;;) {
    arm();
    std::size_t n = co_await sock.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
    arm();
    co_await asio::async_write(sock, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;
  }
  deadline.cancel();
  sh->sockets.erase(&sock);
  sh->live--;
  sock.close(ec);
}

}  // namespace cskit::net
