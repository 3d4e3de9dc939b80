#pragma once
// The packed form of a listing (fs.list with "packed": true): the entries
// of an fs.list.reply as compact binary records instead of a JSON array,
// names sharing their prefix with the entry before, times as differences.
// A tree of small files lists in about a seventh of the JSON's bytes
// (docs/protocol.md, "Packed listings"). No I/O.

#include <optional>
#include <string>
#include <string_view>

#include "proto/frame.hpp"

namespace cskit::proto {

/// Entries as fs.list describes them (JSON objects: name, type, size,
/// mode, mtime_ns, and target or xxh3 when present), packed.
std::string pack_entries(const json& entries);
/// Entries in one fs.list.reply frame, at most.
inline constexpr std::size_t max_packed_entries = 2000;
/// The entries of a packed body, as JSON objects; nullopt when it is
/// malformed (every length is checked before it is used) or holds more
/// than `max_entries` (a 7-byte record can name a 4 KiB path).
std::optional<json> unpack_entries(std::string_view body, std::size_t max_entries = max_packed_entries);

}  // namespace cskit::proto
