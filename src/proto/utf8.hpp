#pragma once
#include <string_view>

namespace cskit::proto {

/// True when `s` is well-formed UTF-8 (RFC 3629): no overlong forms, no
/// surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated
/// sequences. NUL bytes are well-formed.
bool is_valid_utf8(std::string_view s) noexcept;

}  // namespace cskit::proto
