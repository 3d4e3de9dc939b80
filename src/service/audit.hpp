#pragma once
// The audit trail of file operations: one record per put, get, rm, mv and
// mkdir (user, peer, path, bytes, result), as exec already logs each
// command. Under systemd (stderr is the journal) each record goes to the
// journal with its fields (CSKIT_OP=, CSKIT_USER=, ...: journalctl
// CSKIT_OP=rm finds them); otherwise it is a log line on stderr.

#include <cstdint>
#include <string>
#include <string_view>

namespace cskit::service {

struct file_audit_record {
  std::string_view op;    ///< put, get, rm, mv, mkdir
  std::string_view user;
  std::string_view peer;
  std::string_view path;  ///< relative to the share
  std::string_view to;    ///< mv: the new path; otherwise empty
  std::uint64_t bytes = 0;
  std::string_view result;  ///< "ok", or the error code (not_found, ...)
  std::string_view detail;  ///< the error message; empty when ok
};

/// The record as one log line: `files op=rm user=alice peer=... path="a/b" bytes=0 result=ok`.
std::string audit_line(const file_audit_record& r);

/// Records `r`: to the journal under systemd, else as a log line.
void audit_file_operation(const file_audit_record& r);

/// A record whose result comes later, maybe after its connection is gone:
/// its fields kept by value.
struct file_audit_record_owned {
  std::string op, user, peer, path, to;
  std::uint64_t bytes = 0;
  void write(std::string_view result, std::string_view detail) const {
    audit_file_operation({op, user, peer, path, to, bytes, result, detail});
  }
};

}  // namespace cskit::service
