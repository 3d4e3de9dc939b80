#pragma once
// Request routing: each service registers the request types it serves, with
// the permission each needs. The session checks authentication and
// permission before a handler ever runs, so handlers never re-check.

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/frame.hpp"
#include "proto/messages.hpp"
#include "server/config.hpp"

namespace cskit::net {
class connection;
}

namespace cskit::server {

/// One request, as a handler sees it. Replies are tagged with its id.
struct request {
  net::connection& conn;
  const user_account& user;
  std::uint64_t id;
  proto::frame frame;

  /// Sends a reply frame of the given type (id added).
  void reply(proto::json header, std::string_view body = {}) const;
  /// Sends an `error` reply; the connection stays open.
  void error(proto::errc code, std::string_view message = {}) const;
};

using request_handler = std::function<void(request&)>;

class request_registry {
 public:
  struct route {
    std::string service;
    std::optional<proto::permission> needs;
    request_handler handler;
  };

  /// Registers `type`. Throws std::logic_error on a duplicate.
  void add(std::string type, std::string service, std::optional<proto::permission> needs, request_handler h);
  const route* find(std::string_view type) const;
  /// Names of the services with at least one route, sorted.
  std::vector<std::string> services() const;

 private:
  std::map<std::string, route, std::less<>> routes_;
};

}  // namespace cskit::server
