#include "net/service_manager.hpp"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace cskit::net {

bool notify_service_manager(std::string_view state) noexcept {
  const char* where = std::getenv("NOTIFY_SOCKET");
  if (where == nullptr || (where[0] != '/' && where[0] != '@')) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // A path needs its terminating NUL inside sun_path; an abstract name
  // does not (its length is given).
  const std::size_t n = std::strlen(where);
  if (n > sizeof addr.sun_path || (where[0] == '/' && n == sizeof addr.sun_path)) return false;
  std::memcpy(addr.sun_path, where, n);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // the abstract namespace
  // Blocking, as libsystemd's sd_notify: a service manager busy at boot
  // must not lose READY=1 (the start would time out); but never for long.
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const timeval limit{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  const ssize_t sent =
      ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
  ::close(fd);
  return sent == static_cast<ssize_t>(state.size());
}

}  // namespace cskit::net
