#pragma once
// Options several commands share (login, trust, port) and the texts their
// help pages share. Each command adds its own in its own file
// (command_table.hpp).

#include <CLI/CLI.hpp>

#include "app/commands.hpp"

namespace cskit::app {

/// The exit-code table: in `cskit help` and the man page, not repeated
/// in every command's help.
extern const char* const exit_codes_text;

/// How remote paths are written, and the file commands' own exit codes.
extern const char* const remote_paths_text;

/// -P PORT, as scp has it, for the file commands.
void add_port_option(CLI::App& cmd, files_options& o);

/// --fingerprint, --accept-new, --ca-file, --plaintext.
void add_trust_options(CLI::App& cmd, client_common& c);

/// --user, --token, --client-config, the timeouts, --json, and the trust options.
void add_login_options(CLI::App& cmd, client_common& c);

/// HOST, then the login options.
void add_client_options(CLI::App& cmd, client_common& c);

}  // namespace cskit::app
