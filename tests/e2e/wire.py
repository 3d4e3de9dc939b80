"""Minimal raw framing for robustness tests (lets tests send broken frames).

Deliberately separate from cskit_client.py, the independent client written
from docs/protocol.md alone.
"""
import hashlib
import hmac
import json
import os
import socket
import struct
import time


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
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise TimeoutError("connection still open after %s s" % timeout)


def proof(label, token, user, server_nonce, client_nonce):
    msg = label + b"\0" + user.encode() + b"\0" + server_nonce + client_nonce
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def auth_frame(hello, token, user="admin", proto=1, frame_id=1, client_nonce=None):
    cn = client_nonce or os.urandom(32)
    sn = bytes.fromhex(hello["nonce"])
    return encode({"type": "auth", "id": frame_id, "proto": proto, "user": user,
                   "nonce": cn.hex(), "proof": proof(b"cskit/1 client", token, user, sn, cn)}), cn


def login(port, token, user="admin", timeout=10):
    """Connects and authenticates; returns (socket, welcome header)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    hello, _ = read_frame(s, timeout)
    frame, cn = auth_frame(hello, token, user)
    s.sendall(frame)
    welcome, _ = read_frame(s, timeout)
    if welcome.get("type") != "welcome":
        raise RuntimeError("login failed: %r" % welcome)
    expected = proof(b"cskit/1 server", token, user, bytes.fromhex(hello["nonce"]), cn)
    if not hmac.compare_digest(welcome["proof"], expected):
        raise RuntimeError("server proof mismatch")
    return s, welcome
