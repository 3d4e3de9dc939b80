// cskit: one binary, server and client. This file only wires the command
// line to the commands (app/command_table.hpp): each command registers its
// name, options and runner in the file that implements it.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "app/cli_options.hpp"
#include "app/command_table.hpp"
#include "app/commands.hpp"
#include "app/docs.hpp"
#include "proto/limits.hpp"
#include "version.hpp"

namespace cskit::app {

namespace {

constexpr const char* description =
    "cskit: file transfer, remote execution, chat, UDP echo/ping and time over one protocol";

std::string version_text() {
  return std::string("cskit ") + cskit_version + " (protocol " + std::to_string(proto::protocol_version) + ")";
}

// Usage lines as the command table writes them (`cskit put [-r] ...
// LOCAL... HOST:[REMOTE]`) instead of CLI11's `[OPTIONS] PATHS`.
class formatter final : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App* app, std::string name) const override {
    if (app->get_parent() == nullptr) return "Usage: cskit COMMAND [ARG...]   (cskit help COMMAND for one)\n";
    const command_spec* spec = find_command(app->get_name());
    if (spec == nullptr) return CLI::Formatter::make_usage(app, name);
    return "Usage: cskit " + std::string(spec->name) + (spec->usage.empty() ? "" : " ") + std::string(spec->usage) +
           "\n";
  }
};

// ------------------------------------------------------------ help, version

std::string help_of(const CLI::App& app, std::string_view command) {
  const CLI::App* target = &app;
  std::string name = "cskit";
  if (!command.empty()) {
    target = app.get_subcommand(std::string(command));
    name += " " + std::string(command);
  }
  // The formatter directly: App::help() would describe the command that
  // was parsed (help itself).
  return target->get_formatter()->make_help(target, name, CLI::AppFormatMode::Normal);
}

struct help_state {
  std::string topic;
  bool man = false;
};

command_runner build_help(CLI::App& cmd, const command_args&) {
  auto s = std::make_shared<help_state>();
  cmd.add_option("COMMAND", s->topic, "Command to describe, or config for the server's config file");
  cmd.add_flag("--man", s->man, "The manual page instead, in roff: cskit(1), or cskit.toml(5) with config");
  return [s, &cmd] {
    const CLI::App& app = *cmd.get_parent();
    const std::string& topic = s->topic;
    if (s->man && (topic.empty() || topic == "config")) {
      std::printf("%s", (topic.empty() ? man_page(app, cskit_version) : config_man_page(cskit_version)).c_str());
      return exit_code::ok;
    }
    if (topic == "config") {
      std::printf("%s", config_reference_text);
      return exit_code::ok;
    }
    if (topic.empty()) {
      std::printf("%s", help_of(app, "").c_str());
      return exit_code::ok;
    }
    const command_spec* spec = find_command(topic);
    if (spec == nullptr || s->man) {
      std::fprintf(stderr, "cskit help: no %s '%s'; cskit help lists them\n", s->man ? "manual page for" : "command",
                   topic.c_str());
      return exit_code::usage;
    }
    std::printf("%s", help_of(app, spec->name).c_str());
    return exit_code::ok;
  };
}

const command_registration help_registration{{
    .name = "help",
    .summary = "Show help for cskit, one command, or the server's config file (cskit help config)",
    .usage = "[--man] [COMMAND|config]",
    .order = 1000,
    .build = build_help,
    .needs_all_commands = true,
}};

command_runner build_completion(CLI::App& cmd, const command_args&) {
  auto shell = std::make_shared<std::string>();
  cmd.add_option("SHELL", *shell, "bash, zsh or fish")->required()->check(CLI::IsMember({"bash", "zsh", "fish"}));
  cmd.footer(R"(Installed by the package; otherwise, for bash: source <(cskit completion bash)
  zsh: cskit completion zsh > ~/.zfunc/_cskit (a directory in $fpath); fish: cskit completion
  fish > ~/.config/fish/completions/cskit.fish)");
  return [shell, &cmd] {
    std::printf("%s", completion_script(*cmd.get_parent(), *shell).c_str());
    return exit_code::ok;
  };
}

const command_registration completion_registration{{
    .name = "completion",
    .summary = "Print a shell completion script (bash, zsh, fish)",
    .usage = "bash|zsh|fish",
    .order = 1020,
    .build = build_completion,
    .needs_all_commands = true,
}};

command_runner build_version(CLI::App&, const command_args&) {
  return [] {
    std::printf("%s\n", version_text().c_str());
    return exit_code::ok;
  };
}

const command_registration version_registration{{
    .name = "version",
    .summary = "Print cskit's version and its protocol's (as --version)",
    .usage = "",
    .order = 1010,
    .build = build_version,
}};

// ------------------------------------------------------------ parsing

struct built_command {
  const command_spec* spec;
  CLI::App* app;
  command_runner run;
};

// The words of a usage line that name arguments: "[-n N] LOCAL... HOST:[REMOTE]"
// gives "LOCAL... HOST:[REMOTE]" (an optional part, in brackets from the
// start of a word to its closing one, is left out).
std::string argument_names(std::string_view usage) {
  std::string out;
  int depth = 0;
  std::size_t i = 0;
  while (i < usage.size()) {
    std::size_t j = usage.find(' ', i);
    if (j == std::string_view::npos) j = usage.size();
    const std::string_view word = usage.substr(i, j - i);
    const bool optional = depth > 0 || (!word.empty() && word[0] == '[');
    if (optional) {
      for (char ch : word) depth += ch == '[' ? 1 : ch == ']' ? -1 : 0;
    } else if (!word.empty() && word[0] != '-') {
      out += (out.empty() ? "" : " ") + std::string(word);
    }
    i = j + 1;
  }
  return out;
}

int unknown_command(std::string_view typed) {
  std::string names;
  for (const command_spec* c : commands()) {
    if (!c->hidden) names += (names.empty() ? "" : ", ") + std::string(c->name);
  }
  const auto similar = similar_commands(typed);
  std::string hint;
  if (!similar.empty()) {
    hint = "; did you mean '" + std::string(similar.front()) + "'";
    for (std::size_t k = 1; k < similar.size() && k < 3; ++k) hint += " or '" + std::string(similar[k]) + "'";
    hint += "?";
  }
  std::fprintf(stderr, "cskit: '%.*s' is not a cskit command%s\ncommands: %s (cskit help COMMAND tells more)\n",
               static_cast<int>(typed.size()), typed.data(), hint.c_str(), names.c_str());
  return exit_code::usage;
}

// A parse error, said as `cskit COMMAND: what`, naming what the usage line names.
int parse_failure(const CLI::ParseError& e, const built_command* chosen) {
  const std::string who = chosen ? "cskit " + std::string(chosen->spec->name) : std::string("cskit");
  const std::string help_hint = chosen ? "cskit help " + std::string(chosen->spec->name) : std::string("cskit help");
  if (dynamic_cast<const CLI::ExtrasError*>(&e) && chosen) {
    auto extra = chosen->app->remaining();
    if (extra.empty()) extra = chosen->app->get_parent()->remaining(true);  // left to the top level (after --)
    const std::string word = extra.empty() ? std::string("--") : extra.front();
    if (!word.empty() && word[0] == '-') {
      std::fprintf(stderr, "%s: unknown option '%s' (%s)\n", who.c_str(), word.c_str(), help_hint.c_str());
    } else {
      std::fprintf(stderr, "%s: unexpected argument '%s'; usage: %s %.*s\n", who.c_str(), word.c_str(), who.c_str(),
                   static_cast<int>(chosen->spec->usage.size()), chosen->spec->usage.data());
    }
    return exit_code::usage;
  }
  const std::string_view what = e.what();
  const auto required = what.find(" is required");
  const CLI::Option* missing =
      dynamic_cast<const CLI::RequiredError*>(&e) && chosen && required != std::string_view::npos
          ? chosen->app->get_option_no_throw(std::string(what.substr(0, required)))
          : nullptr;
  if (missing != nullptr && missing->get_positional()) {
    std::fprintf(stderr, "%s: missing %s; usage: %s %.*s\n", who.c_str(),
                 argument_names(chosen->spec->usage).c_str(), who.c_str(), static_cast<int>(chosen->spec->usage.size()),
                 chosen->spec->usage.data());
    return exit_code::usage;
  }
  std::fprintf(stderr, "%s: %s (%s)\n", who.c_str(), e.what(), help_hint.c_str());
  return exit_code::usage;
}

// Everything after the first `--` of a command that takes a command line
// (exec): kept from CLI11, handed over verbatim. Returns the arguments
// CLI11 parses.
int split_after_dashes(int argc, char** argv, command_args& args) {
  for (int i = 2; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      args.had_dashes = true;
      args.after_dashes.assign(argv + i + 1, argv + argc);
      return i;
    }
  }
  return argc;
}

}  // namespace

int main_impl(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("cskit");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  const std::string_view word = argc > 1 ? std::string_view(argv[1]) : std::string_view();
  const command_spec* spec = find_command(word);
  if (spec == nullptr && !word.empty() && word[0] != '-') return unknown_command(word);

  CLI::App app{description, "cskit"};
  auto help_format = std::make_shared<formatter>();
  help_format->label("Subcommands", "Commands");
  app.formatter(help_format);
  app.set_version_flag("--version", version_text());
  app.require_subcommand(1);
  // Only the chosen command is built: building every command (each a
  // CLI::App with its own options) costs about half of a client's start-up
  // instructions, and `cskit exec HOST true` is timed from a fresh process.
  // Help, and no command at all, build them all: they list them.
  const bool build_all = spec == nullptr || spec->needs_all_commands;
  command_args args;
  std::vector<built_command> built;
  for (const command_spec* c : commands()) {
    if (!build_all && c != spec) continue;
    CLI::App* sub = app.add_subcommand(std::string(c->name), std::string(c->summary));
    if (c->hidden) sub->group("");
    built.push_back({c, sub, c->build(*sub, args)});
  }
  // After the commands: a footer set before is copied into each of them.
  app.footer(exit_codes_text);

  const built_command* chosen = nullptr;
  for (const auto& b : built) {
    if (b.spec == spec) chosen = &b;
  }
  const int parse_argc = spec && spec->words_after_dashes ? split_after_dashes(argc, argv, args) : argc;
  try {
    app.parse(parse_argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    if (chosen == nullptr && word.empty()) {
      std::fprintf(stderr, "%s", help_of(app, "").c_str());
      return exit_code::usage;
    }
    return parse_failure(e, chosen);
  }
  for (const auto& b : built) {
    if (b.app->parsed()) return b.run();
  }
  return exit_code::usage;
}

}  // namespace cskit::app

int main(int argc, char** argv) {
  try {
    return cskit::app::main_impl(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cskit: %s\n", e.what());
    return cskit::app::exit_code::failure;
  }
}
