#pragma once
// HTTPS on the cskit port: a connection whose TLS handshake agreed on ALPN
// "http/1.1" is served here instead of by the cskit protocol. Plain HTTP
// clients (curl, wget) read the share under /files/ with the accounts,
// permissions, jail and limits of the cskit protocol, on the same event
// loops and deadlines (docs/http.md).

#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "net/connection.hpp"
#include "server/accounts.hpp"
#include "util/file_io.hpp"

namespace cskit::service {
class chat_hub;
class file_share;
}  // namespace cskit::service

namespace cskit::server {

struct server_context;

class web_sessions;

/// What every HTTP connection shares.
struct http_front {
  const server_context& ctx;
  service::file_share& share;
  web_sessions& sessions;  ///< the web page's logins
  service::chat_hub* hub = nullptr;  ///< the page's chat (null: chat is off)
};

/// An Upload-Key (16 to 64 lowercase hex digits): names one upload in
/// pieces of one file (the page derives it from the file's name, size and
/// time), and so its resumable part, piece_part_name.
bool valid_upload_key(std::string_view key);
std::string piece_part_name(std::string_view leaf, std::string_view key);

class http_session final : public net::frame_handler {
 public:
  /// The most a request's header may take (431 beyond).
  static constexpr std::size_t max_header = 16 * 1024;

  explicit http_session(const http_front& front);
  ~http_session() override;

  bool stream_mode() const override { return true; }
  void on_bytes(net::connection& c, std::string_view bytes) override;
  /// The client sent its last request: they are answered, then the close.
  void on_peer_eof(net::connection& c) override;
  void on_open(net::connection& c) override;
  void on_frame(net::connection&, proto::frame&&) override {}
  void on_close(net::connection& c, std::string_view reason) override;
  void encode_failure(std::string& out, const proto::json& error) override;
  void on_shutdown(net::connection& c, std::chrono::milliseconds grace) override;
  void on_grace_over(net::connection& c) override;
  /// The chat's keepalive, over the WebSocket.
  void send_ping(net::connection& c) override;
  /// The accounts were re-read: closed when its account is gone, has a new
  /// token or lost files-read.
  void on_reload(net::connection& c) override;

 private:
  using parser_type = boost::beast::http::request_parser<boost::beast::http::buffer_body>;
  struct request_info;  // what is kept of the request being answered
  struct body_sender;   // a file body going out in pieces
  struct upload;        // a PUT body coming in

  // Parses what is buffered, one request at a time (none while one is
  // being answered, nor while the send queue is long), in a loop: an
  // answer given at once lets the loop go on (finished() never recurses).
  void pump(net::connection& c);
  std::string_view unread() const { return std::string_view(in_).substr(at_); }
  // Part of a request's header has come (Beast takes none of it until it
  // has all of it).
  bool header_in_progress() const {
    return parser_ && !parser_->is_header_done() && (at_ < in_.size() || parser_->got_some());
  }
  void on_request_header(net::connection& c);
  void read_request_fields();
  // Where a field Beast does not know by name goes (X-CSRF-Token, ...).
  std::string* extension_field(boost::beast::string_view name);
  void on_files_header(net::connection& c, bool has_body);
  // Who the request is from: Basic or Bearer credentials, checked with the
  // login throttle (the answer may be held), or the connection's account.
  void authenticate(net::connection& c);
  // The login throttle and the token check (HTTP Basic, Bearer and the
  // page's login alike): `done` gets the account, or null; false when the
  // throttle refused the attempt untried (answered with 429).
  using login_done = std::function<void(std::shared_ptr<const user_account>)>;
  bool check_login(net::connection& c, const std::optional<std::string>& user, const std::string& secret,
                   login_done done);
  void authorized(net::connection& c);
  void serve_share_path(net::connection& c);
  // A share path from the client, checked as the files service checks it:
  // normalized, or nullopt with the error answered (400).
  std::optional<std::string> share_path(net::connection& c, const std::string& raw);
  void serve_file(net::connection& c, const std::string& path, util::unique_fd fd, const struct stat& st);
  // PUT: checks the target and the limits, makes the unnamed file, says
  // 100 Continue when asked; the body then goes to receive_body.
  void start_upload(net::connection& c, const std::string& path);
  // The target's directory, and what is in the way (a directory: 409);
  // false when answered with an error.
  bool open_upload_target(net::connection& c, upload& u);
  // A PUT with Content-Range: one piece of a file uploaded in pieces, into
  // its resumable part (docs/http.md, "Uploads in pieces").
  void start_piece(net::connection& c, upload& u);
  // The rest of a PUT's start, once its file is open and reserved.
  void receive_upload(net::connection& c, std::unique_ptr<upload> u);
  void piece_done(net::connection& c);
  // The part of an upload in pieces is still linked (not removed meanwhile).
  static bool part_linked(const upload& u);
  // What a last piece's commit leaves to do, on the committer's thread.
  struct piece_outcome {
    util::unique_fd part;  // a duplicate: the part's lock lasts until settle()
    std::uint64_t base;
    std::string leaf, name;
    piece_outcome(util::unique_fd p, std::uint64_t b, std::string l, std::string n)
        : part(std::move(p)), base(b), leaf(std::move(l)), name(std::move(n)) {}
    void settle(int err, int dir, service::file_share& share);
    void drop_abandoned_parts(int dir, service::file_share& share) const;
  };
  // Writes what the parser has of the body; false when it needs more.
  bool receive_body(net::connection& c);
  void commit_upload(net::connection& c);
  // Why the body is not what its digests say ("" when it is).
  std::string digest_mismatch(const upload& u) const;
  // Hands the file to the share's committer; upload_committed follows.
  void start_commit(net::connection& c, upload& u);
  void upload_committed(net::connection& c, int err);
  void serve_directory(net::connection& c, const std::string& path, util::unique_fd fd);
  void send_body(net::connection& c);
  // The response is out (or queued): the next request, or the close.
  void finished(net::connection& c);
  // The status line and header fields; `length`: Content-Length (none for 304).
  std::string head(int status, const std::string& fields, std::optional<std::uint64_t> length,
                   std::string_view type) const;
  void send_head(net::connection& c, int status, const std::string& fields, std::optional<std::uint64_t> length,
                 std::string_view type);
  // A whole response (HEAD: without its body), then finished().
  void respond(net::connection& c, int status, const std::string& fields, std::string_view body,
               std::string_view type = "text/plain; charset=utf-8");
  void respond_error(net::connection& c, int status, const std::string& message, const std::string& fields = {});
  // A request that cannot be parsed: the answer, then the close.
  void refuse(net::connection& c, int status, const std::string& message);

  // ---- The web page and its API (http_web.cpp; docs/http.md, "The web page")
  enum class route : std::uint8_t { files, api, page };
  void on_api_header(net::connection& c, bool has_body);
  // A small request body (the API's JSON), read whole into form_; false
  // when it needs more.
  bool receive_form(net::connection& c);
  void api_request(net::connection& c);
  // The page's files (GET /, /app.js, ...): no login needed.
  void serve_page(net::connection& c);
  // The request's session cookie instead of credentials.
  void cookie_login(net::connection& c);
  // Origin and CSRF checks of a request that changes something; false
  // when it was refused (answered).
  bool may_change(net::connection& c);
  void api_authorized(net::connection& c);
  void api_login(net::connection& c);
  void api_session(net::connection& c);
  void api_logout(net::connection& c);
  void api_mkdir(net::connection& c, const proto::json& body);
  void api_rename(net::connection& c, const proto::json& body);
  void api_delete(net::connection& c, const proto::json& body);
  void api_upload_offset(net::connection& c, const proto::json& body);
  // A path member of an API request: a string, checked as share_path does.
  std::optional<std::string> api_path(net::connection& c, const proto::json& body, const char* key);
  void respond_json(net::connection& c, int status, const proto::json& body, const std::string& fields = {});

  // ---- Chat over a WebSocket (http_websocket.cpp): GET /api/chat upgrades.
  struct websocket;
  void start_websocket(net::connection& c);
  void on_ws_bytes(net::connection& c, std::string_view bytes);
  void on_ws_text(net::connection& c, const std::string& text);
  void on_ws_close_frame(net::connection& c, const std::string& payload);
  // The page's session the socket was opened in has ended (logout,
  // expiry): closed (1008), true.
  bool ws_session_ended(net::connection& c);
  // A close frame (`code`, `reason`), then the close once it is sent.
  void ws_close(net::connection& c, std::uint16_t code, std::string_view reason);
  std::unique_ptr<websocket> ws_;
  void respond_api_error(net::connection& c, int status, const std::string& message, const std::string& fields = {});

  const http_front& front_;
  std::string in_;  // received; from at_ on, not parsed yet
  std::size_t at_ = 0;
  bool pumping_ = false;
  bool resume_pending_ = false;  // pump again once the send queue is short
  bool new_message_ = false;     // a request began since the last progress report
  bool peer_done_ = false;       // the client sends nothing more
  bool shutting_down_ = false;
  bool idle() const;
  std::optional<parser_type> parser_;
  std::unique_ptr<request_info> req_;
  std::unique_ptr<body_sender> sending_;
  std::unique_ptr<upload> upload_;
  bool busy_ = false;        // a request is being answered
  bool closing_ = false;     // after this response, the connection closes
  bool responding_ = false;  // a response has begun (no error can be sent any more)
  std::shared_ptr<const user_account> account_;  // who logged in on this connection
  std::string credentials_;  // the Authorization value account_ was checked with
  std::string form_;         // the API request's body
  std::size_t form_got_ = 0;
  bool form_receiving_ = false;
};

}  // namespace cskit::server
