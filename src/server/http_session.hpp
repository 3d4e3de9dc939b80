#pragma once
// HTTPS on the cskit port: a connection whose TLS handshake agreed on ALPN
// "http/1.1" is served here instead of by the cskit protocol. Plain HTTP
// clients (curl, wget) read the share under /files/ with the accounts,
// permissions, jail and limits of the cskit protocol, on the same event
// loops and deadlines (docs/http.md).

#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "net/connection.hpp"
#include "server/accounts.hpp"
#include "util/file_io.hpp"

namespace cskit::service {
class file_share;
}

namespace cskit::server {

struct server_context;

/// What every HTTP connection shares.
struct http_front {
  const server_context& ctx;
  service::file_share& share;
};

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
  // Who the request is from: Basic or Bearer credentials, checked with the
  // login throttle (the answer may be held), or the connection's account.
  void authenticate(net::connection& c);
  void authorized(net::connection& c);
  void serve_file(net::connection& c, const std::string& path, util::unique_fd fd, const struct stat& st);
  // PUT: checks the target and the limits, makes the unnamed file, says
  // 100 Continue when asked; the body then goes to receive_body.
  void start_upload(net::connection& c, const std::string& path);
  // Writes what the parser has of the body; false when it needs more.
  bool receive_body(net::connection& c);
  void commit_upload(net::connection& c);
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
};

}  // namespace cskit::server
