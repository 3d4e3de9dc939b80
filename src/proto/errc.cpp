#include "proto/errc.hpp"

#include <array>
#include <string>

namespace cskit::proto {
namespace {

struct entry {
  errc code;
  std::string_view wire;
  std::string_view message;
};

constexpr std::array entries{
    entry{errc::ok, "ok", "success"},
    entry{errc::header_too_large, "header_too_large", "frame header length exceeds 65536 bytes"},
    entry{errc::empty_header, "empty_header", "frame header length is zero"},
    entry{errc::invalid_utf8, "invalid_utf8", "frame header is not valid UTF-8"},
    entry{errc::bad_json, "bad_json", "frame header is not valid JSON"},
    entry{errc::header_not_object, "header_not_object", "frame header is not a JSON object"},
    entry{errc::missing_type, "missing_type", "frame header has no string \"type\""},
    entry{errc::bad_body_length, "bad_body_length", "frame \"body\" is not a non-negative integer"},
    entry{errc::body_too_large, "body_too_large", "frame body length exceeds 16777216 bytes"},
    entry{errc::bad_id, "bad_id", "frame \"id\" is not a non-negative integer"},
    entry{errc::handshake_required, "handshake_required", "the first frame must be \"auth\""},
    entry{errc::unsupported_version, "unsupported_version", "protocol version not supported"},
    entry{errc::auth_failed, "auth_failed", "authentication failed: unknown user or wrong token"},
    entry{errc::permission_denied, "permission_denied", "permission denied"},
    entry{errc::unknown_type, "unknown_type", "unknown request type"},
    entry{errc::bad_request, "bad_request", "malformed request"},
    entry{errc::handshake_timeout, "handshake_timeout", "no authentication within the handshake deadline"},
    entry{errc::idle_timeout, "idle_timeout", "connection idle for too long"},
    entry{errc::frame_timeout, "frame_timeout", "a frame was started but not completed in time"},
    entry{errc::too_many_connections, "too_many_connections", "server has reached its connection limit"},
    entry{errc::shutting_down, "shutting_down", "server is shutting down"},
    entry{errc::overloaded, "overloaded", "peer is not reading fast enough"},
    entry{errc::internal_error, "internal_error", "internal server error"},
    entry{errc::not_allowed, "not_allowed", "not allowed by the server's policy"},
    entry{errc::busy, "busy", "server is at a concurrency limit; try again later"},
    entry{errc::spawn_failed, "spawn_failed", "the command could not be started"},
    entry{errc::not_found, "not_found", "no such object"},
    entry{errc::conflict, "conflict", "the name is already in use"},
    entry{errc::rate_limited, "rate_limited", "too many requests; slow down"},
    entry{errc::too_large, "too_large", "over the size limit"},
    entry{errc::bad_path, "bad_path", "invalid path, or a path that leads outside the share"},
    entry{errc::exists, "exists", "the target already exists"},
    entry{errc::not_empty, "not_empty", "the directory is not empty"},
    entry{errc::no_space, "no_space", "no space left on the server's disk"},
    entry{errc::quota_exceeded, "quota_exceeded", "the share's quota would be exceeded"},
    entry{errc::integrity, "integrity", "content digest mismatch: the data was corrupted; nothing was committed"},
    entry{errc::changed, "changed", "the source changed or vanished while it was being read"},
    entry{errc::io_error, "io_error", "file-system error"},
};

const entry* find(errc e) noexcept {
  for (const auto& x : entries) {
    if (x.code == e) return &x;
  }
  return nullptr;
}

class category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "cskit.protocol"; }
  std::string message(int ev) const override {
    return std::string(default_message(static_cast<errc>(ev)));
  }
};

}  // namespace

std::string_view to_wire(errc e) noexcept {
  const entry* x = find(e);
  return x ? x->wire : "internal_error";
}

std::optional<errc> errc_from_wire(std::string_view name) noexcept {
  for (const auto& x : entries) {
    if (x.wire == name) return x.code;
  }
  return std::nullopt;
}

std::string_view default_message(errc e) noexcept {
  const entry* x = find(e);
  return x ? x->message : "unknown error";
}

const std::error_category& protocol_category() noexcept {
  static const category instance;
  return instance;
}

}  // namespace cskit::proto
