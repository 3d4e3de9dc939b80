#pragma once
// What the HTTPS handler keeps of the request it is answering, and of a
// WebSocket it upgraded to: shared by
// server/http_session.cpp (the share), server/http_web.cpp (the page and
// its API) and server/http_websocket.cpp (its chat). Private to those.

#include <cstdint>
#include <optional>
#include <string>

#include <boost/beast/http/verb.hpp>

#include "proto/websocket.hpp"
#include "server/http_session.hpp"
#include "service/chat_client.hpp"

namespace cskit::server {

struct http_session::request_info {
  boost::beast::http::verb method;
  std::string target;
  route to = route::files;
  std::string api;  // /api/NAME
  std::string authorization;
  std::string session_id;  // the page's session cookie
  bool by_cookie = false;  // logged in by the cookie (the CSRF token is needed to change anything)
  std::string session_csrf;
  std::string origin, host, csrf;  // Origin, Host, X-CSRF-Token
  std::string content_range, content_digest, upload_key;
  std::string upgrade, connection, ws_key, ws_version;  // a WebSocket handshake
  std::string range, if_range, if_none_match, if_modified_since;
  bool keep_alive = true;
  std::string source;  // the throttle's key for the peer's address
  std::optional<std::uint64_t> content_length;
  bool chunked = false;
  bool expect_continue = false;
  std::string xxh3;  // X-Content-XXH3: the digest a PUT body must have
};

struct http_session::websocket {
  explicit websocket(std::size_t max_message) : decoder(max_message) {}
  proto::ws::decoder decoder;
  std::unique_ptr<service::chat_client> chat;
  std::string session_id;  // the page's session it was opened in ("": credentials)
  bool close_sent = false;
};

}  // namespace cskit::server
