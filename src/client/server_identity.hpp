#pragma once
// Is the TLS peer the server the user meant? The client's side of
// "Server identity" in docs/protocol.md: pinned fingerprint, known hosts,
// this machine's own server, a CA-issued certificate, then the user.
// Runs after the TLS handshake and before anything of the session is sent.

#include <string>

#include "client/client.hpp"
#include "net/endpoint.hpp"

namespace cskit::net::tls {
class channel;
}

namespace cskit::client {

/// Returns how the server's key was trusted ("pinned fingerprint",
/// "known_hosts line 3", ...). Throws client_error: host_key_changed when a
/// pinned or known key differs (naming the file and line), host_key_unknown
/// when a new key was neither accepted nor vouched for by a CA.
std::string check_server_identity(const net::tls::channel& channel, const net::host_port& where,
                                  const server_trust& trust);

}  // namespace cskit::client
