#include "proto/messages.hpp"

#include <array>

namespace cskit::proto {
namespace {
constexpr std::array all_permissions{
    std::pair{permission::files_read, std::string_view{"files-read"}},
    std::pair{permission::files_write, std::string_view{"files-write"}},
    std::pair{permission::exec, std::string_view{"exec"}},
    std::pair{permission::chat, std::string_view{"chat"}},
};
}  // namespace

std::vector<std::string> permission_set::names() const {
  std::vector<std::string> out;
  for (auto [p, name] : all_permissions) {
    if (has(p)) out.emplace_back(name);
  }
  return out;
}

std::string_view to_wire(permission p) noexcept {
  for (auto [q, name] : all_permissions) {
    if (q == p) return name;
  }
  return "";
}

std::optional<permission> permission_from_wire(std::string_view name) noexcept {
  for (auto [p, n] : all_permissions) {
    if (n == name) return p;
  }
  return std::nullopt;
}

}  // namespace cskit::proto
