#pragma once
// The table of commands. Each command registers itself in the file that
// implements it: its name, a one-line summary, the usage line, and a
// function that adds its options to a CLI::App and returns what runs it.
// Adding a command touches that one file. main.cpp builds the chosen
// command (every command only for help, the man page and completion),
// parses, and runs what the build returned.

#include <functional>
#include <span>
#include <string>
#include <vector>
#include <string_view>

namespace CLI {
class App;
}

namespace cskit::app {

/// What a built command runs once the command line is parsed: it reads
/// the values its options were parsed into, and returns the exit code.
using command_runner = std::function<int()>;

/// What main() knows of the arguments beyond what CLI11 parses: for a
/// command with `words_after_dashes`, everything after the first `--`,
/// verbatim (it is never parsed as options). Filled before the runner runs.
struct command_args {
  bool had_dashes = false;
  std::vector<std::string> after_dashes;
};

struct command_spec {
  std::string_view name;
  std::string_view summary;  ///< one line, for `cskit help` and the man page
  std::string_view usage;    ///< what follows `cskit NAME` in the usage line
  int order = 0;             ///< place in listings (help, man page, completion)
  /// Adds the command's options and positionals to `cmd`; the runner it
  /// returns may keep `cmd` (it outlives the run).
  command_runner (*build)(CLI::App& cmd, const command_args& args) = nullptr;
  bool words_after_dashes = false;  ///< main() keeps what follows `--` from CLI11 (exec's command)
  bool needs_all_commands = false;  ///< help, completion: every command is built, to be described
  bool hidden = false;              ///< left out of help listings and completion
};

/// Registers a copy of `spec` during static initialisation (a namespace-
/// scope object of each command's file). The table is only read from
/// main(), after every registration.
class command_registration {
 public:
  explicit command_registration(const command_spec& spec);
  command_registration(const command_registration&) = delete;
  command_registration& operator=(const command_registration&) = delete;

 private:
  command_spec spec_;
};

/// Every registered command, in `order`.
std::span<const command_spec* const> commands();

/// The command called `name`, or nullptr.
const command_spec* find_command(std::string_view name);

/// Registered names close to `typed` (a transposition, a letter too many,
/// too few or wrong, twice at most; or a unique prefix), best first.
std::vector<std::string_view> similar_commands(std::string_view typed);

}  // namespace cskit::app
