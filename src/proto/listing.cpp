#include "proto/listing.hpp"

#include "proto/utf8.hpp"

#include <array>
#include <cstdint>

namespace cskit::proto {

namespace {

constexpr std::size_t max_text = 4096;  // a name (a path, in a recursive listing) or a link's target
constexpr std::array<std::string_view, 4> type_names = {"file", "dir", "symlink", "other"};
enum flag : std::uint8_t { type_bits = 0x03, mode_same = 0x04, has_xxh3 = 0x08, has_target = 0x10 };

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

std::uint8_t type_code(const std::string& t) {
  for (std::size_t i = 0; i < type_names.size(); ++i) {
    if (type_names[i] == t) return static_cast<std::uint8_t>(i);
  }
  return 3;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// 32 lowercase hex digits as 16 bytes; false for anything else.
bool xxh3_bytes(const std::string& hex, std::string& out) {
  if (hex.size() != 32) return false;
  std::string bytes;
  for (std::size_t i = 0; i < 32; i += 2) {
    const int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes.push_back(static_cast<char>(hi * 16 + lo));
  }
  out += bytes;
  return true;
}

class reader {
 public:
  explicit reader(std::string_view body) : p_(body) {}
  bool done() const { return p_.empty(); }
  bool byte(std::uint8_t& b) {
    if (p_.empty()) return false;
    b = static_cast<std::uint8_t>(p_.front());
    p_.remove_prefix(1);
    return true;
  }
  bool varint(std::uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      std::uint8_t b;
      if (!byte(b)) return false;
      if (shift == 63 && b > 1) return false;  // past 64 bits
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  bool text(std::string_view& s, std::size_t max) {
    std::uint64_t n;
    if (!varint(n) || n > max || n > p_.size()) return false;
    s = p_.substr(0, static_cast<std::size_t>(n));
    p_.remove_prefix(static_cast<std::size_t>(n));
    return true;
  }
  bool raw(std::string_view& s, std::size_t n) {
    if (n > p_.size()) return false;
    s = p_.substr(0, n);
    p_.remove_prefix(n);
    return true;
  }

 private:
  std::string_view p_;
};

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : bytes) {
    s.push_back(digits[c >> 4]);
    s.push_back(digits[c & 15]);
  }
  return s;
}

}  // namespace

std::string pack_entries(const json& entries) {
  std::string out;
  std::string prev_name;
  std::optional<std::uint64_t> prev_mode;  // none before the first entry (any value could be a mode)
  std::uint64_t prev_mtime = 0;  // as unsigned: differences wrap
  for (const auto& e : entries) {
    const std::string name = e.value("name", "");
    const std::uint64_t mode = e.value("mode", std::uint64_t{0});
    const auto mtime = static_cast<std::uint64_t>(e.value("mtime_ns", std::int64_t{0}));
    std::string digest;
    const bool with_digest = e.contains("xxh3") && xxh3_bytes(e.value("xxh3", ""), digest);
    const bool with_target = e.contains("target");
    std::uint8_t flags = type_code(e.value("type", "other"));
    if (mode == prev_mode) flags |= mode_same;
    if (with_digest) flags |= has_xxh3;
    if (with_target) flags |= has_target;
    out.push_back(static_cast<char>(flags));
    std::size_t shared = 0;
    while (shared < name.size() && shared < prev_name.size() && name[shared] == prev_name[shared]) ++shared;
    put_varint(out, shared);
    put_varint(out, name.size() - shared);
    out.append(name, shared);
    put_varint(out, e.value("size", std::uint64_t{0}));
    if (mode != prev_mode) put_varint(out, mode);
    const auto delta = static_cast<std::int64_t>(mtime - prev_mtime);
    put_varint(out, (static_cast<std::uint64_t>(delta) << 1) ^ static_cast<std::uint64_t>(delta >> 63));  // zigzag
    out += digest;
    if (with_target) {
      const std::string target = e.value("target", "");
      put_varint(out, target.size());
      out += target;
    }
    prev_name = name;
    prev_mode = mode;
    prev_mtime = mtime;
  }
  return out;
}

std::optional<json> unpack_entries(std::string_view body, std::size_t max_entries) {
  reader r(body);
  json entries = json::array();
  std::string name;
  std::uint64_t mode = 0, mtime = 0;
  bool have_mode = false;
  while (!r.done()) {
    if (entries.size() == max_entries) return std::nullopt;
    std::uint8_t flags;
    std::uint64_t shared, size, zz;
    std::string_view suffix;
    if (!r.byte(flags) || (flags & ~(type_bits | mode_same | has_xxh3 | has_target)) != 0) return std::nullopt;
    if (!r.varint(shared) || shared > name.size() || !r.text(suffix, max_text - shared)) return std::nullopt;
    name.resize(static_cast<std::size_t>(shared));
    name += suffix;
    if (!is_valid_utf8(name) || !r.varint(size)) return std::nullopt;  // (JSON strings are UTF-8)
    if ((flags & mode_same) == 0) {
      if (!r.varint(mode)) return std::nullopt;
      have_mode = true;
    } else if (!have_mode) {
      return std::nullopt;  // nothing to be the same as
    }
    if (!r.varint(zz)) return std::nullopt;
    mtime += (zz >> 1) ^ (~(zz & 1) + 1);  // zigzag back, added modulo 2^64
    json e = {{"name", name},
              {"type", type_names[flags & type_bits]},
              {"size", size},
              {"mode", mode},
              {"mtime_ns", static_cast<std::int64_t>(mtime)}};
    std::string_view extra;
    if ((flags & has_xxh3) != 0) {
      if (!r.raw(extra, 16)) return std::nullopt;
      e["xxh3"] = to_hex(extra);
    }
    if ((flags & has_target) != 0) {
      if (!r.text(extra, max_text) || !is_valid_utf8(extra)) return std::nullopt;
      e["target"] = std::string(extra);
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

}  // namespace cskit::proto
