// `exec true` round trips on one authenticated connection, through the real
// client library: what a command costs once connected (the part of `cskit
// exec` that is not process start-up, as with ssh's ControlMaster).
// Prints one JSON object.
//
//   bench_exec HOST:PORT USER TOKEN [count]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <vector>

#include "client/client.hpp"
#include "proto/limits.hpp"
#include "proto/messages.hpp"

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
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s HOST:PORT USER TOKEN [count]\n", argv[0]);
    return 2;
  }
  auto where = net::parse_host_port(argv[1], proto::default_port);
  if (!where) return 2;
  const long count = argc > 4 ? std::atol(argv[4]) : 1000;
  try {
    auto c = client::connection::open(*where, {argv[2], argv[3]}, bench_options());
    auto run_true = [&] {
      const auto id = c.next_id();
      c.send({{"type", proto::type::exec}, {"id", id}, {"argv", {std::getenv("BENCH_EXEC_PROGRAM") ? std::getenv("BENCH_EXEC_PROGRAM") : "true"}}, {"stdin", false}});
      for (;;) {
        proto::frame f = c.receive();
        if (f.id() != id) continue;
        if (f.type() == proto::type::error) throw client::error_from_frame(f);
        if (f.type() == proto::type::exec_exit) {
          if (f.header.value("exit_code", -1) != 0) throw std::runtime_error("true did not exit 0");
          return;
        }
      }
    };
    for (int i = 0; i < 20; ++i) run_true();  // warm-up
    std::vector<double> us;
    for (long i = 0; i < count; ++i) {
      const auto t0 = clock_type::now();
      run_true();
      us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    auto pct = [&](double q) { return us[static_cast<std::size_t>(q * static_cast<double>(us.size() - 1))]; };
    std::printf("%s\n", proto::json{{"count", count}, {"p50_us", pct(0.5)}, {"p99_us", pct(0.99)}}.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_exec: %s\n", e.what());
    return 1;
  }
}
