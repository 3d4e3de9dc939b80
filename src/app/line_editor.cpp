#include "app/line_editor.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fmt/format.h>

namespace cskit::app {

namespace {
void out(std::string_view s) {
  while (!s.empty()) {
    ssize_t n = ::write(STDOUT_FILENO, s.data(), s.size());
    if (n <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

bool continuation(unsigned char c) { return (c & 0xc0) == 0x80; }

// Terminal columns of a code point, without depending on the C locale:
// combining marks take none, East Asian wide characters and emoji two.
std::size_t char_width(char32_t cp) {
  if ((cp >= 0x0300 && cp <= 0x036f) || (cp >= 0x200b && cp <= 0x200f) || cp == 0xfe0f) return 0;
  const bool wide = (cp >= 0x1100 && cp <= 0x115f) || (cp >= 0x2e80 && cp <= 0xa4cf) ||
                    (cp >= 0xac00 && cp <= 0xd7a3) || (cp >= 0xf900 && cp <= 0xfaff) ||
                    (cp >= 0xfe30 && cp <= 0xfe4f) || (cp >= 0xff00 && cp <= 0xff60) ||
                    (cp >= 0xffe0 && cp <= 0xffe6) || (cp >= 0x1f300 && cp <= 0x1f64f) ||
                    (cp >= 0x1f900 && cp <= 0x1f9ff) || (cp >= 0x20000 && cp <= 0x3fffd);
  return wide ? 2 : 1;
}
}  // namespace

std::size_t display_width(std::string_view s) {
  std::size_t w = 0;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    char32_t cp = c;
    std::size_t len = 1;
    if (c >= 0xf0) len = 4, cp = c & 0x07;
    else if (c >= 0xe0) len = 3, cp = c & 0x0f;
    else if (c >= 0xc0) len = 2, cp = c & 0x1f;
    for (std::size_t k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    w += char_width(cp);
    i += len;
  }
  return w;
}

line_editor::line_editor(std::string prompt, bool attach_terminal)
    : prompt_(std::move(prompt)), attached_(attach_terminal) {
  if (!attached_) return;
  if (::tcgetattr(STDIN_FILENO, &saved_) == 0) {
    termios raw = saved_;
    ::cfmakeraw(&raw);
    raw.c_oflag |= OPOST | ONLCR;  // keep \n -> \r\n for everything we print
    raw_ = ::tcsetattr(STDIN_FILENO, TCSADRAIN, &raw) == 0;
  }
  redraw();
}

line_editor::~line_editor() {
  if (attached_) out("\r\x1b[K");
  if (raw_) ::tcsetattr(STDIN_FILENO, TCSADRAIN, &saved_);
}

void line_editor::redraw() {
  if (!attached_) return;
  std::string s = "\r\x1b[K" + prompt_ + buf_;
  const std::size_t right = display_width(std::string_view(buf_).substr(cursor_));
  if (right) s += "\x1b[" + std::to_string(right) + "D";
  out(s);
}

void line_editor::set_prompt(std::string prompt) {
  if (prompt == prompt_) return;
  prompt_ = std::move(prompt);
  redraw();
}

void line_editor::print_above(const std::string& text) {
  if (attached_) out("\r\x1b[K" + text + "\n");
  redraw();
}

std::size_t line_editor::prev_char(std::size_t pos) const {
  if (pos == 0) return 0;
  --pos;
  while (pos > 0 && continuation(static_cast<unsigned char>(buf_[pos]))) --pos;
  return pos;
}

std::size_t line_editor::next_char(std::size_t pos) const {
  if (pos >= buf_.size()) return buf_.size();
  ++pos;
  while (pos < buf_.size() && continuation(static_cast<unsigned char>(buf_[pos]))) ++pos;
  return pos;
}

void line_editor::insert(std::string_view s) {
  buf_.insert(cursor_, s);
  cursor_ += s.size();
}

line_editor::result line_editor::feed() {
  char bytes[1024];
  const ssize_t n = ::read(STDIN_FILENO, bytes, sizeof bytes);
  if (n == 0) return {result::eof, {}};
  if (n < 0) return {};
  return key_bytes(std::string_view(bytes, static_cast<std::size_t>(n)));
}

line_editor::result line_editor::key_bytes(std::string_view in) {
  result r;
  std::string typed;  // printable bytes collected, inserted together
  auto flush_typed = [&] {
    if (!typed.empty()) insert(typed);
    typed.clear();
  };
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto c = static_cast<unsigned char>(in[i]);
    if (!escape_.empty()) {
      escape_ += static_cast<char>(c);
      // CSI sequences end with a byte in 0x40-0x7e; ESC O x is two bytes.
      const bool done = (escape_.size() >= 3 && c >= 0x40 && c <= 0x7e) || (escape_.size() == 3 && escape_[1] == 'O') ||
                        (escape_.size() == 2 && escape_[1] != '[' && escape_[1] != 'O');
      if (!done) continue;
      flush_typed();
      const std::string e = escape_;
      escape_.clear();
      if (e == "\x1b[D" || e == "\x1bOD") cursor_ = prev_char(cursor_);
      else if (e == "\x1b[C" || e == "\x1bOC") cursor_ = next_char(cursor_);
      else if (e == "\x1b[H" || e == "\x1bOH" || e == "\x1b[1~") cursor_ = 0;
      else if (e == "\x1b[F" || e == "\x1bOF" || e == "\x1b[4~") cursor_ = buf_.size();
      else if (e == "\x1b[3~") buf_.erase(cursor_, next_char(cursor_) - cursor_);
      else if ((e == "\x1b[A" || e == "\x1bOA") && history_pos_ > 0) {
        if (history_pos_ == history_.size()) saved_line_ = buf_;
        buf_ = history_[--history_pos_];
        cursor_ = buf_.size();
      } else if ((e == "\x1b[B" || e == "\x1bOB") && history_pos_ < history_.size()) {
        ++history_pos_;
        buf_ = history_pos_ == history_.size() ? saved_line_ : history_[history_pos_];
        cursor_ = buf_.size();
      }
      continue;
    }
    if (c >= 0x20 && c != 0x7f) {
      typed += static_cast<char>(c);
      continue;
    }
    flush_typed();
    switch (c) {
      case '\r':
      case '\n':
        r = {result::line, buf_};
        if (!buf_.empty() && (history_.empty() || history_.back() != buf_)) history_.push_back(buf_);
        history_pos_ = history_.size();
        buf_.clear();
        cursor_ = 0;
        redraw();
        // Anything typed after Enter waits for the next call.
        if (i + 1 < in.size()) key_bytes(in.substr(i + 1));
        return r;
      case 0x7f:
      case 0x08: {
        const std::size_t p = prev_char(cursor_);
        buf_.erase(p, cursor_ - p);
        cursor_ = p;
        break;
      }
      case 0x01: cursor_ = 0; break;                               // Ctrl-A
      case 0x05: cursor_ = buf_.size(); break;                     // Ctrl-E
      case 0x02: cursor_ = prev_char(cursor_); break;              // Ctrl-B
      case 0x06: cursor_ = next_char(cursor_); break;              // Ctrl-F
      case 0x0b: buf_.erase(cursor_); break;                       // Ctrl-K
      case 0x15: buf_.erase(0, cursor_); cursor_ = 0; break;       // Ctrl-U
      case 0x17: {                                                 // Ctrl-W
        std::size_t p = cursor_;
        while (p > 0 && buf_[p - 1] == ' ') --p;
        while (p > 0 && buf_[p - 1] != ' ') --p;
        buf_.erase(p, cursor_ - p);
        cursor_ = p;
        break;
      }
      case 0x03: return {result::interrupt, buf_};                 // Ctrl-C: the line stays
      case 0x04:                                                   // Ctrl-D
        if (buf_.empty()) return {result::eof, {}};
        buf_.erase(cursor_, next_char(cursor_) - cursor_);
        break;
      case 0x0c: if (attached_) out("\x1b[H\x1b[2J"); break;       // Ctrl-L
      case 0x1b: escape_ = "\x1b"; break;
      default: break;  // other control characters are ignored
    }
  }
  flush_typed();
  redraw();
  return r;
}


namespace {

// Code points that are invisible, or change the direction of the text
// around them, and so can disguise what a line says: shown as <U+XXXX>.
bool hidden(char32_t c) {
  static constexpr std::pair<char32_t, char32_t> ranges[] = {
      {0x0080, 0x009F},    // C1 controls
      {0x00AD, 0x00AD},    // soft hyphen
      {0x034F, 0x034F},    // combining grapheme joiner
      {0x061C, 0x061C},    // Arabic letter mark
      {0x115F, 0x1160},    // Hangul fillers
      {0x17B4, 0x17B5},    // Khmer inherent vowels
      {0x180B, 0x180F},    // Mongolian variation selectors and vowel separator
      {0x200B, 0x200F},    // zero width space, non-joiner, joiner; LRM, RLM
      {0x2028, 0x202E},    // line and paragraph separators; bidi embeddings and overrides
      {0x2060, 0x206F},    // word joiner, invisible operators, bidi isolates, deprecated formats
      {0x3164, 0x3164},    // Hangul filler
      {0xFEFF, 0xFEFF},    // byte order mark, zero width no-break space
      {0xFFA0, 0xFFA0},    // halfwidth Hangul filler
      {0xFFF9, 0xFFFB},    // interlinear annotation
      {0x1D173, 0x1D17A},  // musical symbol formats
      {0xE0000, 0xE007F},  // tag characters
  };
  for (const auto& [lo, hi] : ranges) {
    if (c >= lo && c <= hi) return true;
  }
  return false;
}

// Emoji that a zero width joiner may join into one picture (the family,
// the flame heart): the joiner between two of them is what it is meant to
// be, and stays.
bool pictographic(char32_t c) {
  return (c >= 0x1F000 && c <= 0x1FAFF) || (c >= 0x2600 && c <= 0x27BF) || (c >= 0x2300 && c <= 0x23FF) ||
         (c >= 0x2B00 && c <= 0x2BFF);
}

// Decodes the UTF-8 sequence at text[i]; its length in `len` (0: not valid).
char32_t decode(std::string_view text, std::size_t i, std::size_t& len) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char c = b(0);
  len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > text.size()) return len = 0, 0;
  char32_t cp = len == 1 ? c : c & (0x7F >> len);
  for (std::size_t k = 1; k < len; ++k) {
    if ((b(k) & 0xC0) != 0x80) return len = 0, 0;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  static constexpr char32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return len = 0, 0;
  return cp;
}

}  // namespace

std::string neutralize(std::string_view text) {
  // Received text is shown, never interpreted: C0 controls (ESC included)
  // become ^X and DEL ^?; C1 controls and the invisible and
  // direction-changing characters <U+XXXX>; bytes that are not UTF-8 \xNN.
  std::string out;
  out.reserve(text.size());
  char32_t before = 0;  // the previous code point shown, variation selectors aside
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = 0;
    const char32_t c = decode(text, i, len);
    if (len == 0) {
      out += fmt::format("\\x{:02X}", static_cast<unsigned char>(text[i]));
      ++i;
      before = 0;
      continue;
    }
    if (c < 0x20) {
      out += '^';
      out += static_cast<char>(c + 0x40);
    } else if (c == 0x7F) {
      out += "^?";
    } else if (hidden(c)) {
      std::size_t next_len = 0;
      const bool joins_emoji = c == 0x200D && pictographic(before) && i + len < text.size() &&
                               pictographic(decode(text, i + len, next_len)) && next_len > 0;
      if (joins_emoji) {
        out.append(text.substr(i, len));
      } else {
        out += fmt::format("<U+{:04X}>", static_cast<std::uint32_t>(c));
      }
    } else {
      out.append(text.substr(i, len));
    }
    if (c != 0xFE0F) before = c;
    i += len;
  }
  return out;
}

}  // namespace cskit::app
