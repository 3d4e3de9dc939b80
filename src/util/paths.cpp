#include "util/paths.hpp"

#include <cstdlib>

namespace cskit::util {

std::filesystem::path default_state_dir() {
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x == '/') return std::filesystem::path(x) / "cskit";
  if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".local/state/cskit";
  return "/var/lib/cskit";
}

std::filesystem::path local_server_cert() { return default_state_dir() / "server.crt"; }

std::filesystem::path default_client_config() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x == '/') {
    return std::filesystem::path(x) / "cskit/client.toml";
  }
  if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".config/cskit/client.toml";
  return {};
}

}  // namespace cskit::util
