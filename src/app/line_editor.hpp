#pragma once
// A small line editor for the chat client: the terminal in raw mode, one
// input line that survives text printed above it, UTF-8 aware cursor
// movement (wide CJK characters count two columns), history, and the usual
// Emacs keys. Not a general readline: lines longer than the terminal are
// not scrolled horizontally.

#include <termios.h>

#include <string>
#include <vector>

namespace cskit::app {

class line_editor {
 public:
  /// Enters raw mode (always restored). attach_terminal = false: no terminal
  /// at all, for tests that feed keys with key_bytes().
  explicit line_editor(std::string prompt, bool attach_terminal = true);
  ~line_editor();
  line_editor(const line_editor&) = delete;
  line_editor& operator=(const line_editor&) = delete;

  struct result {
    enum kind_t { none, line, eof, interrupt } kind = none;
    std::string text;
  };
  /// Reads what stdin has (call when it is readable) and handles the keys.
  result feed();
  /// Prints a line above the input line and redraws the input unchanged.
  void print_above(const std::string& text);
  /// A new prompt (the chat client's status: where a line goes).
  void set_prompt(std::string prompt);

  // Exposed for tests.
  const std::string& buffer() const noexcept { return buf_; }
  result key_bytes(std::string_view bytes);

 private:
  void redraw();
  void insert(std::string_view s);
  std::size_t prev_char(std::size_t pos) const;
  std::size_t next_char(std::size_t pos) const;

  std::string prompt_;
  std::string buf_;
  std::size_t cursor_ = 0;  ///< byte offset, always on a character boundary
  std::vector<std::string> history_;
  std::size_t history_pos_ = 0;
  std::string saved_line_;  ///< the line being typed while browsing history
  std::string escape_;      ///< an escape sequence not complete yet
  termios saved_{};
  bool raw_ = false;
  bool attached_ = true;
};

/// Display width of UTF-8 text in terminal columns.
std::size_t display_width(std::string_view utf8);

/// Received text made harmless for a terminal or a pipe: C0 controls (ESC
/// included) become ^X, DEL ^?; C1 controls and the characters that are
/// invisible or change the text's direction (LRM, RLM, ALM, bidi embeddings,
/// overrides and isolates, zero width space, joiners (except a joiner
/// between two emoji), line and paragraph separators, tag characters, the
/// BOM, fillers) <U+XXXX>; bytes that are not UTF-8 \xNN.
std::string neutralize(std::string_view text);

}  // namespace cskit::app
