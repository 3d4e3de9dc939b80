#!/usr/bin/env python3
"""Independent cskit protocol 2 client, written only from docs/protocol.md.

Standard library only (ssl, plus ctypes into the libssl that Python's own
`_ssl` module is linked against, for the TLS exporter; see below).

Library use:

    with Client.connect("127.0.0.1", 7701, "admin", token,
                        fingerprint="SHA256:...") as c:
        rtt = c.ping(b"abc")
        print(c.info())

CLI:

    python3 cskit_client.py HOST:PORT --token T --fingerprint SHA256:... [--user U] [--count N]

Transport (docs/protocol.md, "Transport security")
---------------------------------------------------
Every connection is TLS 1.3 with ALPN `cskit` unless `plaintext=True` is
given. The client offers only TLS 1.3 and only ALPN `cskit`, and, like the
reference client, refuses a server that does not select `cskit`. SNI is the
host name when it is a DNS name, nothing for an IP literal. The TLS session
runs over memory BIOs, so the client sees the raw bytes: a server that
answers the ClientHello with cleartext frames (a `--plaintext` server, a
version-1 server, or the connection-limit `error` frame, which is sent before
TLS) is recognised and reported instead of a TLS "wrong version" error.

Trusting the server's key (before anything of the session is sent)
-----------------------------------------------------------------
After the TLS handshake and before `auth`, the server's fingerprint
("SHA256:" + unpadded base64 of SHA-256 of the DER SubjectPublicKeyInfo of
the leaf certificate) is checked. The first rule that applies decides:

1. `fingerprint="SHA256:..."` (pinned): the server's fingerprint must be
   exactly this string, else `HostKeyChanged` (CLI exit 15).
2. `known_hosts=PATH`: when the file has entries for `host:port` (host
   lower-cased, IPv6 in brackets), one must hold the fingerprint, else
   `HostKeyChanged`. Without an entry the rules below continue.
3. `insecure_no_key_check=True`: any key is accepted. Only for tests whose
   subject is something else; never for real use.
4. Otherwise: `HostKeyUnknown` (CLI exit 16), which carries the server's
   fingerprint (`.fingerprint`) so that it can be compared out of band.

So a client given no fingerprint REFUSES the server. The reference client's
other rules (the local server's `server.crt`, CA-issued certificates,
accepting and recording a new key) are not implemented, and this client
never writes a known-hosts file. On a refusal the connection is closed
without sending any frame.

Cleartext (`plaintext=True`)
----------------------------
The explicit opt-in of the doc: no TLS, the server's `hello` carries a
nonce and the proofs are bound to both nonces (`kind` = `nonces`). Like the
reference client this client refuses to log in over cleartext to anything
but a loopback address (ValueError). `fingerprint`/`known_hosts` make no
sense without TLS and are refused together with `plaintext=True`. A TLS
server met in cleartext sends no `hello`: that ends in a timeout.

The TLS exporter
----------------
The login proof is bound to the RFC 9266 `tls-exporter` value (32 bytes,
label `EXPORTER-Channel-Binding`, empty context). Python's ssl module has no
API for it, so `tls_exporter()` calls `SSL_export_keying_material` through
ctypes, in the libssl already mapped into this process by `_ssl`. The `SSL*`
is read from CPython's `_ssl._SSLSocket` object (right after PyObject_HEAD
and one pointer) and is verified before use: TLS 1.3 (`SSL_version`), the
same side (`SSL_is_server`), the same Finished messages as Python's own
`get_channel_binding("tls-unique")`, and, for socket-backed objects, the same
file descriptor (`SSL_get_fd`). If any of this fails, `ExporterUnavailable`
is raised and no login is attempted.

Pipelining behind `auth` (`early=[(type, fields, body), ...]`) is offered over
TLS only: the doc allows it once the server's key is trusted, and advises
against it over cleartext.

Exceptions: ProtocolError (framing, unexpected frames, wrong version, a
server without TLS), AuthError (auth_failed, or the server could not prove
the token), RemoteError (an `error`/`bye` frame), ConnectionClosed,
HostKeyChanged / HostKeyUnknown (both ServerKeyError), ExporterUnavailable,
and OSError/ssl.SSLError/socket.timeout from the network.

CLI exit codes: 0 ok, 2 usage, 3 connection error, 4 authentication failed,
6 protocol error (version mismatch, no TLS), 7 remote error, 15 the server's
key differs from the pinned or known one, 16 the server's key is not trusted.
"""
import argparse
import base64
import ctypes
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import struct
import sys
import time

# Named limits (docs/protocol.md, "Named limits").
LENGTH_PREFIX_SIZE = 4
MAX_HEADER_SIZE = 65536
MAX_BODY_SIZE = 16777216
NONCE_SIZE = 32
MAX_USER_NAME = 64
PROTOCOL_VERSION = 2
DEFAULT_PORT = 7701
U64_LIMIT = 1 << 64

# Proofs (docs/protocol.md, "Proofs").
CLIENT_LABEL = b"cskit/2 client"
SERVER_LABEL = b"cskit/2 server"
KIND_TLS = b"tls-exporter"
KIND_NONCES = b"nonces"
BINDING_HASH_LABEL = b"cskit/2 binding"
AUTH_METHOD = "hmac-sha256"

# Transport (docs/protocol.md, "Transport security").
ALPN = "cskit"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32
TLS1_3_VERSION = 0x0304

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}\Z")
_USER = re.compile(r"[A-Za-z0-9._-]{1,%d}\Z" % MAX_USER_NAME)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}\Z")

# Bytes to take at once while a body arrives; the body buffer grows only with
# the bytes actually received.
_READ_CHUNK = 64 * 1024
# Plaintext handed to TLS at once when sending.
_WRITE_CHUNK = 64 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol (framing, unexpected frame, bad field, no TLS)."""

    def __init__(self, message, code=None, header=None):
        super().__init__(message)
        self.code = code  # decoder-rule wire name for framing errors, or a local tag
        self.header = header


class AuthError(Exception):
    """Authentication failed: the server said so, or the server's proof is wrong."""

    def __init__(self, message, code=None):
        super().__init__(message if code is None else f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(Exception):
    """The server answered with an `error` (or `bye`) frame."""

    def __init__(self, code, message, header=None, fatal=False, authenticated=True):
        super().__init__(f"{code}: {message}" if authenticated else
                         f"{code}: {message} (unauthenticated: sent in cleartext before TLS)")
        self.code = code
        self.message = message
        self.header = header or {}
        self.fatal = fatal
        self.authenticated = authenticated  # False: came in cleartext, anyone could have sent it


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (at or inside a frame)."""


class ServerKeyError(Exception):
    """The server's key is not trusted; nothing of the session was sent."""

    def __init__(self, message, fingerprint, expected=None):
        super().__init__(message)
        self.fingerprint = fingerprint  # the server's
        self.expected = expected        # what was pinned / known, if anything


class HostKeyChanged(ServerKeyError):
    """The server's key differs from the pinned or known one."""


class HostKeyUnknown(ServerKeyError):
    """No rule says the server's key is to be trusted."""


class ExporterUnavailable(RuntimeError):
    """The TLS exporter could not be read through libssl."""


# --------------------------------------------------------------------------
# Framing

class _Signed(int):
    """Marks an integer literal written with a '-' sign (so '-0' is rejected)."""


def _parse_int(literal):
    if literal.startswith("-"):
        return _Signed(int(literal))
    return int(literal)


def _reject_constant(name):
    # Python would accept NaN / Infinity / -Infinity; RFC 8259 does not.
    raise ValueError(f"invalid JSON constant {name}")


def is_unsigned(v):
    """An unsigned integer in the doc's sense: a plain non-negative JSON integer < 2^64."""
    return type(v) is int and 0 <= v < U64_LIMIT


def decode_header(raw):
    """Applies decoder rules 3-9 to a complete header. Returns (header, body_length)."""
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"header is not valid UTF-8: {e}", "invalid_utf8") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"header is not valid JSON: {e}", "bad_json") from None
    if not isinstance(value, dict):
        raise ProtocolError("header is not a JSON object", "header_not_object")
    t = value.get("type")
    if not isinstance(t, str) or not t:
        raise ProtocolError("header has no non-empty string 'type'", "missing_type")
    body_len = 0
    if "body" in value:
        body_len = value["body"]
        if not is_unsigned(body_len):
            raise ProtocolError("'body' is not an unsigned integer", "bad_body_length")
        if body_len > MAX_BODY_SIZE:
            raise ProtocolError(f"'body' {body_len} exceeds {MAX_BODY_SIZE}", "body_too_large")
    if "id" in value and not is_unsigned(value["id"]):
        raise ProtocolError("'id' is not an unsigned integer", "bad_id")
    return value, body_len


def encode_frame(header, body=b""):
    """Encodes one frame. `header` must not contain `body`; it is written from len(body)."""
    if not isinstance(header, dict):
        raise TypeError("header must be a dict")
    if "body" in header:
        raise ValueError("header must not contain 'body'; it is derived from the body")
    t = header.get("type")
    if not isinstance(t, str) or not t:
        raise ValueError("header needs a non-empty string 'type'")
    if "id" in header and not is_unsigned(header["id"]):
        raise ValueError("'id' must be an unsigned integer below 2^64")
    body = bytes(body)
    if len(body) > MAX_BODY_SIZE:
        raise ValueError(f"body of {len(body)} bytes exceeds {MAX_BODY_SIZE}")
    # Compact, sorted keys, raw UTF-8, `body` last: the same shape as the
    # reference encoder (not required; key order is not significant).
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True, allow_nan=False)
    if body:
        text = text[:-1] + ("," if len(header) else "") + '"body":%d}' % len(body)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"header contains a string that is not valid Unicode: {e}") from None
    if len(raw) > MAX_HEADER_SIZE:
        raise ValueError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_SIZE}")
    return struct.pack(">I", len(raw)) + raw + body


def decode_frame_bytes(data):
    """Decodes exactly one complete frame from bytes (used for the doc's examples)."""
    if len(data) < LENGTH_PREFIX_SIZE:
        raise ProtocolError("truncated length prefix")
    (hlen,) = struct.unpack(">I", data[:4])
    _check_prefix(hlen)
    if len(data) < 4 + hlen:
        raise ProtocolError("truncated header")
    header, blen = decode_header(data[4:4 + hlen])
    if len(data) != 4 + hlen + blen:
        raise ProtocolError(f"frame is {len(data)} bytes, header says {4 + hlen + blen}")
    return header, bytes(data[4 + hlen:])


def _check_prefix(hlen):
    if hlen == 0:
        raise ProtocolError("frame header length is zero", "empty_header")
    if hlen > MAX_HEADER_SIZE:
        raise ProtocolError(f"frame header length {hlen} exceeds {MAX_HEADER_SIZE}",
                            "header_too_large")


# --------------------------------------------------------------------------
# Proofs

def proof_input(label, user, kind, binding):
    """label || 0x00 || user || 0x00 || kind || 0x00 || binding."""
    if isinstance(user, str):
        user = user.encode("utf-8")
    return bytes(label) + b"\x00" + user + b"\x00" + bytes(kind) + b"\x00" + bytes(binding)


def compute_proof(token, label, user, kind, binding):
    """The 32-byte HMAC-SHA256. The token is used as UTF-8 key bytes, never hex-decoded."""
    key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    return hmac.new(key, proof_input(label, user, kind, binding), hashlib.sha256).digest()


def client_proof(token, user, kind, binding):
    return compute_proof(token, CLIENT_LABEL, user, kind, binding)


def server_proof(token, user, kind, binding):
    return compute_proof(token, SERVER_LABEL, user, kind, binding)


def nonces_binding(server_nonce, client_nonce):
    """Cleartext binding: the server nonce then the client nonce, 32 raw bytes each."""
    if len(server_nonce) != NONCE_SIZE or len(client_nonce) != NONCE_SIZE:
        raise ValueError("nonces must be 32 raw bytes")
    return bytes(server_nonce) + bytes(client_nonce)


def auth_binding_field(exporter):
    """`auth.binding`: 32 lowercase hex digits, the first 16 bytes of
    SHA-256("cskit/2 binding" || 0x00 || exporter)."""
    return hashlib.sha256(BINDING_HASH_LABEL + b"\x00" + bytes(exporter)).digest()[:16].hex()


# --------------------------------------------------------------------------
# Server key fingerprints

def _der_element(buf, pos):
    """Returns (tag, content_start, end) of the DER element at pos."""
    if pos + 2 > len(buf):
        raise ValueError("truncated DER")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("high-number DER tags are not expected in a certificate")
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    end = pos + length
    if end > len(buf):
        raise ValueError("DER element runs past its container")
    return tag, pos, end


def spki_from_certificate(der):
    """The DER SubjectPublicKeyInfo (whole TLV) of a DER X.509 certificate (RFC 5280 4.1)."""
    der = bytes(der)
    tag, start, end = _der_element(der, 0)
    if tag != 0x30:
        raise ValueError("certificate is not a SEQUENCE")
    tag, pos, tbs_end = _der_element(der, start)        # tbsCertificate
    if tag != 0x30:
        raise ValueError("tbsCertificate is not a SEQUENCE")
    fields = []
    while pos < tbs_end and len(fields) < 7:
        t, c, e = _der_element(der, pos)
        fields.append((t, pos, e))
        pos = e
    if fields and fields[0][0] == 0xA0:                 # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo
    if len(fields) < 6 or fields[0][0] != 0x02 or fields[5][0] != 0x30:
        raise ValueError("unexpected tbsCertificate layout")
    _, s, e = fields[5]
    return der[s:e]


def fingerprint_of_spki(spki):
    """"SHA256:" + base64(SHA-256(spki)) without "=" padding: 50 characters."""
    digest = hashlib.sha256(bytes(spki)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def certificate_fingerprint(der):
    return fingerprint_of_spki(spki_from_certificate(der))


def check_fingerprint_syntax(text):
    if not isinstance(text, str) or not _FINGERPRINT.match(text):
        raise ValueError(f"fingerprint must be SHA256: followed by 43 base64 characters, "
                         f"got {text!r}")
    return text


def known_hosts_key(host, port):
    """The `HOST:PORT` of a known-hosts entry: host lower-cased, IPv6 in brackets."""
    host = host.lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def default_known_hosts_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "cskit", "known_hosts")


def known_hosts_entries(path, host, port):
    """[(line_number, fingerprint)] for HOST:PORT in a known-hosts file (missing file: [])."""
    want = known_hosts_key(host, port)
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return out
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2 or not _FINGERPRINT.match(parts[1]) or ":" not in parts[0]:
            continue  # not of the documented shape: skipped
        if parts[0].lower() == want:
            out.append((number, parts[1]))
    return out


# --------------------------------------------------------------------------
# The TLS exporter, through libssl

_libssl = None


def _mapped_libssl_path():
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and re.search(r"/libssl\.so[.\d]*$", fields[5].strip()):
                    return fields[5].strip()
    except OSError:
        pass
    return None


def _load_libssl():
    global _libssl
    if _libssl is not None:
        return _libssl
    import _ssl  # noqa: F401  (make sure it is loaded, and with it its libssl)
    path = _mapped_libssl_path()
    if path is None:
        raise ExporterUnavailable("no libssl is mapped into this process (is _ssl linked "
                                  "statically?)")
    lib = ctypes.CDLL(path)
    p, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.SSL_version.argtypes, lib.SSL_version.restype = [p], i
    lib.SSL_is_server.argtypes, lib.SSL_is_server.restype = [p], i
    lib.SSL_get_fd.argtypes, lib.SSL_get_fd.restype = [p], i
    lib.SSL_get_finished.argtypes, lib.SSL_get_finished.restype = [p, ctypes.c_char_p, sz], sz
    lib.SSL_get_peer_finished.argtypes = [p, ctypes.c_char_p, sz]
    lib.SSL_get_peer_finished.restype = sz
    lib.SSL_export_keying_material.argtypes = [p, ctypes.c_char_p, sz, ctypes.c_char_p, sz,
                                               ctypes.c_char_p, sz, i]
    lib.SSL_export_keying_material.restype = i
    _libssl = lib
    return lib


def _ssl_pointer(tls):
    """The verified `SSL*` behind an ssl.SSLObject or ssl.SSLSocket."""
    if sys.implementation.name != "cpython":
        raise ExporterUnavailable("reading the SSL* needs CPython")
    lib = _load_libssl()
    inner = getattr(tls, "_sslobj", None)
    if inner is None or type(inner).__module__ != "_ssl" or type(inner).__name__ != "_SSLSocket":
        raise ExporterUnavailable("not a connected CPython _ssl._SSLSocket")
    offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)  # PyObject_HEAD + one pointer
    if type(inner).__basicsize__ < offset + ctypes.sizeof(ctypes.c_void_p):
        raise ExporterUnavailable("unexpected _ssl._SSLSocket layout")
    ptr = ctypes.c_void_p.from_address(id(inner) + offset).value
    if not ptr or ptr % ctypes.alignment(ctypes.c_void_p):
        raise ExporterUnavailable("no SSL* where CPython 3.11 keeps it")
    if lib.SSL_version(ptr) != TLS1_3_VERSION:
        raise ExporterUnavailable("the SSL* found is not a TLS 1.3 session")
    if bool(lib.SSL_is_server(ptr)) != bool(tls.server_side):
        raise ExporterUnavailable("the SSL* found is not on this side")
    unique = tls.get_channel_binding("tls-unique")
    mine, peer = ctypes.create_string_buffer(128), ctypes.create_string_buffer(128)
    n_mine = lib.SSL_get_finished(ptr, mine, 128)
    n_peer = lib.SSL_get_peer_finished(ptr, peer, 128)
    if not unique or unique not in (mine.raw[:n_mine], peer.raw[:n_peer]):
        raise ExporterUnavailable("the SSL* found has other Finished messages than this session")
    if isinstance(tls, ssl.SSLSocket) and lib.SSL_get_fd(ptr) != tls.fileno():
        raise ExporterUnavailable("the SSL* found is on another file descriptor")
    return lib, ptr, inner


def tls_exporter(tls, label=EXPORTER_LABEL, length=EXPORTER_LENGTH, context=b""):
    """RFC 8446 7.5 exporter of a completed TLS 1.3 session (ssl.SSLObject or ssl.SSLSocket).

    The defaults give the RFC 9266 `tls-exporter` channel binding. `context=None` asks for
    "no context" (use_context = 0), `b""` for an empty one; in TLS 1.3 both are the same.
    """
    lib, ptr, inner = _ssl_pointer(tls)
    out = ctypes.create_string_buffer(length)
    ctx = b"" if context is None else bytes(context)
    ok = lib.SSL_export_keying_material(ptr, out, length, bytes(label), len(label),
                                        ctx, len(ctx), 0 if context is None else 1)
    del inner
    if ok != 1:
        raise ExporterUnavailable("SSL_export_keying_material failed")
    return out.raw


# --------------------------------------------------------------------------
# Transports

def _remaining(deadline):
    r = deadline - time.monotonic()
    if r <= 0:
        raise socket.timeout("timed out")
    return r


def _tcp_send(sock, data, deadline):
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline))
        view = view[sock.send(view):]


def _tcp_recv(sock, n, deadline):
    sock.settimeout(_remaining(deadline))
    return sock.recv(n)


class _PlainTransport:
    tls = False

    def __init__(self, sock):
        self.sock = sock

    def sendall(self, data, deadline):
        _tcp_send(self.sock, data, deadline)

    def recv(self, n, deadline):
        return _tcp_recv(self.sock, n, deadline)

    def end_write(self, deadline):
        self.sock.shutdown(socket.SHUT_WR)


def client_tls_context():
    """TLS 1.3 only, ALPN cskit, no CA verification (the key is pinned instead)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    return ctx


def _is_ip_literal(host):
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class _TLSTransport:
    """TLS over memory BIOs: this code does every socket read and write itself."""

    tls = True

    def __init__(self, sock, host, context=None):
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        sni = None if _is_ip_literal(host) else host
        self.obj = (context or client_tls_context()).wrap_bio(self.inc, self.out,
                                                              server_side=False,
                                                              server_hostname=sni)
        self.tcp_eof = False
        self.on_received = None  # called with every chunk of TLS bytes read (tests count records)

    def _flush(self, deadline):
        while self.out.pending:
            _tcp_send(self.sock, self.out.read(), deadline)

    def _feed(self, deadline):
        data = _tcp_recv(self.sock, _READ_CHUNK, deadline)
        if self.on_received:
            self.on_received(data)
        if data:
            self.inc.write(data)
        else:
            self.tcp_eof = True
            self.inc.write_eof()
        return data

    def handshake(self, deadline):
        first = True
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush(deadline)
                data = _tcp_recv(self.sock, _READ_CHUNK, deadline)
                if not data:
                    raise ConnectionClosed("the server closed the connection during the TLS "
                                           "handshake")
                if first and data[0] == 0x00:
                    # TLS records start with a content type (20-24); a frame's length
                    # prefix (at most 0x00010000) starts with 0x00.
                    self._cleartext_frame(data, deadline)
                first = False
                self.inc.write(data)
        self._flush(deadline)

    def _cleartext_frame(self, data, deadline):
        """The server speaks frames in cleartext: read its first frame and report it."""
        buf = bytearray(data)
        deadline = min(deadline, time.monotonic() + 5)
        header = None
        while header is None:
            if len(buf) >= 4:
                (hlen,) = struct.unpack(">I", buf[:4])
                _check_prefix(hlen)
                if len(buf) >= 4 + hlen:
                    header, _ = decode_header(bytes(buf[4:4 + hlen]))
                    break
            more = _tcp_recv(self.sock, _READ_CHUNK, deadline)
            if not more:
                raise ProtocolError("the server does not speak TLS: it sent a cut-off cleartext "
                                    "frame", "not_tls")
            buf += more
        t = header["type"]
        if t in ("error", "bye"):
            raise RemoteError(header.get("code", "?"), header.get("message", ""), header,
                              fatal=True, authenticated=False)
        if t == "hello":
            proto = header.get("proto")
            if proto != PROTOCOL_VERSION or type(proto) is not int:
                why = (f"server speaks protocol version {proto!r}, this client speaks "
                       f"{PROTOCOL_VERSION}: upgrade the older side")
            else:
                why = "the server runs in cleartext (--plaintext); connect with plaintext=True"
            raise ProtocolError(f"the server does not speak TLS: it sent a cleartext hello ({why})",
                                "not_tls", header)
        raise ProtocolError(f"the server does not speak TLS: it sent a cleartext {t!r} frame",
                            "not_tls", header)

    def sendall(self, data, deadline):
        view = memoryview(data)
        for i in range(0, len(view), _WRITE_CHUNK):
            self.obj.write(view[i:i + _WRITE_CHUNK])
            self._flush(deadline)

    def recv(self, n, deadline):
        """Up to n plaintext bytes; b"" at close_notify or at a TCP FIN (accepted as the end)."""
        while True:
            try:
                data = self.obj.read(n)
            except ssl.SSLWantReadError:
                if self.tcp_eof:
                    return b""
                self._flush(deadline)
                self._feed(deadline)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            if self.out.pending:  # e.g. the answer to a KeyUpdate
                self._flush(deadline)
            return data

    def end_write(self, deadline):
        """Queues close_notify and sends it (the TLS counterpart of SHUT_WR)."""
        try:
            self.obj.unwrap()
        except ssl.SSLError:  # SSLWantReadError: the peer's close_notify has not come yet
            pass
        self._flush(deadline)


# --------------------------------------------------------------------------
# Client

class Client:
    def __init__(self, sock, transport, timeout):
        self.sock = sock
        self._t = transport
        self.timeout = timeout
        self.hello = None
        self.welcome = None
        self.tls = transport.tls
        self.server_fingerprint = None   # over TLS
        self.tls_version = None
        self.cipher = None
        self.alpn = None
        self.channel_binding = None      # the tls-exporter value, or the 64 nonce bytes
        self.early_ids = []
        self._authenticated = False
        self._next_id = 1
        self._closed = False

    # -- connection setup ---------------------------------------------------

    @classmethod
    def connect(cls, host, port, user, token, timeout=10.0, *, fingerprint=None,
                known_hosts=None, insecure_no_key_check=False, plaintext=False,
                client_nonce=None, send_binding=True, early=(), tls_context=None):
        """Connects, decides to trust the server's key, authenticates and verifies the
        server's proof. See the module docstring for the trust rules.

        `early`: requests [(type, fields, body)] sent right behind `auth`, before
        `welcome` (TLS only); their ids are in `.early_ids` and their replies are read
        with recv() after connect() returns. `send_binding=False` leaves out the
        optional `auth.binding`. `client_nonce` (cleartext only) fixes the nonce.
        `tls_context`: an ssl.SSLContext to use instead of client_tls_context() (tests, e.g.
        with a keylog file); the TLS 1.3 and ALPN checks still apply.
        """
        if not isinstance(user, str) or not _USER.match(user):
            raise ValueError("user name must be 1-64 characters from A-Z a-z 0-9 . _ -")
        if fingerprint is not None:
            check_fingerprint_syntax(fingerprint)
        if plaintext:
            if fingerprint is not None or known_hosts is not None:
                raise ValueError("a cleartext connection has no server key to check")
            if early:
                raise ValueError("requests are not sent before welcome over cleartext")
            if client_nonce is None:
                client_nonce = secrets.token_bytes(NONCE_SIZE)  # fresh CSPRNG output
            if len(client_nonce) != NONCE_SIZE:
                raise ValueError("client nonce must be 32 bytes")
        elif client_nonce is not None:
            raise ValueError("client_nonce is for cleartext only")
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((host, port), timeout=timeout)
        c = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if plaintext:
                peer = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
                if peer.version == 6 and peer.ipv4_mapped is not None:
                    peer = peer.ipv4_mapped
                if not peer.is_loopback:
                    raise ValueError("cleartext logins go only to a loopback address")
                c = cls(sock, _PlainTransport(sock), timeout)
                c._handshake_cleartext(user, token, bytes(client_nonce))
            else:
                t = _TLSTransport(sock, host, tls_context)
                c = cls(sock, t, timeout)
                t.handshake(deadline)
                c._check_tls_and_trust(host, port, fingerprint, known_hosts,
                                       insecure_no_key_check)
                c._handshake_tls(user, token, send_binding, early)
            return c
        except BaseException:
            if c is not None:
                c._abort(drain=False)
            else:
                try:
                    sock.close()
                except OSError:
                    pass
            raise

    def _check_tls_and_trust(self, host, port, fingerprint, known_hosts, insecure):
        obj = self._t.obj
        self.tls_version = obj.version()
        self.cipher = obj.cipher()
        self.alpn = obj.selected_alpn_protocol()
        if self.tls_version != "TLSv1.3":
            raise ProtocolError(f"the server negotiated {self.tls_version}, not TLSv1.3")
        if self.alpn != ALPN:
            raise ProtocolError(f"the server did not select ALPN {ALPN!r} "
                                f"(selected {self.alpn!r}): not a cskit server")
        der = obj.getpeercert(binary_form=True)
        if not der:
            raise ProtocolError("the server sent no certificate")
        fp = certificate_fingerprint(der)
        self.server_fingerprint = fp
        if fingerprint is not None:
            if fp != fingerprint:
                raise HostKeyChanged(
                    f"REMOTE HOST IDENTIFICATION HAS CHANGED: {host}:{port} has key {fp}, "
                    f"expected {fingerprint}", fp, fingerprint)
            return
        if known_hosts is not None:
            entries = known_hosts_entries(known_hosts, host, port)
            if entries:
                if fp not in [e[1] for e in entries]:
                    where = ", ".join(f"{known_hosts}:{n}" for n, _ in entries)
                    raise HostKeyChanged(
                        f"REMOTE HOST IDENTIFICATION HAS CHANGED: {host}:{port} has key {fp}, "
                        f"which is not the one known in {where}", fp, entries[0][1])
                return
        if insecure:
            return
        raise HostKeyUnknown(f"the key of {host}:{port} is not trusted: its fingerprint is {fp}; "
                             f"compare it with the server's (cskit serve --print-fingerprint) "
                             f"and pass it as the fingerprint to trust it", fp)

    def _check_hello(self, hello, binding):
        t = hello["type"]
        if t in ("error", "bye"):
            raise RemoteError(hello.get("code", "?"), hello.get("message", ""), hello, fatal=True)
        if t != "hello":
            raise ProtocolError(f"first frame is {t!r}, not 'hello': not a cskit server")
        proto = hello.get("proto")
        if type(proto) is not int or proto != PROTOCOL_VERSION:
            raise ProtocolError(f"server speaks protocol version {proto!r}, this client speaks "
                                f"{PROTOCOL_VERSION}: upgrade the older side", "version")
        if hello.get("binding") != binding:
            raise ProtocolError(f"hello.binding is {hello.get('binding')!r}, this client binds "
                                f"its proof to {binding!r}")
        methods = hello.get("auth")
        if not isinstance(methods, list) or AUTH_METHOD not in methods:
            raise ProtocolError(f"server does not offer {AUTH_METHOD}: {methods!r}")
        self.hello = hello

    def _handshake_tls(self, user, token, send_binding, early):
        exporter = tls_exporter(self._t.obj)
        self.channel_binding = exporter
        # Over TLS the proof needs nothing from the server: auth goes out at once.
        auth_id = self.next_id()
        auth = {"type": "auth", "id": auth_id, "proto": PROTOCOL_VERSION, "user": user,
                "proof": client_proof(token, user, KIND_TLS, exporter).hex()}
        if send_binding:
            auth["binding"] = auth_binding_field(exporter)
        data = encode_frame(auth)
        for rtype, fields, body in early:
            rid = self.next_id()
            self.early_ids.append(rid)
            data += encode_frame(dict(fields, type=rtype, id=rid), body)
        self._send_raw(data)
        hello, _ = self._recv_raw()
        try:
            self._check_hello(hello, "tls-exporter")
        except RemoteError:
            self._abort()              # a fatal error or bye: read until EOF, then close
            raise
        except ProtocolError:
            self._abort(drain=False)
            raise
        self._finish_login(user, token, auth_id, KIND_TLS, exporter)

    def _handshake_cleartext(self, user, token, client_nonce):
        hello, _ = self._recv_raw()
        try:
            self._check_hello(hello, "nonces")
            nonce_hex = hello.get("nonce")
            if not isinstance(nonce_hex, str) or not _HEX64.match(nonce_hex):
                raise ProtocolError("hello.nonce is not 64 hex digits")
        except RemoteError:
            self._abort()
            raise
        except ProtocolError:
            self._abort(drain=False)   # MUST close without sending auth
            raise
        binding = nonces_binding(bytes.fromhex(nonce_hex), client_nonce)
        self.channel_binding = binding
        auth_id = self.next_id()
        self.send({"type": "auth", "id": auth_id, "proto": PROTOCOL_VERSION, "user": user,
                   "nonce": client_nonce.hex(),
                   "proof": client_proof(token, user, KIND_NONCES, binding).hex()})
        self._finish_login(user, token, auth_id, KIND_NONCES, binding)

    def _finish_login(self, user, token, auth_id, kind, binding):
        reply, _ = self._recv_raw()
        t = reply["type"]
        if t == "error":
            self._abort()
            raise AuthError(reply.get("message", ""), reply.get("code", "?"))
        if t == "bye":
            self._abort()
            raise RemoteError(reply.get("code", "shutting_down"), reply.get("message", ""),
                              reply, fatal=True)
        if t != "welcome":
            self._abort(drain=False)
            raise ProtocolError(f"expected 'welcome' after auth, got {t!r}")
        # Verify the server's proof first, in constant time; on mismatch send nothing more.
        got = reply.get("proof")
        expected = server_proof(token, user, kind, binding)
        if not isinstance(got, str) or not _HEX64.match(got) or \
                not hmac.compare_digest(bytes.fromhex(got), expected):
            self._abort(drain=False)
            raise AuthError("server proof missing or wrong: the server does not know the token",
                            "bad_server_proof")
        if reply.get("id") != auth_id or not is_unsigned(reply.get("id")):
            self._abort(drain=False)
            raise ProtocolError(f"welcome id {reply.get('id')!r} does not echo auth id {auth_id}")
        perms = reply.get("permissions")
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            self._abort(drain=False)
            raise ProtocolError("welcome.permissions is not an array of strings")
        if reply.get("user") != user:
            self._abort(drain=False)
            raise ProtocolError(f"welcome.user {reply.get('user')!r} is not {user!r}")
        self.welcome = reply
        self._authenticated = True

    # -- frames -------------------------------------------------------------

    def next_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    def _send_raw(self, data):
        if self._closed:
            raise ConnectionClosed("connection is closed")
        # One `timeout` per wait, plus one per MiB.
        deadline = time.monotonic() + self.timeout * (1 + (len(data) >> 20))
        try:
            self._t.sendall(data, deadline)
        except (OSError, ssl.SSLError):
            self._abort(drain=False)
            raise

    def send(self, header, body=b""):
        """Sends one frame, written contiguously."""
        self._send_raw(encode_frame(header, body))

    def _recv_exact(self, n, deadline):
        """Reads exactly n bytes; the buffer grows only as bytes arrive."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self._t.recv(min(n - len(buf), _READ_CHUNK), deadline)
            if not chunk:
                if buf:
                    raise ConnectionClosed(f"connection closed inside a frame "
                                           f"({len(buf)} of {n} bytes)")
                return None
            buf += chunk
        return bytes(buf)

    def _recv_raw(self):
        """Reads one complete frame (any type). Limits are checked before reading on."""
        if self._closed:
            raise ConnectionClosed("connection is closed")
        # One wait = one frame, bounded by `timeout` seconds from its first byte wait.
        deadline = time.monotonic() + self.timeout
        try:
            prefix = self._recv_exact(LENGTH_PREFIX_SIZE, deadline)
            if prefix is None:
                raise ConnectionClosed("connection closed by the server")
            (hlen,) = struct.unpack(">I", prefix)
            _check_prefix(hlen)                     # rules 1-2, before reading the header
            raw = self._recv_exact(hlen, deadline)
            if raw is None:
                raise ConnectionClosed("connection closed inside a frame (after the prefix)")
            header, blen = decode_header(raw)       # rules 3-9, before reading the body
            body = b""
            if blen:
                # A large body gets one more `timeout` per MiB.
                body = self._recv_exact(blen, deadline + self.timeout * (blen >> 20))
                if body is None:
                    raise ConnectionClosed("connection closed inside a frame (before the body)")
            return header, body
        except (ProtocolError, OSError, ssl.SSLError):
            self._abort(drain=False)
            raise

    def recv(self):
        """Returns the next frame (header, body). Server pings are answered transparently."""
        deadline = time.monotonic() + self.timeout
        while True:
            header, body = self._recv_raw()
            if header["type"] == "ping" and self._authenticated:
                pong = {"type": "pong"}
                if "id" in header:
                    pong["id"] = header["id"]
                self.send(pong, body)
                if time.monotonic() > deadline:
                    raise socket.timeout("timed out: only pings received")
                continue
            return header, body

    def request(self, type, body=b"", **fields):
        """Sends a request with a fresh id and returns the reply (header, body) with that id.

        Frames with other ids, and unknown frames without id, are skipped. An `error`
        reply raises RemoteError (the connection stays usable). An `error` or `bye`
        without id is fatal: the connection is closed and RemoteError is raised.
        """
        rid = self.next_id()
        header = dict(fields)
        header["type"] = type
        header["id"] = rid
        self.send(header, body)
        deadline = time.monotonic() + self.timeout
        while True:
            if time.monotonic() > deadline:
                raise socket.timeout(f"timed out waiting for the reply to id {rid}")
            h, b = self.recv()
            if "id" not in h:
                if h["type"] in ("error", "bye"):
                    self._abort()
                    raise RemoteError(h.get("code", "?"), h.get("message", ""), h, fatal=True)
                continue  # unknown frame without id: ignore
            if h["id"] != rid:
                continue  # not ours (e.g. a frame for another request)
            if h["type"] == "error":
                raise RemoteError(h.get("code", "?"), h.get("message", ""), h)
            return h, b

    def ping(self, payload=b""):
        """Sends a ping and returns the round-trip time in seconds."""
        payload = bytes(payload)
        t0 = time.perf_counter()
        h, b = self.request("ping", payload)
        rtt = time.perf_counter() - t0
        if h["type"] != "pong":
            raise ProtocolError(f"ping answered with {h['type']!r}, not 'pong'")
        if b != payload:
            raise ProtocolError(f"pong body differs from the ping payload "
                                f"({len(b)} vs {len(payload)} bytes)")
        return rtt

    def info(self):
        h, _ = self.request("info")
        if h["type"] != "info.reply":
            raise ProtocolError(f"info answered with {h['type']!r}, not 'info.reply'")
        return h

    # -- closing --------------------------------------------------------------

    def _drain_until_eof(self, limit):
        """Discards what arrives until the server's FIN (bounded)."""
        deadline = time.monotonic() + limit
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.sock.settimeout(remaining)
                if not self.sock.recv(_READ_CHUNK):
                    return
        except OSError:
            return

    def _abort(self, drain=True):
        """Closes. With drain (a normal close, or after a fatal error frame): close_notify or
        SHUT_WR first, then read until the server's FIN (bounded). Without: close at once and
        send nothing more."""
        if self._closed:
            return
        self._closed = True
        try:
            if drain:
                limit = min(self.timeout, 3.0)
                try:
                    self._t.end_write(time.monotonic() + limit)
                except (OSError, ssl.SSLError):
                    pass
                self._drain_until_eof(limit)
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def close(self):
        """Ends the session: close_notify (or FIN), reads until the server's FIN, closes."""
        self._abort(drain=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# CLI

(EXIT_OK, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH, EXIT_PROTOCOL, EXIT_REMOTE,
 EXIT_KEY_CHANGED, EXIT_KEY_UNKNOWN) = 0, 2, 3, 4, 6, 7, 15, 16


def parse_address(text):
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"bad address {text!r}")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    port = int(port) if port else DEFAULT_PORT
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad address {text!r}")
    return host, port


def main(argv=None):
    ap = argparse.ArgumentParser(description="Independent cskit protocol 2 client")
    ap.add_argument("address", help="HOST:PORT (port defaults to 7701)")
    ap.add_argument("--token", default=os.environ.get("CSKIT_TOKEN"),
                    help="shared secret (default: $CSKIT_TOKEN)")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--count", type=int, default=3, help="number of pings (default 3)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per wait (default 10)")
    ap.add_argument("--fingerprint", help="trust only a server key with this SHA256:... fingerprint")
    ap.add_argument("--known-hosts", metavar="FILE",
                    help=f"known-hosts file to consult (e.g. {default_known_hosts_path()})")
    ap.add_argument("--insecure-no-key-check", action="store_true",
                    help="trust any server key (tests only)")
    ap.add_argument("--plaintext", action="store_true",
                    help="no TLS: only to a --plaintext server on a loopback address")
    args = ap.parse_args(argv)
    if not args.token:
        ap.error("--token is required (or set CSKIT_TOKEN)")
    if args.count < 0 or args.timeout <= 0:
        ap.error("--count must be >= 0 and --timeout > 0")
    try:
        host, port = parse_address(args.address)
        if args.fingerprint is not None:
            check_fingerprint_syntax(args.fingerprint)
    except ValueError as e:
        ap.error(str(e))

    client = None
    try:
        client = Client.connect(host, port, args.user, args.token, timeout=args.timeout,
                                fingerprint=args.fingerprint, known_hosts=args.known_hosts,
                                insecure_no_key_check=args.insecure_no_key_check,
                                plaintext=args.plaintext)
        h = client.hello
        print(f"connected to {host}:{port}")
        if client.tls:
            print(f"  tls: {client.tls_version} {client.cipher[0]} alpn={client.alpn}")
            print(f"  server key: {client.server_fingerprint}")
        else:
            print("  tls: none (cleartext)")
        for key in ("server", "version", "proto", "name", "auth", "binding"):
            print(f"  hello.{key}: {json.dumps(h.get(key))}")
        print(f"authenticated as {client.welcome['user']} "
              f"permissions={json.dumps(client.welcome['permissions'])}")
        for seq in range(1, args.count + 1):
            rtt = client.ping(b"cskit-independent-%d" % seq)
            print(f"ping {seq}: {rtt * 1000:.3f} ms")
        print("info: " + json.dumps(client.info(), sort_keys=True))
        return EXIT_OK
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except HostKeyChanged as e:
        print(f"@@@ {e}", file=sys.stderr)
        return EXIT_KEY_CHANGED
    except HostKeyUnknown as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_KEY_UNKNOWN
    except AuthError as e:
        print(f"authentication failed: {e}", file=sys.stderr)
        return EXIT_AUTH
    except ProtocolError as e:
        print(f"protocol error: {e}", file=sys.stderr)
        return EXIT_PROTOCOL
    except RemoteError as e:
        print(f"remote error: {e}", file=sys.stderr)
        return EXIT_REMOTE
    except ExporterUnavailable as e:
        print(f"local error: {e}", file=sys.stderr)
        return EXIT_CONNECT
    except OSError as e:  # refused, reset, closed, timed out, TLS alerts
        print(f"connection error: {e}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
