// `cskit ping` and `cskit info`.
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "net/tls.hpp"
#include "proto/limits.hpp"
#include "proto/messages.hpp"
#include "util/rounding.hpp"

namespace cskit::app {

using proto::json;
using clock = std::chrono::steady_clock;

int exit_code_for(client::failure f) noexcept {
  switch (f) {
    case client::failure::connect: return exit_code::connect;
    case client::failure::auth: return exit_code::auth;
    case client::failure::permission: return exit_code::permission;
    case client::failure::protocol: return exit_code::protocol;
    case client::failure::remote: return exit_code::remote;
    case client::failure::timeout: return exit_code::timeout;
    case client::failure::host_key_changed: return exit_code::host_key_changed;
    case client::failure::host_key_unknown: return exit_code::host_key_unknown;
    case client::failure::local: return exit_code::failure;
  }
  return exit_code::failure;
}

namespace {

const char* failure_name(client::failure f) {
  switch (f) {
    case client::failure::connect: return "connect";
    case client::failure::auth: return "auth";
    case client::failure::permission: return "permission";
    case client::failure::protocol: return "protocol";
    case client::failure::remote: return "remote";
    case client::failure::timeout: return "timeout";
    case client::failure::host_key_changed: return "host_key_changed";
    case client::failure::host_key_unknown: return "host_key_unknown";
    case client::failure::local: return "local";
  }
  return "error";
}

volatile std::sig_atomic_t interrupted = 0;
extern "C" void on_sigint(int) { interrupted = 1; }

// Milliseconds rounded to the microsecond, for JSON output.
double round_us(double ms) { return util::round_to_places(ms, 3); }

std::chrono::milliseconds ms(double seconds) {
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000.0));
}

client::connection open(const client_common& o) { return connect_client(o, o.host); }

int report(const client::client_error& e, bool as_json) {
  std::fprintf(stderr, "cskit: %s\n", e.what());
  if (as_json) {
    json j = {{"error", {{"kind", failure_name(e.kind())}, {"message", e.what()}}}};
    if (e.code()) j["error"]["code"] = proto::to_wire(*e.code());
    std::printf("%s\n", j.dump().c_str());
  }
  return exit_code_for(e.kind());
}

}  // namespace

namespace {

// Reads one line from the terminal, byte by byte, so that nothing typed
// after it is taken from stdin.
std::string read_terminal_line() {
  std::string line;
  char c;
  while (line.size() < 256 && ::read(STDIN_FILENO, &c, 1) == 1 && c != '\n') line += c;
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  while (!line.empty() && line.front() == ' ') line.erase(line.begin());
  return line;
}

// First contact from a terminal: show the key and ask, as ssh does.
bool confirm_on_terminal(const std::string& host, const std::string& fp, const std::string& untrusted) {
  static std::mutex one_question_at_a_time;  // exec fan-out connects from several threads
  std::lock_guard<std::mutex> lock(one_question_at_a_time);
  std::fprintf(stderr, "The authenticity of server '%s' can't be established.\n", host.c_str());
  std::fprintf(stderr, "Its key fingerprint is %s.\n", fp.c_str());
  if (!untrusted.empty()) std::fprintf(stderr, "Its certificate is not vouched for by a trusted CA (%s).\n", untrusted.c_str());
  std::fprintf(stderr, "This key is not known by any other names.\n");
  std::fprintf(stderr, "Are you sure you want to continue connecting (yes/no/[fingerprint])? ");
  for (int tries = 0; tries < 5; ++tries) {
    const std::string answer = read_terminal_line();
    if (answer == "yes" || answer == fp) return true;
    if (answer == "no" || answer.empty()) return false;
    if (net::tls::is_fingerprint(answer)) {
      std::fprintf(stderr, "The fingerprint you typed does not match the server's key.\n");
      return false;
    }
    std::fprintf(stderr, "Please type 'yes', 'no' or the fingerprint: ");
  }
  return false;
}

}  // namespace

client::connection connect_client(const client_common& o, const std::string& host) {
  client::credential_sources src{o.user, o.token, o.fingerprint, o.ca_file, o.client_config, host};
  auto profile = client::resolve_profile(src);  // a [hosts.NAME] alias may say where `host` is
  std::string why;
  auto where = net::parse_host_port(profile.connect_to, proto::default_port, &why);
  if (!where) {
    throw client::client_error(client::failure::connect,
                               "invalid host '" + host + "'" +
                                   (profile.connect_to != host ? " (in the client config: " + profile.connect_to + ")" : "") +
                                   ": " + why);
  }
  client::connect_options opts;
  opts.connect_timeout = ms(o.connect_timeout);
  opts.io_timeout = ms(o.timeout);
  opts.plaintext = o.plaintext;
  opts.rate_limit = o.rate_limit;
  opts.trust.fingerprint = profile.fingerprint;
  opts.trust.remember_fingerprint = o.fingerprint.has_value();
  opts.trust.ca_file = profile.ca_file;
  opts.trust.accept_new = o.accept_new;
  // Ask only someone who can answer: a terminal on both ends.
  if (::isatty(STDIN_FILENO) && ::isatty(STDERR_FILENO)) opts.trust.confirm = confirm_on_terminal;
  return client::connection::open(*where, profile.creds, opts);
}

int run_ping(const ping_options& o) {
  try {
    auto conn = open(o.common);
    const auto& g = conn.greeting();
    if (!o.common.json) {
      std::printf("PING %s (%s %s \"%s\", protocol %d) as %s: %zu data bytes\n", conn.peer().c_str(),
                  g.software.c_str(), g.version.c_str(), g.name.c_str(), g.proto, g.user.c_str(), o.size);
      std::fflush(stdout);
    }
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);

    const std::string payload(o.size, 'p');
    std::vector<double> rtts;
    json probes = json::array();
    long sent = 0;
    const auto started = clock::now();
    int result = exit_code::ok;
    for (long seq = 1; (o.count == 0 || seq <= o.count) && !interrupted; ++seq) {
      if (seq > 1) {
        // Sleep in slices so Ctrl-C ends the run promptly.
        const auto until = clock::now() + ms(o.interval);
        while (!interrupted && clock::now() < until) {
          std::this_thread::sleep_for(std::min<clock::duration>(until - clock::now(), std::chrono::milliseconds(50)));
        }
        if (interrupted) break;
      }
      ++sent;
      const auto t0 = clock::now();
      try {
        proto::frame pong = conn.request({{"type", proto::type::ping}}, payload);
        const double rtt = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
        if (pong.type() != proto::type::pong || pong.body != payload) {
          throw client::client_error(client::failure::protocol, "reply to ping was not a matching pong");
        }
        rtts.push_back(rtt);
        probes.push_back({{"seq", seq}, {"rtt_ms", round_us(rtt)}});
        if (!o.common.json && !o.quiet) {
          std::printf("pong from %s: seq=%ld time=%.3f ms\n", conn.peer().c_str(), seq, rtt);
          std::fflush(stdout);
        }
      } catch (const client::client_error& e) {
        if (e.kind() != client::failure::timeout) throw;
        probes.push_back({{"seq", seq}, {"rtt_ms", nullptr}});
        if (!o.common.json && !o.quiet) std::printf("seq=%ld: no reply within %.1f s\n", seq, o.common.timeout);
        result = exit_code::timeout;
      }
    }
    const double elapsed = std::chrono::duration<double, std::milli>(clock::now() - started).count();
    double mn = 0, mx = 0, avg = 0, mdev = 0;
    if (!rtts.empty()) {
      mn = *std::min_element(rtts.begin(), rtts.end());
      mx = *std::max_element(rtts.begin(), rtts.end());
      double sum = 0, sq = 0;
      for (double r : rtts) sum += r, sq += r * r;
      avg = sum / static_cast<double>(rtts.size());
      mdev = std::sqrt(std::max(0.0, sq / static_cast<double>(rtts.size()) - avg * avg));
    }
    const double loss = sent ? 100.0 * static_cast<double>(sent - static_cast<long>(rtts.size())) / static_cast<double>(sent) : 0.0;
    if (o.common.json) {
      json j = {{"host", conn.peer()},
                {"server", {{"software", g.software}, {"version", g.version}, {"name", g.name}, {"proto", g.proto}}},
                {"user", g.user},
                {"size", o.size},
                {"sent", sent},
                {"received", rtts.size()},
                {"loss_percent", loss},
                {"time_ms", round_us(elapsed)},
                {"rtt_ms", {{"min", round_us(mn)}, {"avg", round_us(avg)}, {"max", round_us(mx)}, {"mdev", round_us(mdev)}}},
                {"probes", probes}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\n--- %s cskit ping statistics ---\n", conn.peer().c_str());
      std::printf("%ld probe%s sent, %zu received, %.0f%% lost, time %.0f ms\n", sent, sent == 1 ? "" : "s",
                  rtts.size(), loss, elapsed);
      if (!rtts.empty()) std::printf("rtt min/avg/max/mdev = %.3f/%.3f/%.3f/%.3f ms\n", mn, avg, mx, mdev);
    }
    conn.close();
    return result;
  } catch (const client::client_error& e) {
    return report(e, o.common.json);
  }
}

int run_info(const client_common& o) {
  try {
    auto conn = open(o);
    proto::frame r = conn.request({{"type", proto::type::info}});
    json& h = r.header;
    h.erase("type");
    h.erase("id");
    h["address"] = conn.peer();
    const auto& g = conn.greeting();
    // The server reports its side of the transport; this is ours.
    h["client_transport"] = {{"protocol", g.transport},
                             {"server_key", g.fingerprint},
                             {"server_key_trusted_by", g.verified_by},
                             {"kernel_tls_send", g.kernel_tls_send}};
    if (o.json) {
      std::printf("%s\n", h.dump().c_str());
    } else {
      auto list = [](const json& a) {
        std::string s;
        for (const auto& x : a) s += (s.empty() ? "" : ", ") + x.get<std::string>();
        return s.empty() ? std::string("(none)") : s;
      };
      std::printf("server:      %s %s (protocol %d)\n", h.value("server", "").c_str(), h.value("version", "").c_str(),
                  h.value("proto", 0));
      std::printf("name:        %s\n", h.value("name", "").c_str());
      std::printf("address:     %s\n", conn.peer().c_str());
      std::printf("user:        %s\n", h.value("user", "").c_str());
      std::printf("permissions: %s\n", list(h.value("permissions", json::array())).c_str());
      std::printf("services:    %s\n", list(h.value("services", json::array())).c_str());
      std::printf("transport:   %s\n", g.transport.c_str());
      if (!g.fingerprint.empty()) {
        std::printf("server key:  %s (trusted: %s)\n", g.fingerprint.c_str(), g.verified_by.c_str());
        const json t = h.value("transport", json::object());
        std::printf("kernel TLS:  %s\n", t.value("kernel_tls_send", false) || g.kernel_tls_send
                                              ? "in use"
                                              : (t.value("kernel_offers_tls", false) ? "offered, not in use"
                                                                                      : "no (the kernel does not offer it)"));
      }
    }
    conn.close();
    return exit_code::ok;
  } catch (const client::client_error& e) {
    return report(e, o.json);
  }
}

// ------------------------------------------------------------ the command line

namespace {

struct ping_state {
  ping_options ping;
  bool udp = false;
};

int run_udp_ping_command(const ping_state& s, const CLI::App& cmd) {
  udp_ping_options u;
  u.host = s.ping.common.host;
  u.count = s.ping.count;
  u.interval = s.ping.interval;
  if (cmd.count("--size")) u.size = s.ping.size;
  if (cmd.count("--timeout")) u.timeout = s.ping.common.timeout;
  u.quiet = s.ping.quiet;
  u.json = s.ping.common.json;
  if (u.size > 65507) {
    std::fprintf(stderr, "cskit ping --udp: -s must be at most 65507 (the largest UDP payload over IPv4)\n");
    return exit_code::usage;
  }
  return run_udp_ping(u);
}

command_runner build_ping(CLI::App& cmd, const command_args&) {
  auto s = std::make_shared<ping_state>();
  auto& p = s->ping;
  add_client_options(cmd, p.common);
  cmd.add_option("--count,-c", p.count, "Probes to send (default: until Ctrl-C)")->check(CLI::Range(0L, 100000000L));
  cmd.add_option("--interval,-i", p.interval, "Seconds between probes (default 1)")->check(CLI::Range(0.0, 3600.0));
  cmd.add_option("--size,-s", p.size, "Payload bytes per probe (default 0)")
      ->check(CLI::Range(std::size_t{0}, static_cast<std::size_t>(proto::max_body_size)));
  cmd.add_flag("--quiet,-q", p.quiet, "Only print the summary");
  cmd.add_flag("--udp", s->udp,
               "Probe an RFC 862 UDP echo server instead (any, not only cskit's; default port 7, no login, no "
               "encryption; -s is the datagram size, default 56, -W the loss timeout, default 1 s)");
  return [s, &cmd] { return s->udp ? run_udp_ping_command(*s, cmd) : run_ping(s->ping); };
}

const command_registration ping_registration{{
    .name = "ping",
    .summary = "Authenticate, then measure round trips with ping frames (--udp: RFC 862 echo)",
    .usage = "[-c COUNT] [-i SECONDS] [-s BYTES] [--udp] HOST[:PORT]",
    .order = 20,
    .build = build_ping,
}};

command_runner build_info(CLI::App& cmd, const command_args&) {
  auto o = std::make_shared<client_common>();
  add_client_options(cmd, *o);
  return [o] { return run_info(*o); };
}

const command_registration info_registration{{
    .name = "info",
    .summary = "Show the server's name, version, services, key and your permissions",
    .usage = "[--json] HOST[:PORT]",
    .order = 50,
    .build = build_info,
}};

}  // namespace

}  // namespace cskit::app
