#include "service/audit.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <vector>

#include "net/journal.hpp"

namespace cskit::service {

namespace {

// A path or message as a JSON string: quoted, with control characters and
// quotes escaped, so that one record is one line whatever a name holds.
std::string quoted(std::string_view s) {
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string audit_line(const file_audit_record& r) {
  std::string line = "files op=" + std::string(r.op) + " user=" + std::string(r.user) + " peer=" + std::string(r.peer) +
                     " path=" + quoted(r.path);
  if (!r.to.empty()) line += " to=" + quoted(r.to);
  line += " bytes=" + std::to_string(r.bytes) + " result=" + std::string(r.result);
  if (!r.detail.empty()) line += " message=" + quoted(r.detail);
  return line;
}

void audit_file_operation(const file_audit_record& r) {
  const std::string line = audit_line(r);
  static const bool journal = net::stderr_is_journal();
  if (journal) {
    const std::string bytes = std::to_string(r.bytes);
    std::vector<net::journal_field> fields = {
        {"MESSAGE", line},  {"PRIORITY", "6"},      {"SYSLOG_IDENTIFIER", "cskit"}, {"CSKIT_AUDIT", "files"},
        {"CSKIT_OP", r.op}, {"CSKIT_USER", r.user}, {"CSKIT_PEER", r.peer},         {"CSKIT_PATH", r.path},
        {"CSKIT_BYTES", bytes}, {"CSKIT_RESULT", r.result},
    };
    if (!r.to.empty()) fields.push_back({"CSKIT_TO", r.to});
    if (!r.detail.empty()) fields.push_back({"CSKIT_ERROR", r.detail});
    if (net::send_to_journal(fields)) return;
  }
  spdlog::info("{}", line);
}

}  // namespace cskit::service
