// UDP load generator for `make bench`: the same client drives cskit and its
// peers (chronyd, socat), so the ratios compare servers, not clients.
//
//   bench_udp ntp|echo HOST:PORT SECONDS WINDOW [SIZE]
//
// Keeps WINDOW requests in flight on one connected socket (batched with
// sendmmsg/recvmmsg), counts only replies that match a request still in
// flight (NTP: origin timestamp = our cookie, mode 4, stratum > 0; echo: the
// exact bytes), refills the window after 20 ms of silence (lost datagrams),
// and prints one JSON line. With WINDOW 1 it also reports round-trip
// percentiles.
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "net/endpoint.hpp"
#include "proto/ntp.hpp"
#include "util/clock.hpp"

namespace {

namespace ntp = cskit::proto::ntp;

constexpr std::size_t ring = 1 << 16;

struct slot {
  std::uint64_t seq = 0;
  std::int64_t sent_ns = 0;
  bool pending = false;
};

void fill_echo(std::vector<std::uint8_t>& b, std::uint64_t seq) {
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::uint8_t>((i * 131 + seq) & 0xff);
  std::memcpy(b.data(), &seq, std::min<std::size_t>(8, b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: bench_udp ntp|echo HOST:PORT SECONDS WINDOW [SIZE]\n");
    return 2;
  }
  const bool is_ntp = std::string(argv[1]) == "ntp";
  auto where = cskit::net::parse_host_port(argv[2], 0);
  const double seconds = std::atof(argv[3]);
  const std::size_t window = std::max(1, std::atoi(argv[4]));
  const std::size_t size = is_ntp ? ntp::header_size : std::max<std::size_t>(8, argc > 5 ? std::atoi(argv[5]) : 64);
  if (!where || seconds <= 0) return 2;

  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(where->port);
  ::inet_pton(AF_INET, where->host.c_str(), &sa.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::perror("connect");
    return 1;
  }
  int buf = 4 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);

  std::vector<slot> slots(ring);
  std::uint64_t next_seq = 1;
  std::vector<std::uint8_t> out(size), expect(size);
  std::uint64_t sent = 0, good = 0, bad = 0, refills = 0;
  std::vector<double> rtt_us;
  std::size_t in_flight = 0;

  auto send_one = [&] {
    const std::uint64_t seq = next_seq++;
    if (is_ntp) {
      auto r = ntp::make_request(4, seq);
      std::memcpy(out.data(), r.data(), r.size());
    } else {
      fill_echo(out, seq);
    }
    auto& s = slots[seq % ring];
    if (s.pending) --in_flight;  // overwritten: counted as lost
    s = {seq, cskit::util::monotonic_ns(), true};
    if (::send(fd, out.data(), out.size(), 0) == static_cast<ssize_t>(out.size())) {
      ++sent;
      ++in_flight;
    } else {
      s.pending = false;
    }
  };

  constexpr unsigned batch = 64;
  std::vector<std::vector<std::uint8_t>> rx(batch, std::vector<std::uint8_t>(std::max<std::size_t>(size, 2048)));
  std::vector<iovec> iov(batch);
  std::vector<mmsghdr> msgs(batch);

  const std::int64_t start = cskit::util::monotonic_ns();
  const std::int64_t end = start + static_cast<std::int64_t>(seconds * 1e9);
  for (std::size_t i = 0; i < window; ++i) send_one();
  while (cskit::util::monotonic_ns() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) == 0) {
      // 20 ms without a reply: whatever is in flight is lost.
      for (auto& s : slots) s.pending = false;
      in_flight = 0;
      ++refills;
      for (std::size_t i = 0; i < window; ++i) send_one();
      continue;
    }
    for (unsigned i = 0; i < batch; ++i) {
      iov[i] = {rx[i].data(), rx[i].size()};
      msgs[i] = {};
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = ::recvmmsg(fd, msgs.data(), batch, MSG_DONTWAIT, nullptr);
    if (n <= 0) continue;
    const std::int64_t now = cskit::util::monotonic_ns();
    unsigned matched = 0;
    for (int i = 0; i < n; ++i) {
      const auto* d = rx[i].data();
      const std::size_t len = msgs[i].msg_len;
      std::uint64_t seq = 0;
      bool ok = false;
      if (is_ntp) {
        auto pk = ntp::parse(std::span(d, len));
        ok = pk && pk->mode_ == ntp::mode::server && pk->stratum != 0 && !pk->transmit.is_zero();
        if (ok) seq = pk->origin.raw();
      } else if (len == size) {
        std::memcpy(&seq, d, 8);
        fill_echo(expect, seq);
        ok = std::memcmp(d, expect.data(), size) == 0;
      }
      auto& s = slots[seq % ring];
      if (!ok || !s.pending || s.seq != seq) {
        ++bad;
        continue;
      }
      s.pending = false;
      --in_flight;
      ++good;
      ++matched;
      if (window == 1) rtt_us.push_back(static_cast<double>(now - s.sent_ns) / 1e3);
    }
    for (unsigned i = 0; i < matched && in_flight < window; ++i) send_one();
  }
  const double elapsed = static_cast<double>(cskit::util::monotonic_ns() - start) / 1e9;
  std::string extra;
  if (!rtt_us.empty()) {
    std::sort(rtt_us.begin(), rtt_us.end());
    auto pct = [&](double q) { return rtt_us[static_cast<std::size_t>(q * static_cast<double>(rtt_us.size() - 1))]; };
    char b[128];
    std::snprintf(b, sizeof b, ", \"p50_us\": %.2f, \"p99_us\": %.2f", pct(0.5), pct(0.99));
    extra = b;
  }
  std::printf("{\"mode\": \"%s\", \"window\": %zu, \"size\": %zu, \"seconds\": %.3f, \"sent\": %llu, "
              "\"replies\": %llu, \"unmatched\": %llu, \"refills\": %llu, \"per_second\": %.1f%s}\n",
              is_ntp ? "ntp" : "echo", window, size, elapsed, static_cast<unsigned long long>(sent),
              static_cast<unsigned long long>(good), static_cast<unsigned long long>(bad),
              static_cast<unsigned long long>(refills), static_cast<double>(good) / elapsed, extra.c_str());
  ::close(fd);
  return good > 0 ? 0 : 1;
}
