// cskit: one binary, server and client. This file only wires the command
// line to the commands; the work happens in the libraries.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "app/commands.hpp"
#include "net/endpoint.hpp"
#include "proto/limits.hpp"
#include "server/server.hpp"
#include "version.hpp"

namespace cskit::app {

namespace {

constexpr const char* exit_codes_text = R"(Exit codes:
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
)";

constexpr const char* remote_help = R"(Remote paths are HOST:PATH or HOST:PORT:PATH ([V6ADDR]:PORT:PATH), relative to the
server's share; HOST: alone is the share's root; -P PORT gives the port of every HOST without
one; HOST may be a [hosts.NAME] alias of the client config. HOST:DIGITS is refused as
ambiguous: write HOST:PORT: for a port, HOST:./DIGITS for a file. A local name with a colon
is written ./NAME. Exit codes beyond the common ones:
9 disk full, 10 quota exceeded, 11 content digest mismatch (nothing committed),
12 the source changed or vanished, 13 not found, 14 already exists.)";

// -P PORT, as scp has it, for the file commands (their HOST:PATH arguments
// may also name the port).
void add_port_option(CLI::App& cmd, files_options& o) {
  cmd.add_option("-P,--port", o.port, "Port of every HOST that names none (default 7701)")->check(CLI::Range(1, 65535));
}

// How a client decides to trust the server (TLS): shared by every client command.
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
  cmd.add_option("host", c.host, "Server as HOST[:PORT] (IPv6 as [ADDR]:PORT); default port 7701")->required();
  add_login_options(cmd, c);
}

// Every command's options. Only the chosen command is built: constructing
// every command (each a CLI::App with its own help flag) and every
// command's options cost about half of a client's start-up instructions,
// and `cskit exec -- true` is timed from a fresh process. `cskit help`,
// `cskit --help`, an unknown or a missing command build them all (help and
// error messages list them). A command not built stays null.
struct command_line {
  CLI::App app{"cskit: file transfer, remote execution, chat, UDP echo/ping and time over one protocol", "cskit"};
  bool build_all = false;
  std::string_view chosen;

  serve_options serve;
  std::chrono::seconds::rep idle = 300, handshake = 10, frame = 30, grace = 5;
  std::string root, state_dir, tls_cert, tls_key;
  CLI::App* serve_cmd = nullptr;

  ping_options ping;
  bool ping_udp = false;
  CLI::App* ping_cmd = nullptr;

  time_options time_opts;
  CLI::App* time_cmd = nullptr;
  sync_options sync_opts;
  CLI::App* sync_cmd = nullptr;

  client_common info;
  CLI::App* info_cmd = nullptr;

  exec_options exec;
  std::vector<std::string> exec_words;
  std::vector<std::string> exec_tail;  // everything after the first --
  CLI::App* exec_cmd = nullptr;

  chat_options chat;
  CLI::App* chat_cmd = nullptr;

  files_options put_o, get_o, ls_o, stat_o, mkdir_o, rm_o, mv_o;
  CLI::App *put_cmd = nullptr, *get_cmd = nullptr, *ls_cmd = nullptr, *stat_cmd = nullptr, *mkdir_cmd = nullptr,
           *rm_cmd = nullptr, *mv_cmd = nullptr;

  std::vector<std::string> help_topic;
  CLI::App* help_cmd = nullptr;

  /// The command `name`, or nullptr when it is not built.
  CLI::App* command(const char* name, const char* description) {
    return build_all || chosen == name ? app.add_subcommand(name, description) : nullptr;
  }
};

bool chose(const CLI::App* cmd) { return cmd != nullptr && cmd->parsed(); }

void build_serve(command_line& cl) {
  auto* cmd = cl.serve_cmd = cl.command("serve", "Run the server (binds 127.0.0.1:7701 unless told otherwise)");
  if (!cmd) return;
  auto& c = cl.serve.config;
  cmd->add_option("--listen,-l", c.listen, "ADDR:PORT to listen on (port 0: any free port)");
  cmd->add_option("--root,-r", cl.root, "Directory to share (default: <state dir>/share)");
  cmd->add_option("--config,-c", cl.serve.config_file, "TOML config file (users, limits); flags override it")
      ->check(CLI::ExistingFile);
  cmd->add_option("--state-dir", cl.state_dir,
                  "Where the generated admin token and TLS key live (default ~/.local/state/cskit)");
  cmd->add_option("--name", c.name, "Server name shown to clients (default: host name)");
  cmd->add_option("--threads,-t", c.threads, "Event-loop threads (0 or default: one per core)")->check(CLI::Range(0, 1024));
  cmd->add_option("--max-connections", c.max_connections, "Connections served at once")->check(CLI::Range(1, 1000000));
  cmd->add_option("--idle-timeout", cl.idle, "Seconds without a frame before a session is closed")
      ->check(CLI::Range(1, 604800));
  cmd->add_option("--handshake-timeout", cl.handshake, "Seconds a client has for the TLS handshake and the login")
      ->check(CLI::Range(1, 3600));
  cmd->add_option("--frame-timeout", cl.frame, "Seconds to finish a frame once it has started")->check(CLI::Range(1, 3600));
  cmd->add_option("--grace", cl.grace, "Seconds sessions get to finish on SIGINT/SIGTERM")->check(CLI::Range(0, 3600));
  cmd->add_option("--log-level", c.log_level, "trace, debug, info, warn, error, critical, off");
  cmd->add_option("--echo-listen", c.echo.listen, "Also answer RFC 862 echo on UDP and TCP at ADDR[:PORT] (default port 7)");
  cmd->add_option("--ntp-listen", c.time.listen, "Also serve time (SNTPv4) on UDP at ADDR[:PORT] (default port 123)");
  cmd->add_option("--irc-listen", c.irc.listen,
                  "Also accept IRC clients (irssi, WeeChat, bots) into chat at ADDR[:PORT] (default port 6697, TLS)");
  cmd->add_option("--tls-cert", cl.tls_cert, "Certificate chain (PEM), e.g. from a CA (default: a key and "
                                             "self-signed certificate generated in the state directory)");
  cmd->add_option("--tls-key", cl.tls_key, "Private key (PEM, no passphrase) for --tls-cert");
  cmd->add_flag("--plaintext", c.tls.plaintext,
                "No TLS: cleartext sessions (benchmarks on loopback); clients must say --plaintext too");
  cmd->add_flag("--print-fingerprint", cl.serve.print_fingerprint,
                "Print the fingerprint of the server's key (creating the key if there is none yet) and exit");
}

void build_ping(command_line& cl) {
  auto* cmd = cl.ping_cmd = cl.command("ping", "Authenticate, then measure round trips with ping frames");
  if (!cmd) return;
  auto& p = cl.ping;
  add_client_options(*cmd, p.common);
  cmd->add_option("--count,-c", p.count, "Probes to send (default: until Ctrl-C)")->check(CLI::Range(0L, 100000000L));
  cmd->add_option("--interval,-i", p.interval, "Seconds between probes (default 1)")->check(CLI::Range(0.0, 3600.0));
  cmd->add_option("--size,-s", p.size, "Payload bytes per probe (default 0)")
      ->check(CLI::Range(std::size_t{0}, static_cast<std::size_t>(proto::max_body_size)));
  cmd->add_flag("--quiet,-q", p.quiet, "Only print the summary");
  cmd->add_flag("--udp", cl.ping_udp,
                "Probe an RFC 862 UDP echo server instead (any, not only cskit's; default port 7, no login, no "
                "encryption; -s is the datagram size, default 56, -W the loss timeout, default 1 s)");
}

void add_time_options(CLI::App& cmd, time_options& t) {
  cmd.add_option("hosts", t.hosts,
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

void build_time(command_line& cl) {
  cl.time_cmd = cl.command("time", "Ask an NTP server (cskit's or any other) for the time and the offset");
  if (cl.time_cmd) add_time_options(*cl.time_cmd, cl.time_opts);
  auto* cmd = cl.sync_cmd =
      cl.command("sync", "Measure like 'time', then slew the clock (offset under 0.5 s) or step it (needs CAP_SYS_TIME)");
  if (!cmd) return;
  add_time_options(*cmd, cl.sync_opts.query);
  cmd->add_option("--max-offset", cl.sync_opts.max_offset,
                  "Refuse to change the clock by more than SECONDS (the panic threshold, default 1000; 0: no limit)")
      ->check(CLI::Range(0.0, 1e12));
  cmd->add_flag("--dry-run", cl.sync_opts.dry_run, "Only report what would be done");
  auto* step_flag = cmd->add_flag("--step", cl.sync_opts.force_step, "Step the clock whatever the offset");
  cmd->add_flag("--slew", cl.sync_opts.force_slew, "Slew the clock whatever the offset")->excludes(step_flag);
}

void build_exec(command_line& cl) {
  auto* cmd = cl.exec_cmd =
      cl.command("exec", "Run a command on one or more servers: cskit exec HOST[,HOST...] [options] -- CMD [ARG...]");
  if (!cmd) return;
  auto& e = cl.exec;
  cmd->add_option("host", cl.exec_words, "HOST[,HOST...] (none with --hosts); the command follows --");
  cmd->add_flag("-t,--tty", e.tty, "Run the command on a terminal (interactive programs; one host only)");
  cmd->add_flag("-n,--no-stdin", e.no_stdin, "Give the command /dev/null as stdin");
  cmd->add_option("--timeout", e.timeout, "Kill the command (its whole process group) after SECONDS")
      ->check(CLI::Range(0.001, 1e9));
  cmd->add_option("--cwd", e.cwd, "Working directory on the server");
  cmd->add_option("--env", e.env, "KEY=VALUE for the command (the server decides which keys are allowed)");
  cmd->add_option("--shell", e.shell, "A command line for the server's shell (only where its policy allows)");
  cmd->add_option("--hosts", e.hosts_file, "File with one HOST[:PORT] per line (fan-out)");
  cmd->add_option("-f,--fanout", e.fanout, "Hosts run at once in fan-out (default 32)")->check(CLI::Range(1, 4096));
  cmd->add_option("--user,-u", e.common.user, "User name (default: CSKIT_USER, client config, or admin)");
  cmd->add_option("--token", e.common.token, "Token (default: CSKIT_TOKEN, then the client config)");
  cmd->add_option("--client-config", e.common.client_config, "Client config file");
  cmd->add_option("--connect-timeout", e.common.connect_timeout, "Seconds to wait for the connection")
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_flag("--json", e.common.json, "After the output, print the exit status as one JSON line");
  add_trust_options(*cmd, e.common);
  cmd->footer(R"(Exit status: the remote command's exit code, 128+N when it was killed by signal N,
  255 when cskit itself failed (cannot connect, not allowed, ...). Fan-out: the largest of them.
  Without -t, Ctrl-C sends SIGINT to the remote process group; a second Ctrl-C kills it.)");
}

void build_chat(command_line& cl) {
  auto* cmd = cl.chat_cmd = cl.command("chat", "Chat in rooms: cskit chat HOST [--nick NAME] [--room ROOM]");
  if (!cmd) return;
  add_client_options(*cmd, cl.chat.common);
  cmd->add_option("--nick,-N", cl.chat.nick,
                  "Nickname (default: your account's name, or the server's suggestion if another session has it)");
  cmd->add_option("--room", cl.chat.room, "Room to join first (default: the server's default room)");
  cmd->footer(R"(On a terminal: type to talk, /help for commands; messages appear above your line, the prompt
  shows where a line goes, Ctrl-C keeps a typed line (a second one quits).
  Otherwise (a pipe): each input line is sent, paced to the server's rate limit, each event printed as
  one line (--json: JSON lines); exit status 7 if the server refused a line.
  Commands: /join (/j) ROOM, /part [ROOM], /msg NICK|#ROOM text, /query (/q) [NICK], /me action,
  /names (/who) [ROOM], /list (/rooms), /whois NICK, /away [message], /topic [text], /nick NAME,
  /quit [reason], /help. IRC clients can join the same rooms: see `cskit serve --irc-listen`.)");
}

void build_transfers(command_line& cl) {
  cl.put_cmd = cl.command("put", "Upload files: cskit put [-r] [-p] [-a] LOCAL... HOST:[REMOTE] ('-' is stdin)");
  cl.get_cmd = cl.command("get", "Download files: cskit get [-r] [-p] [-a] HOST:REMOTE... [LOCAL] ('-' is stdout)");
  for (auto [cmd, o] : {std::pair{cl.put_cmd, &cl.put_o}, std::pair{cl.get_cmd, &cl.get_o}}) {
    if (cmd == nullptr) continue;
    cmd->add_option("paths", o->args, "Sources, then the destination")->required();
    cmd->add_flag("-r,--recursive", o->recursive, "Copy directories and everything in them");
    cmd->add_flag("-p,--preserve", o->preserve,
                 "Keep modification times, and impose the permission bits on replaced files too (without -p a new "
                 "file gets the source's bits less the umask, a replaced one keeps its own)");
    cmd->add_flag("-q,--quiet", o->quiet, "No progress line");
    cmd->add_flag("-n,--no-clobber", o->no_clobber, "Never replace an existing file");
    cmd->add_flag("-a,--archive", o->archive,
                  "Like rsync -a: -r and -p, and a file whose destination has the same size and modification time "
                  "is not sent again (a re-run sends only what changed)");
    cmd->add_flag("-c,--checksum", o->checksum,
                  "Skip a file whose destination has the same size and XXH3-128 digest, whatever its time (the "
                  "server reads its copies to compare; with -p, times and bits are brought in line)");
    cmd->add_flag("--dry-run", o->dry_run, "Say what would be sent, made and deleted, and change nothing");
    cmd->add_option_function<std::string>(
           "--bwlimit",
           [o](const std::string& text) {
             const auto rate = parse_rate(text);
             if (!rate) throw CLI::ValidationError("--bwlimit", "'" + text + "' is not a rate (KiB/s, or 500K, 10M, 1G; at least 1KB)");
             o->common.rate_limit = *rate;
           },
           "Average bytes per second, both ways, as rsync's --bwlimit: KiB/s, or with K, M or G")
        ->type_name("RATE");
    cmd->add_flag("--delete", o->delete_extraneous,
                  "Remove from the destination tree what the source no longer has (not what --exclude leaves out); "
                  "only after a transfer without errors");
    for (const bool include : {false, true}) {
      cmd->add_option_function<std::string>(
             include ? "--include" : "--exclude",
             [o, include](const std::string& pattern) { o->filter_rules.push_back({include, pattern}); },
             include ? "Take what matches PATTERN even if a later --exclude matches it (rules apply in order)"
                     : "Leave out what matches PATTERN: rsync's rules (*.o, cache/, /top-only, a/**/b)")
          ->type_name("PATTERN")
          ->trigger_on_parse()
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    }
    cmd->add_option("--verify", o->verify, "Also check a SHA-256 digest (XXH3-128 is always checked)")
        ->check(CLI::IsMember({"sha256", "xxh3"}));
    add_port_option(*cmd, *o);
    add_login_options(*cmd, o->common);
    cmd->footer(std::string(R"(Tree copies choose with --exclude/--include (rules tried in order, the first that matches
decides; a directory left out is not entered) and skip unchanged files with -a. With -a or -c,
a changed file the receiving side has an older copy of travels as its differences only.
Every file is digested (XXH3-128) by the sender while it is read and by the receiver while
it is written, written to a temporary file beside the target (a resumable part file; an unnamed
one for files up to 256 KiB), flushed, and moved into place only when the digests match. Run
the same command again after an interruption: it resumes where it stopped (a tree copied under
a new name continues in it). Without -p a new file gets the source's permission bits less the
umask, and a replaced one keeps its own.
)") + remote_help);
  }
  if (cl.put_cmd) {
    cl.put_cmd->add_flag("--whole-file", cl.put_o.whole_file,
                         "With -a or -c, send a changed file whole instead of only what differs from the server's "
                         "copy (rsync's --whole-file; -W is --timeout here)");
  }
  if (cl.get_cmd) {
    cl.get_cmd->add_flag("--whole-file", cl.get_o.whole_file,
                         "With -a or -c, fetch a changed file whole instead of only what differs from the local "
                         "copy (rsync's --whole-file; -W is --timeout here)");
    cl.get_cmd->add_flag("--no-fsync", cl.get_o.no_fsync,
                         "Do not flush downloaded files to disk before renaming them into place (faster, like scp; "
                         "a power failure can then leave an incomplete file)");
  }
}

void build_remote_fs(command_line& cl) {
  if ((cl.ls_cmd = cl.command("ls", "List a remote directory: cskit ls [-l] [-a] [-R] HOST:[PATH]"))) {
    cl.ls_cmd->add_option("path", cl.ls_o.args, "HOST:[PATH]")->required();
    cl.ls_cmd->add_flag("-l", cl.ls_o.long_format, "Long format: type, permissions, size, time");
    cl.ls_cmd->add_flag("-a,--all", cl.ls_o.all, "Also names that start with '.' (left out otherwise, as ls does)");
    cl.ls_cmd->add_flag("-R,--recursive", cl.ls_o.recursive, "List everything below, as relative paths");
  }
  if ((cl.stat_cmd = cl.command("stat", "Show a remote file's type, size, permissions and time"))) {
    cl.stat_cmd->add_option("path", cl.stat_o.args, "HOST:PATH")->required();
  }
  if ((cl.mkdir_cmd = cl.command("mkdir", "Create remote directories: cskit mkdir [-p] HOST:PATH..."))) {
    cl.mkdir_cmd->add_option("paths", cl.mkdir_o.args, "HOST:PATH..., all on one server")->required();
    cl.mkdir_cmd->add_flag("-p,--parents", cl.mkdir_o.parents, "Create missing parents; no error if it exists");
  }
  if ((cl.rm_cmd = cl.command("rm", "Remove remote files or directories: cskit rm [-r] HOST:PATH..."))) {
    cl.rm_cmd->add_option("paths", cl.rm_o.args, "HOST:PATH..., all on one server")->required();
    cl.rm_cmd->add_flag("-r,--recursive", cl.rm_o.recursive, "Remove a directory and everything in it");
  }
  if ((cl.mv_cmd = cl.command("mv", "Move or rename on the server: cskit mv HOST:FROM TO"))) {
    cl.mv_cmd->add_option("paths", cl.mv_o.args, "HOST:FROM and TO (a path on the same server)")->required();
    cl.mv_cmd->add_flag("-n,--no-clobber", cl.mv_o.no_clobber, "Never replace an existing file");
  }
  for (auto [cmd, o] : {std::pair{cl.ls_cmd, &cl.ls_o}, std::pair{cl.stat_cmd, &cl.stat_o},
                        std::pair{cl.mkdir_cmd, &cl.mkdir_o}, std::pair{cl.rm_cmd, &cl.rm_o},
                        std::pair{cl.mv_cmd, &cl.mv_o}}) {
    if (cmd == nullptr) continue;
    add_port_option(*cmd, *o);
    add_login_options(*cmd, o->common);
    cmd->footer(remote_help);
  }
}

void build_commands(command_line& cl) {
  build_serve(cl);
  build_ping(cl);
  build_time(cl);
  if ((cl.info_cmd = cl.command("info", "Show the server's name, version, services, key and your permissions"))) {
    add_client_options(*cl.info_cmd, cl.info);
  }
  build_exec(cl);
  build_chat(cl);
  build_transfers(cl);
  build_remote_fs(cl);
  if ((cl.help_cmd = cl.command("help", "Show help for cskit or for one command"))) {
    cl.help_cmd->add_option("command", cl.help_topic, "Command to describe");
  }
}

int run_serve_impl(serve_options o, CLI::App& cmd) {
  server::server_config cfg;
  try {
    if (!o.config_file.empty()) cfg = server::load_config_file(o.config_file);
  } catch (const server::config_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  }
  // Flags given on the command line override the file.
  const auto& f = o.config;
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
  if (cmd.count("--tls-cert") || cmd.count("--tls-key")) {
    if (f.tls.cert.empty() || f.tls.key.empty()) {
      std::fprintf(stderr, "cskit serve: --tls-cert and --tls-key go together\n");
      return exit_code::usage;
    }
    cfg.tls.cert = f.tls.cert;
    cfg.tls.key = f.tls.key;
  }

  auto level = spdlog::level::from_str(cfg.log_level);
  if (level == spdlog::level::off && cfg.log_level != "off") {
    std::fprintf(stderr, "cskit serve: unknown log level '%s' (trace, debug, info, warn, error, critical, off)\n",
                 cfg.log_level.c_str());
    return exit_code::usage;
  }
  spdlog::set_level(level);
  try {
    if (o.print_fingerprint) {
      std::printf("%s\n", server::server_fingerprint(std::move(cfg)).c_str());
      return exit_code::ok;
    }
    server::run_server(std::move(cfg));
  } catch (const server::config_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "cskit serve: %s\n", e.what());
    return exit_code::failure;
  }
  return exit_code::ok;
}

int run_help(command_line& cl, const std::string& main_help) {
  if (cl.help_topic.empty()) {
    std::printf("%s", main_help.c_str());
    return exit_code::ok;
  }
  try {
    std::printf("%s", cl.app.get_subcommand(cl.help_topic.front())->help().c_str());
    return exit_code::ok;
  } catch (const CLI::OptionNotFound&) {
    std::fprintf(stderr, "cskit: no command '%s'; try 'cskit help'\n", cl.help_topic.front().c_str());
    return exit_code::usage;
  }
}

int run_serve_command(command_line& cl) {
  auto& c = cl.serve.config;
  c.idle_timeout = std::chrono::seconds(cl.idle);
  c.handshake_timeout = std::chrono::seconds(cl.handshake);
  c.frame_timeout = std::chrono::seconds(cl.frame);
  c.grace = std::chrono::seconds(cl.grace);
  c.root = cl.root;
  c.state_dir = cl.state_dir;
  c.tls.cert = cl.tls_cert;
  c.tls.key = cl.tls_key;
  return run_serve_impl(std::move(cl.serve), *cl.serve_cmd);
}

int run_udp_ping_command(command_line& cl) {
  udp_ping_options u;
  u.host = cl.ping.common.host;
  u.count = cl.ping.count;
  u.interval = cl.ping.interval;
  if (cl.ping_cmd->count("--size")) u.size = cl.ping.size;
  if (cl.ping_cmd->count("--timeout")) u.timeout = cl.ping.common.timeout;
  u.quiet = cl.ping.quiet;
  u.json = cl.ping.common.json;
  if (u.size > 65507) {
    std::fprintf(stderr, "cskit ping --udp: -s must be at most 65507 (the largest UDP payload over IPv4)\n");
    return exit_code::usage;
  }
  return run_udp_ping(u);
}

int run_exec_command(command_line& cl) {
  // Positionals: HOST, then the command (everything after --). With
  // --hosts FILE there is no HOST word.
  auto& e = cl.exec;
  if (e.hosts_file.empty() == cl.exec_words.empty() || cl.exec_words.size() > 1) {
    std::fprintf(stderr, "cskit exec: give one HOST[,HOST...] or --hosts FILE, then -- and the command\n");
    return exit_code::usage;
  }
  if (!cl.exec_words.empty()) e.common.host = cl.exec_words.front();
  e.command = cl.exec_tail;
  e.common.timeout = 30;
  return run_exec(e);
}

int dispatch(command_line& cl, const std::string& main_help) {
  if (chose(cl.help_cmd)) return run_help(cl, main_help);
  if (chose(cl.serve_cmd)) return run_serve_command(cl);
  if (chose(cl.ping_cmd)) return cl.ping_udp ? run_udp_ping_command(cl) : run_ping(cl.ping);
  if (chose(cl.time_cmd)) return run_time(cl.time_opts);
  if (chose(cl.sync_cmd)) return run_sync(cl.sync_opts);
  if (chose(cl.chat_cmd)) return run_chat(cl.chat);
  if (chose(cl.exec_cmd)) return run_exec_command(cl);
  if (chose(cl.put_cmd)) return run_put(cl.put_o);
  if (chose(cl.get_cmd)) return run_get(cl.get_o);
  if (chose(cl.ls_cmd)) return run_ls(cl.ls_o);
  if (chose(cl.stat_cmd)) return run_stat(cl.stat_o);
  if (chose(cl.mkdir_cmd)) return run_mkdir(cl.mkdir_o);
  if (chose(cl.rm_cmd)) return run_rm(cl.rm_o);
  if (chose(cl.mv_cmd)) return run_mv(cl.mv_o);
  if (chose(cl.info_cmd)) return run_info(cl.info);
  return exit_code::usage;
}

// `cskit exec ... -- CMD ARGS`: everything after the first -- is the
// command, verbatim, whatever it looks like; CLI11 sees only what is
// before. Returns how many arguments CLI11 parses.
int split_exec_tail(int argc, char** argv, std::vector<std::string>& tail) {
  if (argc < 2 || std::string_view(argv[1]) != "exec") return argc;
  for (int i = 2; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      tail.assign(argv + i + 1, argv + argc);
      return i;
    }
  }
  return argc;
}

}  // namespace

int main_impl(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("cskit");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  command_line cl;
  cl.app.footer(exit_codes_text);
  cl.app.set_version_flag("--version", std::string("cskit ") + cskit_version + " (protocol " +
                                           std::to_string(proto::protocol_version) + ")");
  cl.app.require_subcommand(1);
  static constexpr std::string_view command_names[] = {"serve", "ping", "time", "sync", "info", "exec", "chat",
                                                      "put", "get", "ls", "stat", "mkdir", "rm", "mv", "help"};
  cl.chosen = argc > 1 ? std::string_view(argv[1]) : std::string_view();
  const bool known = std::find(std::begin(command_names), std::end(command_names), cl.chosen) != std::end(command_names);
  cl.build_all = cl.chosen == "help" || (!known && cl.chosen != "--version");
  build_commands(cl);

  // Only `cskit help` needs the top-level help; it is produced before
  // parsing (which selects a subcommand), so only when asked for.
  const bool wants_main_help = argc == 2 && std::string_view(argv[1]) == "help";
  const std::string main_help = wants_main_help ? cl.app.help() : std::string();
  const int parse_argc = split_exec_tail(argc, argv, cl.exec_tail);
  try {
    cl.app.parse(parse_argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = cl.app.exit(e);
    return rc == 0 ? exit_code::ok : exit_code::usage;
  }
  return dispatch(cl, main_help);
}

}  // namespace cskit::app

int main(int argc, char** argv) {
  try {
    return cskit::app::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cskit: %s\n", e.what());
    return cskit::app::exit_code::failure;
  }
}
