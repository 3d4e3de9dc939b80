#pragma once
// The server's TLS identity: a certificate chain and key from the config
// ([tls] cert and key, e.g. from Let's Encrypt), or by default a key pair
// and self-signed certificate generated once into the state directory, as
// sshd generates its host keys. Clients pin its key (docs/protocol.md,
// "Server identity").

#include <filesystem>
#include <string>

namespace cskit::server {

/// The default identity's files in a state directory.
std::filesystem::path default_cert_file(const std::filesystem::path& state_dir);
std::filesystem::path default_key_file(const std::filesystem::path& state_dir);

struct identity_files {
  std::filesystem::path cert;
  std::filesystem::path key;
  bool generated = false;  ///< created by this call
};

/// The default identity in `state_dir` (server.crt and server.key, both
/// mode 0600, the directory 0700), generated on first use: an ECDSA P-256
/// key and a self-signed certificate naming `name`. Concurrent servers
/// agree on one identity (an exclusive lock while it is created), and no
/// reader ever sees a half-written file. Throws config_error.
identity_files ensure_default_identity(const std::filesystem::path& state_dir, const std::string& name);

}  // namespace cskit::server
