#include "server/user_admin.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "proto/auth.hpp"
#include "util/file_io.hpp"

namespace cskit::server {

proto::permission_set parse_permission_change(std::string_view spec, proto::permission_set current) {
  if (spec.empty()) throw config_error("--perm needs a list of permissions (files-read, files-write, exec, chat)");
  const bool relative = spec.front() == '+' || spec.front() == '-';
  proto::permission_set out = relative ? current : proto::permission_set{};
  std::size_t at = 0;
  while (at <= spec.size()) {
    const auto comma = spec.find(',', at);
    std::string_view item = spec.substr(at, comma == std::string_view::npos ? std::string_view::npos : comma - at);
    at = comma == std::string_view::npos ? spec.size() + 1 : comma + 1;
    char sign = 0;
    if (!item.empty() && (item.front() == '+' || item.front() == '-')) {
      sign = item.front();
      item.remove_prefix(1);
    }
    if (relative != (sign != 0)) {
      throw config_error("--perm '" + std::string(spec) +
                         "': give either a list (files-read,chat) or changes (+exec,-chat), not both");
    }
    const auto p = proto::permission_from_wire(item);
    if (!p) {
      throw config_error("unknown permission '" + std::string(item) + "' (files-read, files-write, exec, chat)");
    }
    if (sign == '-') out.remove(*p);
    else out.add(*p);
  }
  return out;
}

// The users file's directory, locked for one change: two `cskit user` at
// once never lose each other's change.
class user_admin::locked_file {
 public:
  explicit locked_file(const std::filesystem::path& file) {
    const auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
    std::error_code ec;
    if (std::filesystem::create_directories(dir, ec)) ::chmod(dir.c_str(), 0700);  // as the server makes it
    fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0) throw config_error("cannot open " + dir.string() + ": " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX) != 0) {
      const int e = errno;
      ::close(fd_);
      throw config_error("cannot lock " + dir.string() + ": " + std::strerror(e));
    }
    try {
      users = load_users_file(file);
    } catch (...) {
      ::close(fd_);  // (no destructor runs for a constructor that throws)
      throw;
    }
  }
  ~locked_file() { ::close(fd_); }
  locked_file(const locked_file&) = delete;
  locked_file& operator=(const locked_file&) = delete;

  std::vector<user_account> users;

  user_account* find(const std::string& name) {
    auto it = std::find_if(users.begin(), users.end(), [&](const user_account& u) { return u.name == name; });
    return it == users.end() ? nullptr : &*it;
  }

 private:
  int fd_ = -1;
};

user_admin::user_admin(server_config config, std::filesystem::path config_file)
    : config_(std::move(config)), config_file_(std::move(config_file)) {}

bool user_admin::default_admin(const std::vector<user_account>& file_users) const {
  return config_.users.empty() &&
         std::none_of(file_users.begin(), file_users.end(), [](const user_account& u) { return u.name == "admin"; });
}

void user_admin::refuse_config_user(const std::string& name, const char* action) const {
  for (const auto& u : config_.users) {
    if (u.name == name) {
      throw config_error("user '" + name + "' is declared in " + u.origin + ": " + action +
                         " it there (cskit user manages " + config_.users_file.string() + ")");
    }
  }
}

std::vector<listed_user> user_admin::list() const {
  const auto file_users = load_users_file(config_.users_file);
  std::vector<listed_user> out;
  if (default_admin(file_users)) {
    out.push_back({"admin", default_admin_permissions().names(),
                   "the default account (token in " + (config_.state_dir / "admin.token").string() + ")"});
  }
  for (const auto* set : {&config_.users, &file_users}) {
    for (const auto& u : *set) out.push_back({u.name, u.permissions.names(), u.origin});
  }
  return out;
}

void user_admin::save(const std::vector<user_account>& users) const {
  struct stat link {};
  if (::lstat(config_.users_file.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
    throw config_error(config_.users_file.string() +
                       " is a symbolic link; cskit user replaces the file whole: name the real file in [server] "
                       "users_file");
  }
  const std::string text = format_users_file(users);
  parse_users_file(text, config_.users_file.string());  // never write what the server would refuse
  // An existing file keeps its owner and mode; a new one is readable by the
  // group of the config file (the server's, when packaged), else private.
  struct stat st {};
  mode_t mode = 0600;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (::stat(config_.users_file.c_str(), &st) == 0) {
    mode = st.st_mode & 0660;
    uid = st.st_uid;
    gid = st.st_gid;
  } else if (!config_file_.empty() && ::stat(config_file_.c_str(), &st) == 0) {
    mode = 0640;
    gid = st.st_gid;
  }
  if (const int err = util::replace_file(config_.users_file.string(), text, mode, uid, gid); err != 0) {
    throw config_error("cannot write " + config_.users_file.string() + ": " + std::strerror(err));
  }
}

std::string user_admin::add(const std::string& name, proto::permission_set permissions) {
  if (!proto::is_valid_user_name(name)) {
    throw config_error("user name '" + name + "' must be 1-64 characters of A-Z a-z 0-9 . _ -");
  }
  refuse_config_user(name, "it exists; change");
  locked_file f(config_.users_file);
  if (f.find(name) != nullptr || (name == "admin" && default_admin(f.users))) {
    throw config_error("user '" + name + "' exists already (cskit user set, cskit user token " + name + " --rotate)");
  }
  std::string token = proto::random_hex(32);
  f.users.push_back({name, token, permissions, {}});
  save(f.users);
  return token;
}

void user_admin::remove(const std::string& name) {
  refuse_config_user(name, "remove");
  locked_file f(config_.users_file);
  if (f.find(name) == nullptr) {
    if (name == "admin" && default_admin(f.users)) {
      throw config_error(
          "admin is the default account of a server whose config declares no [[users]]; declare them in the "
          "config to replace it");
    }
    throw config_error("no user '" + name + "' in " + config_.users_file.string());
  }
  std::erase_if(f.users, [&](const user_account& u) { return u.name == name; });
  save(f.users);
}

std::string user_admin::rotate_admin_token_file() const {
  const auto path = config_.state_dir / "admin.token";
  std::error_code ec;
  if (std::filesystem::create_directories(config_.state_dir, ec)) ::chmod(config_.state_dir.c_str(), 0700);
  struct stat st {};
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  // The server's account owns the token (when packaged, `cskit` in
  // /var/lib/cskit): the old file's owner, or a new one gets the directory's.
  if (::stat(path.c_str(), &st) == 0 || ::stat(config_.state_dir.c_str(), &st) == 0) {
    uid = st.st_uid;
    gid = st.st_gid;
  }
  std::string token = proto::random_hex(32);
  if (const int err = util::replace_file(path.string(), token + "\n", 0600, uid, gid); err != 0) {
    throw config_error("cannot write " + path.string() + ": " + std::strerror(err));
  }
  return token;
}

std::string user_admin::rotate_token(const std::string& name) {
  refuse_config_user(name, "change its token");
  locked_file f(config_.users_file);
  user_account* u = f.find(name);
  if (u == nullptr && !(name == "admin" && default_admin(f.users))) {
    throw config_error("no user '" + name + "' in " + config_.users_file.string());
  }
  // The admin without a token of its own uses the generated one.
  if (u == nullptr || u->token.empty()) return rotate_admin_token_file();
  u->token = proto::random_hex(32);
  save(f.users);
  return u->token;
}

proto::permission_set user_admin::set_permissions(const std::string& name, std::string_view spec) {
  refuse_config_user(name, "change");
  locked_file f(config_.users_file);
  user_account* u = f.find(name);
  if (u == nullptr && name == "admin" && default_admin(f.users)) {
    // The default admin, given other permissions: an entry without a token
    // keeps the generated one.
    u = &f.users.emplace_back(user_account{"admin", "", default_admin_permissions(), {}});
  }
  if (u == nullptr) throw config_error("no user '" + name + "' in " + config_.users_file.string());
  u->permissions = parse_permission_change(spec, u->permissions);
  const auto result = u->permissions;
  save(f.users);
  return result;
}

}  // namespace cskit::server
