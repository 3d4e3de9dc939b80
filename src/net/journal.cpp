#include "net/journal.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace cskit::net {

bool stderr_is_journal() noexcept {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  return ::fstat(STDERR_FILENO, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

std::string journal_entry(std::span<const journal_field> fields) {
  std::string out;
  for (const auto& f : fields) {
    out.append(f.key);
    if (f.value.find('\n') == std::string_view::npos) {
      out += '=';
      out.append(f.value);
    } else {
      out += '\n';
      std::uint64_t n = f.value.size();
      for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
      out.append(f.value);
    }
    out += '\n';
  }
  return out;
}

bool send_to_journal(std::span<const journal_field> fields) noexcept {
  try {
    const char* where = std::getenv("CSKIT_JOURNAL_SOCKET");
    if (where == nullptr || *where == '\0') where = "/run/systemd/journal/socket";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::size_t n = std::strlen(where);
    if (n >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, where, n);
    const std::string entry = journal_entry(fields);
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    const timeval limit{1, 0};  // journald busy: wait a little, never long
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    const ssize_t sent = ::sendto(fd, entry.data(), entry.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr),
                                  static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + 1));
    ::close(fd);
    return sent == static_cast<ssize_t>(entry.size());
  } catch (...) {  // std::bad_alloc: the entry is lost, the caller logs it
    return false;
  }
}

}  // namespace cskit::net
