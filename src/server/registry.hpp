#pragma once
// Request routing: each service registers the request types it serves, with
// the permission each needs. The session checks authentication and
// permission before a handler ever runs, so handlers never re-check.

#include <functional>
#include <map>
#include <memory>
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

/// State a service keeps for one connection between requests (for example
/// the commands it runs). Destroyed when the connection closes, which is how
/// services learn about it. Used on the connection's thread only.
class connection_scope {
 public:
  /// The object stored under `key`, created with `make()` (returning a
  /// std::shared_ptr<T>) on first use.
  template <class T, class Make>
  T& get(std::string_view key, Make&& make) {
    for (auto& [k, p] : items_) {
      if (k == key) return *static_cast<T*>(p.get());
    }
    std::shared_ptr<T> p = make();
    T& ref = *p;
    items_.emplace_back(std::string(key), std::move(p));
    return ref;
  }
  template <class T>
  T* find(std::string_view key) {
    for (auto& [k, p] : items_) {
      if (k == key) return static_cast<T*>(p.get());
    }
    return nullptr;
  }
  /// Called with the connection's close reason, before anything is destroyed.
  void on_close(std::function<void(std::string_view reason)> fn) { close_hooks_.push_back(std::move(fn)); }

  /// Tells the hooks why the connection closed, then destroys everything,
  /// newest first.
  void clear(std::string_view reason = {}) {
    auto hooks = std::move(close_hooks_);
    close_hooks_.clear();
    for (auto& h : hooks) h(reason);
    while (!items_.empty()) {
      auto last = std::move(items_.back().second);
      items_.pop_back();
      last.reset();
    }
  }

 private:
  std::vector<std::pair<std::string, std::shared_ptr<void>>> items_;
  std::vector<std::function<void(std::string_view)>> close_hooks_;
};

/// One request, as a handler sees it. Replies are tagged with its id.
struct request {
  net::connection& conn;
  connection_scope& scope;
  const user_account& user;
  std::uint64_t id;
  proto::frame frame;
  /// The body went to the route's on_body_part as it arrived (frame.body is empty).
  bool body_streamed = false;

  /// Sends a reply frame of the given type (id added).
  void reply(proto::json header, std::string_view body = {}) const;
  /// Sends an `error` reply; the connection stays open.
  void error(proto::errc code, std::string_view message = {}) const;
};

using request_handler = std::function<void(request&)>;
/// Receives a streamed body piece by piece (see request_registry::add_streamed).
using body_handler = std::function<void(request&, std::string_view part)>;

class request_registry {
 public:
  struct route {
    std::string service;
    std::optional<proto::permission> needs;
    request_handler handler;
    bool listed = true;  ///< shown in info's "services"
    body_handler on_body_part;  ///< set: bodies are streamed, never buffered whole
  };

  /// Registers `type`. Throws std::logic_error on a duplicate. A service
  /// that is switched off in the config registers with listed = false: its
  /// requests still get a clear answer ("disabled"), but info does not
  /// advertise it.
  void add(std::string type, std::string service, std::optional<proto::permission> needs, request_handler h,
           bool listed = true);
  /// Like add(), for requests that carry bulk data: the body reaches
  /// `on_body_part` in pieces as it arrives (after the same authentication
  /// and permission checks), then `h` runs with an empty body.
  void add_streamed(std::string type, std::string service, std::optional<proto::permission> needs, body_handler on_body_part,
                    request_handler h);
  const route* find(std::string_view type) const;
  /// Names of the services with at least one listed route, sorted.
  std::vector<std::string> services() const;

 private:
  std::map<std::string, route, std::less<>> routes_;
};

}  // namespace cskit::server
