#pragma once
// The accounts a running server knows, and how a configuration becomes
// them: the config's [[users]], the users file's (`cskit user`), and the
// default admin with its generated token. A reload builds a new table;
// sessions keep the account they logged in with and compare.

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "server/config.hpp"

namespace cskit::server {

/// An immutable set of accounts.
class account_table {
 public:
  explicit account_table(std::vector<user_account> users);
  std::shared_ptr<const user_account> find(std::string_view name) const;
  const std::vector<std::shared_ptr<const user_account>>& all() const noexcept { return users_; }

 private:
  std::vector<std::shared_ptr<const user_account>> users_;
};

struct accounts_setup {
  std::shared_ptr<const account_table> table;
  /// What the banner says of the admin's token; empty when no account uses it.
  std::string token_note;
  bool admin_uses_generated_token = false;
};

/// The accounts `config` describes: its [[users]], then the users file's;
/// plus the default admin (files-read, files-write, chat) when the config
/// declares no users and the users file no `admin`. An `admin` without a
/// token gets the generated one (CSKIT_TOKEN, or <state_dir>/admin.token,
/// created on first use). Throws config_error (a name declared twice, a
/// file others may read, ...).
accounts_setup load_accounts(const server_config& config);

/// Whether `given` is the token of `account`, in a time that tells neither
/// (HMACs of the two are compared); false without an account (a decoy is
/// hashed all the same). For logins that send the token itself (IRC,
/// HTTP); the cskit protocol sends a proof instead.
bool token_matches(const std::string& given, const user_account* account, const std::string& user);

/// Why a session that logged in as `before` may not go on now that the
/// account is `after` (null: removed): its token was replaced or it lost a
/// permission. Empty when it may go on (unchanged, or given more).
std::string account_change(const user_account& before, const user_account* after);

}  // namespace cskit::server
