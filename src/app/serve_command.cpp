// `cskit serve`: the command line and the config file into a server_config,
// then the server.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <spdlog/spdlog.h>

#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "server/server.hpp"

namespace cskit::app {

namespace {

struct serve_state {
  serve_options o;
  std::string root, state_dir, tls_cert, tls_key;
  std::chrono::seconds::rep idle = 300, handshake = 10, frame = 30, grace = 5;
};

// Flags given on the command line override the file.
void apply_flags(server::server_config& cfg, const server::server_config& f, const CLI::App& cmd) {
  if (cmd.count("--listen")) cfg.listen = f.listen;
  if (cmd.count("--root")) cfg.root = f.root;
  if (cmd.count("--state-dir")) cfg.state_dir = f.state_dir;
  if (cmd.count("--name")) cfg.name = f.name;
  if (cmd.count("--threads")) cfg.threads = f.threads;
  if (cmd.count("--max-connections")) cfg.max_connections = f.max_connections;
  if (cmd.count("--idle-timeout")) cfg.idle_timeout = f.idle_timeout;
  if (cmd.count("--handshake-timeout")) cfg.handshake_timeout = f.handshake_timeout;
  if (cmd.count("--frame-timeout")) cfg.frame_timeout = f.frame_timeout;
  if (cmd.count("--grace")) cfg.grace = f.grace;
  if (cmd.count("--log-level")) cfg.log_level = f.log_level;
  if (cmd.count("--echo-listen")) cfg.echo.listen = f.echo.listen;
  if (cmd.count("--ntp-listen")) cfg.time.listen = f.time.listen;
  if (cmd.count("--irc-listen")) cfg.irc.listen = f.irc.listen;
  if (cmd.count("--plaintext")) cfg.tls.plaintext = true;
  if (cmd.count("--tls-cert")) {
    cfg.tls.cert = f.tls.cert;
    cfg.tls.key = f.tls.key;
  }
}

// The configuration as given: the file, then the flags over it; read at
// the start and again at each reload (SIGHUP). Throws config_error.
server::server_config read_config(const serve_state& s, const CLI::App& cmd) {
  server::server_config cfg;
  if (!s.o.config_file.empty()) cfg = server::load_config_file(s.o.config_file);
  apply_flags(cfg, s.o.config, cmd);
  return cfg;
}

int run_serve(serve_state& s, const CLI::App& cmd) {
  auto& f = s.o.config;
  f.idle_timeout = std::chrono::seconds(s.idle);
  f.handshake_timeout = std::chrono::seconds(s.handshake);
  f.frame_timeout = std::chrono::seconds(s.frame);
  f.grace = std::chrono::seconds(s.grace);
  f.root = s.root;
  f.state_dir = s.state_dir;
  f.tls.cert = s.tls_cert;
  f.tls.key = s.tls_key;
  if (s.tls_cert.empty() != s.tls_key.empty()) {
    std::fprintf(stderr, "cskit serve: --tls-cert and --tls-key go together\n");
    return exit_code::usage;
  }
  server::server_config cfg;
  try {
    cfg = read_config(s, cmd);
  } catch (const server::config_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  }
  auto level = spdlog::level::from_str(cfg.log_level);
  if (level == spdlog::level::off && cfg.log_level != "off") {
    std::fprintf(stderr, "cskit serve: unknown log level '%s' (trace, debug, info, warn, error, critical, off)\n",
                 cfg.log_level.c_str());
    return exit_code::usage;
  }
  spdlog::set_level(level);
  try {
    if (s.o.print_fingerprint) {
      std::printf("%s\n", server::server_fingerprint(std::move(cfg)).c_str());
      return exit_code::ok;
    }
    server::serve_hooks hooks;
    hooks.reload = [&s, &cmd] { return read_config(s, cmd); };
    server::run_server(std::move(cfg), hooks);
  } catch (const server::config_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  }
  return exit_code::ok;
}

command_runner build_serve(CLI::App& cmd, const command_args&) {
  auto s = std::make_shared<serve_state>();
  auto& c = s->o.config;
  cmd.add_option("--listen,-l", c.listen, "ADDR:PORT to listen on (port 0: any free port)");
  cmd.add_option("--root,-r", s->root, "Directory to share (default: <state dir>/share)");
  cmd.add_option("--config,-c", s->o.config_file, "TOML config file (users, limits); flags override it")
      ->check(CLI::ExistingFile);
  cmd.add_option("--state-dir", s->state_dir,
                 "Where the generated admin token and TLS key live (default ~/.local/state/cskit)");
  cmd.add_option("--name", c.name, "Server name shown to clients (default: host name)");
  cmd.add_option("--threads,-t", c.threads, "Event-loop threads (0 or default: one per core)")->check(CLI::Range(0, 1024));
  cmd.add_option("--max-connections", c.max_connections, "Connections served at once")->check(CLI::Range(1, 1000000));
  cmd.add_option("--idle-timeout", s->idle, "Seconds without a frame before a session is closed")
      ->check(CLI::Range(1, 604800));
  cmd.add_option("--handshake-timeout", s->handshake, "Seconds a client has for the TLS handshake and the login")
      ->check(CLI::Range(1, 3600));
  cmd.add_option("--frame-timeout", s->frame, "Seconds to finish a frame once it has started")->check(CLI::Range(1, 3600));
  cmd.add_option("--grace", s->grace, "Seconds sessions get to finish on SIGINT/SIGTERM")->check(CLI::Range(0, 3600));
  cmd.add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical, off");
  cmd.add_option("--echo-listen", c.echo.listen, "Also answer RFC 862 echo on UDP and TCP at ADDR[:PORT] (default port 7)");
  cmd.add_option("--ntp-listen", c.time.listen, "Also serve time (SNTPv4) on UDP at ADDR[:PORT] (default port 123)");
  cmd.add_option("--irc-listen", c.irc.listen,
                 "Also accept IRC clients (irssi, WeeChat, bots) into chat at ADDR[:PORT] (default port 6697, TLS)");
  cmd.add_option("--tls-cert", s->tls_cert, "Certificate chain (PEM), e.g. from a CA (default: a key and "
                                          "self-signed certificate generated in the state directory)");
  cmd.add_option("--tls-key", s->tls_key, "Private key (PEM, no passphrase) for --tls-cert");
  cmd.add_flag("--plaintext", c.tls.plaintext,
               "No TLS: cleartext sessions (benchmarks on loopback); clients must say --plaintext too");
  cmd.add_flag("--print-fingerprint", s->o.print_fingerprint,
               "Print the fingerprint of the server's key (creating the key if there is none yet) and exit");
  cmd.footer(R"(Remote execution (cskit exec) is off: turn it on with [exec] enabled = true in the config
file, and give the users who may run commands the permission: cskit user set NAME --perm +exec
(or permissions = [..., "exec"] in their [[users]] entry). README, "cskit exec", has the whole
[exec] section. SIGHUP (systemctl reload cskit) re-reads the config and the users file.)");
  return [s, &cmd] { return run_serve(*s, cmd); };
}

const command_registration serve_registration{{
    .name = "serve",
    .summary = "Run the server (binds 127.0.0.1:7701 unless told otherwise)",
    .usage = "[--listen ADDR:PORT] [--root DIR] [--config FILE] [options]",
    .order = 10,
    .build = build_serve,
}};

}  // namespace

}  // namespace cskit::app
