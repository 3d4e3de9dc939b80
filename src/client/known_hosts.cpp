#include "client/known_hosts.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "net/tls.hpp"

namespace cskit::client {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The first two whitespace-separated words of a line.
bool split_entry(std::string_view line, std::string_view& key, std::string_view& fp) {
  auto skip = [&](std::size_t i) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    return i;
  };
  auto word_end = [&](std::size_t i) {
    while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') ++i;
    return i;
  };
  std::size_t a = skip(0), b = word_end(a), c = skip(b), d = word_end(c);
  if (a == b || c == d) return false;
  key = line.substr(a, b - a);
  fp = line.substr(c, d - c);
  return true;
}

}  // namespace

std::filesystem::path default_known_hosts() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x == '/') return std::filesystem::path(x) / "cskit/known_hosts";
  if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".config/cskit/known_hosts";
  return {};
}

std::string known_host_key(std::string_view host, std::uint16_t port) {
  const std::string h = lower(host);
  const std::string p = std::to_string(port);
  return h.find(':') != std::string::npos ? "[" + h + "]:" + p : h + ":" + p;
}

known_host_result lookup_known_host(const std::filesystem::path& file, std::string_view key,
                                    std::string_view fingerprint) {
  known_host_result r;
  std::ifstream in(file);
  if (!in) {
    if (errno == ENOENT) return r;
    throw std::runtime_error("cannot read " + file.string() + ": " + std::strerror(errno));
  }
  std::string line;
  for (std::size_t n = 1; std::getline(in, line); ++n) {
    std::string_view v(line);
    const auto first = v.find_first_not_of(" \t\r");
    if (first == std::string_view::npos || v[first] == '#') continue;
    std::string_view k, fp;
    if (!split_entry(v, k, fp) || !net::tls::is_fingerprint(fp)) {
      r.bad_lines.push_back(n);
      continue;
    }
    if (lower(k) != key) continue;
    if (fp == fingerprint) {
      r.state = known_host_result::status::match;
      r.line = n;
      return r;
    }
    if (r.state == known_host_result::status::unknown) {
      r.state = known_host_result::status::mismatch;
      r.line = n;
      r.stored = std::string(fp);
    }
  }
  return r;
}

void add_known_host(const std::filesystem::path& file, std::string_view key, std::string_view fingerprint) {
  std::error_code ec;
  const auto dir = file.parent_path();
  if (!dir.empty() && !std::filesystem::exists(dir, ec)) {
    std::filesystem::create_directories(dir, ec);
    if (ec) throw std::runtime_error("cannot create " + dir.string() + ": " + ec.message());
    ::chmod(dir.c_str(), 0700);
  }
  int fd = ::open(file.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw std::runtime_error("cannot open " + file.string() + ": " + std::strerror(errno));
  // Start on a new line even if the file's last line has no newline.
  std::string entry;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    char last = '\n';
    if (::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n') entry += '\n';
  }
  entry += std::string(key) + " " + std::string(fingerprint) + "\n";
  const ssize_t n = ::write(fd, entry.data(), entry.size());
  const int saved = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(entry.size())) {
    throw std::runtime_error("cannot write " + file.string() + ": " + std::strerror(n < 0 ? saved : ENOSPC));
  }
}

}  // namespace cskit::client
