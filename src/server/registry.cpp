#include "server/registry.hpp"

#include <set>
#include <stdexcept>

#include "net/connection.hpp"

namespace cskit::server {

void request::reply(proto::json header, std::string_view body) const {
  header["id"] = id;
  conn.send(header, body);
}

void request::error(proto::errc code, std::string_view message) const {
  conn.send(proto::make_error(code, message, id));
}

void request_registry::add(std::string type, std::string service, std::optional<proto::permission> needs,
                           request_handler h, bool listed) {
  auto [it, inserted] = routes_.emplace(std::move(type), route{std::move(service), needs, std::move(h), listed});
  if (!inserted) throw std::logic_error("request type registered twice: " + it->first);
}

void request_registry::add_streamed(std::string type, std::string service, std::optional<proto::permission> needs,
                                    body_handler on_body_part, request_handler h) {
  auto [it, inserted] = routes_.emplace(std::move(type), route{std::move(service), needs, std::move(h), true,
                                                               std::move(on_body_part)});
  if (!inserted) throw std::logic_error("request type registered twice: " + it->first);
}

const request_registry::route* request_registry::find(std::string_view type) const {
  auto it = routes_.find(type);
  return it == routes_.end() ? nullptr : &it->second;
}

std::vector<std::string> request_registry::services() const {
  std::set<std::string> s;
  for (const auto& [t, r] : routes_) {
    if (r.listed) s.insert(r.service);
  }
  return {s.begin(), s.end()};
}

}  // namespace cskit::server
