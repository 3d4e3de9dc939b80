#pragma once
// Stable, machine-readable error codes. Each has a wire name sent in the
// `code` field of `error` frames; the names never change once released
// (docs/protocol.md, "Error codes").

#include <optional>
#include <string_view>
#include <system_error>

namespace cskit::proto {

enum class errc {
  ok = 0,
  // framing (the decoder's verdicts)
  header_too_large = 1,   // header length prefix above max_header_size
  empty_header,           // header length prefix of 0
  invalid_utf8,           // header bytes are not valid UTF-8
  bad_json,               // header is not parseable JSON
  header_not_object,      // header is JSON but not an object
  missing_type,           // no `type`, or `type` not a non-empty string
  bad_body_length,        // `body` not a non-negative integer
  body_too_large,         // `body` above max_body_size
  bad_id,                 // `id` present but not a non-negative integer
  // session
  handshake_required,     // first frame from the client was not `auth`
  unsupported_version,    // client's protocol version is not served
  auth_failed,            // unknown user or wrong proof
  permission_denied,      // authenticated, but lacks the permission
  unknown_type,           // request type not known to the server
  bad_request,            // a known request with missing/invalid fields
  handshake_timeout,      // no auth within the handshake deadline
  idle_timeout,           // no frame within the idle deadline
  frame_timeout,          // a frame was started and not finished in time
  too_many_connections,   // server at --max-connections
  shutting_down,          // server is stopping
  overloaded,             // send queue overflow or similar
  internal_error,
  // services
  not_allowed,            // the server's policy forbids it (exec disabled, program not on the allow-list, ...)
  busy,                   // a concurrency limit is reached; try again later
  spawn_failed,           // the command could not be started (no such program, ...)
  not_found,              // the request names something that does not exist (e.g. an exec id)
  conflict,               // the name is already in use (e.g. a chat nickname)
  rate_limited,           // too many requests; slow down (see retry_after)
  too_large,              // a field or body is over a documented limit
  // files
  bad_path,               // a path that is invalid or leads outside the share
  exists,                 // the target exists and may not be replaced (no_clobber, mkdir)
  not_empty,              // a directory that is not empty, removed without recursive
  no_space,               // the file system is full (ENOSPC, EDQUOT)
  quota_exceeded,         // the share's configured quota would be exceeded
  integrity,              // the content digest does not match: nothing was committed
  changed,                // the source changed or vanished while it was being read
  io_error,               // another file-system error (the message says which)
};

/// Wire name of a code, e.g. "auth_failed".
std::string_view to_wire(errc e) noexcept;

/// Inverse of to_wire; nullopt for names this build does not know.
std::optional<errc> errc_from_wire(std::string_view name) noexcept;

/// One-line default human message.
std::string_view default_message(errc e) noexcept;

const std::error_category& protocol_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), protocol_category()};
}

}  // namespace cskit::proto

template <>
struct std::is_error_code_enum<cskit::proto::errc> : std::true_type {};
