#pragma once
// IRC messages (RFC 1459/2812 as "Modern IRC" describes them, with IRCv3
// message tags): parsing a line a client sent and writing the lines a
// server sends. No I/O.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cskit::proto::irc {

/// Bytes a client may send in one line: the tags (4094 with '@' and the
/// space, IRCv3) and the rest, CR LF included (512).
inline constexpr std::size_t max_client_tags = 4096;
inline constexpr std::size_t max_line = 512;

struct message {
  std::vector<std::pair<std::string, std::string>> tags;  ///< unescaped values
  std::string source;                                     ///< without ':'
  std::string command;                                    ///< upper-cased
  std::vector<std::string> params;                        ///< the trailing one included
};

enum class parse_result { ok, empty, too_long, bad };

/// Parses one line without its CR LF. `too_long`: the part after the tags
/// is over 510 bytes or the tags over 4094; `bad`: no command, more than
/// 15 parameters, or a NUL byte.
parse_result parse(std::string_view line, message& out);

/// Tag values (IRCv3 message-tags): '\:' ';', '\s' ' ', '\\' '\', '\r', '\n'.
std::string escape_tag_value(std::string_view v);
std::string unescape_tag_value(std::string_view v);

/// "2026-12-06T04:50:00.123Z" for Unix milliseconds (server-time).
std::string iso_time(std::int64_t unix_ms);
/// The inverse; nullopt unless it is that exact form (seconds may lack the
/// fraction).
std::optional<std::int64_t> parse_iso_time(std::string_view s);

/// Appends "[@tags ][:source ]command params...\r\n": every parameter but
/// the last must be a non-empty word without spaces (not starting with
/// ':'); the last is sent as a trailing parameter when it needs to be, or
/// always with `text` (free text: a message, a reason, a numeric's words).
/// `tags` is the already-escaped "k=v;k2=v2" (empty: none).
void append(std::string& out, std::string_view tags, std::string_view source, std::string_view command,
            std::initializer_list<std::string_view> params, bool text = false);
void append(std::string& out, std::string_view tags, std::string_view source, std::string_view command,
            const std::vector<std::string>& params, bool text = false);

/// Text made safe for one IRC parameter: CR, LF and NUL become spaces.
std::string one_line(std::string_view text);

/// `text` cut into pieces of at most `max` bytes, at line breaks first
/// (each line of the text is its own piece), then at UTF-8 character
/// boundaries; CR and NUL are dropped, empty lines skipped.
std::vector<std::string> split_text(std::string_view text, std::size_t max);

}  // namespace cskit::proto::irc
