#pragma once
// `cskit user`: the accounts of a server, changed without hand-editing.
// They go to the users file (config.users_file), which is rewritten whole
// and atomically under a lock; cskit.toml, with its comments, is never
// touched. Accounts declared in cskit.toml are listed but edited there.
// A running server applies the change on reload (SIGHUP).

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "server/config.hpp"

namespace cskit::server {

struct listed_user {
  std::string name;
  std::vector<std::string> permissions;
  std::string origin;  ///< the file (and line) declaring it, or "the default account"
};

/// Parses a --perm argument: a list that replaces ("files-read,chat"), or
/// changes to `current` ("+exec", "-chat,+files-write"). Throws config_error.
proto::permission_set parse_permission_change(std::string_view spec, proto::permission_set current);

class user_admin {
 public:
  /// `config`: as the server reads it (load_config_file, or defaults), with
  /// fill_default_paths done; `config_file`: its path (empty: none).
  user_admin(server_config config, std::filesystem::path config_file);

  std::vector<listed_user> list() const;
  /// A new account with a new token, which is returned (and kept nowhere
  /// else but the users file).
  std::string add(const std::string& name, proto::permission_set permissions);
  void remove(const std::string& name);
  /// A new token for `name`, returned. The admin's generated token is
  /// replaced in admin.token.
  std::string rotate_token(const std::string& name);
  /// New permissions for `name` (see parse_permission_change); returned.
  proto::permission_set set_permissions(const std::string& name, std::string_view spec);

  const std::filesystem::path& users_file() const noexcept { return config_.users_file; }
  const std::filesystem::path& state_dir() const noexcept { return config_.state_dir; }

 private:
  class locked_file;
  // The default admin exists: no [[users]] in the config, none named admin in the file.
  bool default_admin(const std::vector<user_account>& file_users) const;
  // Throws when `name` is declared in cskit.toml (edited there).
  void refuse_config_user(const std::string& name, const char* action) const;
  void save(const std::vector<user_account>& users) const;
  std::string rotate_admin_token_file() const;

  server_config config_;
  std::filesystem::path config_file_;
};

}  // namespace cskit::server
