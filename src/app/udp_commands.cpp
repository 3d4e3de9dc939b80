// `cskit ping --udp`, `cskit time` and `cskit sync`: the UDP clients.
#include <time.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
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

// With `error` given, a failure to open is stored there rather than printed
// (the caller reports it with the other servers' results).
std::optional<client::udp_socket> open_udp(const std::string& host, std::uint16_t default_port, bool as_json,
                                           int& rc, std::string* error = nullptr) {
  std::string why;
  std::optional<net::host_port> where;
  try {
    where = net::parse_host_port(client::udp_target(host), default_port, &why);
  } catch (const client::client_error& e) {  // a client config that cannot be read: a local failure
    rc = exit_code::failure;
    if (error) {
      *error = e.what();
      return std::nullopt;
    }
    std::fprintf(stderr, "cskit: %s\n", e.what());
    return std::nullopt;
  }
  if (!where) {
    std::fprintf(stderr, "cskit: invalid host '%s': %s\n", host.c_str(), why.c_str());
    rc = exit_code::usage;
    return std::nullopt;
  }
  try {
    return client::udp_socket::open(*where);
  } catch (const client::client_error& e) {
    rc = exit_code::connect;
    if (error) {
      *error = e.what();
      return std::nullopt;
    }
    std::fprintf(stderr, "cskit: %s\n", e.what());
    if (as_json) std::printf("%s\n", json{{"error", {{"kind", "connect"}, {"message", e.what()}}}}.dump().c_str());
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

namespace {

// One `ping --udp` run: probes sent at the interval, each answered, lost
// (no reply within the timeout) or refused; a line per event, then the
// summary (or one JSON object).
class udp_pinger {
 public:
  udp_pinger(const udp_ping_options& o, client::udp_socket& sock)
      : o_(o),
        sock_(sock),
        peer_(sock.peer()),
        probes_(static_cast<std::uint32_t>(std::random_device{}()), o.size),
        size_(std::max(o.size, client::udp_probes::min_size)),
        interval_ns_(static_cast<std::int64_t>(o.interval * 1e9)),
        timeout_ns_(static_cast<std::int64_t>(o.timeout * 1e9)) {}

  /// Until every probe asked for is answered or lost, or Ctrl-C.
  void run() {
    if (!o_.json) {
      std::printf("PING %s (UDP echo): %zu data bytes\n", peer_.c_str(), size_);
      std::fflush(stdout);
    }
    started_ = next_send_ = util::monotonic_ns();
    for (;;) {
      const std::int64_t now = util::monotonic_ns();
      settle(now);
      const bool more = o_.count == 0 || static_cast<long>(probes_.sent()) < o_.count;
      if (stop_requested) break;
      if (more && now >= next_send_) {
        send_probe(now);
        continue;
      }
      // Done when everything was sent and every probe is answered or lost.
      if (!more && unsettled_ > probes_.sent()) break;
      std::int64_t wake = unsettled_ <= probes_.sent() ? probes_.send_mono_ns(unsettled_) + timeout_ns_ : now + timeout_ns_;
      if (more) wake = std::min(wake, next_send_);
      if (auto got = sock_.receive(buf_, wake)) take(*got);
    }
  }

  /// The summary; the exit status (timeout when a probe went unanswered).
  int report() const {
    const double elapsed = static_cast<double>(util::monotonic_ns() - started_) / 1e6;
    const auto sent = probes_.sent();
    const auto received = rtts_.size();
    const double loss = sent ? 100.0 * static_cast<double>(sent - received) / static_cast<double>(sent) : 0.0;
    const auto s = client::rtt_summary::of(rtts_);
    if (o_.json) {
      json j = {{"host", peer_},
                {"protocol", "udp-echo"},
                {"size", size_},
                {"sent", sent},
                {"received", received},
                {"duplicates", probes_.duplicates()},
                {"out_of_order", probes_.reordered()},
                {"corrupted", probes_.corrupted()},
                {"port_unreachable", refused_},
                {"loss_percent", loss},
                {"time_ms", round_us(elapsed)},
                {"rtt_ms", {{"min", round_us(s.min)}, {"avg", round_us(s.avg)}, {"max", round_us(s.max)},
                            {"mdev", round_us(s.mdev)}}},
                {"events", events_}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\n--- %s UDP ping statistics ---\n", peer_.c_str());
      std::string extra;
      if (probes_.duplicates()) {
        extra += fmt::format(", +{} duplicate{}", probes_.duplicates(), probes_.duplicates() == 1 ? "" : "s");
      }
      if (probes_.reordered()) extra += fmt::format(", {} out of order", probes_.reordered());
      if (probes_.corrupted()) extra += fmt::format(", {} corrupted", probes_.corrupted());
      std::printf("%llu probe%s sent, %zu received%s, %.0f%% lost, time %.0f ms\n",
                  static_cast<unsigned long long>(sent), sent == 1 ? "" : "s", received, extra.c_str(), loss, elapsed);
      if (received) std::printf("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", s.min, s.avg, s.max, s.mdev);
    }
    // Nothing came back and the port was reported closed: nobody serves
    // echo there (3, as `cskit time` says of an NTP port); some lost: 8.
    if (received == 0 && sent > 0 && refused_ > 0) return exit_code::connect;
    return received < sent ? exit_code::timeout : exit_code::ok;
  }

 private:
  void line(const std::string& text) const {
    if (!o_.json && !o_.quiet) {
      std::printf("%s\n", text.c_str());
      std::fflush(stdout);
    }
  }

  // Moves past the probes that are answered or whose time is up.
  void settle(std::int64_t now) {
    while (unsettled_ <= probes_.sent() &&
           (probes_.answered(unsettled_) || probes_.send_mono_ns(unsettled_) + timeout_ns_ <= now)) {
      if (!probes_.answered(unsettled_)) {
        line(fmt::format("seq={}: no reply within {:.1f} s", unsettled_, o_.timeout));
        events_.push_back({{"seq", unsettled_}, {"event", "lost"}});
      }
      ++unsettled_;
    }
  }

  void send_probe(std::int64_t now) {
    const std::uint64_t seq = probes_.sent() + 1;
    const std::int64_t real = util::realtime_ns();  // (before the monotonic time, as always)
    auto bytes = probes_.make(seq, real, util::monotonic_ns());
    std::string err;
    if (!sock_.send(bytes, &err)) {
      ++refused_;
      line(fmt::format("From {}: seq={}: {}", peer_, seq, err));
      events_.push_back({{"seq", seq}, {"event", "send_failed"}, {"error", err}});
    }
    next_send_ += interval_ns_;
    if (next_send_ < now) next_send_ = now;  // never burst to catch up
  }

  void take(const client::udp_socket::received& got) {
    if (got.refused) {
      ++refused_;
      line(fmt::format("From {}: port unreachable", peer_));
      events_.push_back({{"event", "port_unreachable"}});
      return;
    }
    const std::int64_t mono = util::monotonic_ns();
    if (got.truncated) {
      line(fmt::format("{} bytes from {}: larger than any probe (truncated), ignored", got.wire_size, peer_));
      return;
    }
    auto r = probes_.classify(std::span(buf_.data(), got.size));
    using kind = client::udp_probes::kind;
    if (r.what == kind::stray) return;
    if (r.what == kind::corrupt) {
      line(fmt::format("{} bytes from {}: seq={} corrupted (differs from what was sent)", got.size, peer_, r.seq));
      events_.push_back({{"seq", r.seq}, {"event", "corrupt"}});
      return;
    }
    // Kernel receive time minus send time; the monotonic clock is the
    // fallback if the wall clock moved in between.
    const double mono_ms = static_cast<double>(mono - r.send_mono_ns) / 1e6;
    double rtt = static_cast<double>(got.rx_time_ns - r.send_real_ns) / 1e6;
    if (!(rtt > 0 && rtt <= mono_ms + 1.0)) rtt = mono_ms;
    if (r.what == kind::duplicate) {
      line(fmt::format("{} bytes from {}: seq={} time={:.3f} ms (DUP!)", got.size, peer_, r.seq, rtt));
      events_.push_back({{"seq", r.seq}, {"event", "duplicate"}, {"rtt_ms", round_us(rtt)}});
      return;
    }
    rtts_.push_back(rtt);
    line(fmt::format("{} bytes from {}: seq={} time={:.3f} ms{}", got.size, peer_, r.seq, rtt,
                     r.out_of_order ? " (out of order)" : ""));
    events_.push_back({{"seq", r.seq}, {"event", "reply"}, {"rtt_ms", round_us(rtt)}, {"out_of_order", r.out_of_order}});
  }

  const udp_ping_options& o_;
  client::udp_socket& sock_;
  const std::string peer_;
  client::udp_probes probes_;
  const std::size_t size_;
  const std::int64_t interval_ns_, timeout_ns_;
  std::int64_t started_ = 0, next_send_ = 0;
  std::uint64_t unsettled_ = 1;  // the lowest seq neither answered nor reported lost
  std::vector<double> rtts_;
  std::vector<std::uint8_t> buf_ = std::vector<std::uint8_t>(65536);
  json events_ = json::array();
  std::uint64_t refused_ = 0;
};

}  // namespace

int run_udp_ping(const udp_ping_options& o) {
  int rc = exit_code::ok;
  auto sock = open_udp(o.host, service::echo_default_port, o.json, rc);
  if (!sock) return rc;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  udp_pinger pinger(o, *sock);
  pinger.run();
  return pinger.report();
}

// ------------------------------------------------------------ time / sync

namespace {

struct measured {
  client::time_result result;
  bool refused = false;
  bool opened = false;     // the host could be resolved and a socket opened
  std::string open_error;  // why not, when it could not
};

// Every server's measurement, and which of them agree (RFC 5905's
// selection): only the truechimers of a majority are believed.
struct consensus {
  std::vector<measured> servers;
  std::vector<std::size_t> usable;  // servers with a trusted sample
  ntp::selection selection;         // over `usable`, in that order
  double offset = 0;                // the truechimers' combined offset
  std::optional<std::size_t> reference;  // the truechimer with the lowest root distance
  const measured& ref() const { return servers[*reference]; }
  bool truechimer(std::size_t server) const {
    for (std::size_t k = 0; k < usable.size(); ++k) {
      if (usable[k] == server) return selection.found && selection.truechimers[k];
    }
    return false;
  }
};

client::time_query_options query_options(const time_options& o) {
  client::time_query_options q;
  q.samples = o.samples;
  q.timeout = std::chrono::milliseconds(static_cast<long long>(o.timeout * 1000));
  q.version = static_cast<std::uint8_t>(o.version);
  return q;
}

// Exit code and message when no sample of a server could be trusted.
int no_result(const measured& m, std::string& why) {
  const auto& r = m.result;
  if (!m.opened) {
    why = m.open_error;
    return exit_code::connect;
  }
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

// Why a server was left out of the result ("" when it is used).
std::string left_out(const consensus& c, std::size_t i) {
  const measured& m = c.servers[i];
  if (!m.result.best) {
    std::string why;
    no_result(m, why);
    return why;
  }
  if (c.truechimer(i)) return {};
  const auto& b = *m.result.best;
  if (!c.selection.found) return "no majority of the servers agrees";
  return fmt::format("a falseticker: its interval {:+.6f} ± {:.6f} s does not meet [{:+.6f}, {:+.6f}] s, where {} of {} "
                     "servers agree",
                     b.offset(), b.root_distance(), c.selection.low, c.selection.high, c.selection.agreeing,
                     c.usable.size());
}

json server_json(const consensus& c, std::size_t i) {
  const auto& m = c.servers[i];
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
  j["used"] = c.truechimer(i);
  if (auto why = left_out(c, i); !why.empty()) j["left_out"] = why;
  return j;
}

// The result as JSON: the reference server's fields at the top (as for one
// server), the combined offset, and every server.
json result_json(const consensus& c) {
  json j = c.reference ? server_json(c, *c.reference) : json::object();
  if (c.servers.size() == 1 && !c.reference) j = server_json(c, 0);
  j.erase("used");
  j.erase("left_out");
  if (c.reference) j["offset"] = c.offset;
  json all = json::array();
  for (std::size_t i = 0; i < c.servers.size(); ++i) all.push_back(server_json(c, i));
  j["servers"] = all;
  if (c.selection.found) {
    j["agreeing"] = c.selection.agreeing;
    j["interval"] = {c.selection.low, c.selection.high};
  }
  return j;
}

void print_result(const consensus& c) {
  if (c.servers.size() > 1) {
    for (std::size_t i = 0; i < c.servers.size(); ++i) {
      const auto& m = c.servers[i];
      if (!m.result.best) {
        std::printf("%-24s left out: %s\n", m.result.server.c_str(), left_out(c, i).c_str());
        continue;
      }
      const auto& b = *m.result.best;
      const std::string why = left_out(c, i);
      std::printf("%-24s offset %+.6f s, delay %.6f s, root distance %.6f s%s\n", m.result.server.c_str(), b.offset(),
                  b.delay(), b.root_distance(), why.empty() ? ", used" : ("; left out: " + why).c_str());
    }
  }
  const measured& r = c.ref();
  const auto& b = *r.result.best;
  const auto& p = b.reply;
  const double off = c.offset;
  std::printf("server     %s, stratum %d, reference %s\n", r.result.server.c_str(), p.stratum,
              ntp::format_reference_id(p.reference_id, p.stratum).c_str());
  std::printf("time       %s\n", iso_time(b.t3).c_str());
  std::printf("offset     %+.6f s (%s)%s\n", off,
              off == 0 ? "the clocks agree" : off > 0 ? "the local clock is behind" : "the local clock is ahead",
              c.servers.size() > 1 ? fmt::format(", {} of {} servers agree", c.selection.agreeing, c.servers.size()).c_str()
                                   : "");
  std::printf("delay      %.6f s\n", b.delay());
  std::printf("samples    %d sent, %d valid, lowest delay used%s\n", r.result.sent, r.result.valid,
              r.result.kiss.empty() ? "" : (", Kiss-o'-Death " + r.result.kiss + " received").c_str());
}

// Measures every server; rc is set for a usage error (a bad host).
consensus measure_all(const time_options& o, int& rc) {
  consensus c;
  for (const auto& host : o.hosts) {
    measured m;
    m.result.server = host;
    int open_rc = exit_code::ok;
    const bool alone = o.hosts.size() == 1;
    auto sock = open_udp(host, ntp::default_port, o.json && alone, open_rc, alone ? nullptr : &m.open_error);
    if (!sock) {
      if (open_rc == exit_code::failure && !alone) {  // the client config: the same for every server
        std::fprintf(stderr, "cskit: %s\n", m.open_error.c_str());
        rc = open_rc;
        return c;
      }
      if (open_rc == exit_code::usage || alone) {
        rc = open_rc;  // reported by open_udp
        return c;
      }
      c.servers.push_back(std::move(m));
      continue;
    }
    m.opened = true;
    m.result = client::query_time(*sock, query_options(o), &m.refused);
    c.servers.push_back(std::move(m));
  }
  std::vector<ntp::interval> intervals;
  for (std::size_t i = 0; i < c.servers.size(); ++i) {
    const auto& best = c.servers[i].result.best;
    if (!best) continue;
    c.usable.push_back(i);
    intervals.push_back({best->offset(), best->root_distance()});
  }
  c.selection = ntp::select_truechimers(intervals);
  if (!c.selection.found) return c;
  c.offset = ntp::combined_offset(intervals, c.selection);
  for (std::size_t k = 0; k < c.usable.size(); ++k) {
    if (!c.selection.truechimers[k]) continue;
    const std::size_t i = c.usable[k];
    if (!c.reference || c.servers[i].result.best->root_distance() < c.ref().result.best->root_distance()) {
      c.reference = i;
    }
  }
  return c;
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

// The exit code when no server gave a trusted sample: the servers' own code
// when they all failed alike (all unreachable: connect; all silent:
// timeout), a timeout when each was either silent or unreachable, and a
// protocol error when any of them answered with something untrustworthy.
int common_failure(const consensus& c) {
  std::string unused;
  std::optional<int> same;
  bool only_silent_or_unreachable = true;
  for (const auto& m : c.servers) {
    const int rc = no_result(m, unused);
    if (!same) same = rc;
    if (*same != rc) same = -1;
    only_silent_or_unreachable &= rc == exit_code::connect || rc == exit_code::timeout;
  }
  if (same && *same != -1) return *same;
  return only_silent_or_unreachable ? exit_code::timeout : exit_code::protocol;
}

// Why there is no result (and the exit code), when there is none.
int no_consensus(const consensus& c, std::string& why) {
  if (c.servers.size() == 1) return no_result(c.servers.front(), why);
  if (c.usable.empty()) {
    why = "none of the " + std::to_string(c.servers.size()) + " servers gave a trustworthy reply";
    return common_failure(c);
  }
  why = "the servers disagree: no majority of the " + std::to_string(c.usable.size()) +
        " that answered has correctness intervals that meet";
  return exit_code::protocol;
}

// With several servers and no result: what each one gave.
void print_failure_details(const consensus& c) {
  for (std::size_t i = 0; i < c.servers.size(); ++i) {
    const auto& m = c.servers[i];
    if (m.result.best) {
      const auto& b = *m.result.best;
      std::fprintf(stderr, "%-24s offset %+.6f s, root distance %.6f s\n", m.result.server.c_str(), b.offset(),
                   b.root_distance());
    } else {
      std::fprintf(stderr, "%-24s %s\n", m.result.server.c_str(), left_out(c, i).c_str());
    }
  }
}

}  // namespace

int run_time(const time_options& o) {
  int rc = exit_code::ok;
  auto c = measure_all(o, rc);
  if (rc != exit_code::ok) return rc;
  if (!c.reference) {
    std::string why;
    rc = no_consensus(c, why);
    if (c.servers.size() > 1 && !o.json) print_failure_details(c);
    return fail(why, rc, o.json, kind_of(rc), result_json(c));
  }
  if (o.json) {
    std::printf("%s\n", result_json(c).dump().c_str());
  } else {
    print_result(c);
  }
  return exit_code::ok;
}

int run_sync(const sync_options& o) {
  int rc = exit_code::ok;
  auto c = measure_all(o.query, rc);
  if (rc != exit_code::ok) return rc;
  if (!c.reference) {
    std::string why;
    rc = no_consensus(c, why);
    if (c.servers.size() > 1 && !o.query.json) print_failure_details(c);
    return fail(why + "; the clock was not changed", rc, o.query.json, kind_of(rc), result_json(c));
  }
  const double offset = c.offset;
  json j = result_json(c);
  if (!o.query.json) print_result(c);
  if (o.max_offset > 0 && std::fabs(offset) > o.max_offset) {
    // The panic threshold: a server (or a forged reply) this far off is
    // more likely wrong than the local clock.
    j["changed"] = false;
    return fail(fmt::format("refusing to change the clock by {:+.6f} s: beyond the panic threshold of {:g} s "
                            "(check the servers; --max-offset 0 allows any change); the clock was not changed",
                            offset, o.max_offset),
                exit_code::protocol, o.query.json, "panic", j);
  }
  std::optional<client::clock_method> forced;
  if (o.force_step) forced = client::clock_method::step;
  if (o.force_slew) forced = client::clock_method::slew;
  const auto method = client::choose_clock_method(offset, forced);
  j["action"] = client::to_string(method);
  j["dry_run"] = o.dry_run;

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

// ------------------------------------------------------------ the command line

namespace {

void add_time_options(CLI::App& cmd, time_options& t) {
  cmd.add_option("HOST", t.hosts,
                 "NTP servers as HOST[:PORT] (default port 123); with several, only those whose correctness "
                 "intervals agree (a majority) are used; at most 16")
      ->required()
      ->expected(1, 16);
  cmd.add_option("--samples,-n", t.samples, "Requests to send; the one with the lowest delay is used (default 4)")
      ->check(CLI::Range(1, 64));
  cmd.add_option("--timeout,-W", t.timeout, "Seconds to wait for each reply (default 1)")->check(CLI::Range(0.01, 60.0));
  cmd.add_option("--ntp-version", t.version, "NTP version to request with (2, 3 or 4; default 4)")->check(CLI::Range(2, 4));
  cmd.add_flag("--json", t.json, "Print one JSON object instead of text");
}

command_runner build_time(CLI::App& cmd, const command_args&) {
  auto t = std::make_shared<time_options>();
  add_time_options(cmd, *t);
  return [t] { return run_time(*t); };
}

command_runner build_sync(CLI::App& cmd, const command_args&) {
  auto s = std::make_shared<sync_options>();
  add_time_options(cmd, s->query);
  cmd.add_option("--max-offset", s->max_offset,
                 "Refuse to change the clock by more than SECONDS (the panic threshold, default 1000; 0: no limit)")
      ->check(CLI::Range(0.0, 1e12));
  cmd.add_flag("--dry-run", s->dry_run, "Only report what would be done");
  auto* step_flag = cmd.add_flag("--step", s->force_step, "Step the clock whatever the offset");
  cmd.add_flag("--slew", s->force_slew, "Slew the clock whatever the offset")->excludes(step_flag);
  return [s] { return run_sync(*s); };
}

const command_registration time_registration{{
    .name = "time",
    .summary = "Ask an NTP server (cskit's or any other) for the time and the offset",
    .usage = "[-n SAMPLES] [--json] HOST[:PORT]...",
    .order = 30,
    .build = build_time,
}};

const command_registration sync_registration{{
    .name = "sync",
    .summary = "Measure like 'time', then slew the clock (offset under 0.5 s) or step it (needs CAP_SYS_TIME)",
    .usage = "[--dry-run] [--step|--slew] [--max-offset SECONDS] HOST[:PORT]...",
    .order = 40,
    .build = build_sync,
}};

}  // namespace

}  // namespace cskit::app
