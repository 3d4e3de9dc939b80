// `cskit user`: add, list, remove and change the accounts of a server
// (server/user_admin.hpp), as useradd/usermod do for the system's.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <cstdio>
#include <memory>

#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "server/user_admin.hpp"

namespace cskit::app {

namespace {

struct user_state {
  std::string action, name, perm, config_file, state_dir;
  bool rotate = false;
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s.empty() ? "(none)" : s;
}

void print_list(const server::user_admin& admin) {
  const auto users = admin.list();
  std::size_t wide = 4;
  for (const auto& u : users) wide = std::max(wide, u.name.size());
  std::printf("%-*s  %-34s  %s\n", static_cast<int>(wide), "USER", "PERMISSIONS", "DECLARED IN");
  for (const auto& u : users) {
    std::printf("%-*s  %-34s  %s\n", static_cast<int>(wide), u.name.c_str(), joined(u.permissions).c_str(),
                u.origin.c_str());
  }
}

void print_reload_hint() {
  std::fprintf(stderr, "a running server applies it on reload: systemctl reload cskit, or kill -HUP <its pid>\n");
}

// The new token goes to stdout alone (TOKEN=$(cskit user add ...)), what
// it is to stderr.
void print_token(const std::string& user, const std::string& token, const char* what) {
  std::fprintf(stderr, "%s; its token, shown this once, follows (connect with --user %s --token TOKEN, or "
                       "CSKIT_USER and CSKIT_TOKEN):\n", what, user.c_str());
  std::fflush(stderr);
  std::printf("%s\n", token.c_str());
  std::fflush(stdout);
}

int act(const user_state& s, server::user_admin& admin) {
  const std::string file = admin.users_file().string();
  if (s.action == "list") {
    print_list(admin);
    return exit_code::ok;
  }
  if (s.name.empty()) {
    std::fprintf(stderr, "cskit user %s: NAME is required\n", s.action.c_str());
    return exit_code::usage;
  }
  if (s.action == "add") {
    const auto perms = server::parse_permission_change(s.perm.empty() ? "files-read,files-write,chat" : s.perm, {});
    const std::string token = admin.add(s.name, perms);
    print_token(s.name, token,
                ("added user " + s.name + " (" + joined(perms.names()) + ") to " + file).c_str());
  } else if (s.action == "del") {
    admin.remove(s.name);
    std::fprintf(stderr, "removed user %s from %s\n", s.name.c_str(), file.c_str());
    for (const auto& u : admin.list()) {
      if (u.name == s.name) std::fprintf(stderr, "%s is now %s\n", s.name.c_str(), u.origin.c_str());
    }
  } else if (s.action == "set") {
    if (s.perm.empty()) {
      std::fprintf(stderr, "cskit user set: --perm is required (a list, or changes such as +exec)\n");
      return exit_code::usage;
    }
    const auto perms = admin.set_permissions(s.name, s.perm);
    std::fprintf(stderr, "user %s now has: %s\n", s.name.c_str(), joined(perms.names()).c_str());
  } else {  // token
    if (!s.rotate) {
      std::fprintf(stderr, "cskit user token: tokens are shown once, when made; --rotate makes a new one "
                           "(the old one works until the server reloads)\n");
      return exit_code::usage;
    }
    print_token(s.name, admin.rotate_token(s.name), ("new token for " + s.name).c_str());
    if (s.name == "admin") {
      std::fprintf(stderr, "if it is the generated admin token, it is in %s, where local clients find it at once: "
                           "reload the server first (a server that takes the admin token from CSKIT_TOKEN ignores "
                           "the file)\n", (admin.state_dir() / "admin.token").c_str());
    }
  }
  print_reload_hint();
  return exit_code::ok;
}

int run_user(const user_state& s) {
  // The packaged server's accounts are not the ones of a personal server
  // (which has no config file): say so when it looks like the former was meant.
  if (s.config_file.empty() && s.state_dir.empty() && ::geteuid() == 0 &&
      std::filesystem::exists("/etc/cskit/cskit.toml")) {
    std::fprintf(stderr, "cskit user: note: without --config these are the accounts of a server without a config "
                         "file; the service's are managed with --config /etc/cskit/cskit.toml\n");
  }
  try {
    server::server_config config;
    if (!s.config_file.empty()) config = server::load_config_file(s.config_file);
    if (!s.state_dir.empty()) config.state_dir = s.state_dir;
    server::fill_default_paths(config);
    server::user_admin admin(std::move(config), s.config_file);
    return act(s, admin);
  } catch (const server::config_error& e) {
    std::fprintf(stderr, "cskit user %s: %s\n", s.action.c_str(), e.what());
    return exit_code::failure;
  }
}

command_runner build_user(CLI::App& cmd, const command_args&) {
  auto s = std::make_shared<user_state>();
  cmd.add_option("action", s->action, "list, add, del, set or token")
      ->required()
      ->check(CLI::IsMember({"list", "add", "del", "set", "token"}));
  cmd.add_option("name", s->name, "The account's name (1-64 of A-Z a-z 0-9 . _ -)");
  cmd.add_option("--perm,-p", s->perm,
                 "Permissions: a list (files-read,files-write,exec,chat) or changes (+exec,-chat); "
                 "add's default: files-read,files-write,chat");
  cmd.add_flag("--rotate", s->rotate, "token: make a new token (printed once) in place of the old");
  cmd.add_option("--config,-c", s->config_file, "The server's config file (its users file is beside it)")
      ->check(CLI::ExistingFile);
  cmd.add_option("--state-dir", s->state_dir, "The server's state directory, as given to serve");
  cmd.footer(R"(Accounts go to the users file: users.toml beside the config file (or [server] users_file),
or <state dir>/users.toml for a server without one. It is rewritten whole and atomically;
cskit.toml is never changed, and its [[users]] are edited there. The default admin (a server
whose config declares no [[users]]) can be given permissions (cskit user set admin --perm +exec)
and a new token (cskit user token admin --rotate). A running server applies changes on reload
(systemctl reload cskit, or SIGHUP); sessions of a removed user, or one whose token or
permissions were taken away, are told and closed.)");
  return [s] { return run_user(*s); };
}

const command_registration user_registration{{
    .name = "user",
    .summary = "Manage the server's accounts: list, add, del, set --perm, token --rotate",
    .usage = "list|add|del|set|token [NAME] [--perm LIST] [--rotate] [--config FILE]",
    .order = 150,
    .build = build_user,
}};

}  // namespace

}  // namespace cskit::app
