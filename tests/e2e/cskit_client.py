#!/usr/bin/env python3
"""Independent cskit protocol v1 client, written only from docs/protocol.md.

Standard library only. Library use:

    c = Client.connect("127.0.0.1", 7701, "admin", token)
    rtt = c.ping(b"abc")
    print(c.info())
    c.close()

CLI:

    python3 cskit_client.py HOST:PORT --token T [--user U] [--count N]

Exit codes: 0 ok, 2 usage, 3 connection error, 4 authentication failed,
6 protocol error, 7 remote error.
"""
import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import struct
import sys
import time

# Named limits (docs/protocol.md, "Named limits").
LENGTH_PREFIX_SIZE = 4
MAX_HEADER_SIZE = 65536
MAX_BODY_SIZE = 16777216
NONCE_SIZE = 32
MAX_USER_NAME = 64
PROTOCOL_VERSION = 1
DEFAULT_PORT = 7701
U64_LIMIT = 1 << 64

CLIENT_LABEL = b"cskit/1 client"
SERVER_LABEL = b"cskit/1 server"
AUTH_METHOD = "hmac-sha256"

_HEX64 = re.compile(r"[0-9A-Fa-f]{64}\Z")
_USER = re.compile(r"[A-Za-z0-9._-]{1,%d}\Z" % MAX_USER_NAME)

# Bytes to take from the socket at once while a body arrives; the body buffer
# grows only with the bytes actually received.
_READ_CHUNK = 64 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol (framing, unexpected frame, bad field)."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code  # decoder-rule wire name when it is a framing error


class AuthError(Exception):
    """Authentication failed: server said so, or the server's proof is wrong."""

    def __init__(self, message, code=None):
        super().__init__(message if code is None else f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(Exception):
    """The server answered with an `error` (or `bye`) frame."""

    def __init__(self, code, message, header=None, fatal=False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.header = header or {}
        self.fatal = fatal


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (at or inside a frame)."""


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

def proof_input(label, user, server_nonce, client_nonce):
    """label || 0x00 || user || 0x00 || server_nonce (32 raw) || client_nonce (32 raw)."""
    if isinstance(user, str):
        user = user.encode("utf-8")
    if len(server_nonce) != NONCE_SIZE or len(client_nonce) != NONCE_SIZE:
        raise ValueError("nonces must be 32 raw bytes")
    return label + b"\x00" + user + b"\x00" + bytes(server_nonce) + bytes(client_nonce)


def compute_proof(token, label, user, server_nonce, client_nonce):
    """Returns the 32-byte HMAC-SHA256. The token is used as UTF-8 key bytes, never hex-decoded."""
    key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    return hmac.new(key, proof_input(label, user, server_nonce, client_nonce),
                    hashlib.sha256).digest()


def client_proof(token, user, server_nonce, client_nonce):
    return compute_proof(token, CLIENT_LABEL, user, server_nonce, client_nonce)


def server_proof(token, user, server_nonce, client_nonce):
    return compute_proof(token, SERVER_LABEL, user, server_nonce, client_nonce)


# --------------------------------------------------------------------------
# Client

class Client:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        self.hello = None
        self.welcome = None
        self._authenticated = False
        self._next_id = 1
        self._closed = False

    # -- connection setup ---------------------------------------------------

    @classmethod
    def connect(cls, host, port, user, token, timeout=10.0, client_nonce=None):
        """Connects, reads `hello`, authenticates and verifies the server's proof."""
        if not isinstance(user, str) or not _USER.match(user):
            raise ValueError("user name must be 1-64 characters from A-Z a-z 0-9 . _ -")
        if client_nonce is None:
            client_nonce = secrets.token_bytes(NONCE_SIZE)  # fresh CSPRNG output
        if len(client_nonce) != NONCE_SIZE:
            raise ValueError("client nonce must be 32 bytes")
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.settimeout(timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = cls(sock, timeout)
            c._handshake(user, token, bytes(client_nonce))
            return c
        except BaseException:
            try:
                sock.close()
            except OSError:
                pass
            raise

    def _handshake(self, user, token, client_nonce):
        hello, _ = self._recv_raw()
        t = hello["type"]
        if t == "error":
            self._abort()
            raise RemoteError(hello.get("code", "?"), hello.get("message", ""), hello, fatal=True)
        if t == "bye":
            self._abort()
            raise RemoteError(hello.get("code", "shutting_down"), hello.get("message", ""),
                              hello, fatal=True)
        if t != "hello":
            self._abort()
            raise ProtocolError(f"first frame is {t!r}, not 'hello': not a cskit server")
        proto = hello.get("proto")
        if type(proto) is not int or proto != PROTOCOL_VERSION:
            self._abort()  # MUST close without sending auth
            raise ProtocolError(f"server speaks protocol version {proto!r}, this client speaks "
                                f"{PROTOCOL_VERSION}: upgrade the older side")
        nonce_hex = hello.get("nonce")
        if not isinstance(nonce_hex, str) or not _HEX64.match(nonce_hex):
            self._abort()
            raise ProtocolError("hello.nonce is not 64 hex digits")
        methods = hello.get("auth")
        if not isinstance(methods, list) or AUTH_METHOD not in methods:
            self._abort()
            raise ProtocolError(f"server does not offer {AUTH_METHOD}: {methods!r}")
        self.hello = hello
        server_nonce = bytes.fromhex(nonce_hex)

        auth_id = self.next_id()
        proof = client_proof(token, user, server_nonce, client_nonce)
        self.send({"type": "auth", "id": auth_id, "proto": PROTOCOL_VERSION, "user": user,
                   "nonce": client_nonce.hex(), "proof": proof.hex()})

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
            self._abort()
            raise ProtocolError(f"expected 'welcome' after auth, got {t!r}")
        # Verify the server's proof first, in constant time; on mismatch send nothing more.
        got = reply.get("proof")
        expected = server_proof(token, user, server_nonce, client_nonce)
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

    def send(self, header, body=b""):
        """Sends one frame, written contiguously."""
        if self._closed:
            raise ConnectionClosed("connection is closed")
        data = encode_frame(header, body)
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except OSError:
            self._abort(drain=False)
            raise

    def _recv_exact(self, n, deadline):
        """Reads exactly n bytes; the buffer grows only as bytes arrive."""
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out waiting for frame data")
            self.sock.settimeout(min(self.timeout, remaining))
            chunk = self.sock.recv(min(n - len(buf), _READ_CHUNK))
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
        except ProtocolError:
            self._abort(drain=False)
            raise
        except OSError:
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
        """Closes after a fatal condition; reads until EOF first (bounded) if drain."""
        if self._closed:
            return
        self._closed = True
        try:
            if drain:
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._drain_until_eof(min(self.timeout, 3.0))
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def close(self):
        """Half-closes, reads (and discards) until the server's FIN, bounded, then closes."""
        self._abort(drain=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# CLI

EXIT_OK, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH, EXIT_PROTOCOL, EXIT_REMOTE = 0, 2, 3, 4, 6, 7


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
    ap = argparse.ArgumentParser(description="Independent cskit protocol v1 client")
    ap.add_argument("address", help="HOST:PORT (port defaults to 7701)")
    ap.add_argument("--token", default=os.environ.get("CSKIT_TOKEN"),
                    help="shared secret (default: $CSKIT_TOKEN)")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--count", type=int, default=3, help="number of pings (default 3)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per wait (default 10)")
    args = ap.parse_args(argv)
    if not args.token:
        ap.error("--token is required (or set CSKIT_TOKEN)")
    if args.count < 0 or args.timeout <= 0:
        ap.error("--count must be >= 0 and --timeout > 0")
    try:
        host, port = parse_address(args.address)
    except ValueError as e:
        ap.error(str(e))

    client = None
    try:
        client = Client.connect(host, port, args.user, args.token, timeout=args.timeout)
        h = client.hello
        print(f"connected to {host}:{port}")
        for key in ("server", "version", "proto", "name", "auth"):
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
    except AuthError as e:
        print(f"authentication failed: {e}", file=sys.stderr)
        return EXIT_AUTH
    except ProtocolError as e:
        print(f"protocol error: {e}", file=sys.stderr)
        return EXIT_PROTOCOL
    except RemoteError as e:
        print(f"remote error: {e}", file=sys.stderr)
        return EXIT_REMOTE
    except OSError as e:  # refused, reset, closed, timed out
        print(f"connection error: {e}", file=sys.stderr)
        return EXIT_CONNECT
    finally:
        if client is not None:
            client.close()


if __name__ == "__main__":
    sys.exit(main())
