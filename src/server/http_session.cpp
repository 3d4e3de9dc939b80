#include "server/http_session.hpp"
#include "server/http_request.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include <boost/beast/http/error.hpp>
#include <spdlog/spdlog.h>

#include "net/admission.hpp"
#include "proto/auth.hpp"
#include "proto/http.hpp"
#include "proto/websocket.hpp"
#include "server/session.hpp"
#include "server/web_sessions.hpp"
#include "service/chat_client.hpp"
#include "service/audit.hpp"
#include "service/files.hpp"
#include "util/jail.hpp"
#include "version.hpp"

namespace cskit::server {

namespace bhttp = boost::beast::http;
namespace http = proto::http;

namespace {

constexpr std::string_view files_prefix = "/files/";
constexpr std::string_view api_prefix = "/api/";
// A file body goes out a piece at a time, while the send queue is short.
constexpr std::size_t body_piece = 1u << 20;
constexpr std::size_t queue_high = 4u << 20;
constexpr std::size_t queue_low = 1u << 20;
// With TLS in user space: pieces read and encrypted 256 KiB at a time, a
// short queue (what cskit's own downloads found fastest).
constexpr std::size_t tls_piece = 256u << 10;
constexpr std::size_t tls_queue_high = 1u << 20;
constexpr std::size_t tls_queue_low = 512u << 10;
// Requests pipelined behind the one being answered: at most this much.
constexpr std::size_t max_pipelined = 64 * 1024;
// A PUT body is written a buffer at a time.
constexpr std::size_t upload_buffer = 256 * 1024;
// A directory listing names at most this many entries ("truncated": true beyond).
constexpr std::size_t max_listing = 100000;
// A file this small goes out with its header, in one piece.
constexpr std::uint64_t small_body = 64 * 1024;

// The Date field's value, formatted once a second.
const std::string& date_now() {
  thread_local std::time_t last = 0;
  thread_local std::string text;
  const std::time_t now = std::time(nullptr);
  if (now != last) {
    last = now;
    text = http::format_date(now);
  }
  return text;
}

std::string hex(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A strong validator of a file's version: which file, its size, its time.
std::string etag_of(const struct stat& st) {
  return "\"" + hex(static_cast<std::uint64_t>(st.st_ino)) + "-" + hex(static_cast<std::uint64_t>(st.st_size)) + "-" +
         hex(static_cast<std::uint64_t>(util::mtime_ns(st))) + "\"";
}

// If-None-Match's list holds `etag` (or is "*").
bool etag_listed(std::string_view list, const std::string& etag) {
  if (list.find('*') != std::string_view::npos) return true;
  return list.find(etag) != std::string_view::npos;
}

// A JSON string; a name that is not UTF-8 gets U+FFFD where it is not.
std::string json_escape(std::string_view s) {
  return proto::json(std::string(s)).dump(-1, ' ', false, proto::json::error_handler_t::replace);
}

bool beast_iequals(boost::beast::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

// Beast's string_view as a string.
template <class View>
std::string str(const View& v) {
  return std::string(v.data(), v.size());
}

}  // namespace


struct http_session::upload {
  std::string path;  // normalized, in the share
  std::string leaf;
  util::unique_fd dir;
  util::unique_fd file;
  std::string part;  // named part (no O_TMPFILE); empty: `file` is unnamed
  bool existed = false;
  std::uint64_t expected = 0, written = 0, reserved = 0;
  // A piece (Content-Range): written at `base` of the resumable part
  // `piece_part`, which stays for the next piece; the last one commits it.
  bool piece = false, last = false;
  std::uint64_t base = 0, total = 0;
  std::string piece_part;
  std::string sha256;  // Content-Digest's, hex: what the body must have
  util::content_digest digest;
  std::unique_ptr<char[]> buffer;
  bool receiving = false;  // the body is being read
  ~upload() {
    if (!part.empty() && dir) ::unlinkat(dir.get(), part.c_str(), 0);  // never committed
  }
  // A piece that did not make it: the part goes back to what it had (a
  // first piece: the part goes). Its bytes were never counted.
  void drop_piece() const {
    if (!piece || !file) return;
    if (base == 0 && dir) ::unlinkat(dir.get(), piece_part.c_str(), 0);  // (still ours: locked)
    else (void)::ftruncate(file.get(), static_cast<off_t>(base));
  }
};

struct http_session::body_sender {
  util::unique_fd fd;
  std::uint64_t at = 0, left = 0, sent = 0;
  std::string path;
};

http_session::http_session(const http_front& front) : front_(front) {}
http_session::~http_session() = default;

void http_session::on_open(net::connection& c) {
  spdlog::info("connection from {} ({}, HTTPS)", c.peer(), c.tls_description());
}

void http_session::on_close(net::connection& c, std::string_view reason) {
  if (ws_) {
    ws_->chat->set_close_reason(std::string(reason));  // (a reason the client gave wins)
    ws_.reset();  // leaves the chat: the quit notice goes out
  }
  if (upload_ && upload_->receiving) {
    upload_->drop_piece();
    service::audit_file_operation({"put", account_ ? account_->name : "", c.peer(), upload_->path, "",
                                   upload_->written, "interrupted",
                                   upload_->piece ? "the connection closed; the upload can be resumed"
                                                  : "the connection closed; nothing was written"});
    front_.share.release(upload_->reserved);
    upload_.reset();
  }
  if (sending_) {
    service::audit_file_operation({"get", account_ ? account_->name : "", c.peer(), sending_->path, "",
                                   sending_->sent, "interrupted", "the connection closed; the download can be resumed"});
  }
  spdlog::info("closed {} (HTTPS{}{}) ({})", c.peer(), account_ ? ", user=" : "", account_ ? account_->name : "",
               reason);
}

void http_session::on_bytes(net::connection& c, std::string_view bytes) {
  if (ws_) return on_ws_bytes(c, bytes);
  if (at_ == in_.size()) {
    in_.clear();
    at_ = 0;
  }
  in_.append(bytes);
  // Behind a request being answered, a few pipelined ones; behind a PUT
  // whose login is being answered, the start of its body.
  const bool body_pending = req_ && (req_->method == bhttp::verb::put || req_->method == bhttp::verb::post);
  const std::size_t bound = body_pending ? upload_buffer * 4 : max_pipelined;
  const bool receiving = (upload_ && upload_->receiving) || form_receiving_;
  if ((busy_ || resume_pending_) && !receiving && unread().size() > bound) {
    // (A response is under way: no answer can be put in its middle.)
    c.close_now("HTTP: too many requests sent ahead of the answers");
    return;
  }
  pump(c);
}

void http_session::on_peer_eof(net::connection& c) {
  peer_done_ = true;
  if (ws_) return c.close_after_flush("peer closed");
  // A body cut short never ends: nothing to wait for.
  if ((upload_ && upload_->receiving) || form_receiving_) return c.close_now("peer closed in the middle of a request body");
  if (idle()) c.close_after_flush("peer closed");
}

bool http_session::idle() const {
  // Nothing being answered, nothing held back by the send queue, and no
  // whole request left unread (a partial one can no longer complete).
  return !busy_ && !resume_pending_ && (at_ == in_.size() || header_in_progress());
}

void http_session::pump(net::connection& c) {
  if (pumping_) return;  // the loop below goes on
  pumping_ = true;
  while (!c.closing() && at_ < in_.size()) {
    if (upload_ && upload_->receiving) {
      // False: more body is needed (stop), or the body ended (the loop
      // goes on: busy_ says whether its answer is still to come).
      if (!receive_body(c) && upload_ && upload_->receiving) break;
      continue;
    }
    if (form_receiving_) {
      if (!receive_form(c) && form_receiving_) break;
      continue;
    }
    if (busy_) break;
    if (c.queued_bytes() > queue_high) {
      // The client does not read its answers as fast as it asks: the next
      // request waits until it does.
      if (!resume_pending_) {
        resume_pending_ = true;
        c.when_queue_below(queue_low, [this, &c] {
          resume_pending_ = false;
          pump(c);
        });
      }
      break;
    }
    if (!parser_) {
      parser_.emplace();
      parser_->header_limit(max_header);
      // Bodies are bounded by the request's own checks (a PUT's size
      // against max_file_size and the quota; no other request has one).
      parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
      new_message_ = true;
    }
    boost::system::error_code ec;
    const std::string_view rest = unread();
    const std::size_t n = parser_->put(boost::asio::buffer(rest.data(), rest.size()), ec);
    at_ += n;
    if (ec == bhttp::error::need_more) {
      if (unread().size() > max_header) refuse(c, 431, "the request's header is too large");
      break;
    }
    if (ec == bhttp::error::header_limit) {
      refuse(c, 431, "the request's header is too large");
      break;
    }
    if (ec) {
      refuse(c, 400, "malformed request: " + ec.message());
      break;
    }
    if (parser_->is_header_done()) on_request_header(c);
  }
  if (ws_) {  // the request upgraded the connection: the rest is WebSocket frames
    pumping_ = false;
    return;
  }
  // What was parsed goes, once per turn (not once per request).
  if (at_ > 0 && (at_ == in_.size() || at_ > max_pipelined)) {
    in_.erase(0, at_);
    at_ = 0;
  }
  pumping_ = false;
  using pr = net::frame_handler::progress;
  // An upload's body: its deadline is progress. An API request's small
  // body must come with its header, within the frame deadline.
  if (upload_ && upload_->receiving) c.report_progress(pr::body, false);
  else if (form_receiving_) c.report_progress(pr::header, false);
  else if (header_in_progress()) c.report_progress(pr::header, new_message_);
  else c.report_progress(pr::idle, false);
  new_message_ = false;
  if (peer_done_ && idle() && !c.closing()) c.close_after_flush("peer closed");
}

void http_session::on_request_header(net::connection& c) {
  busy_ = true;
  read_request_fields();
  req_->source = net::source_key::of(c.peer_address()).describe();
  // A Transfer-Encoding that does not end in chunked has a body whose end
  // only the close tells (RFC 9112 6.3): not taken.
  if (parser_->get().count(bhttp::field::transfer_encoding) > 0 && !req_->chunked) {
    return refuse(c, 400, "a Transfer-Encoding other than chunked is not accepted");
  }
  const bool has_body = req_->chunked || req_->content_length.value_or(0) > 0;
  switch (req_->to) {
    case route::files: return on_files_header(c, has_body);
    case route::api: return on_api_header(c, has_body);
    case route::page: break;
  }
  if (has_body) return refuse(c, 400, "the page's files take no body");
  parser_.reset();
  serve_page(c);
}

void http_session::read_request_fields() {
  const auto& m = parser_->get();
  req_ = std::make_unique<request_info>();
  req_->method = m.method();
  req_->target = str(m.target());
  const std::string_view path = std::string_view(req_->target).substr(0, req_->target.find('?'));
  if (path.starts_with(api_prefix)) {
    req_->to = route::api;
    req_->api = std::string(path.substr(api_prefix.size()));
  } else if (!path.starts_with(files_prefix) && path != "/files") {
    req_->to = route::page;
  }
  req_->keep_alive = parser_->keep_alive();
  req_->chunked = parser_->chunked();
  if (auto n = parser_->content_length()) req_->content_length = *n;
  // One pass over the fields the request has (a handful), not a lookup
  // for each field this server reads (a score): the first of a repeated
  // field counts.
  std::string_view cookie;
  for (const auto& f : m) {
    std::string* into = nullptr;
    switch (f.name()) {
      case bhttp::field::authorization: into = &req_->authorization; break;
      case bhttp::field::cookie:
        if (cookie.empty()) cookie = std::string_view(f.value().data(), f.value().size());
        break;
      case bhttp::field::origin: into = &req_->origin; break;
      case bhttp::field::host: into = &req_->host; break;
      case bhttp::field::range: into = &req_->range; break;
      case bhttp::field::if_range: into = &req_->if_range; break;
      case bhttp::field::if_none_match: into = &req_->if_none_match; break;
      case bhttp::field::if_modified_since: into = &req_->if_modified_since; break;
      case bhttp::field::expect: req_->expect_continue = beast_iequals(f.value(), "100-continue"); break;
      case bhttp::field::content_range: into = &req_->content_range; break;
      case bhttp::field::upgrade: into = &req_->upgrade; break;
      case bhttp::field::connection: into = &req_->connection; break;
      case bhttp::field::sec_websocket_key: into = &req_->ws_key; break;
      case bhttp::field::sec_websocket_version: into = &req_->ws_version; break;
      default: into = extension_field(f.name_string()); break;
    }
    if (into && into->empty()) *into = str(f.value());
  }
  req_->session_id = std::string(web_sessions::from_cookie_header(cookie));
}

std::string* http_session::extension_field(boost::beast::string_view name) {
  if (beast_iequals(name, "X-CSRF-Token")) return &req_->csrf;
  if (beast_iequals(name, "X-Content-XXH3")) return &req_->xxh3;
  if (beast_iequals(name, "Content-Digest")) return &req_->content_digest;
  if (beast_iequals(name, "Upload-Key")) return &req_->upload_key;
  return nullptr;
}

void http_session::on_files_header(net::connection& c, bool has_body) {
  if (req_->method == bhttp::verb::put) {
    // Until the body is read (start_upload), an answer ends the connection.
    closing_ = has_body;
    return authenticate(c);
  }
  if (req_->method != bhttp::verb::get && req_->method != bhttp::verb::head) {
    closing_ = has_body;  // its body is not read
    return respond_error(c, 405, "this server answers GET, HEAD and PUT under /files/", "Allow: GET, HEAD, PUT\r\n");
  }
  if (has_body) return refuse(c, 400, "a GET or HEAD request has no body");
  parser_.reset();  // the header is all there is
  authenticate(c);
}

void http_session::authenticate(net::connection& c) {
  if (req_->authorization.empty() && !req_->session_id.empty()) return cookie_login(c);
  if (account_ && !req_->authorization.empty() && req_->authorization == credentials_) return authorized(c);
  const std::string basic_challenge = "WWW-Authenticate: Basic realm=\"cskit\", charset=\"UTF-8\"\r\n";
  auto basic = http::parse_basic(req_->authorization);
  auto bearer = basic ? std::nullopt : http::parse_bearer(req_->authorization);
  if (!basic && !bearer) {
    // The page's API asks without a challenge: a browser would show its
    // own login box instead of the page's.
    if (req_->to == route::api) return respond_api_error(c, 401, "log in first");
    return respond_error(c, 401, "log in with a cskit account: HTTP Basic (user and token) or a bearer token",
                         basic_challenge + "WWW-Authenticate: Bearer realm=\"cskit\"\r\n");
  }
  std::optional<std::string> user;
  if (basic) user = basic->user;
  const std::string secret = basic ? basic->secret : *bearer;
  check_login(c, user, secret, [this, &c, basic_challenge](std::shared_ptr<const user_account> found) {
    if (!found) {
      spdlog::warn("https: authentication failed from {}", c.peer());
      const std::string message = "authentication failed: unknown user or wrong token";
      if (req_->to == route::api) return respond_api_error(c, 401, message);
      return respond_error(c, 401, message, basic_challenge);
    }
    if (!account_) {
      c.set_authenticated();
      spdlog::info("https: authenticated {} as {}", c.peer(), found->name);
    }
    account_ = std::move(found);
    credentials_ = req_->authorization;
    authorized(c);
  });
}

bool http_session::check_login(net::connection& c, const std::optional<std::string>& user, const std::string& secret,
                               login_done done) {
  // The login throttle of the cskit protocol: attempts of one source or
  // one name are answered one after another, failures slow them.
  if (user && !proto::is_valid_user_name(*user)) {
    done(nullptr);
    return true;
  }
  // A bearer token names no account before it is checked: its attempts
  // are throttled by their source.
  const std::string name = user ? *user : "(bearer from " + req_->source + ")";
  auto& throttle = front_.ctx.throttle;
  const auto now = auth_throttle::clock::now();
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(c.login_deadline() - now);
  const auto when = throttle.admit(req_->source, name,
                                   std::max(std::chrono::milliseconds(0), left - std::chrono::seconds(1)), now);
  if (!when) {
    spdlog::warn("https: login of '{}' from {} refused untried: too many recent failures", name, c.peer());
    closing_ = true;
    const std::string message = "too many failed logins from your address or for this user: try again later";
    if (req_->to == route::api) respond_api_error(c, 429, message);
    else respond_error(c, 429, message);
    return false;
  }
  std::shared_ptr<const user_account> found;
  if (user) {
    auto u = front_.ctx.find_user(*user);
    if (token_matches(secret, u.get(), *user)) found = std::move(u);
  } else {
    // A bearer token names its account: each is compared, in constant time.
    const auto table = front_.ctx.accounts();
    for (const auto& u : table->all()) {
      if (token_matches(secret, u.get(), u->name) && !found) found = u;
    }
  }
  if (found) throttle.on_success(req_->source, name, *when);
  else throttle.on_failure(req_->source, name, *when);
  const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(*when - now);
  if (wait.count() <= 0) {
    done(std::move(found));
  } else {
    c.run_after(wait, [done = std::move(done), found = std::move(found)]() mutable { done(std::move(found)); });
  }
  return true;
}

void http_session::authorized(net::connection& c) {
  if (!may_change(c)) return;
  if (req_->to == route::api) return api_authorized(c);
  serve_share_path(c);
}

std::optional<std::string> http_session::share_path(net::connection& c, const std::string& raw) {
  const auto refuse_path = [&](int status, const std::string& message) -> std::optional<std::string> {
    if (req_->to == route::api) respond_api_error(c, status, message);
    else respond_error(c, status, message);
    return std::nullopt;
  };
  if (std::string bad = util::check_relative_path(raw); !bad.empty()) return refuse_path(400, "'" + raw + "': " + bad);
  std::string norm = util::normalize_relative(raw);
  const bool reading = req_->method == bhttp::verb::get || req_->method == bhttp::verb::head;
  for (auto name : util::split_relative(norm)) {
    if (util::is_part_file_name(name)) {  // (to a reader, they do not exist)
      return refuse_path(reading ? 404 : 400,
                         "'" + norm + "': names beginning with " + std::string(util::part_prefix) + " are reserved");
    }
  }
  return norm;
}

void http_session::serve_share_path(net::connection& c) {
  const bool put = req_->method == bhttp::verb::put;
  const auto needed = put ? proto::permission::files_write : proto::permission::files_read;
  if (!account_->permissions.has(needed)) {
    return respond_error(c, 403, "user '" + account_->name + "' lacks the '" + std::string(proto::to_wire(needed)) +
                                     "' permission");
  }
  std::string why;
  auto path = http::target_path(req_->target, files_prefix, why);
  if (!path) {
    if (why.starts_with("not under")) return respond_error(c, 404, "files are under " + std::string(files_prefix));
    return respond_error(c, 400, "the path has " + why);
  }
  const auto checked = share_path(c, *path);
  if (!checked) return;
  const std::string& norm = *checked;
  if (put) return start_upload(c, norm);
  util::unique_fd fd(front_.share.jail().open(norm, O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) {
    const int err = -fd.release();
    if (err == ENOENT || err == ENOTDIR || err == EXDEV || err == ELOOP) {
      return respond_error(c, 404, "'" + norm + "' does not exist");
    }
    if (err == EACCES || err == EPERM) return respond_error(c, 403, "'" + norm + "': permission denied");
    return respond_error(c, 500, "'" + norm + "': " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return respond_error(c, 500, "'" + norm + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return serve_directory(c, norm, std::move(fd));
  if (!S_ISREG(st.st_mode)) return respond_error(c, 403, "'" + norm + "' is not a regular file");
  serve_file(c, norm, std::move(fd), st);
}

void http_session::serve_file(net::connection& c, const std::string& path, util::unique_fd fd, const struct stat& st) {
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const std::string etag = etag_of(st);
  const std::string modified = http::format_date(st.st_mtim.tv_sec);
  std::string fields = "ETag: " + etag + "\r\nLast-Modified: " + modified +
                       "\r\nAccept-Ranges: bytes\r\nContent-Security-Policy: sandbox\r\n";
  // Conditional requests (RFC 9110 13.2.2): If-None-Match, else If-Modified-Since.
  bool unchanged = false;
  if (!req_->if_none_match.empty()) {
    unchanged = etag_listed(req_->if_none_match, etag);
  } else if (auto since = http::parse_date(req_->if_modified_since)) {
    unchanged = st.st_mtim.tv_sec <= *since;
  }
  if (unchanged) {
    send_head(c, 304, fields, std::nullopt, {});
    return finished(c);
  }
  http::byte_range range{0, size};
  int status = 200;
  // If-Range: the range only if the file is still the version the client has.
  const bool range_applies = req_->if_range.empty() || req_->if_range == etag || req_->if_range == modified;
  if (!req_->range.empty() && range_applies) {
    switch (http::parse_range(req_->range, size, range)) {
      case http::range_result::none: range = {0, size}; break;
      case http::range_result::ok: status = 206; break;
      case http::range_result::unsatisfiable:
        return respond_error(c, 416, "the range starts after the end of '" + path + "' (" + std::to_string(size) +
                                         " bytes)",
                             "Content-Range: bytes */" + std::to_string(size) + "\r\n");
    }
  }
  if (status == 206) {
    fields += "Content-Range: bytes " + std::to_string(range.first) + "-" +
              std::to_string(range.first + range.length - 1) + "/" + std::to_string(size) + "\r\n";
  }
  if (req_->method == bhttp::verb::get && range.length > 0 && range.length <= small_body) {
    std::string body(static_cast<std::size_t>(range.length), '\0');
    const long n = util::read_full(fd.get(), body.data(), body.size(), range.first);
    if (n < 0) return respond_error(c, 500, "reading '" + path + "': " + std::strerror(static_cast<int>(-n)));
    if (static_cast<std::uint64_t>(n) != range.length) {
      return respond_error(c, 409, "'" + path + "' changed while it was being read; try again");
    }
    service::audit_file_operation({"get", account_->name, c.peer(), path, "", range.length, "ok", {}});
    return respond(c, status, fields, body, http::media_type(path));
  }
  send_head(c, status, fields, range.length, http::media_type(path));  // the body follows
  if (req_->method == bhttp::verb::head || range.length == 0) {
    if (req_->method == bhttp::verb::get) {
      service::audit_file_operation({"get", account_->name, c.peer(), path, "", 0, "ok", {}});
    }
    return finished(c);
  }
  sending_ = std::make_unique<body_sender>();
  sending_->fd = std::move(fd);
  sending_->at = range.first;
  sending_->left = range.length;
  sending_->path = path;
  send_body(c);
}

namespace {
// One buffer per loop thread for the pieces of bodies read into memory:
// each is encrypted by send_raw before the next is read.
char* piece_buffer() {
  thread_local std::unique_ptr<char[]> buf(new char[tls_piece]);
  return buf.get();
}
}  // namespace

void http_session::send_body(net::connection& c) {
  body_sender& b = *sending_;
  // With TLS in user space, a piece read into memory is encrypted while it
  // is in the cache, and the queue stays short (as cskit's downloads do);
  // otherwise (kernel TLS) the kernel sends the file itself.
  const bool copy_through = c.encrypts_in_user_space();
  const std::size_t high = copy_through ? tls_queue_high : queue_high;
  const std::size_t low = copy_through ? tls_queue_low : queue_low;
  while (b.left > 0 && c.queued_bytes() < high) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(b.left, copy_through ? tls_piece : body_piece));
    if (copy_through) {
      char* buf = piece_buffer();
      const long got = util::read_full(b.fd.get(), buf, n, b.at);
      if (got != static_cast<long>(n)) {  // the file shrank, or cannot be read: a short body, then the close
        return c.close_now(got < 0 ? "reading '" + b.path + "': " + std::strerror(static_cast<int>(-got))
                                   : "'" + b.path + "' shrank while it was being sent");
      }
      if (!c.send_raw(std::string_view(buf, n))) return;  // closing
    } else if (!c.send_file_raw(b.fd.get(), b.at, n)) {
      return;  // closing
    }
    b.at += n;
    b.left -= n;
    b.sent += n;
    c.touch();  // progress counts as activity for the idle deadline
  }
  if (b.left > 0) {
    c.when_queue_below(low, [this, &c] { send_body(c); });
    return;
  }
  service::audit_file_operation({"get", account_->name, c.peer(), b.path, "", b.sent, "ok", {}});
  sending_.reset();
  finished(c);
}

void http_session::start_upload(net::connection& c, const std::string& path) {
  if (path.empty()) return respond_error(c, 409, "the share's root is a directory");
  if (!req_->content_length) {
    return respond_error(c, 411, "a PUT needs a Content-Length (curl -T FILE sends one)");
  }
  auto u = std::make_unique<upload>();
  u->path = path;
  u->expected = *req_->content_length;
  if (!req_->content_range.empty()) {
    start_piece(c, *u);
    if (u->file) receive_upload(c, std::move(u));
    return;
  }
  const std::uint64_t size = u->expected;
  if (const auto max = front_.share.max_file_size(); max && size > max) {
    return respond_error(c, 413, "'" + path + "' is " + std::to_string(size) +
                                     " bytes; this server accepts files up to " + std::to_string(max));
  }
  if (!req_->content_digest.empty()) {
    auto sha = http::content_digest_sha256(req_->content_digest);
    if (!sha) return respond_error(c, 400, "Content-Digest must carry sha-256=:BASE64:");
    u->sha256 = *sha;
    u->digest = util::content_digest(true);
  }
  if (!open_upload_target(c, *u)) return;
  if (!front_.share.reserve(size)) {
    return respond_error(c, 413, "'" + path + "' (" + std::to_string(size) + " bytes) would exceed the share's quota");
  }
  u->reserved = size;
  struct stat made {};
  int fd = util::open_unnamed(u->dir.get(), util::default_file_mode(), made);
  if (fd == -EOPNOTSUPP) {  // no O_TMPFILE here: a private named part, renamed at the commit
    u->part = util::part_file_name(u->leaf) + "." + util::random_hex64();
    fd = ::openat(u->dir.get(), u->part.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) fd = -errno;
    if (fd < 0) u->part.clear();
  }
  if (fd < 0) {
    front_.share.release(size);
    return respond_error(c, 500, "cannot create '" + path + "': " + std::strerror(-fd));
  }
  u->file = util::unique_fd(fd);
  if (const int err = size > 0 ? util::preallocate(fd, 0, size) : 0; err != 0) {
    front_.share.release(size);
    if (err == EFBIG) return respond_error(c, 413, "'" + path + "' is larger than the server's file system takes");
    return respond_error(c, 507, "no room for '" + path + "' (" + std::to_string(size) + " bytes) on the server");
  }
  receive_upload(c, std::move(u));
}

bool http_session::open_upload_target(net::connection& c, upload& u) {
  u.dir = util::unique_fd(front_.share.jail().open_parent(u.path, u.leaf));
  if (!u.dir) {
    const int err = -u.dir.release();
    // As for GET: a directory outside the share does not exist.
    const bool missing = err == ENOENT || err == ENOTDIR || err == EXDEV || err == ELOOP;
    respond_error(c, missing ? 404 : 403,
                  "the directory of '" + u.path + "' " + (missing ? "does not exist" : std::strerror(err)));
    return false;
  }
  struct stat st {};
  if (::fstatat(u.dir.get(), u.leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISDIR(st.st_mode)) {
      respond_error(c, 409, "'" + u.path + "' is a directory");
      return false;
    }
    u.existed = true;
  }
  return true;
}

namespace {

// Opens the part of an upload in pieces and locks it; checks that it is
// still the file of that name (a commit may have just renamed it into
// place) and that it holds `base` bytes (`have`: what it holds). A first
// piece (`base` 0) creates the part, or starts it over.
enum class part_open { ok, busy, elsewhere, error };
part_open open_piece_part(int dir, const std::string& name, std::uint64_t base, util::unique_fd& fd,
                          std::uint64_t& have, int& err) {
  const int flags = O_RDWR | O_CLOEXEC | O_NOFOLLOW | (base == 0 ? O_CREAT : 0);
  fd = util::unique_fd(::openat(dir, name.c_str(), flags, 0600));
  if (!fd) {
    err = errno;
    // No part to go on with (have: 0); for a first piece, no directory.
    return err == ENOENT && base != 0 ? part_open::elsewhere : part_open::error;
  }
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return part_open::busy;
  struct stat mine {}, named {};
  if (::fstat(fd.get(), &mine) != 0 || !S_ISREG(mine.st_mode)) {
    err = EINVAL;
    return part_open::error;
  }
  if (mine.st_nlink == 0 || ::fstatat(dir, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0 ||
      named.st_ino != mine.st_ino || named.st_dev != mine.st_dev) {
    return part_open::busy;  // committed (or replaced) while we waited for the lock
  }
  have = static_cast<std::uint64_t>(mine.st_size);
  if (have == base) return part_open::ok;
  if (base != 0) return part_open::elsewhere;
  if (::ftruncate(fd.get(), 0) != 0) {
    err = errno;
    return part_open::error;
  }
  return part_open::ok;
}

}  // namespace

bool http_session::part_linked(const upload& u) {
  struct stat st {};
  return ::fstat(u.file.get(), &st) == 0 && st.st_nlink > 0;
}

void http_session::piece_outcome::settle(int err, int dir, service::file_share& share) {
  if (err && err != EEXIST && err != EISDIR) {
    // Back to its earlier pieces, which count again.
    if (::ftruncate(part.get(), static_cast<off_t>(base)) == 0) {
      share.adjust_usage(static_cast<std::int64_t>(base));
    } else {
      spdlog::warn("https: the part of '{}' could not be cut back: {}", leaf, std::strerror(errno));
    }
  } else if (!err) {
    drop_abandoned_parts(dir, share);
  }
  part.reset();
}

void http_session::piece_outcome::drop_abandoned_parts(int dir, service::file_share& share) const {
  // Uploads of the same name with other keys (an older version of the
  // file, given up): their parts go, unless one is being written.
  const std::string prefix = util::part_file_name(leaf) + ".w";
  DIR* d = ::fdopendir(::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    if (std::string_view(e->d_name).starts_with(prefix) && e->d_name != name) names.emplace_back(e->d_name);
  }
  ::closedir(d);
  for (const auto& n : names) {
    util::unique_fd f(::openat(dir, n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    struct stat mine {}, named {};
    if (!f || ::flock(f.get(), LOCK_EX | LOCK_NB) != 0 || ::fstat(f.get(), &mine) != 0 || !S_ISREG(mine.st_mode) ||
        ::fstatat(dir, n.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0 || named.st_ino != mine.st_ino) {
      continue;
    }
    if (::unlinkat(dir, n.c_str(), 0) == 0) share.adjust_usage(-static_cast<std::int64_t>(mine.st_size));
  }
}

bool valid_upload_key(std::string_view k) {
  return k.size() >= 16 && k.size() <= 64 && std::all_of(k.begin(), k.end(), [](char ch) {
           return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
         });
}

std::string piece_part_name(std::string_view leaf, std::string_view key) {
  return util::part_file_name(leaf) + ".w" + std::string(key);
}

void http_session::start_piece(net::connection& c, upload& u) {
  const auto range = http::parse_content_range(req_->content_range);
  if (!range) return respond_error(c, 400, "Content-Range must be 'bytes FIRST-LAST/TOTAL'");
  if (range->last - range->first + 1 != u.expected) {
    return respond_error(c, 400, "the Content-Range's piece is not the Content-Length's size");
  }
  if (!valid_upload_key(req_->upload_key)) {
    return respond_error(c, 400, "a piece needs an Upload-Key of 16 to 64 lowercase hex digits");
  }
  if (!req_->content_digest.empty() && !http::content_digest_sha256(req_->content_digest)) {
    return respond_error(c, 400, "Content-Digest must carry sha-256=:BASE64:");
  }
  if (const auto max = front_.share.max_file_size(); max && range->total > max) {
    return respond_error(c, 413, "'" + u.path + "' is " + std::to_string(range->total) +
                                     " bytes; this server accepts files up to " + std::to_string(max));
  }
  if (!open_upload_target(c, u)) return;
  u.piece = true;
  u.base = range->first;
  u.total = range->total;
  u.last = range->last + 1 == range->total;
  if (auto sha = http::content_digest_sha256(req_->content_digest)) {
    u.sha256 = *sha;
    u.digest = util::content_digest(true);
  }
  // Whatever is still to come must fit (what the part holds is counted).
  const std::uint64_t reserve = u.total - u.base;
  if (!front_.share.reserve(reserve)) {
    return respond_error(c, 413, "'" + u.path + "' (" + std::to_string(u.total) + " bytes) would exceed the share's quota");
  }
  u.reserved = reserve;
  u.piece_part = piece_part_name(u.leaf, req_->upload_key);
  std::uint64_t have = 0;
  int err = 0;
  util::unique_fd fd;
  const part_open opened = open_piece_part(u.dir.get(), u.piece_part, u.base, fd, have, err);
  const auto fail = [&](int status, const std::string& message, const std::string& fields = {}) {
    front_.share.release(u.reserved);
    u.reserved = 0;
    respond_error(c, status, message, fields);
  };
  switch (opened) {
    case part_open::ok: break;
    case part_open::busy: return fail(409, "another upload of '" + u.path + "' with this key is in progress");
    case part_open::elsewhere:
      return fail(409, "the server has " + std::to_string(have) + " bytes of '" + u.path + "'; send the piece from there",
                  "Upload-Offset: " + std::to_string(have) + "\r\n");
    case part_open::error:
      if (err == ENOENT) return fail(404, "the directory of '" + u.path + "' does not exist");
      return fail(500, "the part of '" + u.path + "': " + std::strerror(err));
  }
  if (u.base == 0 && have > 0) front_.share.adjust_usage(-static_cast<std::int64_t>(have));  // started over
  if (const int e = util::preallocate(fd.get(), u.base, u.expected); e != 0) {
    if (u.base == 0) ::unlinkat(u.dir.get(), u.piece_part.c_str(), 0);
    return fail(e == EFBIG ? 413 : 507, "no room for '" + u.path + "' on the server: " + std::strerror(e));
  }
  u.file = std::move(fd);
}

void http_session::receive_upload(net::connection& c, std::unique_ptr<upload> u) {
  const std::uint64_t size = u->expected;
  u->buffer = std::make_unique_for_overwrite<char[]>(upload_buffer);
  u->receiving = true;
  upload_ = std::move(u);
  parser_->body_limit(size);
  closing_ = shutting_down_;  // the body is read: the connection can go on (unless the server stops)
  if (req_->expect_continue) c.send_raw("HTTP/1.1 100 Continue\r\n\r\n");
  if (size == 0 && parser_->is_done()) {
    upload_->receiving = false;
    return commit_upload(c);
  }
  pump(c);
}

bool http_session::receive_body(net::connection& c) {
  upload& u = *upload_;
  auto& body = parser_->get().body();
  body.data = u.buffer.get();
  body.size = upload_buffer;
  boost::system::error_code ec;
  const std::string_view rest = unread();
  const std::size_t n = parser_->put(boost::asio::buffer(rest.data(), rest.size()), ec);
  at_ += n;
  const std::size_t got = upload_buffer - body.size;
  if (ec == bhttp::error::need_buffer) ec = {};
  if (ec && ec != bhttp::error::need_more) {
    refuse(c, 400, "malformed request body: " + ec.message());
    return false;
  }
  if (got > 0) {
    if (const int err = util::pwrite_all(u.file.get(), u.buffer.get(), got, u.base + u.written); err != 0) {
      const std::string message = "writing '" + u.path + "': " + std::strerror(err);
      u.drop_piece();
      service::audit_file_operation({"put", account_->name, c.peer(), u.path, "", u.written + got, "io_error",
                                     message + "; nothing was written"});
      front_.share.release(u.reserved);
      upload_.reset();  // (the file is unnamed, or its private part goes with it)
      closing_ = true;  // the rest of the body is not read
      respond_error(c, err == ENOSPC || err == EDQUOT ? 507 : 500, message);
      return false;
    }
    u.digest.update(u.buffer.get(), got);
    u.written += got;
    c.touch();
  }
  if (parser_->is_done()) {
    u.receiving = false;
    commit_upload(c);
    return false;
  }
  return n > 0 || got > 0;
}

std::string http_session::digest_mismatch(const upload& u) const {
  const std::string xxh3 = u.digest.xxh3_hex();
  if (!req_->xxh3.empty() && !beast_iequals(boost::beast::string_view(req_->xxh3.data(), req_->xxh3.size()), xxh3)) {
    return "the body's XXH3 is " + xxh3 + ", not " + req_->xxh3 + " (X-Content-XXH3)";
  }
  if (!u.sha256.empty() && u.digest.sha256_hex() != u.sha256) {
    return "the body's SHA-256 is " + u.digest.sha256_hex() + ", not " + u.sha256 + " (Content-Digest)";
  }
  return {};
}

void http_session::commit_upload(net::connection& c) {
  upload& u = *upload_;
  if (const std::string mismatch = digest_mismatch(u); !mismatch.empty()) {
    u.drop_piece();
    service::audit_file_operation({"put", account_->name, c.peer(), u.path, "", u.written, "integrity", mismatch});
    front_.share.release(u.reserved);
    upload_.reset();
    return respond_error(c, 400, mismatch + ": nothing was written");
  }
  if (u.piece && !part_linked(u)) {  // removed meanwhile (rm -r of its directory)
    front_.share.release(u.reserved);
    upload_.reset();
    return respond_error(c, 409, "'" + u.path + "' was removed while it was being uploaded: start over");
  }
  if (u.piece && !u.last) return piece_done(c);
  // A last piece: the part's earlier pieces, counted so far, become the
  // file, which the commit counts whole.
  if (u.piece) front_.share.adjust_usage(-static_cast<std::int64_t>(u.base));
  start_commit(c, u);
}

void http_session::start_commit(net::connection& c, upload& u) {
  service::commit_job job;
  job.file = std::move(u.file);
  job.dir = util::unique_fd(::fcntl(u.dir.get(), F_DUPFD_CLOEXEC, 0));
  job.part = u.piece ? u.piece_part : u.part;
  job.target = u.leaf;
  if (!job.part.empty()) job.mode = util::default_file_mode();
  job.size = u.piece ? u.total : u.written;
  job.reserved = u.reserved;
  // The committer owns the part now; it removes it only when the commit
  // is refused for good, and a private part is never retried: any failure
  // removes it (below).
  std::string part = std::move(u.part);
  u.part.clear();
  u.reserved = 0;
  // The connection may close before the commit is done, and must never be
  // destroyed on the committer's thread: it is held weakly. Its audit
  // record is written either way.
  std::weak_ptr<net::connection> weak = c.shared_from_this();
  auto ex = c.executor();
  service::file_audit_record_owned record{"put", account_->name, c.peer(), u.path, "", job.size};
  // A last piece: the part stays open (and locked: a duplicate shares the
  // lock) until the commit is over. Committed: the file's older parts from
  // the page go. Not committed, and not refused for good (which removes
  // it): the part keeps its earlier pieces, so that the last one can be
  // sent again.
  std::shared_ptr<piece_outcome> pieces;
  if (u.piece) {
    pieces = std::make_shared<piece_outcome>(util::unique_fd(::fcntl(job.file.get(), F_DUPFD_CLOEXEC, 0)), u.base,
                                             u.leaf, u.piece_part);
  }
  job.done = [this, weak, ex, record, part, pieces, share = &front_.share,
              dir = ::fcntl(u.dir.get(), F_DUPFD_CLOEXEC, 0)](int err) mutable {
    if (err && !part.empty() && dir >= 0) ::unlinkat(dir, part.c_str(), 0);
    if (pieces && pieces->part && dir >= 0) pieces->settle(err, dir, *share);
    if (dir >= 0) ::close(dir);
    boost::asio::post(ex, [this, weak, record = std::move(record), err] {
      auto conn = weak.lock();
      if (!conn || conn->closing()) {
        record.write(err ? "io_error" : "ok", err ? std::strerror(err) : "");
        return;
      }
      upload_committed(*conn, err);
    });
  };
  front_.share.commit(std::move(job));
}

void http_session::upload_committed(net::connection& c, int err) {
  upload& u = *upload_;
  const std::uint64_t size = u.piece ? u.total : u.written;
  service::audit_file_operation({"put", account_->name, c.peer(), u.path, "", size,
                                 err ? "io_error" : "ok", err ? std::strerror(err) : ""});
  // A whole body's digest is the file's; a last piece's is only its own.
  const std::string xxh3 = u.piece ? std::string() : u.digest.xxh3_hex();
  const std::string path = u.path;
  const bool existed = u.existed;
  upload_.reset();
  if (c.closing()) return;
  if (err) return respond_error(c, 500, "'" + path + "' could not be committed: " + std::strerror(err));
  const int status = existed ? 200 : 201;
  std::string fields = xxh3.empty() ? "" : "X-Content-XXH3: " + xxh3 + "\r\n";
  if (!existed) fields += "Location: /files/" + http::percent_encode_path(path) + "\r\n";
  respond(c, status, fields,
          std::to_string(status) + " " + std::string(http::reason(status)) + ": '" + path + "' (" +
              std::to_string(size) + " bytes" + (xxh3.empty() ? "" : ", xxh3 " + xxh3) + ")\n");
}

void http_session::piece_done(net::connection& c) {
  // Not the last piece: the part keeps it for the next one, and it counts
  // against the quota from now on (as parts do when the server starts).
  upload& u = *upload_;
  const std::uint64_t have = u.base + u.written;
  front_.share.adjust_usage(static_cast<std::int64_t>(u.written));  // (part_linked: checked by the caller)
  front_.share.release(u.reserved);
  upload_.reset();  // (closes the part: its lock goes)
  respond(c, 200, "Upload-Offset: " + std::to_string(have) + "\r\n", "{\"offset\":" + std::to_string(have) + "}\n",
          "application/json");
}

void http_session::serve_directory(net::connection& c, const std::string& path, util::unique_fd fd) {
  // A listing as JSON: what the page shows, and what a script reads.
  DIR* d = ::fdopendir(::openat(fd.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d == nullptr) return respond_error(c, 403, "'" + path + "': " + std::strerror(errno));
  std::string body = "{\"path\":" + json_escape(path) + ",\"entries\":[";
  bool first = true, truncated = false;
  std::size_t count = 0;
  while (dirent* e = ::readdir(d)) {
    const std::string_view name = e->d_name;
    if (name == "." || name == ".." || util::is_part_file_name(name)) continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    const char* type = S_ISDIR(st.st_mode) ? "dir" : S_ISREG(st.st_mode) ? "file" : S_ISLNK(st.st_mode) ? "link" : "other";
    body += std::string(first ? "" : ",") + "{\"name\":" + json_escape(name) + ",\"type\":\"" + type +
            "\",\"size\":" + std::to_string(st.st_size) + ",\"mtime\":" + std::to_string(st.st_mtim.tv_sec) + "}";
    first = false;
    if (++count >= max_listing) {  // a bounded answer, which says so
      truncated = true;
      break;
    }
  }
  ::closedir(d);
  body += std::string("],\"truncated\":") + (truncated ? "true" : "false") + "}\n";
  respond(c, 200, {}, body, "application/json");
}

std::string http_session::head(int status, const std::string& fields, std::optional<std::uint64_t> length,
                               std::string_view type) const {
  std::string h = "HTTP/1.1 " + std::to_string(status) + " " + std::string(http::reason(status)) +
                  "\r\nDate: " + date_now() + "\r\nServer: cskit/" + cskit_version +
                  "\r\nX-Content-Type-Options: nosniff\r\nCache-Control: private\r\n" + fields;
  if (!type.empty()) h += "Content-Type: " + std::string(type) + "\r\n";
  if (length) h += "Content-Length: " + std::to_string(*length) + "\r\n";
  if (closing_ || (req_ && !req_->keep_alive)) h += "Connection: close\r\n";
  return h + "\r\n";
}

void http_session::send_head(net::connection& c, int status, const std::string& fields,
                             std::optional<std::uint64_t> length, std::string_view type) {
  responding_ = true;
  c.send_raw(head(status, fields, length, type));
}

void http_session::respond(net::connection& c, int status, const std::string& fields, std::string_view body,
                           std::string_view type) {
  std::string out = head(status, fields, body.size(), type);
  if (!req_ || req_->method != bhttp::verb::head) out += body;
  responding_ = true;
  c.send_raw(out);  // one piece: one TLS record for a small answer
  finished(c);
}

void http_session::respond_error(net::connection& c, int status, const std::string& message, const std::string& fields) {
  respond(c, status, fields, std::to_string(status) + " " + std::string(http::reason(status)) + ": " + message + "\n");
}

void http_session::refuse(net::connection& c, int status, const std::string& message) {
  closing_ = true;
  busy_ = true;
  spdlog::info("https: {}: {} {}", c.peer(), status, message);
  respond_error(c, status, message);
}

void http_session::finished(net::connection& c) {
  responding_ = false;
  const bool close = closing_ || (req_ && !req_->keep_alive);
  req_.reset();
  parser_.reset();
  if (close) {
    in_.clear();
    at_ = 0;
    c.close_after_flush("HTTP: Connection: close");
    return;
  }
  busy_ = false;
  pump(c);  // (inside pump's loop: returns at once, and the loop goes on)
}

void http_session::encode_failure(std::string& out, const proto::json& error) {
  if (ws_) {  // a WebSocket says why in its close frame
    return proto::ws::encode_close(out, proto::ws::going_away, error.value("message", std::string("closing")));
  }
  // A deadline in the middle of a request: 408; between requests, or in
  // the middle of a response, the connection just closes.
  if (responding_ || !(header_in_progress() || form_receiving_)) return;
  const std::string body = "408 Request Timeout: " + error.value("message", std::string("too slow")) + "\n";
  out += "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

void http_session::on_shutdown(net::connection& c, std::chrono::milliseconds grace) {
  // A response being sent finishes within the grace; then the close.
  closing_ = shutting_down_ = true;
  if (ws_) return ws_close(c, proto::ws::going_away, "the server is shutting down");
  if (!busy_) c.close_after_flush("server shutdown", grace);
}

void http_session::on_grace_over(net::connection& c) { c.close_now("server shutdown (grace period over)"); }

void http_session::on_reload(net::connection& c) {
  if (!account_) return;
  const auto now = front_.ctx.find_user(account_->name);
  // account_change covers a withdrawn permission, files-read and files-write included.
  const std::string why = account_change(*account_, now.get());
  if (why.empty()) return;
  spdlog::warn("https: {} user={}: closed after the configuration was reloaded: {}", c.peer(), account_->name, why);
  if (ws_) return ws_close(c, proto::ws::policy_violation, "the account changed: " + why);
  c.close_now("the account changed: " + why);
}

}  // namespace cskit::server
