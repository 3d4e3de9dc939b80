#include "client/udp.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "client/client.hpp"
#include "util/clock.hpp"

namespace cskit::client {

udp_socket udp_socket::open(const net::host_port& where) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(where.port);
  int rc = ::getaddrinfo(where.host.c_str(), port.c_str(), &hints, &res);
  if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
    hints.ai_flags = AI_NUMERICSERV;  // e.g. "localhost" when only loopback is up
    rc = ::getaddrinfo(where.host.c_str(), port.c_str(), &hints, &res);
  }
  if (rc != 0) {
    throw client_error(failure::connect, "cannot resolve '" + where.host + "': " + ::gai_strerror(rc));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      last_error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    char host[INET6_ADDRSTRLEN] = {};
    if (ai->ai_family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, host, sizeof host);
    } else {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, host, sizeof host);
    }
    ::freeaddrinfo(res);
    return udp_socket(fd, net::format_host_port(host, where.port));
  }
  ::freeaddrinfo(res);
  throw client_error(failure::connect, "cannot open a UDP socket to " + net::format_host_port(where.host, where.port) +
                                           ": " + last_error);
}

udp_socket::udp_socket(udp_socket&& o) noexcept : fd_(o.fd_), peer_(std::move(o.peer_)) { o.fd_ = -1; }

udp_socket& udp_socket::operator=(udp_socket&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    peer_ = std::move(o.peer_);
    o.fd_ = -1;
  }
  return *this;
}

udp_socket::~udp_socket() {
  if (fd_ >= 0) ::close(fd_);
}

bool udp_socket::send(std::span<const std::uint8_t> data, std::string* error) {
  for (;;) {
    ssize_t n = ::send(fd_, data.data(), data.size(), 0);
    if (n >= 0) return true;
    if (errno == EINTR) continue;
    if (error) *error = std::strerror(errno);
    return false;
  }
}

std::optional<udp_socket::received> udp_socket::receive(std::span<std::uint8_t> buffer,
                                                        std::int64_t deadline_mono_ns) {
  for (;;) {
    const std::int64_t left = deadline_mono_ns - util::monotonic_ns();
    if (left <= 0) return std::nullopt;
    pollfd p{fd_, POLLIN, 0};
    const timespec ts{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
    int r = ::ppoll(&p, 1, &ts, nullptr);
    if (r < 0 && errno == EINTR) return std::nullopt;  // a signal (Ctrl-C): let the caller look
    if (r <= 0) continue;

    iovec iov{buffer.data(), buffer.size()};
    alignas(cmsghdr) char control[128];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    ssize_t n = ::recvmsg(fd_, &m, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      received r2;
      r2.refused = true;  // ECONNREFUSED: ICMP port unreachable
      r2.rx_time_ns = util::realtime_ns();
      return r2;
    }
    received out;
    out.rx_time_ns = util::realtime_ns();
    out.wire_size = static_cast<std::size_t>(n);
    out.size = std::min(out.wire_size, buffer.size());
    out.truncated = (m.msg_flags & MSG_TRUNC) != 0 || out.wire_size > buffer.size();
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
        timespec k;
        std::memcpy(&k, CMSG_DATA(c), sizeof k);
        out.rx_time_ns = static_cast<std::int64_t>(k.tv_sec) * 1'000'000'000 + k.tv_nsec;
      }
    }
    return out;
  }
}

}  // namespace cskit::client
