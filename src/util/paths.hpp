#pragma once
#include <filesystem>

namespace cskit::util {

/// The server's state directory when none is configured:
/// $XDG_STATE_HOME/cskit, else ~/.local/state/cskit, else /var/lib/cskit.
std::filesystem::path default_state_dir();

/// The certificate of the server run by this user with the default state
/// directory (<state dir>/server.crt): a client finds its own machine's
/// server's key there, as it finds its admin token.
std::filesystem::path local_server_cert();

/// The client's config file: $XDG_CONFIG_HOME/cskit/client.toml, else
/// ~/.config/cskit/client.toml.
std::filesystem::path default_client_config();

}  // namespace cskit::util
