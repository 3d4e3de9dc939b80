// Loopback round trips with ping frames on one authenticated connection,
// through the real client library: sequential (latency percentiles) and
// pipelined (a window of requests in flight). Prints one JSON object.
//
//   bench_roundtrip HOST:PORT TOKEN [sequential_count] [pipelined_count] [window]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <vector>

#include "client/client.hpp"
#include "proto/limits.hpp"

using namespace cskit;

namespace {
// Loopback: trust the server's key on first use (in this run's HOME);
// BENCH_PLAINTEXT=1 for a server run with --plaintext.
client::connect_options bench_options() {
  client::connect_options o;
  o.trust.accept_new = true;
  const char* plain = std::getenv("BENCH_PLAINTEXT");
  o.plaintext = plain && *plain == '1';
  return o;
}
}  // namespace
using clock_type = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HOST:PORT TOKEN [sequential] [pipelined] [window]\n", argv[0]);
    return 2;
  }
  auto where = net::parse_host_port(argv[1], proto::default_port);
  if (!where) return 2;
  const long sequential = argc > 3 ? std::atol(argv[3]) : 20000;
  const long pipelined = argc > 4 ? std::atol(argv[4]) : 200000;
  const long window = argc > 5 ? std::atol(argv[5]) : 64;
  try {
    auto c = client::connection::open(*where, {"admin", argv[2]}, bench_options());
    const proto::json ping = {{"type", "ping"}};
    for (int i = 0; i < 1000; ++i) c.request(ping);  // warm-up

    std::vector<double> us;
    us.reserve(static_cast<std::size_t>(sequential));
    const auto s0 = clock_type::now();
    for (long i = 0; i < sequential; ++i) {
      const auto t0 = clock_type::now();
      c.request(ping);
      us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
    }
    const double seq_secs = std::chrono::duration<double>(clock_type::now() - s0).count();
    std::sort(us.begin(), us.end());
    auto pct = [&](double p) { return us[static_cast<std::size_t>(p * static_cast<double>(us.size() - 1))]; };

    // Pipelined: keep `window` pings in flight; replies must come back in order.
    const auto p0 = clock_type::now();
    long sent = 0, received = 0;
    std::uint64_t first_id = 0;
    while (received < pipelined) {
      while (sent < pipelined && sent - received < window) {
        const auto id = c.next_id();
        if (sent == 0) first_id = id;
        c.send({{"type", "ping"}, {"id", id}});
        ++sent;
      }
      auto f = c.receive();
      if (f.type() != "pong" || f.id() != first_id + static_cast<std::uint64_t>(received)) {
        std::fprintf(stderr, "out-of-order or wrong reply\n");
        return 1;
      }
      ++received;
    }
    const double pipe_secs = std::chrono::duration<double>(clock_type::now() - p0).count();
    proto::json out = {{"sequential", {{"count", sequential},
                                       {"per_second", static_cast<double>(sequential) / seq_secs},
                                       {"p50_us", pct(0.50)},
                                       {"p99_us", pct(0.99)},
                                       {"max_us", us.back()}}},
                       {"pipelined", {{"count", pipelined},
                                      {"window", window},
                                      {"per_second", static_cast<double>(pipelined) / pipe_secs}}}};
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_roundtrip: %s\n", e.what());
    return 1;
  }
  return 0;
}
