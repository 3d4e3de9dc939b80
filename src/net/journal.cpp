#include "net/journal.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
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

namespace {

// One socket per thread, connected once: a record costs one send(2), and
// never blocks the event loop that sends it (journald busy: the caller
// falls back to stderr).
class journal_socket {
 public:
  ~journal_socket() { reset(); }
  bool send(const std::string& entry) noexcept {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (fd_ < 0 && !open()) return false;
      const ssize_t sent = ::send(fd_, entry.data(), entry.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (sent == static_cast<ssize_t>(entry.size())) return true;
      // journald restarted (its socket is a new one): connect again, once.
      if (sent < 0 && (errno == ECONNREFUSED || errno == ENOTCONN || errno == ECONNRESET)) {
        reset();
        continue;
      }
      return false;
    }
    return false;
  }

 private:
  bool open() noexcept {
    const char* where = std::getenv("CSKIT_JOURNAL_SOCKET");
    if (where == nullptr || *where == '\0') where = "/run/systemd/journal/socket";
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::size_t n = std::strlen(where);
    if (n >= sizeof addr.sun_path) return false;
    std::memcpy(addr.sun_path, where, n);
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return false;
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr),
                  static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + 1)) != 0) {
      reset();
      return false;
    }
    return true;
  }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

}  // namespace

bool send_to_journal(std::span<const journal_field> fields) noexcept {
  try {
    thread_local journal_socket socket;
    return socket.send(journal_entry(fields));
  } catch (...) {  // std::bad_alloc: the entry is lost, the caller logs it
    return false;
  }
}

}  // namespace cskit::net
