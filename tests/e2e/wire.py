"""Minimal raw framing for robustness tests (lets tests send broken frames).

Deliberately separate from cskit_client.py, the independent client written
from docs/protocol.md alone. Connections are TLS 1.3 (tlswire.py), as every
cskit connection is by default.
"""
import hashlib
import hmac
import json
import os
import struct
import time

import tlswire

PROTO = 2


def encode(header, body=b""):
    h = dict(header)
    if body:
        h["body"] = len(body)
    raw = json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack(">I", len(raw)) + raw + body


def recv_exact(sock, n, deadline):
    buf = b""
    while len(buf) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def read_frame(sock, timeout=10):
    deadline = time.monotonic() + timeout
    (n,) = struct.unpack(">I", recv_exact(sock, 4, deadline))
    header = json.loads(recv_exact(sock, n, deadline))
    body = recv_exact(sock, header.get("body", 0), deadline) if header.get("body") else b""
    return header, body


def wait_closed(sock, timeout=10):
    """Reads until EOF; returns the bytes seen. Raises on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, OSError) as e:
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                continue
            return data
        if not chunk:
            return data
        data += chunk
    raise TimeoutError("connection still open after %s s" % timeout)


def proof(label, token, user, kind, binding):
    """HMAC-SHA256(token, label 0x00 user 0x00 kind 0x00 binding) (docs/protocol.md, "Proofs")."""
    msg = label + b"\0" + user.encode() + b"\0" + kind.encode() + b"\0" + binding
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def binding_check(binding):
    return hashlib.sha256(b"cskit/2 binding\0" + binding).hexdigest()[:32]


def auth_frame(sock, token, user="admin", proto=PROTO, frame_id=1, binding=None):
    """An auth frame bound to this TLS connection (or to `binding`, to forge one)."""
    b = binding if binding is not None else tlswire.exporter(sock)
    return encode({"type": "auth", "id": frame_id, "proto": proto, "user": user,
                   "proof": proof(b"cskit/2 client", token, user, "tls-exporter", b),
                   "binding": binding_check(b)})


def connect(port, timeout=10, source=None):
    """TLS connection and the server's hello."""
    s = tlswire.connect(port, timeout=timeout, source=source)
    hello, _ = read_frame(s, timeout)
    return s, hello


def login(port, token, user="admin", timeout=10, source=None):
    """Connects and authenticates; returns (socket, welcome header)."""
    s, hello = connect(port, timeout, source)
    if hello.get("type") != "hello" or hello.get("binding") != "tls-exporter":
        raise RuntimeError("unexpected hello: %r" % hello)
    s.sendall(auth_frame(s, token, user))
    welcome, _ = read_frame(s, timeout)
    if welcome.get("type") != "welcome":
        raise RuntimeError("login failed: %r" % welcome)
    expected = proof(b"cskit/2 server", token, user, "tls-exporter", tlswire.exporter(s))
    if not hmac.compare_digest(welcome["proof"], expected):
        raise RuntimeError("server proof mismatch")
    return s, welcome


def fake_server_login(conn, identity, token, permissions=("files-read", "files-write"), name="fake",
                      timeout=20):
    """The server side of the handshake, for fake servers that tests write: TLS with `identity`,
    hello, the client's auth, a correct welcome. Returns (TLS socket, auth header); the client
    must trust `identity` (--fingerprint identity.fingerprint)."""
    tls = identity.wrap(conn, timeout)
    tls.sendall(encode({"type": "hello", "proto": PROTO, "server": "cskit", "version": "0.1.0", "name": name,
                        "auth": ["hmac-sha256"], "binding": "tls-exporter"}))
    auth, _ = read_frame(tls, timeout)
    welcome = {"type": "welcome", "id": auth["id"], "user": auth["user"], "permissions": list(permissions),
               "proof": proof(b"cskit/2 server", token, auth["user"], "tls-exporter", tlswire.exporter(tls))}
    tls.sendall(encode(welcome))
    return tls, auth
