// The web page and its API, on the HTTPS front end (docs/http.md, "The web
// page"): the page's embedded files, the login that gives a session
// cookie, and the file operations the page offers beyond GET and PUT.
// Everything goes through the share's own operations, with the same
// permissions, jail, quota and audit records as the cskit protocol.

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include <boost/beast/http/error.hpp>
#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include "proto/http.hpp"
#include "server/http_session.hpp"
#include "server/http_request.hpp"
#include "server/session.hpp"
#include "server/web_assets.hpp"
#include "server/web_sessions.hpp"
#include "service/audit.hpp"
#include "service/files.hpp"
#include "util/digest.hpp"
#include "util/jail.hpp"

namespace cskit::server {

namespace bhttp = boost::beast::http;
namespace http = proto::http;
using proto::json;

namespace {

// The API's request bodies are small JSON objects.
constexpr std::size_t max_form = 16 * 1024;

// The page runs only its own script and style: no inline code, no other
// origin, no framing (docs/http.md).
constexpr std::string_view page_policy =
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'\r\n"
    "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nCross-Origin-Opener-Policy: same-origin\r\n";

// A constant-time comparison of two secrets.
bool same_secret(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// The HTTP status that goes with a files error.
int status_of(proto::errc code) {
  using proto::errc;
  switch (code) {
    case errc::not_found: return 404;
    case errc::exists:
    case errc::not_empty:
    case errc::conflict: return 409;
    case errc::permission_denied:
    case errc::not_allowed: return 403;
    case errc::bad_path:
    case errc::bad_request: return 400;
    case errc::quota_exceeded:
    case errc::too_large: return 413;
    case errc::no_space: return 507;
    default: return 500;
  }
}

// A string member of the request's JSON (missing or not a string: "").
std::string text(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A boolean member of the request's JSON (missing or not a boolean: false).
bool flag(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_boolean() && it->get<bool>();
}

// An embedded file's ETag: its bytes never change while the binary runs,
// so it is computed once.
const std::string& asset_etag(std::size_t i) {
  static const std::vector<std::string> etags = [] {
    std::vector<std::string> out;
    for (const auto& a : web_assets()) out.push_back("\"" + util::xxh3_128_hex(a.body.data(), a.body.size()).substr(0, 16) + "\"");
    return out;
  }();
  return etags[i];
}

}  // namespace

void http_session::on_api_header(net::connection& c, bool has_body) {
  const auto m = req_->method;
  if (m == bhttp::verb::get || m == bhttp::verb::head) {
    if (has_body) return refuse(c, 400, "a GET or HEAD request has no body");
    parser_.reset();
    return api_request(c);
  }
  if (m != bhttp::verb::post) {
    closing_ = has_body;
    return respond_api_error(c, 405, "the API answers GET and POST", "Allow: GET, POST\r\n");
  }
  // A POST's body (JSON) is read whole before anything else.
  if (req_->chunked || !req_->content_length) {
    closing_ = true;
    return respond_api_error(c, 411, "a POST needs a Content-Length");
  }
  if (*req_->content_length > max_form) {
    closing_ = true;
    return respond_api_error(c, 413, "an API request's body is at most " + std::to_string(max_form) + " bytes");
  }
  form_.assign(static_cast<std::size_t>(*req_->content_length), '\0');
  form_got_ = 0;
  form_receiving_ = true;
  if (req_->expect_continue) c.send_raw("HTTP/1.1 100 Continue\r\n\r\n");
  parser_->body_limit(form_.size());
  if (form_.empty() && parser_->is_done()) {
    form_receiving_ = false;
    return api_request(c);
  }
  pump(c);
}

bool http_session::receive_form(net::connection& c) {
  auto& body = parser_->get().body();
  body.data = form_.data() + form_got_;
  body.size = form_.size() - form_got_;
  boost::system::error_code ec;
  const std::string_view rest = unread();
  const std::size_t n = parser_->put(boost::asio::buffer(rest.data(), rest.size()), ec);
  at_ += n;
  const std::size_t got = form_.size() - form_got_ - body.size;
  form_got_ += got;
  if (ec == bhttp::error::need_buffer) ec = {};
  if (ec && ec != bhttp::error::need_more) {
    form_receiving_ = false;
    refuse(c, 400, "malformed request body: " + ec.message());
    return false;
  }
  if (parser_->is_done()) {
    form_receiving_ = false;
    parser_.reset();
    api_request(c);
    return false;
  }
  return n > 0 || got > 0;
}

void http_session::api_request(net::connection& c) {
  if (req_->api == "login") {
    if (req_->method != bhttp::verb::post) return respond_api_error(c, 405, "log in with a POST", "Allow: POST\r\n");
    if (!may_change(c)) return;
    return api_login(c);
  }
  authenticate(c);
}

void http_session::serve_page(net::connection& c) {
  if (req_->method != bhttp::verb::get && req_->method != bhttp::verb::head) {
    return respond_error(c, 405, "the page is read with GET", "Allow: GET, HEAD\r\n");
  }
  std::string_view path = std::string_view(req_->target).substr(0, req_->target.find('?'));
  if (path == "/") path = "/index.html";
  const auto assets = web_assets();
  for (std::size_t i = 0; i < assets.size(); ++i) {
    const web_asset& a = assets[i];
    if (a.path != path) continue;
    const std::string& etag = asset_etag(i);
    std::string fields = "ETag: " + etag + "\r\nCache-Control: no-cache\r\n";
    if (a.path.ends_with(".html")) fields += page_policy;
    if (!req_->if_none_match.empty() && req_->if_none_match.find(etag) != std::string::npos) {
      send_head(c, 304, fields, std::nullopt, {});
      return finished(c);
    }
    return respond(c, 200, fields, a.body, a.type);
  }
  respond_error(c, 404, "no such page: the share is under /files/, the page at /");
}

void http_session::cookie_login(net::connection& c) {
  auto s = front_.sessions.find(req_->session_id);
  std::shared_ptr<const user_account> now;
  if (s) {
    // A reload may have removed the account, changed its token or taken a
    // permission: the session ends with the account it was opened for.
    now = front_.ctx.find_user(s->account->name);
    if (!account_change(*s->account, now.get()).empty()) {
      front_.sessions.close(req_->session_id);
      s.reset();
    }
  }
  if (!s) {
    const std::string message = "your session has ended: log in again";
    if (req_->to == route::api) return respond_api_error(c, 401, message, web_sessions::clear_cookie());
    return respond_error(c, 401, message, web_sessions::clear_cookie());
  }
  if (!account_) c.set_authenticated();
  account_ = std::move(now);
  credentials_.clear();
  req_->by_cookie = true;
  req_->session_csrf = s->csrf;
  authorized(c);
}

bool http_session::may_change(net::connection& c) {
  const auto m = req_->method;
  if (m == bhttp::verb::get || m == bhttp::verb::head) return true;
  // A browser says where a request comes from: only the page itself may
  // change anything (Basic credentials a browser remembers included).
  if (!req_->origin.empty() && req_->origin != "https://" + req_->host) {
    spdlog::warn("https: {}: {} from origin '{}' refused", c.peer(), req_->target, req_->origin);
    respond_api_error(c, 403, "requests from another site are refused");
    return false;
  }
  // With the cookie, the session's CSRF token too (a header that no other
  // site can make a browser send).
  if (req_->by_cookie && !same_secret(req_->csrf, req_->session_csrf)) {
    spdlog::warn("https: {}: {} without the session's CSRF token refused", c.peer(), req_->target);
    respond_api_error(c, 403, "the request lacks the page's CSRF token (X-CSRF-Token): reload the page");
    return false;
  }
  return true;
}

void http_session::api_login(net::connection& c) {
  const json body = json::parse(form_, nullptr, false);
  form_.clear();
  const std::string user = body.is_object() ? text(body, "user") : std::string();
  const std::string token = body.is_object() ? text(body, "token") : std::string();
  if (user.empty() || token.empty()) return respond_api_error(c, 400, "log in with {\"user\": ..., \"token\": ...}");
  check_login(c, user, token, [this, &c](std::shared_ptr<const user_account> found) {
    if (!found) {
      spdlog::warn("https: page login failed from {}", c.peer());
      return respond_api_error(c, 401, "unknown user or wrong token");
    }
    auto opened = front_.sessions.open(found);
    spdlog::info("https: {} logged in to the page as {}", c.peer(), found->name);
    if (!account_) c.set_authenticated();
    account_ = found;
    credentials_.clear();  // (Basic credentials checked before are not this login's)
    respond_json(c, 200,
                 {{"user", found->name},
                  {"csrf", opened.s.csrf},
                  {"permissions", found->permissions.names()},
                  {"expires_in", std::chrono::duration_cast<std::chrono::seconds>(web_sessions::lifetime).count()}},
                 web_sessions::set_cookie(opened.id));
  });
}

void http_session::api_authorized(net::connection& c) {
  const std::string& name = req_->api;
  const bool post = req_->method == bhttp::verb::post;
  if (name == "session" && !post) return api_session(c);
  if (name == "logout" && post) return api_logout(c);
  if (name == "chat" && req_->method == bhttp::verb::get) return start_websocket(c);
  using handler = void (http_session::*)(net::connection&, const json&);
  static constexpr std::pair<std::string_view, handler> changes[] = {
      {"mkdir", &http_session::api_mkdir},
      {"rename", &http_session::api_rename},
      {"delete", &http_session::api_delete},
      {"upload-offset", &http_session::api_upload_offset},
  };
  for (const auto& [n, fn] : changes) {
    if (n != name) continue;
    if (!post) return respond_api_error(c, 405, "/api/" + name + " takes a POST", "Allow: POST\r\n");
    if (!account_->permissions.has(proto::permission::files_write)) {
      return respond_api_error(c, 403, "user '" + account_->name + "' lacks the 'files-write' permission");
    }
    const json body = json::parse(form_, nullptr, false);
    form_.clear();
    if (!body.is_object()) return respond_api_error(c, 400, "the request's body must be a JSON object");
    return (this->*fn)(c, body);  // (paths must be strings; other members of the wrong type read as missing)
  }
  respond_api_error(c, 404, "no such API request: /api/" + name);
}

void http_session::api_session(net::connection& c) {
  json out = {{"user", account_->name}, {"permissions", account_->permissions.names()}};
  if (req_->by_cookie) out["csrf"] = req_->session_csrf;
  respond_json(c, 200, out);
}

void http_session::api_logout(net::connection& c) {
  if (req_->by_cookie) front_.sessions.close(req_->session_id);
  respond_json(c, 200, {{"logged_out", true}}, web_sessions::clear_cookie());
}

void http_session::api_mkdir(net::connection& c, const json& body) {
  const auto path = api_path(c, body, "path");
  if (!path) return;
  const auto r = front_.share.make_directory(*path);
  service::audit_file_operation({"mkdir", account_->name, c.peer(), *path, "", 0,
                                 r.ok() ? "ok" : proto::to_wire(r.code), r.message});
  if (!r.ok()) return respond_api_error(c, status_of(r.code), r.message);
  respond_json(c, 201, {{"path", *path}});
}

void http_session::api_rename(net::connection& c, const json& body) {
  const auto from = api_path(c, body, "from");
  if (!from) return;
  const auto to = api_path(c, body, "to");
  if (!to) return;
  // A rename never replaces: the page asks before anything is lost.
  const auto r = front_.share.move(*from, *to, true);
  service::audit_file_operation({"mv", account_->name, c.peer(), *from, r.path, r.bytes,
                                 r.ok() ? "ok" : proto::to_wire(r.code), r.message});
  if (!r.ok()) return respond_api_error(c, status_of(r.code), r.message);
  respond_json(c, 200, {{"path", r.path}});
}

void http_session::api_delete(net::connection& c, const json& body) {
  const auto path = api_path(c, body, "path");
  if (!path) return;
  const auto r = front_.share.remove(*path, flag(body, "recursive"));
  service::audit_file_operation({"rm", account_->name, c.peer(), *path, "", r.bytes,
                                 r.ok() ? "ok" : proto::to_wire(r.code), r.message});
  if (!r.ok()) return respond_api_error(c, status_of(r.code), r.message);
  respond_json(c, 200, {{"removed", r.count}});
}

void http_session::api_upload_offset(net::connection& c, const json& body) {
  // Where an interrupted upload in pieces resumes: what its part holds.
  const auto path = api_path(c, body, "path");
  if (!path) return;
  const std::string key = text(body, "key");
  if (!valid_upload_key(key)) return respond_api_error(c, 400, "'key' must be 16 to 64 lowercase hex digits");
  if (path->empty()) return respond_api_error(c, 409, "the share's root is a directory");
  std::string leaf;
  util::unique_fd dir(front_.share.jail().open_parent(*path, leaf));
  if (!dir) return respond_api_error(c, 404, "the directory of '" + *path + "' does not exist");
  // What whole pieces the part holds: not while a piece is being written
  // (it may yet be cut off again).
  struct stat st {};
  const std::string part = piece_part_name(leaf, key);
  util::unique_fd fd(::openat(dir.get(), part.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return respond_json(c, 200, {{"path", *path}, {"offset", 0}});
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) != 0) {
    return respond_api_error(c, 409, "a piece of '" + *path + "' is being written: ask again in a moment");
  }
  const bool have = ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode);
  respond_json(c, 200, {{"path", *path}, {"offset", have ? static_cast<std::uint64_t>(st.st_size) : 0}});
}

std::optional<std::string> http_session::api_path(net::connection& c, const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || !it->is_string()) {
    respond_api_error(c, 400, std::string("'") + key + "' must be a string (a path in the share)");
    return std::nullopt;
  }
  return share_path(c, it->get<std::string>());
}

void http_session::respond_json(net::connection& c, int status, const json& body, const std::string& fields) {
  respond(c, status, fields, body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n", "application/json");
}

void http_session::respond_api_error(net::connection& c, int status, const std::string& message,
                                     const std::string& fields) {
  respond_json(c, status, {{"error", message}, {"status", status}}, fields);
}

}  // namespace cskit::server
