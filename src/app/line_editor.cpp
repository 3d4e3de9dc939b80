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
      case 0x03: return {result::interrupt, {}};                   // Ctrl-C
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


std::string neutralize(std::string_view text) {
  // Received text is shown, never interpreted: C0 controls (ESC included)
  // become ^X, DEL ^?, C1 controls and bidirectional overrides <U+XXXX>.
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20) {
      out += '^';
      out += static_cast<char>(c + 0x40);
    } else if (c == 0x7f) {
      out += "^?";
    } else if (c == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      out += fmt::format("<U+{:04X}>", static_cast<unsigned char>(text[i + 1]));
      ++i;
    } else if (c == 0xe2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x80 &&
               ((static_cast<unsigned char>(text[i + 2]) >= 0xaa && static_cast<unsigned char>(text[i + 2]) <= 0xae) ||
                static_cast<unsigned char>(text[i + 2]) == 0x8b)) {
      out += fmt::format("<U+20{:02X}>", static_cast<unsigned char>(text[i + 2]) - 0x80);
      i += 2;
    } else if (c == 0xe2 && i + 2 < text.size() && static_cast<unsigned char>(text[i + 1]) == 0x81 &&
               static_cast<unsigned char>(text[i + 2]) >= 0xa6 && static_cast<unsigned char>(text[i + 2]) <= 0xa9) {
      out += fmt::format("<U+20{:02X}>", static_cast<unsigned char>(text[i + 2]) - 0x80 + 0x40);
      i += 2;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

}  // namespace cskit::app
