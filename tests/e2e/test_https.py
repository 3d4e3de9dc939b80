"""HTTPS on the cskit port (ALPN http/1.1): curl and wget read the share
under /files/ with the same accounts, permissions and jail as the cskit
protocol; ranges and resumption, conditional requests, the errors with
their bodies, traversal attempts, and a slow client cut at its deadline
while others are served."""
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import BIN, TOKEN, Server

ALICE = "alice-token-0123456789abcdef"
CAROL = "carol-token-0123456789abcdef"
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
permissions = ["files-read"]

[[users]]
name = "carol"
token = "{CAROL}"
permissions = ["chat"]
"""


def pinned_key(fingerprint):
    """curl's --pinnedpubkey form of the server's key fingerprint (SHA256:base64, unpadded)."""
    b64 = fingerprint.split(":", 1)[1]
    return "sha256//" + b64 + "=" * (-len(b64) % 4)


class Https(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--frame-timeout", "3", config_text=CONF)
        cls.cert = os.path.join(cls.srv.state, "server.crt")
        cls.data = os.urandom(3 * 1024 * 1024 + 17)
        with open(os.path.join(cls.srv.share, "big.bin"), "wb") as f:
            f.write(cls.data)
        os.makedirs(os.path.join(cls.srv.share, "docs", "sub"))
        with open(os.path.join(cls.srv.share, "docs", "a b.txt"), "w") as f:
            f.write("hello\n")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        cls.srv.cleanup()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cskit-https-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def url(self, path):
        return f"https://127.0.0.1:{self.srv.port}/files/{path}"

    def curl(self, *args, user=("admin", TOKEN)):
        auth = ["-u", f"{user[0]}:{user[1]}"] if user else []
        return subprocess.run(["curl", "-sS", "--cacert", self.cert, *auth, *args], capture_output=True,
                              cwd=self.tmp, timeout=60)

    def status_of(self, *args, user=("admin", TOKEN)):
        r = self.curl("-o", "/dev/null", "-w", "%{http_code}", *args, user=user)
        return int(r.stdout.decode() or 0)

    def test_curl_downloads_the_bytes(self):
        r = self.curl("-O", self.url("big.bin"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.tmp, "big.bin"), "rb") as f:
            self.assertEqual(f.read(), self.data)
        # The key pinned instead of the certificate trusted: the same.
        r = subprocess.run(["curl", "-sS", "-k", "--pinnedpubkey", pinned_key(self.srv.fingerprint), "-u",
                            f"admin:{TOKEN}", self.url("docs/a%20b.txt")], capture_output=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout), (0, b"hello\n"), r.stderr)
        self.assertRegex(self.srv.stderr(), r'files op=get user=admin peer=127\.0\.0\.1:\d+ path="big\.bin" '
                                            rf'bytes={len(self.data)} result=ok')

    def test_head_gives_size_type_etag_and_date(self):
        r = self.curl("-I", self.url("docs/a%20b.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        head = r.stdout.decode().lower()
        self.assertIn("http/1.1 200 ok", head)
        self.assertIn("content-length: 6\r\n", head)
        self.assertIn("content-type: text/plain; charset=utf-8\r\n", head)
        self.assertRegex(head, r'etag: "[0-9a-f]+-6-[0-9a-f]+"\r\n')
        self.assertRegex(head, r"last-modified: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d gmt\r\n")
        self.assertIn("accept-ranges: bytes\r\n", head)
        self.assertIn("content-security-policy: sandbox\r\n", head)
        self.assertRegex(head, r"\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d gmt\r\n")

    def test_ranges_and_resumption(self):
        r = self.curl("-r", "100-199", self.url("big.bin"))
        self.assertEqual(r.stdout, self.data[100:200])
        r = self.curl("-r", "-10", self.url("big.bin"))
        self.assertEqual(r.stdout, self.data[-10:])
        # wget -c continues a partial download (Range: bytes=N-).
        part = os.path.join(self.tmp, "big.bin")
        with open(part, "wb") as f:
            f.write(self.data[:1234567])
        r = subprocess.run(["wget", "-q", "-c", f"--ca-certificate={self.cert}", "--user", "admin", "--password",
                            TOKEN, self.url("big.bin")], capture_output=True, cwd=self.tmp, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(part, "rb") as f:
            self.assertEqual(f.read(), self.data)
        # curl -C - too.
        with open(part, "wb") as f:
            f.write(self.data[:5000])
        r = self.curl("-C", "-", "-o", "big.bin", self.url("big.bin"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(part, "rb") as f:
            self.assertEqual(f.read(), self.data)
        # A range past the end: 416, with the size.
        r = self.curl("-i", "-r", f"{len(self.data)}-", self.url("big.bin"))
        self.assertIn(b"HTTP/1.1 416 Range Not Satisfiable", r.stdout)
        self.assertIn(f"content-range: bytes */{len(self.data)}".encode(), r.stdout.lower())

    def test_conditional_requests(self):
        head = self.curl("-I", self.url("big.bin")).stdout.decode()
        etag = next(line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("etag:"))
        modified = next(line.split(":", 1)[1].strip() for line in head.splitlines()
                        if line.lower().startswith("last-modified:"))
        self.assertEqual(self.status_of("-H", f"If-None-Match: {etag}", self.url("big.bin")), 304)
        self.assertEqual(self.status_of("-H", f"If-Modified-Since: {modified}", self.url("big.bin")), 304)
        self.assertEqual(self.status_of("-H", 'If-None-Match: "other"', self.url("big.bin")), 200)
        # If-Range with another version: the whole file, not the range.
        r = self.curl("-i", "-r", "0-9", "-H", 'If-Range: "old-version"', self.url("big.bin"))
        self.assertIn(b"HTTP/1.1 200 OK", r.stdout)

    def test_accounts_and_permissions(self):
        r = self.curl("-i", self.url("big.bin"), user=None)
        self.assertIn(b"HTTP/1.1 401 Unauthorized", r.stdout)
        self.assertIn(b'www-authenticate: basic realm="cskit"', r.stdout.lower())
        self.assertIn(b"log in with a cskit account", r.stdout)
        self.assertEqual(self.status_of(self.url("big.bin"), user=("admin", "wrong-token-0123456789")), 401)
        self.assertEqual(self.status_of(self.url("big.bin"), user=("nobody", TOKEN)), 401)
        self.assertEqual(self.status_of(self.url("big.bin"), user=("alice", ALICE)), 200)
        r = self.curl("-i", self.url("big.bin"), user=("carol", CAROL))
        self.assertIn(b"HTTP/1.1 403 Forbidden", r.stdout)
        self.assertIn(b"lacks the 'files-read' permission", r.stdout)
        # A bearer token names its account.
        r = self.curl("-H", f"Authorization: Bearer {ALICE}", self.url("docs/a%20b.txt"), user=None)
        self.assertEqual(r.stdout, b"hello\n")
        r = self.curl("-i", "-H", "Authorization: Bearer not-a-token-of-anyone", self.url("big.bin"), user=None)
        self.assertIn(b"HTTP/1.1 401", r.stdout)
        # wget sends its credentials after the challenge, as browsers do.
        r = subprocess.run(["wget", "-q", "-O", "-", f"--ca-certificate={self.cert}", "--user", "alice",
                            "--password", ALICE, self.url("docs/a%20b.txt")], capture_output=True, timeout=60)
        self.assertEqual((r.returncode, r.stdout), (0, b"hello\n"), r.stderr)

    def test_errors_say_what_is_wrong(self):
        r = self.curl("-i", self.url("no/such.file"))
        self.assertIn(b"HTTP/1.1 404 Not Found", r.stdout)
        self.assertIn(b"'no/such.file' does not exist", r.stdout)
        r = self.curl("-i", f"https://127.0.0.1:{self.srv.port}/elsewhere")
        self.assertIn(b"HTTP/1.1 404", r.stdout)
        self.assertIn(b"the share is under /files/", r.stdout)
        r = self.curl("-i", "-X", "DELETE", self.url("docs/a%20b.txt"))
        self.assertIn(b"HTTP/1.1 405", r.stdout)
        self.assertIn(b"allow: get, head, put", r.stdout.lower())

    def test_curl_uploads_whole_and_verified(self):
        local = os.path.join(self.tmp, "up.bin")
        data = os.urandom(2 * 1024 * 1024 + 5)
        with open(local, "wb") as f:
            f.write(data)
        r = self.curl("-i", "-T", local, self.url("docs/up%20load.bin"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"HTTP/1.1 201 Created", r.stdout)
        self.assertIn(b"location: /files/docs/up%20load.bin", r.stdout.lower())
        with open(os.path.join(self.srv.share, "docs", "up load.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        xxh3 = next(line.split(b":", 1)[1].strip() for line in r.stdout.split(b"\r\n")
                    if line.lower().startswith(b"x-content-xxh3:")).decode()
        # Replaced: 200; with the digest the client expects, checked.
        data2 = data[::-1]
        with open(local, "wb") as f:
            f.write(data2)
        r = self.curl("-i", "-T", local, "-H", "X-Content-XXH3: " + "0" * 32, self.url("docs/up%20load.bin"))
        self.assertIn(b"HTTP/1.1 400", r.stdout)
        self.assertIn(b"nothing was written", r.stdout)
        with open(os.path.join(self.srv.share, "docs", "up load.bin"), "rb") as f:
            self.assertEqual(f.read(), data)  # the old version, whole
        r = self.curl("-i", "-T", local, self.url("docs/up%20load.bin"))
        self.assertIn(b"HTTP/1.1 200 OK", r.stdout)
        with open(os.path.join(self.srv.share, "docs", "up load.bin"), "rb") as f:
            self.assertEqual(f.read(), data2)
        self.assertNotEqual(xxh3, "")
        self.assertRegex(self.srv.stderr(), r'files op=put user=admin peer=\S+ path="docs/up load\.bin" '
                                            rf'bytes={len(data)} result=ok')
        self.assertEqual([n for n in os.listdir(os.path.join(self.srv.share, "docs")) if n.startswith(".cskit")], [])

    def test_uploads_that_are_refused(self):
        small = os.path.join(self.tmp, "small.txt")
        with open(small, "w") as f:
            f.write("x\n")
        big = os.path.join(self.tmp, "big.bin")
        with open(big, "wb") as f:
            f.truncate(9 * 1024 * 1024)
        cases = [
            (("-T", small, self.url("docs/x.txt")), ("alice", ALICE), 403, b"lacks the 'files-write' permission"),
            (("-T", big, self.url("big2.bin")), ("admin", TOKEN), 413, b"accepts files up to 8388608"),
            (("-T", small, self.url("no/such/dir/x.txt")), ("admin", TOKEN), 404, b"does not exist"),
            (("-T", small, self.url("docs/sub")), ("admin", TOKEN), 409, b"is a directory"),
            (("-T", small, self.url(".cskit-part.x")), ("admin", TOKEN), 400, b"are reserved"),
            (("-T", "-", self.url("docs/piped.txt")), ("admin", TOKEN), 411, b"needs a Content-Length"),
        ]
        for args, user, status, text in cases:
            with self.subTest(args=args):
                r = subprocess.run(["curl", "-sS", "-i", "--cacert", self.cert, "-u", f"{user[0]}:{user[1]}", *args],
                                   input=b"piped\n", capture_output=True, cwd=self.tmp, timeout=60)
                self.assertIn(f"HTTP/1.1 {status} ".encode(), r.stdout, r.stdout[:300])
                self.assertIn(text, r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "big2.bin")))
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "docs", "x.txt")))

    def test_an_interrupted_upload_leaves_nothing(self):
        local = os.path.join(self.tmp, "slow.bin")
        with open(local, "wb") as f:
            f.write(os.urandom(4 * 1024 * 1024))
        p = subprocess.Popen(["curl", "-sS", "--cacert", self.cert, "-u", f"admin:{TOKEN}", "--limit-rate", "256K",
                              "-T", local, self.url("slow.bin")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        p.kill()
        p.wait(10)
        deadline = time.monotonic() + 10
        while 'path="slow.bin"' not in self.srv.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertRegex(self.srv.stderr(), r'files op=put user=admin peer=\S+ path="slow\.bin" bytes=\d+ '
                                            r'result=interrupted')
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "slow.bin")))
        self.assertEqual([n for n in os.listdir(self.srv.share) if n.startswith(".cskit")], [])

    def test_a_request_pipelined_after_a_refused_put_is_answered(self):
        body = b"hello"
        put = (f"PUT /files/docs/p.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {self.auth()}\r\n"
               f"Content-Length: {len(body)}\r\nX-Content-XXH3: {'0' * 32}\r\n\r\n").encode() + body
        get = (f"GET /files/docs/a%20b.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {self.auth()}\r\n"
               "Connection: close\r\n\r\n").encode()
        out = self.raw(put + get)
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        self.assertIn(b"HTTP/1.1 200 OK", out)
        self.assertTrue(out.endswith(b"hello\n"))
        self.assertFalse(os.path.exists(os.path.join(self.srv.share, "docs", "p.txt")))

    def test_directories_list_as_json(self):
        r = self.curl(self.url("docs/"))
        listing = json.loads(r.stdout)
        self.assertEqual(listing["path"], "docs")
        names = {e["name"]: e for e in listing["entries"]}
        self.assertEqual(names["a b.txt"]["type"], "file")
        self.assertEqual(names["a b.txt"]["size"], 6)
        self.assertEqual(names["sub"]["type"], "dir")
        self.assertIn("big.bin", {e["name"] for e in json.loads(self.curl(self.url("")).stdout)["entries"]})

    def raw(self, request, timeout=10, alpn=True, pieces=None):
        """Sends `request` (bytes) over TLS (ALPN http/1.1, or none); returns what came back until the
        close. `pieces`: sent in these pieces instead, a little apart."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.cert)
        ctx.check_hostname = False
        if alpn:
            ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=timeout) as s:
            with ctx.wrap_socket(s) as t:
                self.assertEqual(t.selected_alpn_protocol(), "http/1.1" if alpn else None)
                for piece in pieces or [request]:
                    t.sendall(piece)
                    if pieces:
                        time.sleep(0.03)
                out = b""
                while True:
                    chunk = t.recv(65536)
                    if not chunk:
                        return out
                    out += chunk

    def test_traversal_is_refused(self):
        auth = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        for target in ("/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2f..%2fetc%2fpasswd",
                       "/files/%252e%252e%252fetc%252fpasswd", "/files/..%5c..%5cetc", "/files/..\\..\\etc",
                       "/files/docs/%00x", "/files//etc/passwd"):
            with self.subTest(target=target):
                out = self.raw(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                               "Connection: close\r\n\r\n".encode())
                status = out.split(b"\r\n", 1)[0]
                self.assertRegex(status, rb"^HTTP/1.1 (400|404) ", out[:300])
                self.assertNotIn(b"root:", out)

    def auth(self, user="admin", token=TOKEN):
        return base64.b64encode(f"{user}:{token}".encode()).decode()

    def test_a_client_without_alpn_is_told_by_its_request_line(self):
        get = f"GET /files/docs/a%20b.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {self.auth()}\r\n" \
              "Connection: close\r\n\r\n"
        out = self.raw(get.encode(), alpn=False)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"), out[:200])
        self.assertTrue(out.endswith(b"hello\n"))
        # Its first bytes a few at a time ("GE", "T /f..."): still HTTP.
        out = self.raw(b"", alpn=False, pieces=[get[:2].encode(), get[2:9].encode(), get[9:].encode()])
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"), out[:200])

    def test_thousands_of_pipelined_requests_are_answered_in_order(self):
        # Unauthenticated ones, each answered 401 at once: no recursion, no
        # quadratic copying, the answers paced by the client's reading.
        n = 20000
        out = self.raw(b"GET /files/x HTTP/1.1\r\nHost: x\r\n\r\n" * (n - 1) +
                       b"GET /files/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=60)
        self.assertEqual(out.count(b"HTTP/1.1 401 Unauthorized"), n)
        self.assertIsNone(self.srv.proc.poll())
        self.assertEqual(self.status_of(self.url("docs/a%20b.txt")), 200)

    def test_no_request_is_smuggled_behind_a_body(self):
        secret = f"GET /files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {self.auth()}\r\n\r\n"
        for framing in ("Transfer-Encoding: gzip\r\n", "Transfer-Encoding: chunked, identity\r\n",
                        "Content-Length: %d\r\n" % len(secret)):
            with self.subTest(framing=framing):
                out = self.raw((f"GET /files/docs/a%20b.txt HTTP/1.1\r\nHost: x\r\n{framing}\r\n{secret}")
                               .encode())
                self.assertEqual(out.count(b"HTTP/1.1 "), 1, out[:400])
                self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        out = self.raw((f"DELETE /files/docs/a%20b.txt HTTP/1.1\r\nHost: x\r\nContent-Length: {len(secret)}"
                        f"\r\n\r\n{secret}").encode())
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out[:400])
        self.assertTrue(out.startswith(b"HTTP/1.1 405"), out[:200])

    def test_part_files_and_links_out_of_the_share_stay_hidden(self):
        with open(os.path.join(self.srv.share, "docs", ".cskit-part.0123456789abcdef"), "w") as f:
            f.write("in progress")
        os.symlink("/etc/passwd", os.path.join(self.srv.share, "docs", "out"))
        self.addCleanup(os.unlink, os.path.join(self.srv.share, "docs", "out"))
        self.addCleanup(os.unlink, os.path.join(self.srv.share, "docs", ".cskit-part.0123456789abcdef"))
        self.assertEqual(self.status_of(self.url("docs/.cskit-part.0123456789abcdef")), 404)
        names = {e["name"] for e in json.loads(self.curl(self.url("docs/")).stdout)["entries"]}
        self.assertNotIn(".cskit-part.0123456789abcdef", names)
        r = self.curl("-i", self.url("docs/out"))
        self.assertIn(b"HTTP/1.1 404", r.stdout)
        self.assertNotIn(b"root:", r.stdout)

    def test_keep_alive_and_pipelining(self):
        auth = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        one = f"GET /files/docs/a%20b.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n"
        out = self.raw((one * 3 + one.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")).encode())
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 4)
        self.assertEqual(out.count(b"hello\n"), 4)

    def test_a_slow_client_is_cut_at_its_deadline_without_slowing_others(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.cert)
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.srv.port), timeout=15))
        self.addCleanup(s.close)
        started = time.monotonic()
        header = b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n"
        got = b""
        for i in range(len(header)):  # one byte a second, slower than any real client
            try:
                s.sendall(header[i:i + 1])
            except OSError:
                break
            if i == 1:  # meanwhile others are served at once
                t0 = time.monotonic()
                self.assertEqual(self.status_of(self.url("docs/a%20b.txt")), 200)
                self.assertLess(time.monotonic() - t0, 2)
            s.settimeout(1)
            try:
                got = s.recv(4096)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            break
        self.assertLess(time.monotonic() - started, 10)  # frame timeout 3 s
        self.assertTrue(got.startswith(b"HTTP/1.1 408 Request Timeout"), got)


class UploadQuota(unittest.TestCase):
    """Every way an upload ends gives its quota reservation back: refused, digest mismatch, the
    client gone; what was committed is counted."""

    def test_reservations_come_back(self):
        with Server(config_text='[files]\nquota = "16M"\n') as srv:
            cert = os.path.join(srv.state, "server.crt")
            tmp = tempfile.mkdtemp(prefix="cskit-https-quota-")
            self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
            url = f"https://127.0.0.1:{srv.port}/files/"

            def put(name, mib, *extra):
                local = os.path.join(tmp, name)
                with open(local, "wb") as f:
                    f.write(os.urandom(mib << 20))
                r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", cert, "-u",
                                    f"admin:{TOKEN}", *extra, "-T", local, url + name],
                                   capture_output=True, text=True, timeout=60)
                return int(r.stdout or 0)

            for _ in range(3):  # refused by the digest: nothing kept, nothing reserved
                self.assertEqual(put("bad.bin", 6, "-H", "X-Content-XXH3: " + "0" * 32), 400)
            for _ in range(3):  # cut by the client (it gives up at once)
                local = os.path.join(tmp, "cut.bin")
                with open(local, "wb") as f:
                    f.write(os.urandom(6 << 20))
                p = subprocess.Popen(["curl", "-sS", "--cacert", cert, "-u", f"admin:{TOKEN}", "--limit-rate", "1M",
                                      "-T", local, url + "cut.bin"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                p.kill()
                p.wait(10)
            deadline = time.monotonic() + 10
            while srv.stderr().count('path="cut.bin"') < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(put("a.bin", 10), 201)  # 10 of 16 MiB
            self.assertEqual(put("b.bin", 7), 413)   # would be 17
            self.assertEqual(put("c.bin", 5), 201)   # 15
            self.assertEqual(sorted(n for n in os.listdir(srv.share)), ["a.bin", "c.bin"])


class WebSwitchedOff(unittest.TestCase):
    def test_cskit_clients_are_unaffected_and_web_can_be_off(self):
        with Server(config_text="[web]\nenabled = false\n") as srv:
            cert = os.path.join(srv.state, "server.crt")
            r = subprocess.run(["curl", "-sS", "--cacert", cert, "-u", f"admin:{TOKEN}",
                                f"https://127.0.0.1:{srv.port}/files/"], capture_output=True, timeout=60)
            self.assertNotEqual(r.returncode, 0)  # no http/1.1 in ALPN: the handshake fails
            self.assertEqual(srv.cli("ping", "-c", "1", srv.address).returncode, 0)
            self.assertFalse(any(line.startswith("web:") for line in srv.banner))
        with Server("--irc-listen", "127.0.0.1:0") as srv:
            self.assertEqual(srv.cli("ping", "-c", "1", srv.address).returncode, 0)
            self.assertTrue(any(line.startswith("web: https://") for line in srv.banner))
            # The IRC port is not an HTTPS port: its ALPN has no http/1.1.
            irc = next(int(line.split(":")[2].split()[0]) for line in srv.banner if line.startswith("irc: "))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            with socket.create_connection(("127.0.0.1", irc), timeout=10) as raw:
                with self.assertRaises(ssl.SSLError):
                    ctx.wrap_socket(raw)


if __name__ == "__main__":
    unittest.main()
