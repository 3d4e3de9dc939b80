#include "server/server.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <spdlog/spdlog.h>
#include <thread>

#include "net/endpoint.hpp"
#include "net/service_manager.hpp"
#include "net/tcp_server.hpp"
#include "proto/http.hpp"
#include "proto/limits.hpp"
#include "proto/ntp.hpp"
#include "server/chat_routes.hpp"
#include "service/chat_history.hpp"
#include "service/chat_sqlite.hpp"
#include "server/exec_routes.hpp"
#include "server/file_routes.hpp"
#include "server/http_session.hpp"
#include "server/web_sessions.hpp"
#include "server/identity.hpp"
#include "server/irc_session.hpp"
#include "server/reload.hpp"
#include "net/tls.hpp"
#include "server/session.hpp"
#include "util/file_io.hpp"
#include "util/human.hpp"
#include "util/paths.hpp"
#include "version.hpp"

namespace cskit::server {
namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "cskit";
  return buf;
}

// The server's TLS context and the banner line that describes it; a null
// context for the cleartext opt-in.
struct tls_setup {
  std::shared_ptr<const net::tls::context> context;
  std::shared_ptr<const net::tls::context> irc_context;  // the same key, ALPN without http/1.1
  std::string banner;
};

identity_files identity_of(const server_config& config, const std::string& name) {
  if (!config.tls.cert.empty()) return {config.tls.cert, config.tls.key, false};
  return ensure_default_identity(config.state_dir, name);
}

tls_setup setup_tls(const server_config& config, const std::string& name) {
  if (config.tls.plaintext) {
    return {nullptr, nullptr,
            "tls: OFF, cleartext by explicit request: tokens' proofs, file contents and commands cross the network "
            "unprotected"};
  }
  const identity_files files = identity_of(config, name);
  net::tls::server_settings settings{files.cert, files.key};
  settings.try_ktls = config.tls.kernel_tls == "on" || (config.tls.kernel_tls == "auto" && net::tls::kernel_offers_ktls());
  settings.offer_http = config.web.enabled;
  std::shared_ptr<const net::tls::context> ctx, irc_ctx;
  try {
    ctx = net::tls::context::for_server(settings);
    // The IRC port answers no HTTP: its ALPN list has no http/1.1.
    settings.offer_http = false;
    irc_ctx = config.web.enabled ? net::tls::context::for_server(settings) : ctx;
  } catch (const net::tls::error& e) {
    throw config_error(e.what());
  }
  std::string banner = "tls: TLS 1.3, server key " + ctx->fingerprint() + " (" +
                       (files.generated ? "new, in " : "") + files.cert.string();
  if (ctx->expires() != "never") banner += ", expires " + ctx->expires();
  banner += ")";
  spdlog::debug("kernel TLS: {} (the kernel {} it)", settings.try_ktls ? "asked for" : "not used",
                net::tls::kernel_offers_ktls() ? "offers" : "does not offer");
  return {std::move(ctx), std::move(irc_ctx), std::move(banner)};
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

void fill_defaults(server_config& config) {
  fill_default_paths(config);
  if (config.name.empty()) config.name = host_name();
}

std::string server_fingerprint(server_config config) {
  fill_defaults(config);
  if (config.tls.plaintext) throw config_error("TLS is off ([tls] plaintext = true): there is no server key");
  const identity_files files = identity_of(config, config.name);
  auto fp = net::tls::fingerprint_of_pem_file(files.cert);
  if (!fp) throw config_error("cannot read a certificate from " + files.cert.string());
  return *fp;
}

namespace {

// The share's directory, made when missing, as an absolute path.
void prepare_share_root(server_config& config) {
  if (config.root.empty()) config.root = config.state_dir / "share";
  std::error_code ec;
  std::filesystem::create_directories(config.root, ec);
  if (ec || !std::filesystem::is_directory(config.root)) {
    throw config_error("share directory " + config.root.string() + " is not usable: " +
                       (ec ? ec.message() : "not a directory"));
  }
  config.root = std::filesystem::canonical(config.root);
}

net::server_options server_options_of(const server_config& config, const net::host_port& listen,
                                      const tls_setup& tls) {
  net::server_options o;
  o.host = listen.host;
  o.port = listen.port;
  o.threads = config.threads ? config.threads : std::max(1u, std::thread::hardware_concurrency());
  const net::reloadable_limits r = reloadable_limits_of(config);
  o.max_connections = r.max_connections;
  o.max_unauthenticated = r.max_unauthenticated;
  o.max_unauthenticated_per_source = r.max_unauthenticated_per_source;
  o.limits = r.limits;
  o.grace = r.grace;
  o.tls = tls.context;
  return o;
}

// RFC 862 echo and the SNTP server, when configured; their banner lines.
std::vector<std::string> add_datagram_services(net::tcp_server& srv, const server_config& config) {
  std::vector<std::string> banner;
  std::string why;
  if (!config.echo.listen.empty()) {
    auto ep = net::parse_host_port(config.echo.listen, service::echo_default_port, &why);
    if (!ep) throw config_error("invalid echo listen address '" + config.echo.listen + "': " + why);
    net::udp_options uo;
    uo.max_datagram = config.echo.max_datagram;
    net::tcp_echo_options to;
    to.max_connections = config.echo.max_tcp_connections;
    auto bound = srv.add_echo(ep->host, ep->port, uo, std::make_shared<service::echo_service>(config.echo), to);
    banner.push_back("echo: " + bound + " (RFC 862, UDP and TCP)");
  }
  if (!config.time.listen.empty()) {
    auto ep = net::parse_host_port(config.time.listen, proto::ntp::default_port, &why);
    if (!ep) throw config_error("invalid NTP listen address '" + config.time.listen + "': " + why);
    net::udp_options uo;
    uo.max_datagram = 1024;  // NTP with extension fields; bigger is dropped as truncated
    uo.kernel_timestamps = true;
    auto bound = srv.add_udp(ep->host, ep->port, uo, std::make_shared<service::time_service>(config.time));
    banner.push_back("time: " + bound + " (SNTPv4, stratum " + std::to_string(config.time.stratum) + ", reference " +
                     proto::ntp::format_reference_id(config.time.reference_id, config.time.stratum) + ")");
  }
  return banner;
}

bool loopback_host(const std::string& host) {
  return host == "::1" || host == "localhost" || host.rfind("127.", 0) == 0;
}

// The IRC front end, when configured: its listener, and its banner line.
std::string add_irc_front(net::tcp_server& srv, const server_config& config, const tls_setup& tls,
                          const irc_front& front) {
  std::string why;
  auto ep = net::parse_host_port(config.irc.listen, 6697, &why);
  if (!ep) throw config_error("invalid IRC listen address '" + config.irc.listen + "': " + why);
  const bool use_tls = config.irc.tls && tls.irc_context;
  if (!use_tls && !loopback_host(ep->host) && !config.irc.plaintext_remote) {
    throw config_error("IRC without TLS on " + config.irc.listen +
                       ": cleartext is allowed on loopback only, unless [irc] plaintext_remote = true");
  }
  auto bound = srv.add_listener(ep->host, ep->port, [&front] { return std::make_unique<irc_session>(front); },
                                use_tls ? tls.irc_context : nullptr,
                                // (a TLS client could not read a cleartext line: it is just closed)
                                use_tls ? net::tcp_server::refusal_encoder([](const std::string&) { return std::string(); })
                                        : net::tcp_server::refusal_encoder(&irc_front::closing));
  return "irc: " + bound + (use_tls ? " (TLS)" : " (cleartext)");
}

service::irc_settings irc_settings_of(const server_config& config) {
  service::irc_settings s;
  s.server_name = service::valid_nick(config.name) ? config.name : "cskit";
  s.network = config.irc.network;
  s.host = "cskit";
  s.history_max = config.irc.history_max;
  std::size_t at = 0;
  const std::string& motd = config.irc.motd;
  while (at < motd.size()) {
    const auto nl = motd.find('\n', at);
    s.motd.push_back(motd.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
    at = nl == std::string::npos ? motd.size() : nl + 1;
  }
  return s;
}

// Where chat keeps its history: SQLite in the state directory unless told otherwise.
std::unique_ptr<service::chat_history> open_history(const server_config& config) {
  const auto& c = config.chat;
  const service::chat_retention retention{
      c.history_keep, std::chrono::duration_cast<std::chrono::milliseconds>(c.history_max_age).count()};
  if (c.history_store == "memory" || !c.enabled) return service::make_memory_history(retention);
  const std::filesystem::path path =
      c.history_path.empty() ? config.state_dir / "chat-history.sqlite3" : std::filesystem::path(c.history_path);
  try {
    return service::open_sqlite_history(path, retention);
  } catch (const service::history_error& e) {
    throw config_error(e.what());
  }
}

struct banner {
  std::string address;
  unsigned threads;
  std::string tls;
  std::vector<std::string> services;  // echo, time
  const accounts_setup& accounts;
  std::string exec_account;
};

void print_banner(const server_config& config, const banner& b) {
  std::printf("cskit %s listening on %s (protocol %d, %u thread%s)\n", cskit_version, b.address.c_str(),
              proto::protocol_version, b.threads, b.threads == 1 ? "" : "s");
  std::printf("share: %s%s%s\n", config.root.string().c_str(),
              config.files.quota ? (", quota " + util::human_bytes(static_cast<double>(config.files.quota))).c_str() : "",
              config.files.max_file_size
                  ? (", files up to " + util::human_bytes(static_cast<double>(config.files.max_file_size))).c_str()
                  : "");
  if (config.exec.enabled) {
    std::printf("exec: enabled, commands run as %s%s%s\n", b.exec_account.c_str(),
                config.exec.allow_shell ? ", shell allowed" : "",
                config.exec.programs.empty() ? "" : ", allow-list of programs");
  }
  std::printf("%s\n", b.tls.c_str());
  for (const auto& line : b.services) std::printf("%s\n", line.c_str());
  for (const auto& u : b.accounts.table->all()) {
    std::printf("user: %s (%s)\n", u->name.c_str(), join(u->permissions.names()).c_str());
  }
  if (!b.accounts.token_note.empty()) std::printf("%s\n", b.accounts.token_note.c_str());
  if (b.accounts.admin_uses_generated_token && std::getenv("CSKIT_TOKEN") && *std::getenv("CSKIT_TOKEN")) {
    std::printf("connect: CSKIT_TOKEN=<the same token> cskit ping %s\n", b.address.c_str());
  } else if (b.accounts.admin_uses_generated_token) {
    std::printf("connect: CSKIT_TOKEN=$(cat %s) cskit ping %s\n",
                (config.state_dir / "admin.token").string().c_str(), b.address.c_str());
  } else {
    std::printf("connect: cskit ping --user NAME --token TOKEN %s\n", b.address.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

void run_server(server_config config, const serve_hooks& hooks) {
  std::string why;
  auto listen = net::parse_host_port(config.listen, proto::default_port, &why);
  if (!listen) throw config_error("invalid listen address '" + config.listen + "': " + why);
  fill_defaults(config);
  const server_config started = config;  // as read, for reloads to compare with
  prepare_share_root(config);

  server_context ctx;
  ctx.name = config.name;
  tls_setup tls = setup_tls(config, ctx.name);
  const accounts_setup accounts = load_accounts(config);
  ctx.set_accounts(accounts.table);
  register_core_service(ctx);
  std::unique_ptr<service::file_share> share;
  try {
    share = std::make_unique<service::file_share>(config.root, config.files);
  } catch (const std::system_error& e) {
    throw config_error(std::string("share: ") + e.what());
  }
  register_file_service(ctx, *share);
  service::exec_policy exec_policy;
  try {
    exec_policy = service::exec_policy::resolve(config.exec);
  } catch (const std::runtime_error& e) {
    throw config_error(e.what());
  }
  service::exec_limiter exec_limiter(config.exec);
  register_exec_service(ctx, exec_policy, exec_limiter);
  service::chat_hub chat_hub(config.chat, open_history(config));
  {
    std::vector<std::string> names;
    for (const auto& u : accounts.table->all()) names.push_back(u->name);
    chat_hub.set_accounts(names);
  }
  register_chat_service(ctx, chat_hub);
  irc_front irc(ctx, chat_hub, irc_settings_of(config));

  net::server_options o = server_options_of(config, *listen, tls);
  web_sessions page_sessions;
  const http_front web{ctx, *share, page_sessions, config.chat.enabled ? &chat_hub : nullptr};
  if (config.web.enabled && tls.context) {
    // ALPN http/1.1; or, from a client that offered no ALPN (wget), a
    // request line first (a cskit client waits for the server's hello).
    o.protocol_router = [&web](std::string_view alpn, std::string_view first) -> std::unique_ptr<net::frame_handler> {
      if (alpn == net::tls::alpn_http || (alpn.empty() && proto::http::looks_like_request(first))) {
        return std::make_unique<http_session>(web);
      }
      return nullptr;
    };
  }
  net::tcp_server* server = nullptr;  // set below, before any signal is handled
  o.on_reload = [&] {
    reload_server(hooks.reload, started, {ctx, chat_hub, exec_limiter, *share, *server});
  };
  // Each connection is one descriptor; the soft limit (often 1024) is far
  // below what the server is meant to hold.
  util::raise_fd_limit();
  // sendfile(2) has no MSG_NOSIGNAL: a peer that resets mid-download would
  // otherwise kill the server. (Commands started by exec get every signal
  // back to its default before they run.)
  ::signal(SIGPIPE, SIG_IGN);
  net::tcp_server srv(o, [&ctx] { return std::make_unique<session>(ctx); });
  server = &srv;
  srv.listen();
  const std::string address = srv.local_address();
  std::vector<std::string> side = add_datagram_services(srv, config);
  if (!config.irc.listen.empty() && config.chat.enabled) side.push_back(add_irc_front(srv, config, tls, irc));
  if (o.protocol_router) side.push_back("web: https://" + address + "/files/ (HTTPS on the same port, for curl and wget)");
  print_banner(config, {address, o.threads, tls.banner, std::move(side), accounts, exec_policy.account});
  spdlog::info("listening on {} as '{}'", address, ctx.name);
  // systemd's Type=notify: ready once every listener is bound.
  net::notify_service_manager("READY=1\nMAINPID=" + std::to_string(::getpid()) + "\nSTATUS=listening on " + address);
  if (hooks.on_listening) hooks.on_listening(address);
  {
    // The share's threads post their results to the event loops: they
    // stop (an unfinished digest job is abandoned) while the loops still
    // exist, however run() ends.
    struct stop_share {
      service::file_share& s;
      ~stop_share() { s.stop(); }
    } guard{*share};
    srv.run();
  }
  spdlog::info("server stopped");
}

}  // namespace cskit::server
