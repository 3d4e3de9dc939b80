#include "proto/irc.hpp"

#include <cctype>
#include <cstdio>
#include <ctime>

namespace cskit::proto::irc {

namespace {

std::string upper(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

void parse_tags(std::string_view tags, message& out) {
  while (!tags.empty()) {
    const auto semi = tags.find(';');
    const std::string_view tag = tags.substr(0, semi);
    tags.remove_prefix(semi == std::string_view::npos ? tags.size() : semi + 1);
    if (tag.empty()) continue;
    const auto eq = tag.find('=');
    if (eq == std::string_view::npos) {
      out.tags.emplace_back(std::string(tag), std::string());
    } else {
      out.tags.emplace_back(std::string(tag.substr(0, eq)), unescape_tag_value(tag.substr(eq + 1)));
    }
  }
}

// The next space-separated word (spaces before it skipped).
std::string_view next_word(std::string_view& s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  const auto sp = s.find(' ');
  std::string_view w = s.substr(0, sp);
  s.remove_prefix(sp == std::string_view::npos ? s.size() : sp);
  return w;
}

}  // namespace

parse_result parse(std::string_view line, message& out) {
  out = message{};
  if (line.find('\0') != std::string_view::npos) return parse_result::bad;
  if (!line.empty() && line.front() == '@') {
    const auto sp = line.find(' ');
    if (sp == std::string_view::npos) return parse_result::bad;
    if (sp > max_client_tags - 2) return parse_result::too_long;
    parse_tags(line.substr(1, sp - 1), out);
    line.remove_prefix(sp + 1);
  }
  if (line.size() > max_line - 2) return parse_result::too_long;
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (line.empty()) return parse_result::empty;
  if (line.front() == ':') {
    std::string_view src = next_word(line);
    out.source = std::string(src.substr(1));
  }
  const std::string_view cmd = next_word(line);
  if (cmd.empty()) return parse_result::bad;
  out.command = upper(cmd);
  for (;;) {
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (line.empty()) break;
    if (out.params.size() == 15) return parse_result::bad;
    if (line.front() == ':') {
      out.params.emplace_back(line.substr(1));
      break;
    }
    out.params.emplace_back(next_word(line));
  }
  return parse_result::ok;
}

std::string escape_tag_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    switch (c) {
      case ';': out += "\\:"; break;
      case ' ': out += "\\s"; break;
      case '\\': out += "\\\\"; break;
      case '\r': out += "\\r"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string unescape_tag_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] != '\\') {
      out += v[i];
      continue;
    }
    if (++i == v.size()) break;  // a lone trailing backslash is dropped
    switch (v[i]) {
      case ':': out += ';'; break;
      case 's': out += ' '; break;
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      default: out += v[i];  // "\\" and any other escaped character
    }
  }
  return out;
}

std::string iso_time(std::int64_t unix_ms) {
  const std::time_t secs = static_cast<std::time_t>(unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000);
  const int ms = static_cast<int>(unix_ms - static_cast<std::int64_t>(secs) * 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

std::optional<std::int64_t> parse_iso_time(std::string_view s) {
  // YYYY-MM-DDTHH:MM:SS[.fff]Z
  auto digits = [&](std::size_t at, std::size_t n, int& v) {
    if (at + n > s.size()) return false;
    v = 0;
    for (std::size_t i = at; i < at + n; ++i) {
      if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
      v = v * 10 + (s[i] - '0');
    }
    return true;
  };
  int y, mo, d, h, mi, se, ms = 0;
  if (s.size() < 20 || !digits(0, 4, y) || s[4] != '-' || !digits(5, 2, mo) || s[7] != '-' || !digits(8, 2, d) ||
      s[10] != 'T' || !digits(11, 2, h) || s[13] != ':' || !digits(14, 2, mi) || s[16] != ':' || !digits(17, 2, se)) {
    return std::nullopt;
  }
  std::size_t at = 19;
  if (s[at] == '.') {
    std::size_t n = 0;
    int frac = 0;
    while (at + 1 + n < s.size() && std::isdigit(static_cast<unsigned char>(s[at + 1 + n]))) {
      if (n < 3) frac = frac * 10 + (s[at + 1 + n] - '0');
      ++n;
    }
    if (n == 0) return std::nullopt;
    for (std::size_t k = n; k < 3; ++k) frac *= 10;
    ms = frac;
    at += 1 + n;
  }
  if (at + 1 != s.size() || s[at] != 'Z') return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return std::nullopt;
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  const std::time_t t = timegm(&tm);
  return static_cast<std::int64_t>(t) * 1000 + ms;
}

namespace {
bool needs_trailing(std::string_view p) {
  return p.empty() || p.front() == ':' || p.find(' ') != std::string_view::npos;
}

template <class It>
void append_range(std::string& out, std::string_view tags, std::string_view source, std::string_view command,
                  It first, It last, bool text) {
  if (!tags.empty()) {
    out += '@';
    out += tags;
    out += ' ';
  }
  if (!source.empty()) {
    out += ':';
    out += source;
    out += ' ';
  }
  out += command;
  for (It it = first; it != last; ++it) {
    const std::string_view p = *it;
    out += ' ';
    if (it + 1 == last && (text || needs_trailing(p))) out += ':';
    out += p;
  }
  out += "\r\n";
}
}  // namespace

void append(std::string& out, std::string_view tags, std::string_view source, std::string_view command,
            std::initializer_list<std::string_view> params, bool text) {
  append_range(out, tags, source, command, params.begin(), params.end(), text);
}

void append(std::string& out, std::string_view tags, std::string_view source, std::string_view command,
            const std::vector<std::string>& params, bool text) {
  append_range(out, tags, source, command, params.begin(), params.end(), text);
}

std::string one_line(std::string_view text) {
  std::string out(text);
  for (auto& c : out) {
    if (c == '\r' || c == '\n' || c == '\0') c = ' ';
  }
  return out;
}

std::vector<std::string> split_text(std::string_view text, std::size_t max) {
  std::vector<std::string> out;
  if (max < 4) max = 4;  // room for one UTF-8 character
  while (!text.empty()) {
    const auto lf = text.find('\n');
    std::string line;
    for (const char c : text.substr(0, lf)) {
      if (c != '\r' && c != '\0') line += c;
    }
    text.remove_prefix(lf == std::string_view::npos ? text.size() : lf + 1);
    std::string_view rest = line;
    while (!rest.empty()) {
      std::size_t n = std::min(max, rest.size());
      // Back off continuation bytes so that no character is cut in two.
      while (n < rest.size() && n > 0 && (static_cast<unsigned char>(rest[n]) & 0xC0) == 0x80) --n;
      if (n == 0) n = std::min(max, rest.size());
      out.emplace_back(rest.substr(0, n));
      rest.remove_prefix(n);
    }
  }
  return out;
}

}  // namespace cskit::proto::irc
