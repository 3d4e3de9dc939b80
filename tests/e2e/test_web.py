"""The web page's server side, driven as a browser drives it (and as an
attacker would): the embedded page and its Content-Security-Policy, the
login and its cookie, CSRF and Origin checks on everything that changes
the share, mkdir/rename/delete through the files service, uploads in
pieces with SHA-256 per piece that resume after an interruption, and the
WebSocket chat with its origin check."""
import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import time
import unittest

from harness import TOKEN, Server

ALICE = "alice-token-0123456789abcdef"
CONF = f"""
[files]
max_file_size = "8M"

[[users]]
name = "admin"
token = "{TOKEN}"
permissions = ["files-read", "files-write", "chat"]

[[users]]
name = "alice"
token = "{ALICE}"
permissions = ["files-read", "chat"]
"""


class Client:
    """One HTTPS connection, with the page's cookie and CSRF token once logged in."""

    def __init__(self, srv):
        self.srv = srv
        ctx = ssl.create_default_context(cafile=os.path.join(srv.state, "server.crt"))
        ctx.check_hostname = False
        self.conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=30)
        self.cookie = None
        self.csrf = None
        self.origin = f"https://127.0.0.1:{srv.port}"

    def request(self, method, path, body=None, headers=None, cookie=True, csrf=True, origin=True):
        h = dict(headers or {})
        if cookie and self.cookie:
            h["Cookie"] = self.cookie
        if csrf and self.csrf and method not in ("GET", "HEAD"):
            h["X-CSRF-Token"] = self.csrf
        if origin and method not in ("GET", "HEAD"):
            h.setdefault("Origin", self.origin)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r, data

    def api(self, name, body=None, **kw):
        r, data = self.request("GET" if body is None else "POST", "/api/" + name, body, **kw)
        return r.status, json.loads(data) if data else None

    def login(self, user="admin", token=TOKEN):
        r, data = self.request("POST", "/api/login", {"user": user, "token": token})
        if r.status == 200:
            self.cookie = r.getheader("Set-Cookie").split(";")[0]
            self.csrf = json.loads(data)["csrf"]
        return r, data

    def close(self):
        self.conn.close()


class WebApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--frame-timeout", "3", config_text=CONF)
        os.makedirs(os.path.join(cls.srv.share, "docs"))
        with open(os.path.join(cls.srv.share, "docs", "a.txt"), "w") as f:
            f.write("hello\n")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()

    def client(self, login=True):
        c = Client(self.srv)
        self.addCleanup(c.close)
        if login:
            r, data = c.login()
            self.assertEqual(r.status, 200, data)
        return c

    def path(self, *parts):
        return os.path.join(self.srv.share, *parts)

    def test_page_is_served_with_a_strict_policy(self):
        c = self.client(login=False)
        r, body = c.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "text/html; charset=utf-8")
        self.assertIn(b'<script src="/app.js" defer></script>', body)
        self.assertNotIn(b"<script>", body)  # no inline script anywhere
        csp = r.getheader("Content-Security-Policy")
        self.assertIn("script-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertNotIn("unsafe-eval", csp)
        etag = r.getheader("ETag")
        r, _ = c.request("GET", "/index.html", headers={"If-None-Match": etag})
        self.assertEqual(r.status, 304)
        r, js = c.request("GET", "/app.js")
        self.assertEqual((r.status, r.getheader("Content-Type")), (200, "text/javascript; charset=utf-8"))
        self.assertIn(b'"use strict"', js)
        r, _ = c.request("GET", "/app.css")
        self.assertEqual(r.status, 200)
        r, body = c.request("GET", "/nothing-here")
        self.assertEqual(r.status, 404)
        r, _ = c.request("POST", "/", b"x")
        self.assertEqual(r.status, 400)

    def test_login_gives_a_safe_cookie_and_wrong_tokens_are_refused(self):
        c = self.client(login=False)
        status, data = c.api("session")
        self.assertEqual(status, 401)
        self.assertIn("log in", data["error"])
        r, data = c.login(token="wrong-token-0123456789abcdef0123")
        self.assertEqual(r.status, 401)
        self.assertIsNone(r.getheader("WWW-Authenticate"))  # the page's own form, not the browser's box
        self.assertIn("wrong token", json.loads(data)["error"])
        r, data = c.login()
        self.assertEqual(r.status, 200, data)
        cookie = r.getheader("Set-Cookie")
        self.assertRegex(cookie, r"^__Host-cskit=[0-9a-f]{64}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=\d+$")
        info = json.loads(data)
        self.assertEqual(info["user"], "admin")
        self.assertRegex(info["csrf"], "^[0-9a-f]{64}$")
        self.assertIn("files-write", info["permissions"])
        status, data = c.api("session")
        self.assertEqual((status, data["user"], data["csrf"]), (200, "admin", c.csrf))
        # The listing and downloads with the cookie alone.
        r, body = c.request("GET", "/files/docs/")
        self.assertEqual(r.status, 200)
        self.assertEqual([e["name"] for e in json.loads(body)["entries"]], ["a.txt"])
        r, body = c.request("GET", "/files/docs/a.txt")
        self.assertEqual((r.status, body), (200, b"hello\n"))
        # A made-up or malformed cookie is not a session.
        r, _ = c.request("GET", "/api/session", headers={"Cookie": "__Host-cskit=" + "0" * 64}, cookie=False)
        self.assertEqual(r.status, 401)
        self.assertIn("Max-Age=0", r.getheader("Set-Cookie"))
        r, _ = c.request("GET", "/files/docs/a.txt", headers={"Cookie": "__Host-cskit=x; other=1"}, cookie=False)
        self.assertEqual(r.status, 401)
        # A malformed login.
        r, _ = c.request("POST", "/api/login", b"not json", cookie=False)
        self.assertEqual(r.status, 400)
        r, _ = c.request("POST", "/api/login", b"x" * 20000, cookie=False)
        self.assertEqual(r.status, 413)

    def test_logout_ends_the_session(self):
        c = self.client()
        status, _ = c.api("logout", {})
        self.assertEqual(status, 200)
        status, _ = c.api("session")
        self.assertEqual(status, 401)
        r, _ = c.request("GET", "/files/docs/a.txt")
        self.assertEqual(r.status, 401)

    def test_changes_need_the_csrf_token_and_the_same_origin(self):
        c = self.client()
        target = self.path("csrf-dir")
        status, data = c.api("mkdir", {"path": "csrf-dir"}, csrf=False)
        self.assertEqual(status, 403)
        self.assertIn("CSRF", data["error"])
        status, _ = c.api("mkdir", {"path": "csrf-dir"}, headers={"X-CSRF-Token": "0" * 64}, csrf=False)
        self.assertEqual(status, 403)
        status, data = c.api("mkdir", {"path": "csrf-dir"}, headers={"Origin": "https://evil.example"})
        self.assertEqual(status, 403)
        self.assertIn("another site", data["error"])
        r, _ = c.request("PUT", "/files/csrf.txt", b"data", csrf=False)
        self.assertEqual(r.status, 403)
        r, _ = c.request("PUT", "/files/csrf.txt", b"data", headers={"Origin": "https://evil.example"})
        self.assertEqual(r.status, 403)
        # Basic credentials a browser remembers do not let another site in either.
        basic = "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        r, _ = c.request("PUT", "/files/csrf.txt", b"data", cookie=False,
                         headers={"Authorization": basic, "Origin": "https://evil.example"})
        self.assertEqual(r.status, 403)
        self.assertFalse(os.path.exists(target))
        self.assertFalse(os.path.exists(self.path("csrf.txt")))
        # Without a cookie at all: 401, before any CSRF question.
        status, _ = c.api("mkdir", {"path": "csrf-dir"}, cookie=False)
        self.assertEqual(status, 401)
        self.assertFalse(os.path.exists(target))
        status, _ = c.api("mkdir", {"path": "csrf-dir"})
        self.assertEqual(status, 201)
        self.assertTrue(os.path.isdir(target))

    def test_mkdir_rename_delete(self):
        c = self.client()
        self.assertEqual(c.api("mkdir", {"path": "ops"})[0], 201)
        status, data = c.api("mkdir", {"path": "ops"})
        self.assertEqual((status, data["error"]), (409, "'ops' already exists"))
        self.assertEqual(c.api("mkdir", {"path": "ops/sub"})[0], 201)
        with open(self.path("ops", "sub", "f.txt"), "w") as f:
            f.write("x" * 100)
        status, data = c.api("rename", {"from": "ops/sub/f.txt", "to": "ops/g.txt"})
        self.assertEqual((status, data["path"]), (200, "ops/g.txt"))
        self.assertTrue(os.path.exists(self.path("ops", "g.txt")))
        # A rename never replaces.
        with open(self.path("ops", "h.txt"), "w") as f:
            f.write("keep")
        status, data = c.api("rename", {"from": "ops/g.txt", "to": "ops/h.txt"})
        self.assertEqual(status, 409, data)
        with open(self.path("ops", "h.txt")) as f:
            self.assertEqual(f.read(), "keep")
        status, data = c.api("delete", {"path": "ops/nothing"})
        self.assertEqual(status, 404, data)
        status, data = c.api("delete", {"path": "ops"})
        self.assertEqual(status, 409, data)
        self.assertIn("not empty", data["error"])
        status, data = c.api("delete", {"path": "ops", "recursive": True})
        self.assertEqual((status, data["removed"]), (200, 4))
        self.assertFalse(os.path.exists(self.path("ops")))
        self.assertRegex(self.srv.stderr(), r'files op=mv user=admin peer=127\.0\.0\.1:\d+ path="ops/sub/f\.txt" '
                                            r'to="ops/g\.txt" bytes=100 result=ok')
        self.assertRegex(self.srv.stderr(), r'files op=rm user=admin .*path="ops" bytes=104 result=ok')
        # A member of the wrong type reads as missing: no recursive delete from "recursive": "yes".
        self.assertEqual(c.api("mkdir", {"path": "ops2"})[0], 201)
        self.assertEqual(c.api("mkdir", {"path": "ops2/x"})[0], 201)
        status, data = c.api("delete", {"path": "ops2", "recursive": "yes"})
        self.assertEqual(status, 409, data)
        self.assertEqual(c.api("mkdir", {"path": 5})[0], 400)
        # Unknown requests, wrong methods.
        self.assertEqual(c.api("nothing", {})[0], 404)
        self.assertEqual(c.api("mkdir")[0], 405)

    def test_paths_outside_the_share_are_refused(self):
        c = self.client()
        os.makedirs(self.path("jail"), exist_ok=True)
        for bad in ["../escape", "jail/../../escape", "/etc", "jail/.cskit-part.x", "x\u0000y", "x\ny"]:
            for name, body in [("mkdir", {"path": bad}), ("delete", {"path": bad}),
                               ("rename", {"from": "jail", "to": bad})]:
                status, data = c.api(name, body)
                self.assertEqual(status, 400, (name, bad, data))
        self.assertTrue(os.path.isdir(self.path("jail")))
        self.assertFalse(os.path.exists(os.path.join(self.srv.dir, "escape")))
        self.assertEqual(c.api("delete", {"path": ""})[0], 400)  # the root itself

    def test_permissions_hold(self):
        c = self.client(login=False)
        r, data = c.login("alice", ALICE)
        self.assertEqual(r.status, 200, data)
        status, data = c.api("mkdir", {"path": "alice-dir"})
        self.assertEqual(status, 403)
        self.assertIn("files-write", data["error"])
        r, _ = c.request("PUT", "/files/alice.txt", b"x")
        self.assertEqual(r.status, 403)
        r, body = c.request("GET", "/files/docs/a.txt")
        self.assertEqual((r.status, body), (200, b"hello\n"))

    # ------------------------------------------------------------ pieces

    def put_piece(self, c, path, key, data, first, total, digest=None, headers=None):
        h = {"Upload-Key": key, "Content-Range": f"bytes {first}-{first + len(data) - 1}/{total}",
             "Content-Digest": "sha-256=:" + base64.b64encode(digest or hashlib.sha256(data).digest()).decode() + ":"}
        h.update(headers or {})
        return c.request("PUT", "/files/" + path, data, headers=h)

    def test_upload_in_pieces_resumes_and_checks_each_piece(self):
        c = self.client()
        data = os.urandom(3 * 1024 * 1024 + 5)
        key = "0123456789abcdef0123456789abcdef"
        piece = 1024 * 1024
        status, info = c.api("upload-offset", {"path": "up/big.bin", "key": key})
        self.assertEqual(status, 404, info)  # no directory yet
        self.assertEqual(c.api("mkdir", {"path": "up"})[0], 201)
        self.assertEqual(c.api("upload-offset", {"path": "up/big.bin", "key": key}), (200, {"path": "up/big.bin", "offset": 0}))
        r, body = self.put_piece(c, "up/big.bin", key, data[:piece], 0, len(data))
        self.assertEqual((r.status, json.loads(body)["offset"]), (200, piece))
        self.assertEqual(r.getheader("Upload-Offset"), str(piece))
        self.assertFalse(os.path.exists(self.path("up", "big.bin")))  # nothing under its name yet
        self.assertEqual(os.listdir(self.path("up"))[0][:12], ".cskit-part.")
        # A piece whose bytes are not what its digest says: refused, the part as it was.
        r, body = self.put_piece(c, "up/big.bin", key, data[piece:2 * piece], piece, len(data),
                                 digest=hashlib.sha256(b"other").digest())
        self.assertEqual(r.status, 400, body)
        self.assertIn(b"SHA-256", body)
        self.assertEqual(c.api("upload-offset", {"path": "up/big.bin", "key": key})[1]["offset"], piece)
        # A piece that does not start where the part ends: 409 with the offset to send from.
        r, body = self.put_piece(c, "up/big.bin", key, data[2 * piece:3 * piece], 2 * piece, len(data))
        self.assertEqual((r.status, r.getheader("Upload-Offset")), (409, str(piece)), body)
        # A connection lost in the middle of a piece: the part goes back to the last whole piece.
        raw = self.raw_piece_start(c, "up/big.bin", key, piece, piece, len(data), data[piece:piece + 1000])
        raw.close()
        for _ in range(100):
            if "interrupted" in self.srv.stderr():
                break
            time.sleep(0.05)
        self.assertEqual(c.api("upload-offset", {"path": "up/big.bin", "key": key})[1]["offset"], piece)
        # An upload of the same name given up (another key: another version of the file): its
        # part goes when the file is committed.
        r, body = self.put_piece(c, "up/big.bin", "ffffffffffffffff", data[:1000], 0, 5000)
        self.assertEqual(r.status, 200, body)
        self.assertEqual(len(os.listdir(self.path("up"))), 2)
        # The rest, then the last piece commits the file.
        at = piece
        while at < len(data):
            chunk = data[at:at + piece]
            r, body = self.put_piece(c, "up/big.bin", key, chunk, at, len(data))
            self.assertIn(r.status, (200, 201), body)
            at += len(chunk)
        self.assertEqual(r.status, 201, body)
        self.assertEqual(r.getheader("Location"), "/files/up/big.bin")
        with open(self.path("up", "big.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(os.listdir(self.path("up")), ["big.bin"])  # the part became the file
        self.assertRegex(self.srv.stderr(), rf'files op=put user=admin .*path="up/big\.bin" bytes={len(data)} result=ok')

    def raw_piece_start(self, c, path, key, first, length, total, some):
        """A TLS connection that sends a piece's header and part of its body."""
        ctx = ssl.create_default_context(cafile=os.path.join(self.srv.state, "server.crt"))
        ctx.check_hostname = False
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.srv.port), timeout=10))
        s.sendall((f"PUT /files/{path} HTTP/1.1\r\nHost: x\r\nCookie: {c.cookie}\r\nX-CSRF-Token: {c.csrf}\r\n"
                   f"Upload-Key: {key}\r\nContent-Range: bytes {first}-{first + length - 1}/{total}\r\n"
                   f"Content-Length: {length}\r\n\r\n").encode() + some)
        time.sleep(0.3)
        return s

    def test_whole_put_with_content_digest(self):
        c = self.client()
        data = b"checked by sha-256\n"
        good = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
        bad = "sha-256=:" + base64.b64encode(hashlib.sha256(b"x").digest()).decode() + ":"
        r, body = c.request("PUT", "/files/digest.txt", data, headers={"Content-Digest": bad})
        self.assertEqual(r.status, 400, body)
        self.assertFalse(os.path.exists(self.path("digest.txt")))
        r, body = c.request("PUT", "/files/digest.txt", data, headers={"Content-Digest": "sha-512=:AAAA:"})
        self.assertEqual(r.status, 400, body)
        r, body = c.request("PUT", "/files/digest.txt", data, headers={"Content-Digest": good})
        self.assertEqual(r.status, 201, body)
        with open(self.path("digest.txt"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_piece_errors(self):
        c = self.client()
        # A first piece into a directory that does not exist.
        r, body = c.request("PUT", "/files/no/such/dir.bin", b"0123456789",
                            headers={"Upload-Key": "aaaaaaaaaaaaaaaa", "Content-Range": "bytes 0-9/30"})
        self.assertEqual(r.status, 404, body)
        # A piece that does not start a part creates none.
        r, body = c.request("PUT", "/files/nopart.bin", b"0123456789",
                            headers={"Upload-Key": "aaaaaaaaaaaaaaaa", "Content-Range": "bytes 10-19/30"})
        self.assertEqual((r.status, r.getheader("Upload-Offset")), (409, "0"), body)
        self.assertEqual([n for n in os.listdir(self.srv.share) if "cskit-part" in n], [])
        key = "fedcba9876543210"
        cases = [
            ({"Content-Range": "bytes 0-9/5"}, 400),      # past the end
            ({"Content-Range": "bytes 5-1/10"}, 400),     # backwards
            ({"Content-Range": "bytes 0-3/10"}, 400),     # not the body's size
            ({"Upload-Key": "NOT-HEX-KEY-123456"}, 400),
            ({"Upload-Key": "abc"}, 400),
            ({"Content-Digest": "sha-256=:short:"}, 400),
            ({"Content-Range": "bytes 0-9/99999999999"}, 413),  # over max_file_size (8M)
        ]
        for extra, status in cases:
            h = {"Upload-Key": key, "Content-Range": "bytes 0-9/10"}
            h.update(extra)
            r, body = c.request("PUT", "/files/bad.bin", b"0123456789", headers=h)
            self.assertEqual(r.status, status, (extra, body))
        self.assertFalse(os.path.exists(self.path("bad.bin")))
        # An empty file is a plain PUT (a piece has at least one byte).
        r, _ = c.request("PUT", "/files/empty.bin", b"")
        self.assertEqual(r.status, 201)
        self.assertEqual(os.path.getsize(self.path("empty.bin")), 0)


class SlowAndThrottled(unittest.TestCase):
    """A client that sends an API request's body a byte at a time, or stops in the middle of an
    upload, is closed at its deadline while others are served; failed logins are throttled."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--frame-timeout", "3", "--handshake-timeout", "3", config_text=CONF)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()

    def raw(self):
        ctx = ssl.create_default_context(cafile=os.path.join(self.srv.state, "server.crt"))
        ctx.check_hostname = False
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.srv.port), timeout=15))
        self.addCleanup(s.close)
        return s

    def served_at_once(self):
        c = Client(self.srv)
        self.addCleanup(c.close)
        t0 = time.monotonic()
        r, _ = c.request("GET", "/")
        self.assertEqual(r.status, 200)
        self.assertLess(time.monotonic() - t0, 2)

    def test_an_api_body_a_byte_at_a_time_is_cut(self):
        s = self.raw()
        body = json.dumps({"user": "admin", "token": TOKEN}).encode()
        s.sendall(f"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        started = time.monotonic()
        got = b""
        for i in range(len(body)):  # one byte a second: the whole body is due within 3 s
            try:
                s.sendall(body[i:i + 1])
            except OSError:
                break
            if i == 1:
                self.served_at_once()
            s.settimeout(1)
            try:
                got = s.recv(4096)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            break
        self.assertLess(time.monotonic() - started, 10)
        self.assertTrue(got.startswith(b"HTTP/1.1 408 Request Timeout"), got)

    def test_an_upload_that_stops_is_cut(self):
        c = Client(self.srv)
        self.addCleanup(c.close)
        self.assertEqual(c.login()[0].status, 200)
        s = self.raw()
        s.sendall((f"PUT /files/stalled.bin HTTP/1.1\r\nHost: x\r\nCookie: {c.cookie}\r\n"
                   f"X-CSRF-Token: {c.csrf}\r\nContent-Length: 100000\r\n\r\n").encode() + b"x" * 1000)
        started = time.monotonic()
        self.served_at_once()
        s.settimeout(15)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        self.assertLess(time.monotonic() - started, 10)
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "stalled.bin")))

    def test_failed_logins_are_throttled(self):
        # (Named to run last in its class: it leaves 127.0.0.1 penalized.)
        statuses = []
        for _ in range(10):  # 3 free failures, then 250 ms, 500 ms, 1 s...: beyond the 3 s deadline
            c = Client(self.srv)
            self.addCleanup(c.close)
            r, data = c.login("admin", "wrong-token-0123456789abcdef0000")
            statuses.append(r.status)
            if r.status == 429:
                self.assertIn("too many failed logins", json.loads(data)["error"])
                break
        self.assertEqual(statuses[:4], [401] * 4, statuses)
        self.assertEqual(statuses[-1], 429, statuses)


class WebSocket:
    """A minimal RFC 6455 client over TLS, frames made by hand (so that bad ones can be made too)."""

    def __init__(self, srv, cookie=None, origin="same", extra=b"", version="13"):
        ctx = ssl.create_default_context(cafile=os.path.join(srv.state, "server.crt"))
        ctx.check_hostname = False
        self.s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        host = f"127.0.0.1:{srv.port}"
        head = (f"GET /api/chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n")
        if origin:
            head += f"Origin: {'https://' + host if origin == 'same' else origin}\r\n"
        if cookie:
            head += f"Cookie: {cookie}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + extra)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ")[1]) if self.head else 0

    @staticmethod
    def frame(op, payload, fin=True, mask=True, rsv=0):
        b0 = (0x80 if fin else 0) | rsv | op
        n = len(payload)
        head = bytes([b0])
        m = 0x80 if mask else 0
        if n < 126:
            head += bytes([m | n])
        elif n < 65536:
            head += bytes([m | 126]) + struct.pack(">H", n)
        else:
            head += bytes([m | 127]) + struct.pack(">Q", n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send(self, msg):
        self.s.sendall(self.frame(1, json.dumps(msg).encode()))

    def read_frame(self):
        def need(n):
            while len(self.buf) < n:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError("closed")
                self.buf += chunk
        need(2)
        op, n = self.buf[0] & 0x0f, self.buf[1] & 0x7f
        at = 2
        if n == 126:
            need(4)
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        need(at + n)
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return op, payload

    def recv(self, want=None, limit=50):
        """The next JSON message (of type `want`, skipping others)."""
        for _ in range(limit):
            op, payload = self.read_frame()
            if op != 1:
                continue
            m = json.loads(payload)
            if want is None or m["type"] == want:
                return m
        raise AssertionError(f"no {want} message")

    def close_code(self):
        for _ in range(50):
            op, payload = self.read_frame()
            if op == 8:
                return struct.unpack(">H", payload[:2])[0], payload[2:].decode()
        raise AssertionError("no close frame")

    def close(self):
        self.s.close()


class WebChat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--frame-timeout", "3", config_text=CONF)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()

    def cookie(self, user="admin", token=TOKEN):
        c = Client(self.srv)
        self.addCleanup(c.close)
        r, data = c.login(user, token)
        self.assertEqual(r.status, 200, data)
        return c.cookie

    def ws(self, **kw):
        w = WebSocket(self.srv, **kw)
        self.addCleanup(w.close)
        return w

    def chat(self, nick, user="admin", token=TOKEN, room="#web"):
        w = self.ws(cookie=self.cookie(user, token))
        self.assertEqual(w.status, 101, w.head)
        w.send({"type": "chat.hello", "id": 1, "nick": nick})
        self.assertEqual(w.recv("chat.welcome")["nick"], nick)
        w.send({"type": "chat.join", "id": 2, "room": room})
        self.assertEqual(w.recv("chat.joined")["room"], room)
        return w

    def test_handshake_and_messages(self):
        w = self.ws(cookie=self.cookie())
        self.assertEqual(w.status, 101, w.head)
        import hashlib as h
        accept = base64.b64encode(h.sha1(b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.assertIn(b"Sec-WebSocket-Accept: " + accept, w.head)
        w.close()
        a = self.chat("webby")
        b = self.chat("alice", "alice", ALICE)
        a.send({"type": "chat.say", "id": 3, "room": "#web", "text": "hello \u00e9 from the page"})
        m = b.recv("chat.message")
        self.assertEqual((m["room"], m["from"], m["text"]), ("#web", "webby", "hello \u00e9 from the page"))
        got = {}
        while len(got) < 2:  # the sender: its answer and its own message, in either order
            m = a.recv()
            if m["type"] in ("chat.ok", "chat.message"):
                got[m["type"]] = m
        self.assertEqual(got["chat.ok"]["id"], 3)
        self.assertEqual(got["chat.message"]["text"], "hello \u00e9 from the page")
        b.send({"type": "chat.msg", "id": 4, "to": "webby", "text": "psst"})
        m = a.recv("chat.message")
        self.assertEqual((m["from"], m["private"], m["text"]), ("alice", True, "psst"))
        m = b.recv("chat.message")  # the sender's own copy
        self.assertEqual((m["to"], m["text"]), ("webby", "psst"))
        # History on join, for a newcomer.
        c = self.chat("late", room="#web")
        hist = c.recv("chat.message")
        self.assertTrue(hist["history"])
        # Errors come as the protocol's error messages, and the socket goes on.
        a.send({"type": "chat.msg", "id": 5, "to": "nobody", "text": "x"})
        err = a.recv("error")
        self.assertEqual((err["id"], err["code"]), (5, "not_found"))
        a.s.sendall(WebSocket.frame(1, b"not json"))
        self.assertEqual(a.recv("error")["code"], "bad_request")
        a.send({"type": "fs.rm", "path": "x"})
        self.assertEqual(a.recv("error")["code"], "bad_request")
        a.send({"type": "chat.hello", "id": 7, "nick": 12})  # a member of the wrong type
        err = a.recv("error")
        self.assertEqual((err["id"], err["code"]), (7, "bad_request"), err)
        a.send({"type": "chat.say", "id": 8, "room": "#web", "text": "after the bad one"})
        self.assertEqual(b.recv("chat.message")["text"], "after the bad one")
        a.s.sendall(WebSocket.frame(9, b"ping!"))
        for _ in range(10):  # (behind a's own message and its chat.ok)
            frame = a.read_frame()
            if frame[0] != 1:
                break
        self.assertEqual(frame, (10, b"ping!"))
        # A fragmented message, with a ping between its pieces.
        text = json.dumps({"type": "chat.say", "id": 6, "room": "#web", "text": "in pieces"}).encode()
        a.s.sendall(WebSocket.frame(1, text[:10], fin=False) + WebSocket.frame(9, b"") +
                    WebSocket.frame(0, text[10:20], fin=False) + WebSocket.frame(0, text[20:]))
        self.assertEqual(b.recv("chat.message")["text"], "in pieces")
        # A close: answered, and the others see the quit with the client's reason.
        a.s.sendall(WebSocket.frame(8, struct.pack(">H", 1000) + b"gone for lunch"))
        self.assertEqual(a.close_code()[0], 1000)
        ev = b.recv("chat.event")
        while ev["event"] != "quit":
            ev = b.recv("chat.event")
        self.assertEqual((ev["nick"], ev["reason"]), ("webby", "gone for lunch"))

    def test_quit_logout_and_bad_close_codes_end_the_socket(self):
        a = self.chat("quitter", room="#bye")
        b = self.chat("stayer", room="#bye")
        a.send({"type": "chat.quit", "id": 3, "reason": "see you"})
        self.assertEqual(a.recv("chat.ok")["id"], 3)
        self.assertEqual(a.close_code()[0], 1000)
        ev = b.recv("chat.event")
        while ev["event"] != "quit":
            ev = b.recv("chat.event")
        self.assertEqual(ev["reason"], "see you")
        # Logging out ends the chat opened in that session, at its next message.
        c = Client(self.srv)
        self.addCleanup(c.close)
        c.login()
        w = self.ws(cookie=c.cookie)
        self.assertEqual(w.status, 101)
        w.send({"type": "chat.hello", "id": 1, "nick": "leaver"})
        w.recv("chat.welcome")
        self.assertEqual(c.api("logout", {})[0], 200)
        w.send({"type": "chat.rooms", "id": 2})
        self.assertEqual(w.close_code(), (1008, "the session has ended: log in again"))
        # A close code no peer may send.
        w = self.ws(cookie=self.cookie())
        w.s.sendall(WebSocket.frame(8, struct.pack(">H", 1005)))
        self.assertEqual(w.close_code()[0], 1002)
        # HEAD is not an upgrade.
        r = Client(self.srv)
        self.addCleanup(r.close)
        r.login()
        resp, _ = r.request("HEAD", "/api/chat", headers={"Upgrade": "websocket", "Connection": "Upgrade"})
        self.assertEqual(resp.status, 404)

    def test_refused_handshakes(self):
        cookie = self.cookie()
        self.assertEqual(self.ws(cookie=cookie, origin="https://evil.example").status, 403)
        self.assertEqual(self.ws(cookie=cookie, origin=None).status, 403)  # a browser always says
        self.assertEqual(self.ws(cookie=None).status, 401)
        self.assertEqual(self.ws(cookie=cookie, version="8").status, 426)
        carol = self.cookie("alice", ALICE)  # (chat is alice's)
        self.assertEqual(self.ws(cookie=carol).status, 101)

    def test_hostile_frames_close_the_socket(self):
        cases = [
            (WebSocket.frame(1, b'{"type":"chat.rooms"}', mask=False), 1002),  # a client must mask
            (WebSocket.frame(1, b"{}", rsv=0x40), 1002),                    # reserved bit
            (WebSocket.frame(3, b""), 1002),                                # unknown opcode
            (WebSocket.frame(9, b"x" * 200), 1002),                         # control frame too long
            (WebSocket.frame(0, b"x"), 1002),                               # continuation of nothing
            (WebSocket.frame(2, b"\x00\x01"), 1003),                        # binary
            (WebSocket.frame(1, b"\xff\xfe"), 1007),                        # not UTF-8
            (WebSocket.frame(1, b"x" * 100000), 1009),                      # too big
            (bytes([0x81, 0xff]) + struct.pack(">Q", 1 << 62) + b"mask", 1009),  # declared huge: refused unread
        ]
        other = self.chat("bystander", room="#calm")
        for frame, code in cases:
            w = self.ws(cookie=self.cookie())
            self.assertEqual(w.status, 101)
            w.s.sendall(frame)
            self.assertEqual(w.close_code()[0], code, frame[:20])
            w.close()
        # The others never noticed.
        other.send({"type": "chat.say", "id": 9, "room": "#calm", "text": "still here"})
        self.assertEqual(other.recv("chat.message")["text"], "still here")

    def test_a_slow_frame_is_cut_at_the_deadline(self):
        w = self.ws(cookie=self.cookie())
        frame = WebSocket.frame(1, json.dumps({"type": "chat.rooms", "id": 1}).encode())
        w.s.sendall(frame[:5])  # then nothing: the frame deadline (3 s) ends it
        start = time.monotonic()
        code, reason = w.close_code()
        self.assertEqual(code, 1001)
        self.assertLess(time.monotonic() - start, 15)


if __name__ == "__main__":
    unittest.main()
