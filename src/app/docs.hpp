#pragma once
// Documentation made from the same text as `cskit help`: the man pages
// cskit(1) and cskit.toml(5), and shell completion scripts. The package
// build runs the binary to write them (packaging/CMakeLists.txt), so they
// never drift from the commands.

#include <string>
#include <string_view>

namespace CLI {
class App;
}

namespace cskit::app {

/// Every key of the server's config file with its default (config_reference.cpp).
extern const char* const config_reference_text;

/// cskit(1) in roff (man(7) macros), from `app` with every command built.
std::string man_page(const CLI::App& app, std::string_view version);

/// cskit.toml(5) in roff, from config_reference_text.
std::string config_man_page(std::string_view version);

/// A completion script for `shell` (bash, zsh or fish), from `app` with
/// every command built; empty for another shell.
std::string completion_script(const CLI::App& app, std::string_view shell);

}  // namespace cskit::app
