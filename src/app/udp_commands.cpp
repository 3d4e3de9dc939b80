// `cskit ping --udp`, `cskit time` and `cskit sync`: the UDP clients.
#include <time.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "app/commands.hpp"
#include "client/clock_adjust.hpp"
#include "client/ntp_client.hpp"
#include "client/udp.hpp"
#include "client/udp_ping.hpp"
#include "service/echo.hpp"
#include "util/clock.hpp"
#include "util/rounding.hpp"

namespace cskit::app {

using nlohmann::json;
namespace ntp = proto::ntp;

namespace {

volatile std::sig_atomic_t stop_requested = 0;
extern "C" void on_stop_signal(int) { stop_requested = 1; }

double round_us(double ms) { return util::round_to_places(ms, 3); }

std::optional<client::udp_socket> open_udp(const std::string& host, std::uint16_t default_port, bool as_json,
                                           int& rc) {
  std::string why;
  auto where = net::parse_host_port(host, default_port, &why);
  if (!where) {
    std::fprintf(stderr, "cskit: invalid host '%s': %s\n", host.c_str(), why.c_str());
    rc = exit_code::usage;
    return std::nullopt;
  }
  try {
    return client::udp_socket::open(*where);
  } catch (const client::client_error& e) {
    std::fprintf(stderr, "cskit: %s\n", e.what());
    if (as_json) std::printf("%s\n", json{{"error", {{"kind", "connect"}, {"message", e.what()}}}}.dump().c_str());
    rc = exit_code::connect;
    return std::nullopt;
  }
}

std::string iso_time(std::int64_t unix_ns) {
  time_t sec = static_cast<time_t>(unix_ns / 1'000'000'000);
  long nsec = static_cast<long>(unix_ns % 1'000'000'000);
  if (nsec < 0) {
    nsec += 1'000'000'000;
    --sec;
  }
  tm t{};
  ::gmtime_r(&sec, &t);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, nsec / 1000);
  return buf;
}

}  // namespace

// ------------------------------------------------------------ ping --udp

int run_udp_ping(const udp_ping_options& o) {
  int rc = exit_code::ok;
  auto sock = open_udp(o.host, service::echo_default_port, o.json, rc);
  if (!sock) return rc;
  const std::string peer = sock->peer();
  std::random_device rd;
  client::udp_probes probes(static_cast<std::uint32_t>(rd()), o.size);
  const std::size_t size = std::max(o.size, client::udp_probes::min_size);
  if (!o.json) {
    std::printf("PING %s (UDP echo): %zu data bytes\n", peer.c_str(), size);
    std::fflush(stdout);
  }
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);

  const std::int64_t interval_ns = static_cast<std::int64_t>(o.interval * 1e9);
  const std::int64_t timeout_ns = static_cast<std::int64_t>(o.timeout * 1e9);
  const std::int64_t started = util::monotonic_ns();
  std::int64_t next_send = started;
  std::uint64_t next_expiry_check = 1;  // lowest seq neither answered nor reported lost
  std::vector<double> rtts;
  std::vector<std::uint8_t> buf(65536);
  json events = json::array();
  std::uint64_t refused = 0;
  auto line = [&](const std::string& text) {
    if (!o.json && !o.quiet) {
      std::printf("%s\n", text.c_str());
      std::fflush(stdout);
    }
  };
  auto settle = [&](std::int64_t now) {
    // Moves past probes that are answered or whose time is up.
    while (next_expiry_check <= probes.sent() && (probes.answered(next_expiry_check) ||
                                                  probes.send_mono_ns(next_expiry_check) + timeout_ns <= now)) {
      if (!probes.answered(next_expiry_check)) {
        line(fmt::format("seq={}: no reply within {:.1f} s", next_expiry_check, o.timeout));
        events.push_back({{"seq", next_expiry_check}, {"event", "lost"}});
      }
      ++next_expiry_check;
    }
  };

  for (;;) {
    const std::int64_t now = util::monotonic_ns();
    settle(now);
    const bool more = o.count == 0 || static_cast<long>(probes.sent()) < o.count;
    if (stop_requested) break;
    if (more && now >= next_send) {
      const std::uint64_t seq = probes.sent() + 1;
      const std::int64_t real = util::realtime_ns();
      auto bytes = probes.make(seq, real, util::monotonic_ns());
      std::string err;
      if (!sock->send(bytes, &err)) {
        ++refused;
        line(fmt::format("From {}: seq={}: {}", peer, seq, err));
        events.push_back({{"seq", seq}, {"event", "send_failed"}, {"error", err}});
      }
      next_send += interval_ns;
      if (next_send < now) next_send = now;  // never burst to catch up
      continue;
    }
    // Done when everything was sent and every probe is answered or lost.
    if (!more && next_expiry_check > probes.sent()) break;
    std::int64_t wake = next_expiry_check <= probes.sent() ? probes.send_mono_ns(next_expiry_check) + timeout_ns
                                                            : now + timeout_ns;
    if (more) wake = std::min(wake, next_send);
    auto got = sock->receive(buf, wake);
    if (!got) continue;
    if (got->refused) {
      ++refused;
      line(fmt::format("From {}: port unreachable", peer));
      events.push_back({{"event", "port_unreachable"}});
      continue;
    }
    const std::int64_t mono = util::monotonic_ns();
    if (got->truncated) {
      line(fmt::format("{} bytes from {}: larger than any probe (truncated), ignored", got->wire_size, peer));
      continue;
    }
    auto r = probes.classify(std::span(buf.data(), got->size));
    using kind = client::udp_probes::kind;
    if (r.what == kind::stray) continue;
    if (r.what == kind::corrupt) {
      line(fmt::format("{} bytes from {}: seq={} corrupted (differs from what was sent)", got->size, peer, r.seq));
      events.push_back({{"seq", r.seq}, {"event", "corrupt"}});
      continue;
    }
    // Kernel receive time minus send time; the monotonic clock is the
    // fallback if the wall clock moved in between.
    const double mono_ms = static_cast<double>(mono - r.send_mono_ns) / 1e6;
    double rtt = static_cast<double>(got->rx_time_ns - r.send_real_ns) / 1e6;
    if (!(rtt > 0 && rtt <= mono_ms + 1.0)) rtt = mono_ms;
    if (r.what == kind::duplicate) {
      line(fmt::format("{} bytes from {}: seq={} time={:.3f} ms (DUP!)", got->size, peer, r.seq, rtt));
      events.push_back({{"seq", r.seq}, {"event", "duplicate"}, {"rtt_ms", round_us(rtt)}});
      continue;
    }
    rtts.push_back(rtt);
    line(fmt::format("{} bytes from {}: seq={} time={:.3f} ms{}", got->size, peer, r.seq, rtt,
                     r.out_of_order ? " (out of order)" : ""));
    events.push_back({{"seq", r.seq}, {"event", "reply"}, {"rtt_ms", round_us(rtt)}, {"out_of_order", r.out_of_order}});
  }

  const double elapsed = static_cast<double>(util::monotonic_ns() - started) / 1e6;
  const auto sent = probes.sent();
  const auto received = rtts.size();
  const double loss = sent ? 100.0 * static_cast<double>(sent - received) / static_cast<double>(sent) : 0.0;
  const auto s = client::rtt_summary::of(rtts);
  if (o.json) {
    json j = {{"host", peer},
              {"protocol", "udp-echo"},
              {"size", size},
              {"sent", sent},
              {"received", received},
              {"duplicates", probes.duplicates()},
              {"out_of_order", probes.reordered()},
              {"corrupted", probes.corrupted()},
              {"port_unreachable", refused},
              {"loss_percent", loss},
              {"time_ms", round_us(elapsed)},
              {"rtt_ms", {{"min", round_us(s.min)}, {"avg", round_us(s.avg)}, {"max", round_us(s.max)},
                          {"mdev", round_us(s.mdev)}}},
              {"events", events}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("\n--- %s UDP ping statistics ---\n", peer.c_str());
    std::string extra;
    if (probes.duplicates()) extra += fmt::format(", +{} duplicates", probes.duplicates());
    if (probes.reordered()) extra += fmt::format(", {} out of order", probes.reordered());
    if (probes.corrupted()) extra += fmt::format(", {} corrupted", probes.corrupted());
    std::printf("%llu probes sent, %zu received%s, %.0f%% lost, time %.0f ms\n",
                static_cast<unsigned long long>(sent), received, extra.c_str(), loss, elapsed);
    if (received) std::printf("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", s.min, s.avg, s.max, s.mdev);
  }
  if (received < sent) return exit_code::timeout;
  return exit_code::ok;
}

// ------------------------------------------------------------ time / sync

namespace {

struct measured {
  client::time_result result;
  bool refused = false;
};

client::time_query_options query_options(const time_options& o) {
  client::time_query_options q;
  q.samples = o.samples;
  q.timeout = std::chrono::milliseconds(static_cast<long long>(o.timeout * 1000));
  q.version = static_cast<std::uint8_t>(o.version);
  return q;
}

// Exit code and message when no sample could be trusted.
int no_result(const measured& m, std::string& why) {
  const auto& r = m.result;
  if (m.refused) {
    why = "no NTP server at " + r.server + " (port unreachable)";
    return exit_code::connect;
  }
  if (!r.kiss.empty()) {
    why = "the server sent a Kiss-o'-Death (" + r.kiss + ")" +
          (r.kiss == "RATE" ? ": it asks us to query less often" : ": it refuses to serve us");
    return exit_code::remote;
  }
  bool any_reply = false;
  for (const auto& s : r.samples) any_reply |= s.problem != "no reply";
  if (!any_reply) {
    why = "no reply from " + r.server + " to " + std::to_string(r.sent) + " request" + (r.sent == 1 ? "" : "s");
    return exit_code::timeout;
  }
  why = "no trustworthy reply from " + r.server;
  for (const auto& s : r.samples) {
    if (!s.valid && s.problem != "no reply") {
      why += ": " + s.problem;
      break;
    }
  }
  return exit_code::protocol;
}

json result_json(const measured& m) {
  const auto& r = m.result;
  json samples = json::array();
  for (const auto& s : r.samples) {
    json j = {{"valid", s.valid}};
    if (s.valid) {
      j["offset"] = s.sample.offset();
      j["delay"] = s.sample.delay();
    } else {
      j["problem"] = s.problem;
    }
    samples.push_back(j);
  }
  json j = {{"server", r.server}, {"sent", r.sent}, {"valid", r.valid}, {"samples", samples}};
  if (!r.kiss.empty()) j["kiss"] = r.kiss;
  if (r.best) {
    const auto& b = *r.best;
    const auto& p = b.reply;
    j["offset"] = b.offset();
    j["delay"] = b.delay();
    j["server_time"] = iso_time(b.t3);
    j["server_time_unix"] = static_cast<double>(b.t3) / 1e9;
    j["stratum"] = p.stratum;
    j["reference_id"] = ntp::format_reference_id(p.reference_id, p.stratum);
    j["leap"] = static_cast<int>(p.li);
    j["version"] = p.version;
    j["precision"] = p.precision;
    j["root_delay"] = ntp::short_to_seconds(p.root_delay);
    j["root_dispersion"] = ntp::short_to_seconds(p.root_dispersion);
    j["root_distance"] = b.root_distance();
  }
  return j;
}

void print_result(const measured& m) {
  const auto& b = *m.result.best;
  const auto& p = b.reply;
  const double off = b.offset();
  std::printf("server     %s, stratum %d, reference %s\n", m.result.server.c_str(), p.stratum,
              ntp::format_reference_id(p.reference_id, p.stratum).c_str());
  std::printf("time       %s\n", iso_time(b.t3).c_str());
  std::printf("offset     %+.6f s (%s)\n", off,
              off == 0 ? "the clocks agree" : off > 0 ? "the local clock is behind" : "the local clock is ahead");
  std::printf("delay      %.6f s\n", b.delay());
  std::printf("samples    %d sent, %d valid, lowest delay used%s\n", m.result.sent, m.result.valid,
              m.result.kiss.empty() ? "" : (", Kiss-o'-Death " + m.result.kiss + " received").c_str());
}

std::optional<measured> measure(const time_options& o, int& rc) {
  auto sock = open_udp(o.host, ntp::default_port, o.json, rc);
  if (!sock) return std::nullopt;
  measured m;
  m.result = client::query_time(*sock, query_options(o), &m.refused);
  return m;
}

int fail(const std::string& message, int rc, bool as_json, const char* kind, json extra = json::object()) {
  std::fprintf(stderr, "cskit: %s\n", message.c_str());
  if (as_json) {
    extra["error"] = {{"kind", kind}, {"message", message}};
    std::printf("%s\n", extra.dump().c_str());
  }
  return rc;
}

const char* kind_of(int rc) {
  switch (rc) {
    case exit_code::connect: return "connect";
    case exit_code::timeout: return "timeout";
    case exit_code::remote: return "remote";
    case exit_code::permission: return "permission";
    default: return "protocol";
  }
}

}  // namespace

int run_time(const time_options& o) {
  int rc = exit_code::ok;
  auto m = measure(o, rc);
  if (!m) return rc;
  if (!m->result.best) {
    std::string why;
    rc = no_result(*m, why);
    return fail(why, rc, o.json, kind_of(rc), result_json(*m));
  }
  if (o.json) {
    std::printf("%s\n", result_json(*m).dump().c_str());
  } else {
    print_result(*m);
  }
  return exit_code::ok;
}

int run_sync(const sync_options& o) {
  int rc = exit_code::ok;
  auto m = measure(o.query, rc);
  if (!m) return rc;
  if (!m->result.best) {
    std::string why;
    rc = no_result(*m, why);
    return fail(why + "; the clock was not changed", rc, o.query.json, kind_of(rc), result_json(*m));
  }
  const double offset = m->result.best->offset();
  std::optional<client::clock_method> forced;
  if (o.force_step) forced = client::clock_method::step;
  if (o.force_slew) forced = client::clock_method::slew;
  const auto method = client::choose_clock_method(offset, forced);
  json j = result_json(*m);
  j["action"] = client::to_string(method);
  j["dry_run"] = o.dry_run;
  if (!o.query.json) print_result(*m);

  if (o.dry_run) {
    j["changed"] = false;
    if (o.query.json) {
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("dry run: would %s the clock by %+.6f s; nothing changed\n", client::to_string(method), offset);
    }
    return exit_code::ok;
  }
  std::string error;
  if (!client::have_clock_privilege()) {
    j["changed"] = false;
    return fail(client::clock_privilege_hint() + "; the clock was not changed", exit_code::permission, o.query.json,
                "permission", j);
  }
  if (!client::adjust_clock(offset, method, error)) {
    j["changed"] = false;
    return fail("cannot " + std::string(client::to_string(method)) + " the clock: " + error +
                    "; the clock was not changed",
                error == client::clock_privilege_hint() ? exit_code::permission : exit_code::failure, o.query.json,
                "clock", j);
  }
  j["changed"] = true;
  if (o.query.json) {
    std::printf("%s\n", j.dump().c_str());
  } else if (method == client::clock_method::slew) {
    std::printf("slewing the clock by %+.6f s (the kernel corrects at most 0.5 ms per second)\n", offset);
  } else {
    std::printf("stepped the clock by %+.6f s\n", offset);
  }
  return exit_code::ok;
}

}  // namespace cskit::app
