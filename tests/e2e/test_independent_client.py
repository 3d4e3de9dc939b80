"""End-to-end: an independent client written only from docs/protocol.md talks to `cskit serve`.

All protocol traffic goes through cskit_client (the fake-server tests at the
end also use cskit_client's own frame encoder/decoder). Every wait is bounded.
"""
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

import cskit_client as cc
from cskit_client import AuthError, Client, ProtocolError, RemoteError
from harness import TOKEN, Server, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "protocol.md")
CLIENT_PY = os.path.join(HERE, "cskit_client.py")
NAME = "indep-e2e"
ADMIN_PERMISSIONS = ["files-read", "files-write", "chat"]  # doc: default admin, no exec
HEX64_LOWER = r"\A[0-9a-f]{64}\Z"


def connect(srv, user="admin", token=TOKEN):
    return Client.connect("127.0.0.1", srv.port, user, token, timeout=10.0)


class Authenticated(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--name", NAME)

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def setUp(self):
        self.c = connect(self.srv)
        self.addCleanup(self.c.close)

    def test_hello_fields(self):
        h = self.c.hello
        self.assertEqual(h["type"], "hello")
        self.assertIs(type(h["proto"]), int)
        self.assertEqual(h["proto"], 1)
        self.assertEqual(h["server"], "cskit")
        self.assertIsInstance(h["version"], str)
        self.assertTrue(h["version"])
        self.assertEqual(h["name"], NAME)
        self.assertIsInstance(h["auth"], list)
        self.assertIn("hmac-sha256", h["auth"])
        self.assertRegex(h["nonce"], HEX64_LOWER)
        self.assertNotIn("id", h)
        self.assertNotIn("body", h)
        # The nonce is fresh for each connection.
        other = connect(self.srv)
        try:
            self.assertNotEqual(other.hello["nonce"], h["nonce"])
        finally:
            other.close()

    def test_welcome_fields(self):
        w = self.c.welcome
        self.assertEqual(w["type"], "welcome")
        self.assertEqual(w["id"], 1)  # echoes the auth id (our client sends 1)
        self.assertEqual(w["user"], "admin")
        self.assertEqual(w["permissions"], ADMIN_PERMISSIONS)
        self.assertNotIn("exec", w["permissions"])
        self.assertRegex(w["proof"], HEX64_LOWER)

    def test_pings_assorted_sizes(self):
        sizes = [0, 1, 1000, 100000] * 5
        for i, n in enumerate(sizes):
            payload = bytes((i * 7 + k) & 0xFF for k in range(n)) if n < 2000 else os.urandom(n)
            rtt = self.c.ping(payload)   # ping() itself checks the echoed body
            self.assertGreater(rtt, 0)
            self.assertLess(rtt, 10)
        # Also check via request() directly that the pong body is byte-identical.
        payload = os.urandom(100000)
        h, b = self.c.request("ping", payload)
        self.assertEqual(h["type"], "pong")
        self.assertEqual(h["body"], len(payload))
        self.assertEqual(b, payload)
        self.assertEqual(set(h) - {"type", "id", "body"}, set())

    def test_pipelining_50_pings(self):
        ids, payloads = [], []
        for i in range(50):
            rid = self.c.next_id()
            payload = b"p%03d" % i * (i % 5)
            ids.append(rid)
            payloads.append(payload)
            self.c.send({"type": "ping", "id": rid}, payload)
        got_ids, got_bodies = [], []
        for _ in range(50):
            h, b = self.c.recv()
            self.assertEqual(h["type"], "pong")
            got_ids.append(h["id"])
            got_bodies.append(b)
        self.assertEqual(got_ids, ids)            # replies come in request order
        self.assertEqual(got_bodies, payloads)
        self.c.ping(b"after")                     # still in sync afterwards

    def test_info_fields(self):
        info = self.c.info()
        self.assertEqual(info["type"], "info.reply")
        self.assertIsInstance(info["id"], int)
        self.assertEqual(info["server"], "cskit")
        self.assertEqual(info["version"], self.c.hello["version"])
        self.assertIs(type(info["proto"]), int)
        self.assertEqual(info["proto"], 1)
        self.assertEqual(info["name"], NAME)
        self.assertEqual(info["services"], ["chat", "core", "files"])
        self.assertEqual(info["user"], "admin")
        self.assertEqual(info["permissions"], ADMIN_PERMISSIONS)
        self.assertEqual(info["limits"], {"max_body": 16777216, "max_header": 65536})
        # The reply carries the request's id.
        h, _ = self.c.request("info")
        self.assertEqual(h["id"], self.c._next_id - 1)

    def test_unknown_type_is_not_fatal(self):
        rid = self.c._next_id
        with self.assertRaises(RemoteError) as cm:
            self.c.request("nosuch.request")
        self.assertEqual(cm.exception.code, "unknown_type")
        self.assertFalse(cm.exception.fatal)
        self.assertEqual(cm.exception.header.get("id"), rid)
        self.assertIsInstance(cm.exception.message, str)
        # A second `auth` after success is also unknown_type.
        with self.assertRaises(RemoteError) as cm:
            self.c.request("auth")
        self.assertEqual(cm.exception.code, "unknown_type")
        # The connection stays usable.
        self.c.ping(b"still here")
        self.assertEqual(self.c.info()["user"], "admin")

    def test_cli_ok(self):
        r = subprocess.run([sys.executable, CLIENT_PY, f"127.0.0.1:{self.srv.port}",
                            "--token", TOKEN, "--count", "3"],
                           capture_output=True, text=True, timeout=60, cwd=HERE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(re.findall(r"^ping \d+: [\d.]+ ms$", r.stdout, re.M)), 3, r.stdout)
        self.assertIn(f'hello.name: "{NAME}"', r.stdout)
        self.assertIn('"services": ["chat", "core", "files"]', r.stdout)


class AuthFailures(unittest.TestCase):
    """Fresh server per test so the per-address failure slow-down stays at zero."""

    def setUp(self):
        self.srv = Server()
        self.addCleanup(self.srv.__exit__, None, None, None)

    def test_wrong_token_and_unknown_user(self):
        with self.assertRaises(AuthError) as wrong:
            connect(self.srv, token="not-the-right-token-0123456789")
        self.assertEqual(wrong.exception.code, "auth_failed")
        with self.assertRaises(AuthError) as unknown:
            connect(self.srv, user="nobody")
        self.assertEqual(unknown.exception.code, "auth_failed")
        # Deliberately indistinguishable (doc: same code, same message).
        self.assertEqual(wrong.exception.message, unknown.exception.message)
        # A correct login still works afterwards.
        c = connect(self.srv)
        c.close()

    def test_cli_wrong_token_and_refused(self):
        r = subprocess.run([sys.executable, CLIENT_PY, f"127.0.0.1:{self.srv.port}",
                            "--token", "definitely-the-wrong-token", "--count", "3"],
                           capture_output=True, text=True, timeout=60, cwd=HERE)
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        self.assertNotIn("ping 1:", r.stdout)
        r = subprocess.run([sys.executable, CLIENT_PY, f"127.0.0.1:{free_port()}",
                            "--token", TOKEN, "--count", "1", "--timeout", "5"],
                           capture_output=True, text=True, timeout=60, cwd=HERE)
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)


class DocExample(unittest.TestCase):
    """The doc's worked example must be self-consistent."""

    @classmethod
    def setUpClass(cls):
        with open(DOC, encoding="utf-8") as f:
            cls.doc = f.read()
        cls.example = cls.doc[cls.doc.index("## Example session"):]

    def cell(self, item):
        m = re.search(r"^\| " + re.escape(item) + r"\s*\| `([^`]+)`", self.example, re.M)
        self.assertIsNotNone(m, item)
        return m.group(1)

    def test_proofs(self):
        token = self.cell("token")
        user = self.cell("user")
        sn = bytes.fromhex(self.cell("server nonce (hex)"))
        cn = bytes.fromhex(self.cell("client nonce (hex)"))
        m = re.search(r"\(30 bytes; hex `([0-9a-f]+)`\)", self.example)
        self.assertEqual(token.encode().hex(), m.group(1))
        self.assertEqual(len(token.encode()), 30)
        printed_client = re.search(r"client proof = .* = ([0-9a-f]{64})", self.example).group(1)
        printed_server = re.search(r"server proof = .* = ([0-9a-f]{64})", self.example).group(1)

        # Own HMAC code (not cskit_client's), straight from the "Proofs" section.
        import hashlib
        import hmac as hmac_mod

        def mac(label):
            msg = label + b"\x00" + user.encode() + b"\x00" + sn + cn
            self.assertEqual(len(msg), 80 + len(user))
            return hmac_mod.new(token.encode("utf-8"), msg, hashlib.sha256).hexdigest()

        self.assertEqual(mac(b"cskit/1 client"), printed_client)
        self.assertEqual(mac(b"cskit/1 server"), printed_server)
        # cskit_client agrees.
        self.assertEqual(cc.client_proof(token, user, sn, cn).hex(), printed_client)
        self.assertEqual(cc.server_proof(token, user, sn, cn).hex(), printed_server)

        # The 85-byte client input dump matches the construction.
        dump = self.example[self.example.index("Client HMAC input"):]
        dump = dump[dump.index("```") + 3:]
        dump = dump[:dump.index("```")]
        raw = b"".join(bytes.fromhex(m.group(1)) for m in
                       re.finditer(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)", dump, re.M))
        self.assertEqual(raw, cc.proof_input(cc.CLIENT_LABEL, user, sn, cn))
        self.assertEqual(len(raw), 85)

    def test_frames_decode_and_carry_the_proofs(self):
        frames = {}
        for m in re.finditer(r"\*\*(\d)\. (?:S→C|C→S) `([^`]+)`\*\*[^(\n]*\((\d+) bytes.*?\n```\n(.*?)```",
                             self.example, re.S):
            data = bytearray()
            for line in m.group(4).splitlines():
                lm = re.match(r"([0-9a-f]{4})  ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
                self.assertEqual(int(lm.group(1), 16), len(data), line)
                data += bytes.fromhex(lm.group(2))
            self.assertEqual(len(data), int(m.group(3)), m.group(2))
            header, body = cc.decode_frame_bytes(bytes(data))
            self.assertEqual(header["type"], m.group(2))
            # Our encoder (sorted keys, body last) reproduces the captured bytes.
            h = dict(header)
            h.pop("body", None)
            self.assertEqual(cc.encode_frame(h, body), bytes(data), m.group(2))
            frames[m.group(2)] = (header, body)
        self.assertEqual(len(frames), 7)
        sn = bytes.fromhex(frames["hello"][0]["nonce"])
        cn = bytes.fromhex(frames["auth"][0]["nonce"])
        token = self.cell("token")
        self.assertEqual(frames["auth"][0]["proof"], cc.client_proof(token, "admin", sn, cn).hex())
        self.assertEqual(frames["welcome"][0]["proof"], cc.server_proof(token, "admin", sn, cn).hex())
        self.assertEqual(frames["pong"], ({"id": 2, "type": "pong", "body": 3}, b"abc"))

    def test_other_frames_lengths(self):
        sect = self.example[self.example.index("### Other frames seen on the wire"):]
        rows = re.findall(r"^\s+([0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2})  (\{.*\})$", sect, re.M)
        self.assertEqual(len(rows), 4)
        for prefix, text in rows:
            self.assertEqual(struct.unpack(">I", bytes.fromhex(prefix))[0], len(text.encode()), text)
            cc.decode_header(text.encode())


class Decoder(unittest.TestCase):
    """cskit_client's decoder applies the doc's rules (no network)."""

    def test_unsigned_integers(self):
        for bad in ("-1", "-0", "1.0", "1e3", '"1"', "null", "true", "18446744073709551616"):
            with self.assertRaises(ProtocolError) as cm:
                cc.decode_header(('{"type":"x","id":%s}' % bad).encode())
            self.assertEqual(cm.exception.code, "bad_id", bad)
            with self.assertRaises(ProtocolError) as cm:
                cc.decode_header(('{"type":"x","body":%s}' % bad).encode())
            self.assertIn(cm.exception.code, ("bad_body_length", "body_too_large"), bad)
        h, n = cc.decode_header(b' {"type":"x","id":18446744073709551615,"body":0} ')
        self.assertEqual((h["id"], n), (2 ** 64 - 1, 0))

    def test_rule_codes(self):
        cases = [
            (b"\xc0\xaf", "invalid_utf8"),
            (b'{"type":"\xed\xa0\x80"}', "invalid_utf8"),
            (b'{"type":"x"} x', "bad_json"),
            (b'{"type":"x"}/**/', "bad_json"),
            (b'{"type":"x","n":NaN}', "bad_json"),
            (b"[1]", "header_not_object"),
            (b'{"type":""}', "missing_type"),
            (b'{"type":1}', "missing_type"),
            (b'{"type":"x","body":16777217}', "body_too_large"),
        ]
        for raw, code in cases:
            with self.assertRaises(ProtocolError) as cm:
                cc.decode_header(raw)
            self.assertEqual(cm.exception.code, code, raw)

    def test_encoder_limits(self):
        with self.assertRaises(ValueError):
            cc.encode_frame({"type": "x", "body": 1})
        with self.assertRaises(ValueError):
            cc.encode_frame({"type": "x", "pad": "a" * 65536})
        with self.assertRaises(ValueError):
            cc.encode_frame({"type": "x"}, bytes(16777217))
        self.assertEqual(cc.encode_frame({"type": "x"}), b"\x00\x00\x00\x0c" + b'{"type":"x"}')


class FakeServer:
    """A one-connection scripted peer on 127.0.0.1, built on cskit_client's codec."""

    def __init__(self, script):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(10)
        self.port = self.lsock.getsockname()[1]
        self.error = None
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            conn, _ = self.lsock.accept()
            with conn:
                conn.settimeout(10)
                script(self, conn)
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.lsock.close()

    @staticmethod
    def read_exact(conn, n):
        buf = b""
        deadline = time.monotonic() + 10
        while len(buf) < n and time.monotonic() < deadline:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def read_frame(self, conn):
        prefix = self.read_exact(conn, 4)
        if prefix is None:
            return None
        (hlen,) = struct.unpack(">I", prefix)
        header, blen = cc.decode_header(self.read_exact(conn, hlen))
        return header, (self.read_exact(conn, blen) if blen else b"")

    def read_rest(self, conn):
        """Bytes until EOF (bounded)."""
        out = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:  # client closed with unread data: counts as EOF
                return out
            if not chunk:
                return out
            out += chunk
        raise AssertionError("no EOF from client")

    def join(self):
        self.thread.join(timeout=20)
        if self.thread.is_alive():
            raise AssertionError("fake server still running")
        if self.error:
            raise self.error


FAKE_TOKEN = "fake-server-token-0123456789"


def hello_frame(proto=1, nonce=None):
    return cc.encode_frame({"type": "hello", "proto": proto, "server": "cskit", "version": "0",
                            "name": "fake", "auth": ["hmac-sha256"],
                            "nonce": (nonce or os.urandom(32)).hex()})


class AgainstFakeServer(unittest.TestCase):
    def test_impostor_proof_is_rejected_and_client_goes_silent(self):
        def script(fs, conn):
            conn.sendall(hello_frame())
            auth, _ = fs.read_frame(conn)
            fs.result["auth"] = auth
            conn.sendall(cc.encode_frame({"type": "welcome", "id": auth["id"], "user": auth["user"],
                                          "permissions": [], "proof": "00" * 32}))
            fs.result["after"] = fs.read_rest(conn)

        fs = FakeServer(script)
        with self.assertRaises(AuthError):
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5)
        fs.join()
        self.assertEqual(fs.result["auth"]["proto"], 1)
        self.assertEqual(fs.result["after"], b"")   # nothing sent after the bad welcome

    def test_dribbled_bytes_sticky_frames_and_server_ping(self):
        def script(fs, conn):
            sn = os.urandom(32)
            for byte in hello_frame(nonce=sn):       # one byte per segment
                conn.sendall(bytes([byte]))
                time.sleep(0.001)
            auth, _ = fs.read_frame(conn)
            proof = cc.server_proof(FAKE_TOKEN, auth["user"], sn, bytes.fromhex(auth["nonce"]))
            welcome = cc.encode_frame({"type": "welcome", "id": auth["id"], "user": auth["user"],
                                       "permissions": ["chat"], "proof": proof.hex()})
            conn.sendall(welcome[:3])
            time.sleep(0.05)
            conn.sendall(welcome[3:])
            ping, body = fs.read_frame(conn)
            # Server ping + the pong, glued together and split at odd places.
            data = (cc.encode_frame({"type": "ping", "id": 99}, b"srv-ping") +
                    cc.encode_frame({"type": "pong", "id": ping["id"]}, body))
            for i in range(0, len(data), 7):
                conn.sendall(data[i:i + 7])
                time.sleep(0.001)
            fs.result["pong"] = fs.read_frame(conn)
            fs.result["rest"] = fs.read_rest(conn)

        fs = FakeServer(script)
        c = Client.connect("127.0.0.1", fs.port, "alice", FAKE_TOKEN, timeout=5)
        self.assertEqual(c.welcome["permissions"], ["chat"])
        c.ping(b"x" * 3000)
        c.close()
        fs.join()
        self.assertEqual(fs.result["pong"], ({"type": "pong", "id": 99, "body": 8}, b"srv-ping"))
        self.assertEqual(fs.result["rest"], b"")

    def test_oversized_header_prefix(self):
        def script(fs, conn):
            conn.sendall(struct.pack(">I", 65537) + b"{")
            fs.result["rest"] = fs.read_rest(conn)

        fs = FakeServer(script)
        with self.assertRaises(ProtocolError) as cm:
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5)
        self.assertEqual(cm.exception.code, "header_too_large")
        fs.join()

    def test_wrong_protocol_version_sends_no_auth(self):
        def script(fs, conn):
            conn.sendall(hello_frame(proto=2))
            fs.result["rest"] = fs.read_rest(conn)

        fs = FakeServer(script)
        with self.assertRaises(ProtocolError):
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5)
        fs.join()
        self.assertEqual(fs.result["rest"], b"")


if __name__ == "__main__":
    unittest.main()
