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

    def test_piece_errors(self):
        c = self.client()
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


if __name__ == "__main__":
    unittest.main()
