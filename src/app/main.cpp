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
)";

void add_login_options(CLI::App& cmd, client_common& c) {
  cmd.add_option("--user,-u", c.user, "User name (default: CSKIT_USER, client config, or admin)");
  cmd.add_option("--token", c.token, "Token (default: CSKIT_TOKEN, then the client config)");
  cmd.add_option("--client-config", c.client_config, "Client config file (default ~/.config/cskit/client.toml)");
  cmd.add_option("--connect-timeout", c.connect_timeout, "Seconds to wait for the connection")
      ->check(CLI::Range(0.1, 3600.0));
  cmd.add_option("--timeout,-W", c.timeout, "Seconds to wait for each reply")->check(CLI::Range(0.1, 3600.0));
  cmd.add_flag("--json", c.json, "Print one JSON object instead of text");
}

void add_client_options(CLI::App& cmd, client_common& c) {
  cmd.add_option("host", c.host, "Server as HOST[:PORT] (IPv6 as [ADDR]:PORT); default port 7701")->required();
  add_login_options(cmd, c);
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

  auto level = spdlog::level::from_str(cfg.log_level);
  if (level == spdlog::level::off && cfg.log_level != "off") {
    std::fprintf(stderr, "cskit serve: unknown log level '%s' (trace, debug, info, warn, error, critical, off)\n",
                 cfg.log_level.c_str());
    return exit_code::usage;
  }
  spdlog::set_level(level);
  try {
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

}  // namespace

int main_impl(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("cskit");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  CLI::App app{"cskit: file transfer, remote execution, chat, UDP echo/ping and time over one protocol", "cskit"};
  app.footer(exit_codes_text);
  app.set_version_flag("--version", std::string("cskit ") + cskit_version + " (protocol " +
                                        std::to_string(proto::protocol_version) + ")");
  app.require_subcommand(1);

  // Only the chosen command is built: constructing every command (each a
  // CLI::App with its own help flag) and every command's options cost about
  // half of a client's start-up instructions, and `cskit exec -- true` is
  // timed from a fresh process. `cskit help`, `cskit --help`, an unknown or
  // a missing command build them all (help and error messages list them).
  static constexpr std::string_view command_names[] = {"serve", "ping", "time", "sync", "info", "exec", "chat",
                                                      "put", "get", "ls", "stat", "mkdir", "rm", "mv", "help"};
  const std::string_view chosen = argc > 1 ? std::string_view(argv[1]) : std::string_view();
  const bool known = std::find(std::begin(command_names), std::end(command_names), chosen) != std::end(command_names);
  const bool build_all = chosen == "help" || (!known && chosen != "--version");
  auto wanted = [&](std::string_view name) { return build_all || chosen == name; };
  // The command `name`, or nullptr when it is not built.
  auto command = [&](const char* name, const char* description) -> CLI::App* {
    return wanted(name) ? app.add_subcommand(name, description) : nullptr;
  };
  auto chose = [](const CLI::App* cmd) { return cmd != nullptr && cmd->parsed(); };

  // serve
  serve_options serve;
  std::chrono::seconds::rep idle = 300, handshake = 10, frame = 30, grace = 5;
  std::string root, state_dir;
  auto* serve_cmd = command("serve", "Run the server (binds 127.0.0.1:7701 unless told otherwise)");
  if (serve_cmd) {
    serve_cmd->add_option("--listen,-l", serve.config.listen, "ADDR:PORT to listen on (port 0: any free port)");
    serve_cmd->add_option("--root,-r", root, "Directory to share (default: <state dir>/share)");
    serve_cmd->add_option("--config,-c", serve.config_file, "TOML config file (users, limits); flags override it")
        ->check(CLI::ExistingFile);
    serve_cmd->add_option("--state-dir", state_dir,
                          "Where the generated admin token lives (default ~/.local/state/cskit)");
    serve_cmd->add_option("--name", serve.config.name, "Server name shown to clients (default: host name)");
    serve_cmd->add_option("--threads,-t", serve.config.threads, "Event-loop threads (0 or default: one per core)")
        ->check(CLI::Range(0, 1024));
    serve_cmd->add_option("--max-connections", serve.config.max_connections, "Connections served at once")
        ->check(CLI::Range(1, 1000000));
    serve_cmd->add_option("--idle-timeout", idle, "Seconds without a frame before a session is closed")
        ->check(CLI::Range(1, 604800));
    serve_cmd->add_option("--handshake-timeout", handshake, "Seconds a client has to authenticate")
        ->check(CLI::Range(1, 3600));
    serve_cmd->add_option("--frame-timeout", frame, "Seconds to finish a frame once it has started")
        ->check(CLI::Range(1, 3600));
    serve_cmd->add_option("--grace", grace, "Seconds sessions get to finish on SIGINT/SIGTERM")
        ->check(CLI::Range(0, 3600));
    serve_cmd->add_option("--log-level", serve.config.log_level, "trace, debug, info, warn, error, critical, off");
    serve_cmd->add_option("--echo-listen", serve.config.echo.listen,
                          "Also answer RFC 862 echo on UDP and TCP at ADDR[:PORT] (default port 7)");
    serve_cmd->add_option("--ntp-listen", serve.config.time.listen,
                          "Also serve time (SNTPv4) on UDP at ADDR[:PORT] (default port 123)");
  }

  // ping
  ping_options ping;
  auto* ping_cmd = command("ping", "Authenticate, then measure round trips with ping frames");
  bool ping_udp = false;
  if (ping_cmd) {
    add_client_options(*ping_cmd, ping.common);
    ping_cmd->add_option("--count,-c", ping.count, "Probes to send (default: until Ctrl-C)")
        ->check(CLI::Range(0L, 100000000L));
    ping_cmd->add_option("--interval,-i", ping.interval, "Seconds between probes (default 1)")
        ->check(CLI::Range(0.0, 3600.0));
    ping_cmd->add_option("--size,-s", ping.size, "Payload bytes per probe (default 0)")
        ->check(CLI::Range(std::size_t{0}, static_cast<std::size_t>(proto::max_body_size)));
    ping_cmd->add_flag("--quiet,-q", ping.quiet, "Only print the summary");
    ping_cmd->add_flag("--udp", ping_udp,
                       "Probe an RFC 862 UDP echo server instead (any, not only cskit's; default port 7, no login; "
                       "-s is the datagram size, default 56, -W the loss timeout, default 1 s)");
  }

  // time and sync
  time_options time_opts;
  auto add_time_options = [](CLI::App& cmd, time_options& t) {
    cmd.add_option("host", t.host, "NTP server as HOST[:PORT] (default port 123)")->required();
    cmd.add_option("--samples,-n", t.samples, "Requests to send; the one with the lowest delay is used (default 4)")
        ->check(CLI::Range(1, 64));
    cmd.add_option("--timeout,-W", t.timeout, "Seconds to wait for each reply (default 1)")
        ->check(CLI::Range(0.01, 60.0));
    cmd.add_option("--ntp-version", t.version, "NTP version to request with (2, 3 or 4; default 4)")
        ->check(CLI::Range(2, 4));
    cmd.add_flag("--json", t.json, "Print one JSON object instead of text");
  };
  auto* time_cmd = command("time", "Ask an NTP server (cskit's or any other) for the time and the offset");
  if (time_cmd) add_time_options(*time_cmd, time_opts);
  sync_options sync_opts;
  auto* sync_cmd = command(
      "sync", "Measure like 'time', then slew the clock (offset under 0.5 s) or step it (needs CAP_SYS_TIME)");
  if (sync_cmd) {
    add_time_options(*sync_cmd, sync_opts.query);
    sync_cmd->add_flag("--dry-run", sync_opts.dry_run, "Only report what would be done");
    auto* step_flag = sync_cmd->add_flag("--step", sync_opts.force_step, "Step the clock whatever the offset");
    sync_cmd->add_flag("--slew", sync_opts.force_slew, "Slew the clock whatever the offset")->excludes(step_flag);
  }

  // info
  client_common info;
  auto* info_cmd = command("info", "Show the server's name, version, services and your permissions");
  if (info_cmd) add_client_options(*info_cmd, info);

  // exec
  exec_options exec;
  std::vector<std::string> exec_words;
  auto* exec_cmd = command(
      "exec", "Run a command on one or more servers: cskit exec HOST[,HOST...] [options] -- CMD [ARG...]");
  if (exec_cmd) {
    exec_cmd->add_option("host", exec_words, "HOST[,HOST...] (none with --hosts); the command follows --");
    exec_cmd->add_flag("-t,--tty", exec.tty, "Run the command on a terminal (interactive programs; one host only)");
    exec_cmd->add_flag("-n,--no-stdin", exec.no_stdin, "Give the command /dev/null as stdin");
    exec_cmd->add_option("--timeout", exec.timeout, "Kill the command (its whole process group) after SECONDS")
        ->check(CLI::Range(0.001, 1e9));
    exec_cmd->add_option("--cwd", exec.cwd, "Working directory on the server");
    exec_cmd->add_option("--env", exec.env, "KEY=VALUE for the command (the server decides which keys are allowed)");
    exec_cmd->add_option("--shell", exec.shell, "A command line for the server's shell (only where its policy allows)");
    exec_cmd->add_option("--hosts", exec.hosts_file, "File with one HOST[:PORT] per line (fan-out)");
    exec_cmd->add_option("-f,--fanout", exec.fanout, "Hosts run at once in fan-out (default 32)")
        ->check(CLI::Range(1, 4096));
    exec_cmd->add_option("--user,-u", exec.common.user, "User name (default: CSKIT_USER, client config, or admin)");
    exec_cmd->add_option("--token", exec.common.token, "Token (default: CSKIT_TOKEN, then the client config)");
    exec_cmd->add_option("--client-config", exec.common.client_config, "Client config file");
    exec_cmd->add_option("--connect-timeout", exec.common.connect_timeout, "Seconds to wait for the connection")
        ->check(CLI::Range(0.1, 3600.0));
    exec_cmd->add_flag("--json", exec.common.json, "After the output, print the exit status as one JSON line");
    exec_cmd->footer(R"(Exit status: the remote command's exit code, 128+N when it was killed by signal N,
  255 when cskit itself failed (cannot connect, not allowed, ...). Fan-out: the largest of them.
  Without -t, Ctrl-C sends SIGINT to the remote process group; a second Ctrl-C kills it.)");
  }

  // chat
  chat_options chat;
  auto* chat_cmd = command("chat", "Chat in rooms: cskit chat HOST [--nick NAME] [--room ROOM]");
  if (chat_cmd) {
    add_client_options(*chat_cmd, chat.common);
    chat_cmd->add_option("--nick,-N", chat.nick, "Nickname (default: your user name)");
    chat_cmd->add_option("--room", chat.room, "Room to join first (default: the server's default room)");
    chat_cmd->footer(R"(On a terminal: type to talk, /help for commands; messages appear above your line.
  Otherwise (a pipe): each input line is sent, each event printed as one line (--json: JSON lines).
  Commands: /join ROOM, /part [ROOM], /msg NICK text, /me action, /who [ROOM], /rooms, /topic [text],
  /nick NAME, /quit [reason], /help.)");
  }

  // files
  constexpr const char* remote_help = R"(Remote paths are HOST:PATH or HOST:PORT:PATH ([V6ADDR]:PORT:PATH), relative to the
server's share; HOST: alone is the share's root. Exit codes beyond the common ones:
9 disk full, 10 quota exceeded, 11 content digest mismatch (nothing committed),
12 the source changed or vanished, 13 not found, 14 already exists.)";
  files_options put_o, get_o, ls_o, stat_o, mkdir_o, rm_o, mv_o;
  auto* put_cmd = command("put", "Upload files: cskit put [-r] [-p] LOCAL... HOST:[REMOTE] ('-' is stdin)");
  auto* get_cmd = command("get", "Download files: cskit get [-r] [-p] HOST:REMOTE... [LOCAL] ('-' is stdout)");
  for (auto [cmd, o] : {std::pair{put_cmd, &put_o}, std::pair{get_cmd, &get_o}}) {
    if (cmd == nullptr) continue;
    cmd->add_option("paths", o->args, "Sources, then the destination")->required();
    cmd->add_flag("-r,--recursive", o->recursive, "Copy directories and everything in them");
    cmd->add_flag("-p,--preserve", o->preserve, "Keep modification times and permission bits");
    cmd->add_flag("-q,--quiet", o->quiet, "No progress line");
    cmd->add_flag("-n,--no-clobber", o->no_clobber, "Never replace an existing file");
    cmd->add_option("--verify", o->verify, "Also check a SHA-256 digest (XXH3-128 is always checked)")
        ->check(CLI::IsMember({"sha256", "xxh3"}));
    add_login_options(*cmd, o->common);
    cmd->footer(std::string(R"(Every file is digested (XXH3-128) by the sender while it is read and by the receiver while
it is written, written to a temporary file beside the target (a resumable part file; an unnamed
one for files up to 256 KiB), flushed, and moved into place only when the digests match. Run
the same command again after an interruption: it resumes where it stopped.
)") + remote_help);
  }
  if (get_cmd) get_cmd->add_flag("--no-fsync", get_o.no_fsync,
                    "Do not flush downloaded files to disk before renaming them into place (faster, like scp; "
                    "a power failure can then leave an incomplete file)");
  auto* ls_cmd = command("ls", "List a remote directory: cskit ls [-l] [-R] HOST:[PATH]");
  if (ls_cmd) {
    ls_cmd->add_option("path", ls_o.args, "HOST:[PATH]")->required();
    ls_cmd->add_flag("-l", ls_o.long_format, "Long format: type, permissions, size, time");
    ls_cmd->add_flag("-R,--recursive", ls_o.recursive, "List everything below, as relative paths");
  }
  auto* stat_cmd = command("stat", "Show a remote file's type, size, permissions and time");
  if (stat_cmd) stat_cmd->add_option("path", stat_o.args, "HOST:PATH")->required();
  auto* mkdir_cmd = command("mkdir", "Create a remote directory: cskit mkdir [-p] HOST:PATH");
  if (mkdir_cmd) {
    mkdir_cmd->add_option("path", mkdir_o.args, "HOST:PATH")->required();
    mkdir_cmd->add_flag("-p,--parents", mkdir_o.parents, "Create missing parents; no error if it exists");
  }
  auto* rm_cmd = command("rm", "Remove a remote file or directory: cskit rm [-r] HOST:PATH");
  if (rm_cmd) {
    rm_cmd->add_option("path", rm_o.args, "HOST:PATH")->required();
    rm_cmd->add_flag("-r,--recursive", rm_o.recursive, "Remove a directory and everything in it");
  }
  auto* mv_cmd = command("mv", "Move or rename on the server: cskit mv HOST:FROM TO");
  if (mv_cmd) {
    mv_cmd->add_option("paths", mv_o.args, "HOST:FROM and TO (a path on the same server)")->required();
    mv_cmd->add_flag("-n,--no-clobber", mv_o.no_clobber, "Never replace an existing file");
  }
  for (auto [cmd, o] : {std::pair{ls_cmd, &ls_o}, std::pair{stat_cmd, &stat_o}, std::pair{mkdir_cmd, &mkdir_o},
                        std::pair{rm_cmd, &rm_o}, std::pair{mv_cmd, &mv_o}}) {
    if (cmd == nullptr) continue;
    add_login_options(*cmd, o->common);
    cmd->footer(remote_help);
  }

  // help
  std::vector<std::string> help_topic;
  auto* help_cmd = command("help", "Show help for cskit or for one command");
  if (help_cmd) help_cmd->add_option("command", help_topic, "Command to describe");

  // Only `cskit help` needs the top-level help; it is produced before
  // parsing (which selects a subcommand), so only when asked for.
  const bool wants_main_help = argc == 2 && std::string_view(argv[1]) == "help";
  const std::string main_help = wants_main_help ? app.help() : std::string();
  // `cskit exec ... -- CMD ARGS`: everything after the first -- is the
  // command, verbatim, whatever it looks like; CLI11 sees only what is before.
  std::vector<std::string> exec_tail;
  int parse_argc = argc;
  if (argc > 1 && std::string_view(argv[1]) == "exec") {
    for (int i = 2; i < argc; ++i) {
      if (std::string_view(argv[i]) == "--") {
        exec_tail.assign(argv + i + 1, argv + argc);
        parse_argc = i;
        break;
      }
    }
  }
  try {
    app.parse(parse_argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? exit_code::ok : exit_code::usage;
  }

  if (chose(help_cmd)) {
    if (help_topic.empty()) {
      std::printf("%s", main_help.c_str());
      return exit_code::ok;
    }
    try {
      std::printf("%s", app.get_subcommand(help_topic.front())->help().c_str());
      return exit_code::ok;
    } catch (const CLI::OptionNotFound&) {
      std::fprintf(stderr, "cskit: no command '%s'; try 'cskit help'\n", help_topic.front().c_str());
      return exit_code::usage;
    }
  }
  if (chose(serve_cmd)) {
    serve.config.idle_timeout = std::chrono::seconds(idle);
    serve.config.handshake_timeout = std::chrono::seconds(handshake);
    serve.config.frame_timeout = std::chrono::seconds(frame);
    serve.config.grace = std::chrono::seconds(grace);
    serve.config.root = root;
    serve.config.state_dir = state_dir;
    return run_serve_impl(std::move(serve), *serve_cmd);
  }
  if (chose(ping_cmd) && ping_udp) {
    udp_ping_options u;
    u.host = ping.common.host;
    u.count = ping.count;
    u.interval = ping.interval;
    if (ping_cmd->count("--size")) u.size = ping.size;
    if (ping_cmd->count("--timeout")) u.timeout = ping.common.timeout;
    u.quiet = ping.quiet;
    u.json = ping.common.json;
    if (u.size > 65507) {
      std::fprintf(stderr, "cskit ping --udp: -s must be at most 65507 (the largest UDP payload over IPv4)\n");
      return exit_code::usage;
    }
    return run_udp_ping(u);
  }
  if (chose(ping_cmd)) return run_ping(ping);
  if (chose(time_cmd)) return run_time(time_opts);
  if (chose(chat_cmd)) return run_chat(chat);
  if (chose(exec_cmd)) {
    // Positionals: HOST, then the command (everything after --). With
    // --hosts FILE there is no HOST word.
    if (exec.hosts_file.empty() == exec_words.empty() || exec_words.size() > 1) {
      std::fprintf(stderr, "cskit exec: give one HOST[,HOST...] or --hosts FILE, then -- and the command\n");
      return exit_code::usage;
    }
    if (!exec_words.empty()) exec.common.host = exec_words.front();
    exec.command = exec_tail;
    exec.common.timeout = 30;
    return run_exec(exec);
  }
  if (chose(put_cmd)) return run_put(put_o);
  if (chose(get_cmd)) return run_get(get_o);
  if (chose(ls_cmd)) return run_ls(ls_o);
  if (chose(stat_cmd)) return run_stat(stat_o);
  if (chose(mkdir_cmd)) return run_mkdir(mkdir_o);
  if (chose(rm_cmd)) return run_rm(rm_o);
  if (chose(mv_cmd)) return run_mv(mv_o);
  if (chose(sync_cmd)) return run_sync(sync_opts);
  if (chose(info_cmd)) return run_info(info);
  return exit_code::usage;
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
