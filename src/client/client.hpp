#pragma once
// The cskit client library: connect, authenticate both ways, exchange
// frames. Blocking calls with a deadline on every wait; Asio stays behind
// this header so the CLI compiles fast.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "net/endpoint.hpp"
#include "proto/frame.hpp"

namespace cskit::client {

/// What went wrong, at the level a user (and an exit code) cares about.
enum class failure {
  connect,     ///< resolve/connect failed, or the connection was lost
  auth,        ///< the server refused our proof, or failed to prove itself
  permission,  ///< authenticated, but not allowed
  protocol,    ///< the peer broke the protocol, or versions differ
  remote,      ///< the server answered a request with an error
  timeout,     ///< no answer within the deadline
  host_key_changed,  ///< the server's key differs from the pinned or known one
  host_key_unknown,  ///< the server's key is not known and was not accepted (or its certificate is untrusted)
  local,       ///< refused here, before anything was asked of the server (a bad argument, a local file)
};

class client_error : public std::runtime_error {
 public:
  client_error(failure kind, const std::string& message, std::optional<proto::errc> code = {})
      : std::runtime_error(message), kind_(kind), code_(code) {}
  failure kind() const noexcept { return kind_; }
  std::optional<proto::errc> code() const noexcept { return code_; }

 private:
  failure kind_;
  std::optional<proto::errc> code_;
};

/// Writing to stdout failed because its reader went away (EPIPE): the
/// command stops, quietly, as a filter does on SIGPIPE.
struct output_closed : std::runtime_error {
  output_closed() : std::runtime_error("stdout was closed by its reader") {}
};

struct credentials {
  std::string user = "admin";
  std::string token;
};

/// How the client decides whether the server is the one meant
/// (docs/protocol.md, "Server identity"): a pinned fingerprint, then the
/// known-hosts file, then this machine's own server, then a CA-issued
/// certificate for the host name, then the user (or accept_new).
struct server_trust {
  std::optional<std::string> fingerprint;  ///< pinned: --fingerprint, or the client config for this host
  /// The pin came from the command line: once it matches, the key is
  /// remembered in known_hosts (if that host has no entry yet).
  bool remember_fingerprint = false;
  bool accept_new = false;                 ///< trust an unknown key and remember it (ssh's accept-new)
  std::filesystem::path ca_file;           ///< CAs for CA-issued certificates; empty: the system's store
  std::filesystem::path known_hosts;       ///< empty: default_known_hosts()
  /// Asks the user whether to trust an unknown key (from a terminal);
  /// true: trust it and remember it. Null: never ask.
  std::function<bool(const std::string& host, const std::string& fingerprint, const std::string& untrusted_because)>
      confirm;
};

struct connect_options {
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(10)};
  /// Deadline for each wait on an established connection (handshake, replies).
  std::chrono::milliseconds io_timeout{std::chrono::seconds(30)};
  /// Before blocking for a reply, poll the socket for up to this long.
  /// Waking a blocked thread costs tens of microseconds (far more on VMs
  /// with halt-polling idle states); a reply on loopback or a LAN usually
  /// arrives sooner. Costs at most this much CPU per wait. 0 disables.
  std::chrono::microseconds spin_before_block{200};
  /// Cleartext instead of TLS: an explicit opt-in, refused unless the
  /// server is on a loopback address. Never chosen by the client itself.
  bool plaintext = false;
  /// --bwlimit: bytes per second this connection sends and receives, on
  /// average (0: no limit). The socket is read and written in pieces of
  /// a tenth of a second's worth, with pauses between them.
  std::uint64_t rate_limit = 0;
  server_trust trust;
};

struct server_greeting {
  int proto = 0;
  std::string software;
  std::string version;
  std::string name;
  std::string user;
  std::vector<std::string> permissions;
  std::string transport;    ///< "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519", or "cleartext"
  std::string fingerprint;  ///< the server's key (TLS)
  std::string verified_by;  ///< how the key was trusted ("known_hosts line 3", ...)
  bool kernel_tls_send = false;  ///< the kernel encrypts what this client sends
};

class connection {
 public:
  /// Connects to `where`, checks the server's hello, authenticates, and
  /// verifies the server's proof. Throws client_error.
  static connection open(const net::host_port& where, const credentials& creds, const connect_options& opts = {});

  connection(connection&&) noexcept;
  connection& operator=(connection&&) noexcept;
  ~connection();

  const server_greeting& greeting() const noexcept;
  /// The address actually connected to, e.g. "127.0.0.1:7701".
  const std::string& peer() const noexcept;

  /// A fresh request id.
  std::uint64_t next_id() noexcept;
  /// Writes one frame (blocking, with io_timeout); queued frames go first.
  void send(const proto::json& header, std::string_view body = {});
  /// Appends one frame to the send queue instead of writing it. Queued
  /// frames leave together, in one write: on flush(), send(), send_file(),
  /// any receive that has to wait, or once 256 KiB are queued. For
  /// pipelined callers with many small requests. try_receive() does not
  /// flush: call flush() before waiting on native_handle() yourself.
  void queue(const proto::json& header, std::string_view body = {});
  void flush();
  /// Writes one frame whose body is `length` bytes of file `fd` from
  /// `offset`, with sendfile (no copy through user space). A file that
  /// turns out shorter is padded with zeros (the receiver's digest check
  /// then fails); returns the number of real file bytes sent.
  std::size_t send_file(const proto::json& header, int fd, std::uint64_t offset, std::size_t length);
  /// TLS in user space: send_file reads the file into memory to encrypt
  /// it, and can show each piece it read to `observe` (a digest), so the
  /// file is read once. Only when encrypts_in_user_space().
  std::size_t send_file(const proto::json& header, int fd, std::uint64_t offset, std::size_t length,
                        const std::function<void(std::string_view)>& observe);
  bool encrypts_in_user_space() const noexcept;
  /// connect_options::rate_limit (0: none).
  std::uint64_t rate_limit() const noexcept;
  /// For a client busy on its own side (hashing local files) between
  /// requests: sends a `ping` without id (its `pong` is passed over like
  /// any reply nobody waits for) when 10 s passed since the last, so that
  /// the server's idle deadline does not close the connection. Cheap to
  /// call often.
  void keep_alive();
  /// Like receive(), but a frame whose header `stream` accepts has its
  /// body handed to `on_part` in pieces as it arrives (no buffering of
  /// the whole body); the frame is then returned with an empty body.
  proto::frame receive_streamed(const std::function<bool(const proto::json&)>& stream,
                                const std::function<void(std::string_view)>& on_part);
  /// Returns the next frame addressed to us. Answers the server's own
  /// `ping` frames transparently. A fatal `error` (no id) or `bye` from the
  /// server throws client_error.
  proto::frame receive();
  /// Like receive(), but never blocks: nullopt when no whole frame has
  /// arrived yet. For callers that poll() native_handle() themselves.
  std::optional<proto::frame> try_receive();
  /// try_receive() with the streaming of receive_streamed(): what has
  /// arrived of an accepted body goes to `on_part` at once, even when the
  /// frame is not complete yet (nullopt then).
  std::optional<proto::frame> try_receive_streamed(const std::function<bool(const proto::json&)>& stream,
                                                   const std::function<void(std::string_view)>& on_part);
  /// The socket, to poll for readability (never read it directly).
  int native_handle() const noexcept;
  /// Sends `header` with a new id and returns the reply with that id. An
  /// `error` reply throws client_error (kind from its code).
  proto::frame request(proto::json header, std::string_view body = {});
  void close() noexcept;

 private:
  struct impl;
  explicit connection(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

/// Maps an `error` frame to the client_error a caller should see.
client_error error_from_frame(const proto::frame& f);

/// Where credentials come from, in order: the flags, CSKIT_USER and
/// CSKIT_TOKEN, the client config file (per-host table first, then
/// top-level keys), and finally, for the admin user only, the local
/// server's token file (<state dir>/admin.token) when it is readable.
struct credential_sources {
  std::optional<std::string> flag_user;
  std::optional<std::string> flag_token;
  std::optional<std::string> flag_fingerprint;
  std::optional<std::string> flag_ca_file;
  std::filesystem::path config_file;  ///< empty: default_client_config()
  std::string host_key;               ///< "host:port" as typed, for [hosts."..."]
};
credentials resolve_credentials(const credential_sources& src);

/// Credentials and the server pin for one host: `fingerprint` and `ca_file`
/// come from the flags, else the host's table in the client config
/// ([hosts."HOST:PORT"] fingerprint = "SHA256:...", ca_file = "..."), else
/// the config's top-level keys. Throws client_error (a malformed pin too).
///
/// A host's table may also name where it is, as ssh_config's Host does:
/// [hosts.box] address = "10.0.0.5", port = 17701, token_file = "..."; then
/// `box` (and `box:PORT`) on the command line connects there. A table is
/// looked up as typed ("box:17701"), then, if it names an address or a
/// port, by the name alone ("box").
struct client_profile {
  credentials creds;
  std::optional<std::string> fingerprint;
  std::string ca_file;
  std::string connect_to;  ///< HOST[:PORT] to connect to: the alias resolved, or the host as typed
};
client_profile resolve_profile(const credential_sources& src);
std::filesystem::path default_client_config();
/// HOST[:PORT] for a UDP command (echo, time): a [hosts.HOST] alias of the
/// client config with an `address` gives the address; the port stays the
/// one typed (or the service's), never the alias's cskit port.
std::string udp_target(const std::string& typed);

}  // namespace cskit::client
