#pragma once
// Telling a service manager (systemd's Type=notify) how the server is
// doing: the sd_notify(3) protocol, without libsystemd. When systemd starts
// a service it sets NOTIFY_SOCKET to a Unix datagram socket (a path, or an
// abstract name when it starts with '@'); each state is one datagram of
// newline-separated KEY=VALUE lines ("READY=1", "STOPPING=1", "STATUS=...").

#include <string_view>

namespace cskit::net {

/// Sends `state` to $NOTIFY_SOCKET; false when there is none (not started
/// by a service manager) or it cannot be reached. Waits at most 2 seconds
/// for room in the manager's queue.
bool notify_service_manager(std::string_view state) noexcept;

}  // namespace cskit::net
