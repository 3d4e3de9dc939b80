#include "net/tls.hpp"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "proto/auth.hpp"

namespace cskit::net::tls {
namespace {

// The TLS 1.3 profile (docs/protocol.md, "Transport security"): AEAD
// suites only, ECDHE by X25519 (P-256 for peers without it).
constexpr const char* tls13_suites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
constexpr const char* key_exchange_groups = "X25519:P-256";
// TLS 1.2 is refused (minimum version 1.3), so its cipher list is never
// used; a one-entry list keeps the copy every SSL object makes small.
constexpr const char* tls12_unused_ciphers = "ECDHE-ECDSA-AES128-GCM-SHA256";
constexpr unsigned char alpn_wire[] = {5, 'c', 's', 'k', 'i', 't'};
// What a server that also serves HTTPS accepts, in its order of preference.
constexpr unsigned char alpn_wire_http[] = {5, 'c', 's', 'k', 'i', 't', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
// A peer may update its keys now and then; a flood of KeyUpdate messages
// (each makes us derive keys, and answer when asked to) ends the
// connection: a few are free, then one per 16 MiB received.
constexpr std::uint32_t free_key_updates = 8;
constexpr std::uint64_t bytes_per_key_update = 16u << 20;

SSL* as_ssl(void* p) { return static_cast<SSL*>(p); }
SSL_CTX* as_ctx(void* p) { return static_cast<SSL_CTX*>(p); }

void init_openssl() {
  // No openssl.cnf: cskit's TLS profile is fixed in code, and the system
  // configuration (which can lower or raise protocol floors) must not
  // change it silently. It also saves reading the file at every start.
  // Error strings are loaded only when an error is put into words
  // (openssl_errors()): loading them costs about 1 ms, in every client
  // process, for nothing when all goes well. No clean-up at exit either:
  // freeing every table OpenSSL built, just before the process ends, cost
  // 2% of a `cskit ping -c 1`.
  static std::once_flag once;
  std::call_once(once, [] {
    OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_LOAD_SSL_STRINGS |
                         OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS | OPENSSL_INIT_NO_ATEXIT,
                     nullptr);
  });
}

// OpenSSL's error queue as one line, emptied.
std::string openssl_errors() {
  OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, nullptr);
  std::string s;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    if (!s.empty()) s += "; ";
    const char* reason = ERR_reason_error_string(e);
    if (reason) {
      s += reason;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      s += buf;
    }
    if ((flags & ERR_TXT_STRING) && data && *data) {
      s += " (";
      s += data;
      s += ")";
    }
  }
  return s.empty() ? "unknown TLS error" : s;
}

std::string base64_unpadded(const unsigned char* data, std::size_t size) {
  std::string out(4 * ((size + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data, static_cast<int>(size));
  out.resize(static_cast<std::size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

std::string fingerprint_of(X509* cert) {
  if (!cert) return {};
  unsigned char* der = nullptr;
  int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
  if (len <= 0) return {};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  const bool ok = EVP_Digest(der, static_cast<std::size_t>(len), md, &md_len, EVP_sha256(), nullptr) == 1;
  OPENSSL_free(der);
  return ok ? "SHA256:" + base64_unpadded(md, md_len) : std::string();
}

std::string asn1_time_text(const ASN1_TIME* t) {
  BIO* b = BIO_new(BIO_s_mem());
  if (!b) return "?";
  ASN1_TIME_print(b, t);
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  std::string s(p, static_cast<std::size_t>(n > 0 ? n : 0));
  BIO_free(b);
  return s;
}

// PEM files are read by us, not by OpenSSL's file functions, so that a
// missing or unreadable file is reported with its errno.
std::string read_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw error("cannot read the TLS " + std::string(what) + " " + path.string() + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct bio_ptr {
  BIO* p;
  explicit bio_ptr(const std::string& text) : p(BIO_new_mem_buf(text.data(), static_cast<int>(text.size()))) {}
  ~bio_ptr() { BIO_free(p); }
};

// A private key in an encrypted PEM is refused: a server must start
// unattended, and OpenSSL would otherwise prompt on the terminal.
int no_passphrase(char*, int, int, void*) { return -1; }

void load_certificate_chain(SSL_CTX* ctx, const std::filesystem::path& file) {
  const std::string text = read_file(file, "certificate");
  bio_ptr bio(text);
  X509* leaf = PEM_read_bio_X509_AUX(bio.p, nullptr, no_passphrase, nullptr);
  if (!leaf) throw error("no PEM certificate in " + file.string() + ": " + openssl_errors());
  const int used = SSL_CTX_use_certificate(ctx, leaf);
  X509_free(leaf);
  if (used != 1) throw error("cannot use the certificate in " + file.string() + ": " + openssl_errors());
  SSL_CTX_clear_chain_certs(ctx);
  while (X509* ca = PEM_read_bio_X509(bio.p, nullptr, no_passphrase, nullptr)) {
    if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
      X509_free(ca);
      throw error("cannot use the chain in " + file.string() + ": " + openssl_errors());
    }
  }
  ERR_clear_error();  // the end of the file reads as "no start line"
}

void load_private_key(SSL_CTX* ctx, const std::filesystem::path& file, const std::filesystem::path& cert_file) {
  const std::string text = read_file(file, "key");
  bio_ptr bio(text);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.p, nullptr, no_passphrase, nullptr);
  if (!key) {
    throw error("cannot read a private key from " + file.string() +
                " (a PEM key without a passphrase is needed): " + openssl_errors());
  }
  if (X509_check_private_key(SSL_CTX_get0_certificate(ctx), key) != 1) {
    EVP_PKEY_free(key);
    ERR_clear_error();
    throw error("the key in " + file.string() + " does not match the certificate in " + cert_file.string());
  }
  const int used = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (used != 1) throw error("cannot use the key in " + file.string() + ": " + openssl_errors());
}

void check_validity(X509* leaf, const std::filesystem::path& file) {
  if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
    throw error("the certificate in " + file.string() + " is not valid yet (not before " +
                asn1_time_text(X509_get0_notBefore(leaf)) + ")");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) < 0) {
    throw error("the certificate in " + file.string() + " expired on " + asn1_time_text(X509_get0_notAfter(leaf)));
  }
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* out_len, const unsigned char* in, unsigned int in_len,
                void* offer_http) {
  // A client that offers ALPN must offer cskit's id (or, when the server
  // serves HTTPS, http/1.1); one that offers none (openssl s_client, say)
  // is taken as speaking cskit.
  unsigned char* selected = nullptr;
  const bool http = offer_http != nullptr;
  const unsigned char* ours = http ? alpn_wire_http : alpn_wire;
  const unsigned int ours_len = http ? sizeof alpn_wire_http : sizeof alpn_wire;
  if (SSL_select_next_proto(&selected, out_len, ours, ours_len, in, in_len) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

void count_key_updates(int write_p, int, int content_type, const void* buf, std::size_t len, SSL*, void* arg) {
  if (write_p || content_type != SSL3_RT_HANDSHAKE || len == 0 || !arg) return;
  if (static_cast<const unsigned char*>(buf)[0] == SSL3_MT_KEY_UPDATE) ++*static_cast<std::uint32_t*>(arg);
}

SSL_CTX* new_context(const SSL_METHOD* method) {
  init_openssl();
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (!ctx) throw error("cannot set up TLS: " + openssl_errors());
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_ciphersuites(ctx, tls13_suites) != 1 ||
      SSL_CTX_set_cipher_list(ctx, tls12_unused_ciphers) != 1 ||
      SSL_CTX_set1_groups_list(ctx, key_exchange_groups) != 1) {
    std::string why = openssl_errors();
    SSL_CTX_free(ctx);
    throw error("cannot set up TLS 1.3: " + why);
  }
  // No tickets and no session cache: resumption is not offered, and each
  // idle connection keeps no more than it must (docs/architecture.md).
  // With TLS 1.3, SSL_OP_NO_TICKET alone still sends two (stateful)
  // tickets, each a copy of the session kept by the connection (~0.9 KiB)
  // for a cache that is off: none are sent.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
  SSL_CTX_set_msg_callback(ctx, count_key_updates);
  return ctx;
}

// Every channel's I/O goes through this BIO: reads come from the bytes
// fed in (channel::in_), writes are appended to channel::out_. It never
// blocks and never fails a write, so SSL_write always completes.
BIO_METHOD* channel_bio_method();

}  // namespace

struct bio_access {
  static int read(BIO* b, char* out, int size) {
    auto* ch = static_cast<channel*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (ch->in_.empty()) {
      BIO_set_retry_read(b);
      return -1;
    }
    const std::size_t n = std::min<std::size_t>(ch->in_.size(), static_cast<std::size_t>(size));
    std::memcpy(out, ch->in_.data(), n);
    ch->in_.remove_prefix(n);
    return static_cast<int>(n);
  }
  static int write(BIO* b, const char* data, int size) {
    auto* ch = static_cast<channel*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (ch->out_pos_ > 0 && ch->out_pos_ == ch->out_.size()) {
      ch->out_.clear();
      ch->out_pos_ = 0;
    }
    ch->out_.append(data, static_cast<std::size_t>(size));
    return size;
  }
  static long ctrl(BIO* b, int cmd, long, void*) {
    switch (cmd) {
      case BIO_CTRL_FLUSH: return 1;
      case BIO_CTRL_PENDING: return static_cast<long>(static_cast<channel*>(BIO_get_data(b))->in_.size());
      case BIO_CTRL_WPENDING: return 0;
      default: return 0;
    }
  }
  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }
};

namespace {

BIO_METHOD* channel_bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "cskit channel");
    BIO_meth_set_read(m, bio_access::read);
    BIO_meth_set_write(m, bio_access::write);
    BIO_meth_set_ctrl(m, bio_access::ctrl);
    BIO_meth_set_create(m, bio_access::create);
    return m;
  }();
  return method;
}

// A name that can stand as a DNS subject alternative name.
bool is_dns_name(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) {
      return false;
    }
  }
  return true;
}

bool is_ip_literal(std::string_view host) {
  if (host.find(':') != std::string_view::npos) return true;  // IPv6
  if (host.empty()) return false;
  for (char c : host) {
    if (!(c == '.' || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

}  // namespace

bool is_fingerprint(std::string_view text) noexcept {
  constexpr std::string_view prefix = "SHA256:";
  if (text.substr(0, prefix.size()) != prefix) return false;
  text.remove_prefix(prefix.size());
  if (text.size() != 43) return false;  // 32 bytes, unpadded base64
  for (char c : text) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!ok) return false;
  }
  return true;
}

std::optional<std::string> fingerprint_of_pem_file(const std::filesystem::path& cert_file) {
  std::string text;
  try {
    text = read_file(cert_file, "certificate");
  } catch (const error&) {
    return std::nullopt;
  }
  init_openssl();
  bio_ptr bio(text);
  X509* cert = PEM_read_bio_X509(bio.p, nullptr, no_passphrase, nullptr);
  ERR_clear_error();
  if (!cert) return std::nullopt;
  std::string fp = fingerprint_of(cert);
  X509_free(cert);
  if (fp.empty()) return std::nullopt;
  return fp;
}

pem_identity make_self_signed(const std::string& common_name, const std::string& key_pem) {
  init_openssl();
  auto fail = [](const char* step) { throw error(std::string("cannot create a TLS key: ") + step + ": " + openssl_errors()); };
  EVP_PKEY* key = nullptr;
  if (key_pem.empty()) {
    key = EVP_EC_gen("P-256");
  } else {
    bio_ptr bio(key_pem);
    key = PEM_read_bio_PrivateKey(bio.p, nullptr, no_passphrase, nullptr);
  }
  if (!key) fail(key_pem.empty() ? "key generation" : "reading the existing key");
  X509* cert = X509_new();
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key_guard(key, EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert_guard(cert, X509_free);
  if (!cert) fail("certificate");

  std::array<std::uint8_t, 16> serial{};
  proto::random_bytes(serial.data(), serial.size());
  serial[0] &= 0x7F;  // positive
  serial[0] |= 0x40;  // and of full length
  BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
  ASN1_INTEGER* sn = bn ? BN_to_ASN1_INTEGER(bn, nullptr) : nullptr;
  BN_free(bn);
  if (!sn || X509_set_serialNumber(cert, sn) != 1) fail("serial number");
  ASN1_INTEGER_free(sn);

  X509_NAME* name = X509_get_subject_name(cert);
  if (X509_set_version(cert, X509_VERSION_3) != 1 || !X509_gmtime_adj(X509_getm_notBefore(cert), -86400) ||
      ASN1_TIME_set_string(X509_getm_notAfter(cert), "99991231235959Z") != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                                 -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert, name) != 1 || X509_set_pubkey(cert, key) != 1) {
    fail("certificate fields");
  }
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
  std::string san = "DNS:localhost,IP:127.0.0.1,IP:::1";
  if (is_dns_name(common_name) && common_name != "localhost" && !is_ip_literal(common_name)) {
    san = "DNS:" + common_name + "," + san;
  }
  const std::pair<int, std::string> extensions[] = {
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage, "critical,digitalSignature"},
      {NID_ext_key_usage, "serverAuth"},
      {NID_subject_key_identifier, "hash"},
      {NID_subject_alt_name, san},
  };
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value.c_str());
    if (!ext || X509_add_ext(cert, ext, -1) != 1) {
      X509_EXTENSION_free(ext);
      fail("certificate extensions");
    }
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(cert, key, EVP_sha256()) <= 0) fail("signature");

  auto to_pem = [&](auto write) {
    BIO* b = BIO_new(BIO_s_mem());
    if (!b || write(b) != 1) {
      BIO_free(b);
      fail("PEM encoding");
    }
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    std::string s(p, static_cast<std::size_t>(n));
    BIO_free(b);
    return s;
  };
  pem_identity out;
  out.cert = to_pem([&](BIO* b) { return PEM_write_bio_X509(b, cert); });
  out.key = to_pem([&](BIO* b) { return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr); });
  return out;
}

bool kernel_offers_ktls() {
  static const bool offered = [] {
    std::ifstream in("/proc/sys/net/ipv4/tcp_available_ulp");
    std::string word;
    while (in >> word) {
      if (word == "tls") return true;
    }
    return false;
  }();
  return offered;
}

std::shared_ptr<context> context::for_server(const server_settings& s) {
  std::shared_ptr<context> c(new context());
  SSL_CTX* ctx = new_context(TLS_server_method());
  c->ctx_ = ctx;
  c->server_ = true;
  c->try_ktls_ = s.try_ktls;
  load_certificate_chain(ctx, s.cert_file);
  load_private_key(ctx, s.key_file, s.cert_file);
  X509* leaf = SSL_CTX_get0_certificate(ctx);
  check_validity(leaf, s.cert_file);
  c->fingerprint_ = fingerprint_of(leaf);
  const ASN1_TIME* not_after = X509_get0_notAfter(leaf);
  // 9999-12-31 (RFC 5280: no well-defined expiration).
  c->expires_ = ASN1_TIME_compare(not_after, [] {
                  static ASN1_TIME* never = [] {
                    ASN1_TIME* t = ASN1_TIME_new();
                    ASN1_TIME_set_string(t, "99991231235959Z");
                    return t;
                  }();
                  return never;
                }()) >= 0
                    ? "never"
                    : asn1_time_text(not_after);
  // (The callback's argument only says whether http/1.1 is accepted.)
  static int http_marker = 0;
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, s.offer_http ? &http_marker : nullptr);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (s.try_ktls) SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  return c;
}

std::shared_ptr<context> context::for_client(const client_settings& s) {
  std::shared_ptr<context> c(new context());
  SSL_CTX* ctx = new_context(TLS_client_method());
  c->ctx_ = ctx;
  c->try_ktls_ = s.try_ktls;
  // Certificates are judged after the handshake (pinned key, or
  // verify_chain()): SSL_VERIFY_NONE lets the handshake finish either way,
  // and nothing of the session is sent before that judgement.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  if (SSL_CTX_set_alpn_protos(ctx, alpn_wire, sizeof alpn_wire) != 0) {
    throw error("cannot set up TLS: ALPN: " + openssl_errors());
  }
  if (s.try_ktls) SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS);
  return c;
}

context::~context() { SSL_CTX_free(as_ctx(ctx_)); }

channel::channel(std::shared_ptr<const context> ctx, std::string_view peer_name, int socket_fd)
    : ctx_(std::move(ctx)), peer_name_(peer_name), socket_fd_(socket_fd) {
  SSL* s = SSL_new(as_ctx(ctx_->native()));
  if (!s) throw error("cannot set up a TLS connection: " + openssl_errors());
  ssl_ = s;
  BIO* b = BIO_new(channel_bio_method());
  if (!b) {
    SSL_free(s);
    throw error("cannot set up a TLS connection: " + openssl_errors());
  }
  BIO_set_data(b, this);
  BIO* wb = b;
  if (socket_fd >= 0 && ctx_->try_ktls()) {
    // The handshake's records go straight to the socket: OpenSSL turns
    // kernel TLS on only for a socket BIO (finish_handshake()).
    wb = BIO_new_socket(socket_fd, BIO_NOCLOSE);
    if (!wb) {
      BIO_free(b);
      SSL_free(s);
      throw error("cannot set up a TLS connection: " + openssl_errors());
    }
  } else {
    socket_fd_ = -1;
  }
  SSL_set_bio(s, b, wb);  // one reference each (one in all when b == wb)
  SSL_set_msg_callback_arg(s, &key_updates_);
  if (ctx_->is_server()) {
    SSL_set_accept_state(s);
    return;
  }
  SSL_set_connect_state(s);
  if (!peer_name_.empty()) {
    if (is_ip_literal(peer_name_)) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), peer_name_.c_str());
    } else {
      SSL_set_tlsext_host_name(s, peer_name_.c_str());
      SSL_set1_host(s, peer_name_.c_str());
    }
  }
}

channel::~channel() { SSL_free(as_ssl(ssl_)); }

channel::result channel::fail_from(int ret) {
  switch (SSL_get_error(as_ssl(ssl_), ret)) {
    case SSL_ERROR_WANT_READ: return result::want_input;
    case SSL_ERROR_WANT_WRITE: return result::want_write;
    case SSL_ERROR_ZERO_RETURN: return result::closed;
    case SSL_ERROR_SYSCALL:
      if (ERR_peek_error() == 0) {
        error_ = errno ? std::strerror(errno) : "the peer ended the TLS stream without close_notify";
        return result::failed;
      }
      break;
    default: break;
  }
  error_ = openssl_errors();
  return result::failed;
}

channel::result channel::handshake() {
  if (done_) return result::ok;
  ERR_clear_error();
  errno = 0;
  const int r = SSL_do_handshake(as_ssl(ssl_));
  if (r == 1) {
    finish_handshake();
    return result::ok;
  }
  return fail_from(r);
}

void channel::finish_handshake() {
  done_ = true;
  if (socket_fd_ < 0) return;
  SSL* s = as_ssl(ssl_);
  if (BIO_get_ktls_send(SSL_get_wbio(s))) {
    ktls_send_ = true;
    return;
  }
  // OpenSSL did not switch the socket to kernel TLS (the cipher, or the
  // kernel, would not): from now on records are written like everywhere
  // else, through output().
  BIO* b = SSL_get_rbio(s);
  BIO_up_ref(b);
  SSL_set0_wbio(s, b);
  socket_fd_ = -1;
}

std::size_t channel::read(char* buf, std::size_t cap, result& r) {
  ERR_clear_error();
  errno = 0;
  std::size_t n = 0;
  if (SSL_read_ex(as_ssl(ssl_), buf, cap, &n) == 1) {
    bytes_read_ += n;
    r = result::ok;
  } else {
    r = fail_from(0);
    n = 0;
  }
  if (key_updates_ > free_key_updates + bytes_read_ / bytes_per_key_update) {
    error_ = "too many TLS KeyUpdate messages (" + std::to_string(key_updates_) + ")";
    r = result::failed;
    return 0;
  }
  return n;
}

bool channel::partial_record() const noexcept { return SSL_has_pending(as_ssl(ssl_)) == 1; }

bool channel::write(std::string_view plain) {
  if (plain.empty()) return true;
  ERR_clear_error();
  std::size_t written = 0;
  if (SSL_write_ex(as_ssl(ssl_), plain.data(), plain.size(), &written) == 1 && written == plain.size()) return true;
  fail_from(0);
  return false;
}

void channel::close_notify() {
  ERR_clear_error();
  if (done_) {
    SSL_shutdown(as_ssl(ssl_));
    // The alert is in out_ (this BIO never refuses a write); the record
    // buffer OpenSSL set up for it (~17 KiB) would otherwise stay until the
    // connection is freed, for every connection closing at once.
    SSL_free_buffers(as_ssl(ssl_));
  }
  ERR_clear_error();
}

void channel::consumed(std::size_t n) noexcept {
  out_pos_ += n;
  if (out_pos_ >= out_.size()) {
    out_.clear();
    out_pos_ = 0;
  }
}

void channel::release_buffers() noexcept {
  if (out_pos_ == out_.size() && out_.capacity() > 0) {
    std::string().swap(out_);
    out_pos_ = 0;
  }
}

binding channel::exporter() const {
  static constexpr char label[] = "EXPORTER-Channel-Binding";
  binding b{};
  if (SSL_export_keying_material(as_ssl(ssl_), b.data(), b.size(), label, sizeof label - 1, nullptr, 0, 0) != 1) {
    ERR_clear_error();
    throw error("TLS exporter unavailable (handshake not complete)");
  }
  return b;
}

std::string channel::peer_fingerprint() const { return fingerprint_of(SSL_get0_peer_certificate(as_ssl(ssl_))); }

std::string channel::alpn() const {
  const unsigned char* p = nullptr;
  unsigned int n = 0;
  SSL_get0_alpn_selected(as_ssl(ssl_), &p, &n);
  return std::string(reinterpret_cast<const char*>(p), p ? n : 0);
}

std::string channel::verify_chain(const std::filesystem::path& ca_file) const {
  SSL* s = as_ssl(ssl_);
  X509* leaf = SSL_get0_peer_certificate(s);
  if (!leaf) return "the server sent no certificate";
  X509_STORE* store = X509_STORE_new();
  X509_STORE_CTX* vctx = X509_STORE_CTX_new();
  std::string why;
  const bool loaded = ca_file.empty() ? X509_STORE_set_default_paths(store) == 1
                                      : X509_STORE_load_file(store, ca_file.c_str()) == 1;
  if (!store || !vctx || !loaded) {
    why = ca_file.empty() ? "cannot load the system's trusted CAs: " + openssl_errors()
                          : "cannot load CA certificates from " + ca_file.string() + ": " + openssl_errors();
  } else if (X509_STORE_CTX_init(vctx, store, leaf, SSL_get_peer_cert_chain(s)) != 1) {
    why = openssl_errors();
  } else {
    X509_STORE_CTX_set_default(vctx, "ssl_server");
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(vctx);
    X509_VERIFY_PARAM_set1(param, SSL_get0_param(s));  // the host name or IP address to match
    if (X509_verify_cert(vctx) != 1) {
      const int err = X509_STORE_CTX_get_error(vctx);
      why = X509_verify_cert_error_string(err);
      if (err == X509_V_ERR_HOSTNAME_MISMATCH || err == X509_V_ERR_IP_ADDRESS_MISMATCH) {
        why += " (the certificate is not for '" + peer_name_ + "')";
      }
    }
  }
  ERR_clear_error();
  X509_STORE_CTX_free(vctx);
  X509_STORE_free(store);
  return why;
}

std::string channel::description() const {
  SSL* s = as_ssl(ssl_);
  std::string d = SSL_get_version(s);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(s)) d += std::string(" ") + SSL_CIPHER_get_name(c);
  const int group = SSL_get_negotiated_group(s);
  if (group != NID_undef) {
    if (const char* g = OBJ_nid2sn(group)) d += std::string(" ") + g;
  }
  return d;
}

std::string describe_non_tls(std::string_view first) {
  if (first.size() >= 3 && static_cast<unsigned char>(first[0]) >= 0x14 && static_cast<unsigned char>(first[0]) <= 0x17 &&
      first[1] == 0x03) {
    return {};  // a TLS record
  }
  if (first.size() >= 5 && first[0] == 0 && first[4] == '{') {
    return "it answered with a cskit frame without TLS";
  }
  if (first.empty()) return "it closed the connection without answering";
  return "it does not speak TLS";
}

}  // namespace cskit::net::tls
