#pragma once
// Chat history in SQLite (docs/architecture.md, "Chat history"): one file,
// nothing to set up. Messages are written by a thread of their own, in
// batches of one transaction each, so that storing never slows the event
// loops' fan-out; a query sees what is stored and what still waits to be
// written.

#include <filesystem>
#include <memory>
#include <stdexcept>

#include "service/chat_history.hpp"

namespace cskit::service {

class history_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Opens (creating when missing) the history database at `path`. Throws
/// history_error, naming the file, when it cannot be created, written or
/// read, or fails SQLite's integrity check: a corrupt or unwritable
/// database is an error at start, never silent loss.
std::unique_ptr<chat_history> open_sqlite_history(const std::filesystem::path& path, chat_retention retention);

}  // namespace cskit::service
