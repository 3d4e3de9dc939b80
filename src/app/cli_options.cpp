#include "app/cli_options.hpp"

namespace cskit::app {

const char* const exit_codes_text = R"(Exit codes:
  0  success
  1  local failure (cannot listen, bad configuration, ...)
  2  usage error
  3  cannot connect, or the connection was lost (UDP: port unreachable)
  4  authentication failed (wrong user/token, or the server failed to prove itself)
  5  permission denied (sync: no CAP_SYS_TIME to set the clock)
  6  protocol error or version mismatch (time: no trustworthy reply)
  7  the server reported an error (time: Kiss-o'-Death)
  8  timed out (ping: at least one probe got no reply)
  9  disk full             10  quota exceeded        11  content digest mismatch
 12  source changed        13  not found             14  already exists
 15  the server's key changed (it differs from the pinned or known one)
 16  the server's key is unknown and was not accepted, or its certificate is not trusted
 17  the directory is not empty (rm without -r)
exec returns the remote command's status instead (see cskit help exec).
)";

const char* const remote_paths_text =
    R"(Remote paths are HOST:PATH or HOST:PORT:PATH ([V6ADDR]:PORT:PATH), relative to the
server's share; HOST: alone is the share's root; -P PORT gives the port of every HOST without
one; HOST may be a [hosts.NAME] alias of the client config. HOST:DIGITS is refused as
ambiguous: write HOST:PORT: for a port, HOST:./DIGITS for a file. A local name with a colon
is written ./NAME. Exit codes beyond the common ones (cskit help):
9 disk full, 10 quota exceeded, 11 content digest mismatch (nothing committed),
12 the source changed or vanished, 13 not found, 14 already exists.)";

void add_port_option(CLI::App& cmd, files_options& o) {
  cmd.add_option("-P,--port", o.port, "Port of every HOST that names none (default 7701)")->check(CLI::Range(1, 65535));
}

void add_trust_options(CLI::App& cmd, client_common& c) {
  cmd.add_option("--fingerprint", c.fingerprint,
                 "Trust only a server whose key has this fingerprint (SHA256:..., from `cskit serve "
                 "--print-fingerprint`)");
  cmd.add_flag("--accept-new", c.accept_new,
               "Trust a server key seen for the first time and remember it (ssh's StrictHostKeyChecking=accept-new)");
  cmd.add_option("--ca-file", c.ca_file, "CA certificates (PEM) for a server with a CA-issued certificate");
  cmd.add_flag("--plaintext", c.plaintext,
               "No TLS: only to a server run with --plaintext, only on a loopback address (benchmarks)");
}

void add_login_options(CLI::App& cmd, client_common& c) {
  cmd.add_option("--user,-u", c.user, "User name (default: CSKIT_USER, client config, or admin)");
  cmd.add_option("--token", c.token, "Token (default: CSKIT_TOKEN, then the client config)");
  cmd.add_option("--client-config", c.client_config, "Client config file (default ~/.config/cskit/client.toml)");
  cmd.add_option("--connect-timeout", c.connect_timeout, "Seconds to wait for the connection")
      ->check(CLI::Range(0.1, 3600.0));
  cmd.add_option("--timeout,-W", c.timeout, "Seconds to wait for each reply")->check(CLI::Range(0.1, 3600.0));
  cmd.add_flag("--json", c.json, "Print one JSON object instead of text");
  add_trust_options(cmd, c);
}

void add_client_options(CLI::App& cmd, client_common& c) {
  cmd.add_option("HOST", c.host, "Server as HOST[:PORT] (IPv6 as [ADDR]:PORT); default port 7701")->required();
  add_login_options(cmd, c);
}

}  // namespace cskit::app
