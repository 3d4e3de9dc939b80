#include "server/accounts.hpp"

#include <algorithm>
#include <cstdlib>

#include "proto/auth.hpp"
#include "proto/messages.hpp"

namespace cskit::server {

account_table::account_table(std::vector<user_account> users) {
  users_.reserve(users.size());
  for (auto& u : users) users_.push_back(std::make_shared<const user_account>(std::move(u)));
}

std::shared_ptr<const user_account> account_table::find(std::string_view name) const {
  for (const auto& u : users_) {
    if (u->name == name) return u;
  }
  return nullptr;
}

namespace {

// The config's accounts, then the users file's; a name in both is an error.
std::vector<user_account> declared_accounts(const server_config& config) {
  std::vector<user_account> users = config.users;
  if (config.users_file.empty()) return users;
  for (auto& u : load_users_file(config.users_file)) {
    const auto same = std::find_if(users.begin(), users.end(), [&](const user_account& o) { return o.name == u.name; });
    if (same != users.end()) {
      throw config_error(u.origin + ": user '" + u.name + "' is declared in " + same->origin +
                         " already; keep one of the two");
    }
    users.push_back(std::move(u));
  }
  return users;
}

}  // namespace

accounts_setup load_accounts(const server_config& config) {
  std::vector<user_account> users = declared_accounts(config);
  const bool declares_admin =
      std::any_of(users.begin(), users.end(), [](const user_account& u) { return u.name == "admin"; });
  if (config.users.empty() && !declares_admin) {
    users.insert(users.begin(), user_account{"admin", "", default_admin_permissions(), "the default account"});
  }
  accounts_setup out;
  auto tokenless = std::find_if(users.begin(), users.end(), [](const user_account& u) { return u.token.empty(); });
  if (tokenless != users.end()) {
    const char* env = std::getenv("CSKIT_TOKEN");
    bool generated = false;
    tokenless->token = load_or_create_admin_token(config.state_dir, env ? env : "", generated);
    out.admin_uses_generated_token = true;
    if (env && *env) {
      out.token_note = "admin token: taken from CSKIT_TOKEN";
    } else {
      out.token_note = "admin token: " + tokenless->token + (generated ? "  (new, saved in " : "  (from ") +
                       (config.state_dir / "admin.token").string() + ")";
    }
  }
  out.table = std::make_shared<const account_table>(std::move(users));
  return out;
}

bool token_matches(const std::string& given, const user_account* account, const std::string& user) {
  using proto::binding_kind;
  using proto::proof_role;
  static const std::string decoy(32, 'x');
  const std::string& expected = account ? account->token : decoy;
  const bool same =
      proto::proofs_equal(proto::compute_proof(proof_role::client, given, user, binding_kind::nonces, "token"),
                          proto::compute_proof(proof_role::client, expected, user, binding_kind::nonces, "token"));
  return same && account != nullptr;
}

std::string account_change(const user_account& before, const user_account* after) {
  if (after == nullptr) return "the account '" + before.name + "' was removed from the server";
  if (after->token != before.token) {
    return "the token of '" + before.name + "' was replaced: log in again with the new one";
  }
  for (const auto& name : before.permissions.names()) {
    const auto p = proto::permission_from_wire(name);
    if (p && !after->permissions.has(*p)) {
      return "the '" + name + "' permission of '" + before.name + "' was withdrawn";
    }
  }
  return {};
}

}  // namespace cskit::server
