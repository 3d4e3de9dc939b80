#pragma once
// TLS 1.3 for every cskit TCP connection (docs/protocol.md, "Transport
// security").
//
// `tls::channel` is one connection's TLS state as a codec that does no I/O,
// in the spirit of the frame decoder: ciphertext from the socket goes in
// through feed(), plaintext comes out of read(); plaintext goes in through
// write() and the ciphertext to send is output(). The server's connection
// (net/connection.cpp) and the client (client/client.cpp) move the bytes
// with the same non-blocking socket code as for cleartext, so a batch of
// records leaves in one send, and a write never blocks inside OpenSSL.
//
// `tls::context` holds what channels share: the server's certificate and
// key, or the client's trust store. OpenSSL stays behind this header.

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cskit::net::tls {

/// A configuration problem (unreadable, mismatched or expired certificate
/// or key). The message names the file and says what is wrong.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The ALPN protocol id cskit's own protocol is negotiated under.
inline constexpr std::string_view alpn_id = "cskit";
/// HTTP/1.1's (RFC 7301): offered beside cskit's when the server serves HTTPS.
inline constexpr std::string_view alpn_http = "http/1.1";

/// RFC 9266 `tls-exporter` channel binding: 32 bytes exported under the
/// label "EXPORTER-Channel-Binding" with an empty context.
using binding = std::array<std::uint8_t, 32>;

/// ssh-style fingerprint of a public key: "SHA256:" and the unpadded
/// base64 of the SHA-256 of its DER SubjectPublicKeyInfo.
bool is_fingerprint(std::string_view text) noexcept;

/// The fingerprint of the first certificate in a PEM file; nullopt when it
/// cannot be read or holds no certificate.
std::optional<std::string> fingerprint_of_pem_file(const std::filesystem::path& cert_file);

/// A new ECDSA P-256 key and a self-signed certificate for it, as PEM:
/// subject CN and a subject alternative name for `common_name` (plus
/// localhost, 127.0.0.1 and ::1), valid from a day ago with no end
/// (RFC 5280's 99991231235959Z): it is pinned by its key, not trusted
/// through a CA, so it need never be renewed.
struct pem_identity {
  std::string cert;
  std::string key;
};
/// `key_pem`: make the certificate for this existing key instead of a new
/// one (the same fingerprint); throws tls::error if it cannot be read.
pem_identity make_self_signed(const std::string& common_name, const std::string& key_pem = {});

/// Whether the kernel offers kernel TLS (`tls` in
/// /proc/sys/net/ipv4/tcp_available_ulp). Read once.
bool kernel_offers_ktls();

struct server_settings {
  std::filesystem::path cert_file;  ///< PEM: the certificate, then its chain
  std::filesystem::path key_file;   ///< PEM: the private key (unencrypted)
  bool try_ktls = false;            ///< ask OpenSSL for kernel TLS
  /// Also accept ALPN "http/1.1" (HTTPS on the same port); a client that
  /// offers both gets cskit.
  bool offer_http = false;
};

struct client_settings {
  bool try_ktls = false;  ///< ask OpenSSL for kernel TLS on what the client sends
};

class context {
 public:
  /// Loads and checks the server's certificate chain and key. Throws
  /// tls::error naming the file: unreadable, no certificate, key does not
  /// match, expired or not yet valid.
  static std::shared_ptr<context> for_server(const server_settings& s);
  /// A client context: TLS 1.3 only, offering ALPN "cskit". It checks no
  /// certificate inside the handshake: after it, the caller decides by the
  /// pinned key or by channel::verify_chain() (client/host_keys.hpp).
  static std::shared_ptr<context> for_client(const client_settings& s);
  ~context();
  context(const context&) = delete;
  context& operator=(const context&) = delete;

  /// Server contexts: the fingerprint of its own certificate's key.
  const std::string& fingerprint() const noexcept { return fingerprint_; }
  /// Server contexts: "not after" of its certificate, as text ("never" for
  /// a self-signed one that does not expire).
  const std::string& expires() const noexcept { return expires_; }
  bool is_server() const noexcept { return server_; }
  bool try_ktls() const noexcept { return try_ktls_; }
  void* native() const noexcept { return ctx_; }

 private:
  context() = default;
  void* ctx_ = nullptr;  // SSL_CTX
  bool server_ = false;
  bool try_ktls_ = false;
  std::string fingerprint_;
  std::string expires_;
};

class channel {
 public:
  enum class result {
    ok,          ///< progress (handshake complete, or bytes read)
    want_input,  ///< more ciphertext is needed: feed() it
    want_write,  ///< (socket_fd only) the socket is full: call again once it is writable
    closed,      ///< the peer sent close_notify
    failed,      ///< a TLS error (error_text()); the connection must end
  };

  /// `peer_name` (clients): the host as the user typed it, for SNI and for
  /// checking a CA-issued certificate's names. `socket_fd` >= 0: the
  /// handshake's records are written straight to that socket so that
  /// OpenSSL can switch it to kernel TLS (context::try_ktls); output()
  /// then stays empty until the handshake is over.
  channel(std::shared_ptr<const context> ctx, std::string_view peer_name = {}, int socket_fd = -1);
  ~channel();
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;

  /// Ciphertext that arrived from the peer. The bytes are read in place:
  /// `bytes` must stay valid, and must be consumed (handshake() or read()
  /// until want_input) before the next feed().
  void feed(std::string_view bytes) noexcept { in_ = bytes; }
  bool input_pending() const noexcept { return !in_.empty(); }

  /// Advances the handshake with what was fed; output() may then hold
  /// records to send. ok once it is complete.
  result handshake();
  bool handshake_done() const noexcept { return done_; }

  /// Decrypts into `buf`: returns the bytes written (> 0 with ok), or 0
  /// with another result. Never leaves decrypted bytes inside OpenSSL when
  /// it returns want_input.
  std::size_t read(char* buf, std::size_t cap, result& r);

  /// Part of a record arrived and waits for the rest (after read() gave
  /// want_input): a frame deadline applies to it.
  bool partial_record() const noexcept;

  /// Encrypts `plain` in full (records of up to 16 KiB) onto output().
  /// False when TLS failed (error_text()).
  bool write(std::string_view plain);
  /// Queues a close_notify alert on output().
  void close_notify();

  /// Ciphertext ready to be sent, and how much of it was sent.
  std::string_view output() const noexcept { return {out_.data() + out_pos_, out_.size() - out_pos_}; }
  void consumed(std::size_t n) noexcept;
  /// Frees the output buffer when it is empty (idle connections hold none).
  void release_buffers() noexcept;

  /// Kernel TLS carries the records this side sends: write plaintext to
  /// the socket (sendmsg, sendfile) instead of write().
  bool ktls_send() const noexcept { return ktls_send_; }

  /// After the handshake: RFC 9266 tls-exporter.
  binding exporter() const;
  /// After the handshake: the fingerprint of the peer's key ("" if none).
  std::string peer_fingerprint() const;
  /// After the handshake (clients): checks the peer's certificate chain
  /// against `ca_file` (PEM), or the system's trust store when it is empty,
  /// and its names against the peer name given at construction. Returns
  /// "" when it verifies, otherwise why not. Done only when no pinned key
  /// decides, so that a pinned connection never loads a CA store.
  std::string verify_chain(const std::filesystem::path& ca_file) const;
  /// After the handshake: the ALPN protocol the server selected ("" for none).
  std::string alpn() const;
  /// "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519".
  std::string description() const;
  /// Why the last call failed.
  const std::string& error_text() const noexcept { return error_; }
  /// KeyUpdate messages received so far (a flood of them is cut off).
  std::uint32_t key_updates_received() const noexcept { return key_updates_; }

 private:
  friend struct bio_access;
  result fail_from(int ret);
  void finish_handshake();

  std::shared_ptr<const context> ctx_;
  std::string peer_name_;
  void* ssl_ = nullptr;  // SSL
  std::string_view in_;
  std::string out_;
  std::size_t out_pos_ = 0;
  std::string error_;
  std::uint32_t key_updates_ = 0;
  std::uint64_t bytes_read_ = 0;
  bool done_ = false;
  bool ktls_send_ = false;
  int socket_fd_ = -1;
};

/// Readable text for a handshake that failed because the peer does not
/// speak TLS: a cskit frame (the peer runs without TLS) or something else.
/// Empty when `first_bytes` look like TLS.
std::string describe_non_tls(std::string_view first_bytes);

}  // namespace cskit::net::tls
