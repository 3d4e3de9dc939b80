#pragma once
#include <filesystem>
#include <optional>
#include <string>

namespace cskit::util {

enum class token_file_status { ok, missing, not_private, empty, unreadable };

/// Reads a token from a file that must be private to its owner (no group or
/// other permission bits), without following a symlink at the last
/// component. Trailing newlines and spaces are removed.
token_file_status read_private_token(const std::filesystem::path& path, std::string& token);

}  // namespace cskit::util
