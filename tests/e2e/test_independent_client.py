"""End-to-end: an independent client written only from docs/protocol.md talks to `cskit serve`.

Protocol 2: TLS 1.3 (ALPN cskit), the server's key checked before `auth`, and
the login proof bound to the RFC 9266 tls-exporter value. The protocol
traffic goes through cskit_client; the fake servers use cskit_client's frame
codec but Python's own ssl server side, and derive the exporter themselves
from their TLS key log (RFC 8446 7.5), independently of cskit_client's
ctypes route. Certificates for fakes and relays are made with the openssl
CLI. Every wait is bounded.
"""
import base64
import calendar
import hashlib
import hmac
import io
import ipaddress
import os
import re
import select
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from contextlib import redirect_stdout

import cskit_client as cc
from cskit_client import (AuthError, Client, HostKeyChanged, HostKeyUnknown, ProtocolError,
                          RemoteError)
from harness import BIN, TOKEN, Server, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, "..", "..", "docs", "protocol.md")
CLIENT_PY = os.path.join(HERE, "cskit_client.py")
NAME = "indep-e2e"
ADMIN_PERMISSIONS = ["files-read", "files-write", "chat"]  # doc: default admin, no exec
HEX64_LOWER = r"\A[0-9a-f]{64}\Z"
FAKE_TOKEN = "fake-server-token-0123456789"
OTHER_FINGERPRINT = "SHA256:" + base64.b64encode(
    hashlib.sha256(b"not this key").digest()).decode().rstrip("=")

with open(DOC, encoding="utf-8") as _f:
    DOC_TEXT = _f.read()


# --------------------------------------------------------------------------
# Throwaway keys and certificates (openssl CLI), and the doc's fingerprint recipe

CERTS = None  # set up by setUpModule


def openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], capture_output=True, timeout=60, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def make_cert(directory, name, key_args=("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
              key=None, subj="/CN=fake"):
    cert = os.path.join(directory, name + ".crt")
    if key is None:
        key = os.path.join(directory, name + ".key")
        openssl("req", "-x509", *key_args, "-nodes", "-keyout", key, "-out", cert, "-days", "2",
                "-subj", subj)
    else:
        openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3", "-subj", subj)
    return cert, key


def doc_fingerprint(cert_path):
    """The recipe of docs/protocol.md ("Server identity"), run as written, plus "SHA256:"."""
    cmd = (f"openssl x509 -in '{cert_path}' -pubkey -noout | openssl pkey -pubin -outform DER "
           f"| openssl dgst -sha256 -binary | base64 | tr -d =")
    r = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return "SHA256:" + r.stdout.strip()


def cert_der(cert_path):
    return openssl("x509", "-in", cert_path, "-outform", "DER")


def setUpModule():
    global CERTS
    d = tempfile.mkdtemp(prefix="cskit-indep-certs-")
    fake_cert, fake_key = make_cert(d, "fake")
    relay_cert, relay_key = make_cert(d, "relay", subj="/CN=relay")
    CERTS = {"dir": d, "fake": (fake_cert, fake_key), "relay": (relay_cert, relay_key),
             "fake_fp": doc_fingerprint(fake_cert), "relay_fp": doc_fingerprint(relay_cert)}


def tearDownModule():
    if CERTS:
        shutil.rmtree(CERTS["dir"], ignore_errors=True)


# --------------------------------------------------------------------------
# RFC 8446 7.5 exporter from a TLS key log (independent of cskit_client's ctypes route)

def hkdf_expand_label(secret, label, context, length, hash_name):
    full = b"tls13 " + label
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


def exporter_from_keylog(keylog_path, cipher_name, label=b"EXPORTER-Channel-Binding",
                         context=b"", length=32):
    """TLS-Exporter(label, context, length) from the EXPORTER_SECRET line of a key log."""
    hash_name = "sha384" if cipher_name.endswith("SHA384") else "sha256"
    with open(keylog_path) as f:
        lines = [ln.split() for ln in f if ln.startswith("EXPORTER_SECRET ")]
    if len(lines) != 1:
        raise AssertionError(f"expected one TLS session in the key log, found {len(lines)}")
    secret = bytes.fromhex(lines[0][2])
    empty = hashlib.new(hash_name, b"").digest()
    derived = hkdf_expand_label(secret, label, empty, len(empty), hash_name)
    return hkdf_expand_label(derived, b"exporter", hashlib.new(hash_name, context).digest(),
                             length, hash_name)


def keylog_client_context(path):
    ctx = cc.client_tls_context()
    ctx.keylog_filename = path
    return ctx


# --------------------------------------------------------------------------
# Helpers

def connect(srv, user="admin", token=TOKEN, **kw):
    kw.setdefault("fingerprint", srv.fingerprint)
    return Client.connect("127.0.0.1", srv.port, user, token, timeout=10.0, **kw)


def cli_env(home=None):
    env = dict(os.environ)
    for k in ("CSKIT_TOKEN", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        env.pop(k, None)
    env["HOME"] = home or tempfile.mkdtemp(prefix="cskit-indep-home-")
    return env


def run_my_cli(*args, timeout=60):
    env = cli_env()
    try:
        return subprocess.run([sys.executable, CLIENT_PY, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=HERE, env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)


def run_reference_cli(*args, token=FAKE_TOKEN, timeout=60):
    """The real `cskit` client, with a throwaway HOME (so no known-hosts file is touched)."""
    env = cli_env()
    env["CSKIT_TOKEN"] = token
    try:
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(env["HOME"], ignore_errors=True)


def raw_tls(port, alpn=("cskit",), maximum=None, timeout=10):
    """A Python ssl client socket to 127.0.0.1:port (no key check: for probing the server)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        ctx.maximum_version = maximum
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def read_exact(conn, n, deadline):
    buf = b""
    while len(buf) < n:
        if time.monotonic() > deadline:
            raise AssertionError("timed out reading")
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(conn, timeout=10):
    """One frame with cskit_client's decoder, or None at EOF. Returns (header, body, raw)."""
    deadline = time.monotonic() + timeout
    prefix = read_exact(conn, 4, deadline)
    if prefix is None:
        return None
    (hlen,) = struct.unpack(">I", prefix)
    raw = read_exact(conn, hlen, deadline)
    header, blen = cc.decode_header(raw)
    body = read_exact(conn, blen, deadline) if blen else b""
    return header, body, prefix + raw + body


def read_rest(conn, timeout=10):
    """Bytes until EOF (bounded); a reset or a TLS EOF without close_notify counts as EOF."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            return out
        except socket.timeout:
            break
        if not chunk:
            return out
        out += chunk
    raise AssertionError("no EOF from the peer")


def doc_section(title):
    """From the heading `title` to the next heading of the same or a higher level (lines in
    code blocks, such as "# cskit known hosts", are not headings)."""
    start = DOC_TEXT.index(title)
    level = len(title) - len(title.lstrip("#"))
    heading = re.compile(r"#{1,%d} " % level)
    pos, fenced = start + len(title), False
    for line in DOC_TEXT[pos:].splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and heading.match(line):
            return DOC_TEXT[start:pos]
        pos += len(line)
    return DOC_TEXT[start:]


def hex_dump_bytes(text, check_offsets=True):
    """Bytes of a doc hex dump: lines "OFFS  xx xx ...  comment"."""
    data = bytearray()
    for line in text.splitlines():
        m = re.match(r"([0-9a-f]{4})  ((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:  |$)", line)
        if not m:
            continue
        if check_offsets and int(m.group(1), 16) != len(data):
            raise AssertionError(f"offset {m.group(1)} after {len(data)} bytes: {line}")
        data += bytes.fromhex(m.group(2))
    return bytes(data)


def code_block_after(text, marker):
    rest = text[text.index(marker):]
    rest = rest[rest.index("```") + 3:]
    rest = rest[rest.index("\n") + 1:]
    return rest[:rest.index("```")]


# --------------------------------------------------------------------------
# Fake servers, a dribbling TCP proxy and a TLS-terminating relay

class FakeServer:
    """A one-connection scripted peer on 127.0.0.1: TLS 1.3 with a throwaway key (default) or
    cleartext. It logs its TLS secrets to a file and derives the tls-exporter from it."""

    def __init__(self, script, tls=True, alpn=("cskit",), host="127.0.0.1"):
        self.dir = tempfile.mkdtemp(prefix="cskit-indep-fake-")
        self.keylog = os.path.join(self.dir, "keylog")
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            self.ctx.load_cert_chain(*CERTS["fake"])
            self.ctx.num_tickets = 0
            if alpn:
                self.ctx.set_alpn_protocols(list(alpn))
            self.ctx.keylog_filename = self.keylog
        self.fingerprint = CERTS["fake_fp"]
        self.lsock = socket.socket()
        self.lsock.bind((host, 0))
        self.lsock.listen(1)
        self.lsock.settimeout(15)
        self.port = self.lsock.getsockname()[1]
        self.error = None
        self.result = {}
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            conn, _ = self.lsock.accept()
            conn.settimeout(10)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            with conn:
                script(self, conn)
        except BaseException as e:  # reported by join()
            self.error = e
        finally:
            self.lsock.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def exporter(self, conn):
        return exporter_from_keylog(self.keylog, conn.cipher()[0])

    def join(self):
        self.thread.join(timeout=30)
        if self.thread.is_alive():
            raise AssertionError("fake server still running")
        if self.error:
            raise self.error


def hello_frame(proto=2, binding="tls-exporter", nonce=None, auth=("hmac-sha256",), **extra):
    h = {"type": "hello", "proto": proto, "server": "cskit", "version": "0", "name": "fake",
         "auth": list(auth), **extra}
    if binding is not None:
        h["binding"] = binding
    if nonce is not None:
        h["nonce"] = nonce.hex()
    return cc.encode_frame(h)


def welcome_frame(auth, proof_hex, permissions=("chat",)):
    h = {"type": "welcome", "id": auth["id"], "user": auth["user"], "permissions": list(permissions)}
    if proof_hex is not None:
        h["proof"] = proof_hex
    return cc.encode_frame(h)


class DribbleProxy:
    """TCP proxy to a port: forwards client bytes as they come, server bytes in 1-5 byte
    segments (TCP_NODELAY, with pauses), so TLS records arrive cut anywhere."""

    def __init__(self, target_port):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(15)
        self.port = self.lsock.getsockname()[1]
        self.target = target_port
        self.segments = 0
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            down, _ = self.lsock.accept()
            up = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            with down, up:
                for s in (down, up):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.settimeout(10)
                deadline = time.monotonic() + 30
                step = 0
                while time.monotonic() < deadline:
                    ready, _, _ = select.select([down, up], [], [], 0.2)
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        if s is down:
                            up.sendall(data)
                            continue
                        i = 0
                        while i < len(data):
                            n = 1 + step % 5
                            step += 1
                            down.sendall(data[i:i + n])
                            self.segments += 1
                            i += n
                            if step % 4 == 0:
                                time.sleep(0.0005)
        except BaseException as e:
            self.error = e
        finally:
            self.lsock.close()

    def join(self):
        self.thread.join(timeout=40)
        if self.error:
            raise self.error


class Relay:
    """A TLS-terminating relay ("a man in the middle whose key a careless user accepted"):
    TLS with its own key towards the client, its own TLS session to the real server, and the
    plaintext passed through unchanged both ways."""

    def __init__(self, target_port):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(*CERTS["relay"])
        self.ctx.set_alpn_protocols(["cskit"])
        self.fingerprint = CERTS["relay_fp"]
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.lsock.settimeout(15)
        self.port = self.lsock.getsockname()[1]
        self.target = target_port
        self.to_server = b""
        self.to_client = b""
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            raw, _ = self.lsock.accept()
            raw.settimeout(10)
            down = self.ctx.wrap_socket(raw, server_side=True)
            up = raw_tls(self.target)
            with down, up:
                peer = {down: up, up: down}
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    ready = [s for s in peer if s.pending()] or \
                        select.select(list(peer), [], [], 0.2)[0]
                    for s in ready:
                        try:
                            data = s.recv(65536)
                        except (ConnectionResetError, ssl.SSLEOFError):
                            data = b""
                        if not data:
                            return
                        if s is down:
                            self.to_server += data
                        else:
                            self.to_client += data
                        peer[s].sendall(data)
        except BaseException as e:
            self.error = e
        finally:
            self.lsock.close()

    def join(self):
        self.thread.join(timeout=40)
        if self.error:
            raise self.error


def frames_of(data):
    """Splits a byte string into (header, body) frames with cskit_client's decoder."""
    out = []
    while data:
        (hlen,) = struct.unpack(">I", data[:4])
        header, blen = cc.decode_header(data[4:4 + hlen])
        out.append((header, data[4 + hlen:4 + hlen + blen]))
        data = data[4 + hlen + blen:]
    return out


# --------------------------------------------------------------------------
# Against the real server, logged in

class Authenticated(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--name", NAME)
        assert cls.srv.fingerprint, "the server printed no key fingerprint"

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def setUp(self):
        self.c = connect(self.srv)
        self.addCleanup(self.c.close)

    def test_tls_session(self):
        self.assertTrue(self.c.tls)
        self.assertEqual(self.c.tls_version, "TLSv1.3")
        self.assertEqual(self.c.alpn, "cskit")
        # Python offers TLS_AES_256_GCM_SHA384 first; "the server's order wins".
        self.assertEqual(self.c.cipher[0], "TLS_AES_128_GCM_SHA256")
        self.assertEqual(self.c.server_fingerprint, self.srv.fingerprint)
        self.assertEqual(len(self.c.server_fingerprint), 50)
        self.assertEqual(len(self.c.channel_binding), 32)

    def test_hello_fields(self):
        h = self.c.hello
        self.assertEqual(h["type"], "hello")
        self.assertIs(type(h["proto"]), int)
        self.assertEqual(h["proto"], 2)
        self.assertEqual(h["server"], "cskit")
        self.assertIsInstance(h["version"], str)
        self.assertTrue(h["version"])
        self.assertEqual(h["name"], NAME)
        self.assertIsInstance(h["auth"], list)
        self.assertIn("hmac-sha256", h["auth"])
        self.assertEqual(h["binding"], "tls-exporter")
        self.assertNotIn("nonce", h)            # "Absent over TLS"
        self.assertNotIn("id", h)
        self.assertNotIn("body", h)
        self.assertLessEqual(set(h), {"type", "proto", "server", "version", "name", "auth",
                                      "binding"})

    def test_welcome_fields(self):
        w = self.c.welcome
        self.assertEqual(w["type"], "welcome")
        self.assertEqual(w["id"], 1)  # echoes the auth id (our client sends 1)
        self.assertEqual(w["user"], "admin")
        self.assertEqual(w["permissions"], ADMIN_PERMISSIONS)
        self.assertNotIn("exec", w["permissions"])
        self.assertRegex(w["proof"], HEX64_LOWER)
        self.assertEqual(w["proof"], cc.server_proof(TOKEN, "admin", b"tls-exporter",
                                                     self.c.channel_binding).hex())

    def test_channel_binding_differs_per_connection(self):
        other = connect(self.srv)
        try:
            self.assertNotEqual(other.channel_binding, self.c.channel_binding)
            self.assertNotEqual(other.welcome["proof"], self.c.welcome["proof"])
        finally:
            other.close()

    def test_exporter_matches_an_independent_derivation(self):
        """The exporter read through libssl equals RFC 8446 7.5 computed from the client's TLS
        key log, and the real server accepted the proof bound to it (SHA-256 suite)."""
        d = tempfile.mkdtemp(prefix="cskit-indep-keylog-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "keylog")
        with connect(self.srv, tls_context=keylog_client_context(path)) as c:
            expected = exporter_from_keylog(path, c.cipher[0])
            self.assertEqual(c.channel_binding, expected)
            # "no context and an empty one give the same value"
            self.assertEqual(cc.tls_exporter(c._t.obj, context=None), expected)
            self.assertEqual(cc.tls_exporter(c._t.obj, context=b""), expected)
            c.ping(b"bound")

    def test_pings_assorted_sizes(self):
        sizes = [0, 1, 1000, 100000] * 5
        for i, n in enumerate(sizes):
            payload = bytes((i * 7 + k) & 0xFF for k in range(n)) if n < 2000 else os.urandom(n)
            rtt = self.c.ping(payload)   # ping() itself checks the echoed body
            self.assertGreater(rtt, 0)
            self.assertLess(rtt, 10)
        # Also check via request() directly that the pong body is byte-identical, across
        # many TLS records (16 KiB of plaintext at most per record).
        payload = os.urandom(1 << 20)
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

    def test_requests_pipelined_behind_auth(self):
        """Over TLS, requests may follow `auth` before `welcome`; they are answered in order
        after it."""
        c = connect(self.srv, early=[("ping", {}, b"early"), ("info", {}, b"")])
        try:
            self.assertEqual(c.early_ids, [2, 3])
            h, b = c.recv()
            self.assertEqual((h["type"], h["id"], b), ("pong", 2, b"early"))
            h, _ = c.recv()
            self.assertEqual((h["type"], h["id"]), ("info.reply", 3))
            self.assertEqual(c.next_id(), 4)
        finally:
            c.close()

    def test_auth_without_the_optional_binding_field(self):
        with connect(self.srv, send_binding=False) as c:
            c.ping(b"no binding field")

    def test_info_fields(self):
        info = self.c.info()
        self.assertEqual(info["type"], "info.reply")
        self.assertIsInstance(info["id"], int)
        self.assertEqual(info["server"], "cskit")
        self.assertEqual(info["version"], self.c.hello["version"])
        self.assertIs(type(info["proto"]), int)
        self.assertEqual(info["proto"], 2)
        self.assertEqual(info["name"], NAME)
        self.assertEqual(info["services"], ["chat", "core", "files"])
        self.assertEqual(info["services"], sorted(info["services"]))
        self.assertEqual(info["user"], "admin")
        self.assertEqual(info["permissions"], ADMIN_PERMISSIONS)
        self.assertEqual(info["limits"], {"max_body": 16777216, "max_header": 65536})
        tr = info["transport"]
        self.assertIs(tr["tls"], True)
        self.assertIs(type(tr["kernel_tls_send"]), bool)
        self.assertIs(type(tr["kernel_offers_tls"]), bool)
        m = re.fullmatch(r"(TLSv1\.3) (TLS_\w+) (\S+)", tr["protocol"])
        self.assertIsNotNone(m, tr["protocol"])
        self.assertEqual(m.group(2), self.c.cipher[0])
        self.assertEqual(m.group(3), "X25519")    # x25519 first; Python offers it
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

    def test_tls_records_cut_anywhere(self):
        """Server bytes arrive in 1-5 byte TCP segments: TLS records and frames are put back
        together whatever the cuts."""
        proxy = DribbleProxy(self.srv.port)
        c = Client.connect("127.0.0.1", proxy.port, "admin", TOKEN, timeout=20,
                           fingerprint=self.srv.fingerprint)
        try:
            c.ping(b"z" * 2000)
            self.assertEqual(c.info()["name"], NAME)
        finally:
            c.close()
        proxy.join()
        self.assertGreater(proxy.segments, 500)

    def test_cli_ok(self):
        r = run_my_cli(f"127.0.0.1:{self.srv.port}", "--token", TOKEN, "--count", "3",
                       "--fingerprint", self.srv.fingerprint)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(re.findall(r"^ping \d+: [\d.]+ ms$", r.stdout, re.M)), 3, r.stdout)
        self.assertIn(f'hello.name: "{NAME}"', r.stdout)
        self.assertIn('hello.binding: "tls-exporter"', r.stdout)
        self.assertIn(f"server key: {self.srv.fingerprint}", r.stdout)
        self.assertIn('"services": ["chat", "core", "files"]', r.stdout)

    def test_cli_key_checks(self):
        addr = f"127.0.0.1:{self.srv.port}"
        # The harness wrote the doc's known-hosts format; this client reads it.
        known = os.path.join(self.srv.home, ".config", "cskit", "known_hosts")
        r = run_my_cli(addr, "--token", TOKEN, "--count", "1", "--known-hosts", known)
        self.assertEqual(r.returncode, 0, r.stderr)
        # A pinned fingerprint that differs: exit 15, as the reference client.
        r = run_my_cli(addr, "--token", TOKEN, "--count", "1", "--fingerprint", OTHER_FINGERPRINT)
        self.assertEqual(r.returncode, 15, r.stdout + r.stderr)
        self.assertIn("REMOTE HOST IDENTIFICATION HAS CHANGED", r.stderr)
        self.assertNotIn("ping 1:", r.stdout)
        # A known-hosts file with another key for this host and port: exit 15, naming the line.
        d = tempfile.mkdtemp(prefix="cskit-indep-kh-")
        self.addCleanup(shutil.rmtree, d, True)
        other = os.path.join(d, "known_hosts")
        with open(other, "w") as f:
            f.write(f"# cskit known hosts\n\nlocalhost:{self.srv.port} {self.srv.fingerprint}\n"
                    f"127.0.0.1:{self.srv.port} {OTHER_FINGERPRINT} old key\n")
        r = run_my_cli(addr, "--token", TOKEN, "--count", "1", "--known-hosts", other)
        self.assertEqual(r.returncode, 15, r.stdout + r.stderr)
        self.assertIn(f"{other}:4", r.stderr)
        # No way to decide: exit 16, and the message gives the fingerprint.
        r = run_my_cli(addr, "--token", TOKEN, "--count", "1")
        self.assertEqual(r.returncode, 16, r.stdout + r.stderr)
        self.assertIn(self.srv.fingerprint, r.stderr)


# --------------------------------------------------------------------------
# The server's key

class ServerKey(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def test_every_fingerprint_computation_agrees(self):
        crt = os.path.join(self.srv.state, "server.crt")
        fp = self.srv.fingerprint                     # from the start-up line
        self.assertRegex(fp, r"\ASHA256:[A-Za-z0-9+/]{43}\Z")
        self.assertEqual(doc_fingerprint(crt), fp)    # the doc's openssl recipe
        self.assertEqual(cc.certificate_fingerprint(cert_der(crt)), fp)   # own DER walk
        with connect(self.srv) as c:                  # the certificate seen in the handshake
            self.assertEqual(c.server_fingerprint, fp)
            self.assertEqual(c._t.obj.getpeercert(binary_form=True), cert_der(crt))
        env = cli_env()
        self.addCleanup(shutil.rmtree, env["HOME"], True)
        r = subprocess.run([BIN, "serve", "--print-fingerprint", "--state-dir", self.srv.state],
                           capture_output=True, text=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(fp, r.stdout)
        r = self.srv.cli("info", "--fingerprint", fp, self.srv.address)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(fp, r.stdout)

    def test_generated_identity(self):
        """ECDSA P-256, self-signed, files 0600 in a 0700 directory, names localhost,
        127.0.0.1 and ::1, no end of validity."""
        crt = os.path.join(self.srv.state, "server.crt")
        key = os.path.join(self.srv.state, "server.key")
        self.assertEqual(stat.S_IMODE(os.stat(self.srv.state).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(crt).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        text = openssl("x509", "-in", crt, "-noout", "-text").decode()
        self.assertIn("id-ecPublicKey", text)
        self.assertIn("prime256v1", text)
        self.assertIn("Not After : Dec 31 23:59:59 9999 GMT", text)
        san = re.search(r"Subject Alternative Name:.*?\n\s*(.*)\n", text).group(1)
        for name in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"):
            self.assertIn(name, san)
        # "names the server (CN and a DNS subject alternative name)": its display name
        with connect(self.srv) as c:
            name = c.hello["name"]
        self.assertRegex(text, r"Subject: CN ?= ?%s\n" % re.escape(name))
        self.assertIn(f"DNS:{name}", san)
        # "valid from the day before its creation"
        start = openssl("x509", "-in", crt, "-noout", "-startdate").decode().strip()
        not_before = calendar.timegm(time.strptime(start.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))
        self.assertAlmostEqual(not_before, os.stat(crt).st_mtime - 86400, delta=120)

    def test_renewed_certificate_keeps_the_fingerprint(self):
        d = tempfile.mkdtemp(prefix="cskit-indep-renew-")
        self.addCleanup(shutil.rmtree, d, True)
        key = os.path.join(d, "server.key")
        shutil.copy(os.path.join(self.srv.state, "server.key"), key)
        renewed, _ = make_cert(d, "renewed", key=key, subj="/CN=renewed")
        self.assertNotEqual(cert_der(renewed), cert_der(os.path.join(self.srv.state, "server.crt")))
        self.assertEqual(cc.certificate_fingerprint(cert_der(renewed)), self.srv.fingerprint)
        self.assertEqual(doc_fingerprint(renewed), self.srv.fingerprint)

    def test_untrusted_keys_are_refused(self):
        with self.assertRaises(HostKeyChanged) as cm:
            connect(self.srv, fingerprint=OTHER_FINGERPRINT)
        self.assertEqual(cm.exception.fingerprint, self.srv.fingerprint)
        self.assertEqual(cm.exception.expected, OTHER_FINGERPRINT)
        self.assertIn("REMOTE HOST IDENTIFICATION HAS CHANGED", str(cm.exception))
        with self.assertRaises(HostKeyUnknown) as cm:
            connect(self.srv, fingerprint=None)
        self.assertEqual(cm.exception.fingerprint, self.srv.fingerprint)
        self.assertIn(self.srv.fingerprint, str(cm.exception))
        # A known-hosts file without an entry for this host decides nothing.
        d = tempfile.mkdtemp(prefix="cskit-indep-kh-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "known_hosts")
        with open(path, "w") as f:
            f.write(f"127.0.0.1:{self.srv.port + 1 if self.srv.port < 65535 else 1} "
                    f"{self.srv.fingerprint}\n")
        with self.assertRaises(HostKeyUnknown):
            connect(self.srv, fingerprint=None, known_hosts=path)
        # Malformed pins are refused before connecting.
        for bad in ("sha256:" + self.srv.fingerprint[7:], self.srv.fingerprint + "=",
                    self.srv.fingerprint[7:], "SHA256:" + "A" * 42):
            with self.assertRaises(ValueError):
                connect(self.srv, fingerprint=bad)
        # The explicit opt-out logs in to any key.
        with connect(self.srv, fingerprint=None, insecure_no_key_check=True) as c:
            c.ping()
        with connect(self.srv, fingerprint=None,
                     known_hosts=os.path.join(self.srv.home, ".config", "cskit", "known_hosts")) as c:
            c.ping()

    def test_configured_rsa_identity(self):
        """`--tls-cert`/`--tls-key` with an RSA key ("any key type OpenSSL accepts")."""
        d = tempfile.mkdtemp(prefix="cskit-indep-rsa-")
        self.addCleanup(shutil.rmtree, d, True)
        crt, key = make_cert(d, "rsa", key_args=("-newkey", "rsa:2048"), subj="/CN=rsa.test")
        expected = doc_fingerprint(crt)
        self.assertEqual(cc.certificate_fingerprint(cert_der(crt)), expected)
        with Server("--tls-cert", crt, "--tls-key", key) as srv:
            self.assertEqual(srv.fingerprint, expected)
            with connect(srv) as c:
                self.assertEqual(c.server_fingerprint, expected)
                c.ping(b"rsa")


# --------------------------------------------------------------------------
# The TLS profile, probed with Python's ssl

class TransportProfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def raw_login(self, tls_sock, **extra):
        """Logs in by hand on a Python SSLSocket: auth at once, then hello, then welcome."""
        exporter = cc.tls_exporter(tls_sock)        # the SSLSocket route (checks SSL_get_fd)
        auth = {"type": "auth", "id": 1, "proto": 2, "user": "admin",
                "proof": cc.client_proof(TOKEN, "admin", b"tls-exporter", exporter).hex(), **extra}
        tls_sock.sendall(cc.encode_frame(auth))
        hello = read_frame(tls_sock)
        welcome = read_frame(tls_sock)
        return exporter, hello, welcome

    def test_tls12_is_refused(self):
        with self.assertRaises(ssl.SSLError) as cm:
            raw_tls(self.srv.port, maximum=ssl.TLSVersion.TLSv1_2).close()
        self.assertIn("PROTOCOL VERSION", str(cm.exception).upper().replace("_", " "))

    def test_alpn_without_cskit_is_refused(self):
        # (Nor http/1.1, which is HTTPS on the same port: test_https.)
        with self.assertRaises(ssl.SSLError) as cm:
            raw_tls(self.srv.port, alpn=("h2", "spdy/3")).close()
        self.assertIn("NO APPLICATION PROTOCOL", str(cm.exception).upper().replace("_", " "))

    def test_no_alpn_is_served_as_cskit(self):
        with raw_tls(self.srv.port, alpn=None) as s:
            self.assertIsNone(s.selected_alpn_protocol())
            exporter, hello, welcome = self.raw_login(s)
            self.assertEqual(hello[0]["type"], "hello")
            self.assertEqual(welcome[0]["type"], "welcome")
            self.assertEqual(welcome[0]["proof"],
                             cc.server_proof(TOKEN, "admin", b"tls-exporter", exporter).hex())

    def test_hello_comes_first_and_nonce_is_ignored_over_tls(self):
        with raw_tls(self.srv.port) as s:
            _, hello, welcome = self.raw_login(s, nonce="00" * 32, binding="ff" * 16)
            self.assertEqual(hello[0]["type"], "hello")
            # a wrong (optional) binding field does not matter when the proof is right
            self.assertEqual(welcome[0]["type"], "welcome")

    def test_cleartext_client_meets_tls_server(self):
        """"a cleartext client that meets a TLS server gets no hello and times out"."""
        t0 = time.monotonic()
        with self.assertRaises(socket.timeout):
            Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, timeout=1.5,
                           plaintext=True)
        self.assertLess(time.monotonic() - t0, 10)

    def test_handshake_frames_from_the_doc(self):
        """The "Other frames seen on the wire" are byte for byte what the server sends."""
        sect = doc_section("### Other frames seen on the wire")
        doc_frames = {}
        for prefix, text in re.findall(r"^\s+([0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2})  "
                                       r"(\{.*\})$", sect, re.M):
            doc_frames[cc.decode_header(text.encode())[0]["code"]] = bytes.fromhex(prefix) + text.encode()
        with raw_tls(self.srv.port) as s:
            self.raw_login(s)
            s.sendall(cc.encode_frame({"type": "nosuch", "id": 7}))
            self.assertEqual(read_frame(s)[2], doc_frames["unknown_type"])
            s.sendall(b"\x00\x00\x00\x00")
            self.assertEqual(read_frame(s)[2], doc_frames["empty_header"])
            self.assertEqual(read_rest(s), b"")

    def test_server_handshake_checks(self):
        # 1: the first frame is not auth
        with raw_tls(self.srv.port) as s:
            s.sendall(cc.encode_frame({"type": "ping", "id": 5}))
            self.assertEqual(read_frame(s)[0]["type"], "hello")
            h = read_frame(s)[0]
            self.assertEqual((h["type"], h["code"], h["id"]), ("error", "handshake_required", 5))
            self.assertEqual(read_rest(s), b"")
        # 2: proto 1 (a version-1 client), and "2" as a string
        for proto in (1, "2", 2.0):
            with raw_tls(self.srv.port) as s:
                exporter = cc.tls_exporter(s)
                s.sendall(cc.encode_frame({"type": "auth", "id": 9, "proto": proto, "user": "admin",
                                           "proof": cc.client_proof(TOKEN, "admin", b"tls-exporter",
                                                                    exporter).hex()}))
                self.assertEqual(read_frame(s)[0]["type"], "hello")
                h = read_frame(s)[0]
                self.assertEqual((h["code"], h["id"]), ("unsupported_version", 9), proto)
                self.assertEqual(read_rest(s), b"")
        # 4: a proof that is not 64 hex digits
        with raw_tls(self.srv.port) as s:
            s.sendall(cc.encode_frame({"type": "auth", "proto": 2, "user": "admin", "proof": "ab"}))
            self.assertEqual(read_frame(s)[0]["type"], "hello")
            h = read_frame(s)[0]
            self.assertEqual(h["code"], "bad_request")
            self.assertNotIn("id", h)
            self.assertEqual(read_rest(s), b"")


class ConnectionLimit(unittest.TestCase):
    def test_refusal_is_a_cleartext_frame_before_tls(self):
        with Server("--max-connections", "1") as srv:
            with connect(srv) as first:
                first.ping()
                with self.assertRaises(RemoteError) as cm:
                    connect(srv)
                self.assertEqual(cm.exception.code, "too_many_connections")
                self.assertFalse(cm.exception.authenticated)
                self.assertTrue(cm.exception.fatal)
                self.assertIn("unauthenticated", str(cm.exception))
                self.assertNotIn("id", cm.exception.header)
                first.ping()


# --------------------------------------------------------------------------
# Cleartext, the explicit opt-in

class Cleartext(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--plaintext", "--name", NAME)

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def plain(self, **kw):
        return Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, timeout=10,
                              plaintext=True, **kw)

    def test_hello_carries_a_fresh_nonce(self):
        with self.plain() as a, self.plain() as b:
            for h in (a.hello, b.hello):
                self.assertEqual(h["proto"], 2)
                self.assertEqual(h["binding"], "nonces")
                self.assertRegex(h["nonce"], HEX64_LOWER)
                self.assertIn("hmac-sha256", h["auth"])
                self.assertNotIn("id", h)
            self.assertNotEqual(a.hello["nonce"], b.hello["nonce"])
            self.assertFalse(a.tls)
            self.assertIsNone(a.server_fingerprint)

    def test_login_proofs_and_info(self):
        cn = bytes(range(32))
        with self.plain(client_nonce=cn) as c:
            sn = bytes.fromhex(c.hello["nonce"])
            self.assertEqual(c.channel_binding, sn + cn)
            self.assertEqual(c.welcome["proof"],
                             cc.server_proof(TOKEN, "admin", b"nonces", sn + cn).hex())
            info = c.info()
            self.assertEqual(info["transport"], {"tls": False})
            self.assertEqual(info["proto"], 2)
            c.ping(os.urandom(5000))

    def test_tls_client_meets_cleartext_server(self):
        with self.assertRaises(ProtocolError) as cm:
            connect(self.srv, fingerprint=OTHER_FINGERPRINT)
        self.assertEqual(cm.exception.code, "not_tls")
        self.assertIn("cleartext", str(cm.exception))
        self.assertEqual(cm.exception.header["binding"], "nonces")

    def test_contradictory_options_are_refused(self):
        with self.assertRaises(ValueError):
            self.plain(fingerprint=OTHER_FINGERPRINT)
        with self.assertRaises(ValueError):
            self.plain(early=[("ping", {}, b"")])

    def test_cli_plaintext(self):
        r = run_my_cli(f"127.0.0.1:{self.srv.port}", "--token", TOKEN, "--count", "2",
                       "--plaintext")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tls: none (cleartext)", r.stdout)
        self.assertIn('hello.binding: "nonces"', r.stdout)
        self.assertIn('"transport": {"tls": false}', r.stdout)


# --------------------------------------------------------------------------
# Failures (a fresh server per test keeps the per-address slow-down at zero)

class AuthFailures(unittest.TestCase):
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
        self.assertEqual(wrong.exception.message,
                         "authentication failed: unknown user or wrong token")
        # A correct login still works afterwards.
        connect(self.srv).close()

    def test_wrong_token_frame_is_the_documented_one(self):
        sect = doc_section("### Other frames seen on the wire")
        m = re.search(r"wrong token.*\n\s+([0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2})  "
                      r"(\{.*\})$", sect, re.M)
        documented = bytes.fromhex(m.group(1)) + m.group(2).encode()
        with raw_tls(self.srv.port) as s:
            exporter = cc.tls_exporter(s)
            s.sendall(cc.encode_frame({"type": "auth", "id": 1, "proto": 2, "user": "admin",
                                       "proof": cc.client_proof("wrong-token-0123456789", "admin",
                                                                b"tls-exporter", exporter).hex()}))
            self.assertEqual(read_frame(s)[0]["type"], "hello")
            self.assertEqual(read_frame(s)[2], documented)
            self.assertEqual(read_rest(s), b"")

    def test_relay_cannot_pass_a_login_through(self):
        """A TLS-terminating relay whose key the client accepted: the proof is bound to the
        client's session, not to the relay's session with the server."""
        for send_binding, message in ((True, "your proof is bound to another TLS session "
                                               "(a relay is in the path)"),
                                      (False, "unknown user or wrong token")):
            relay = Relay(self.srv.port)
            with self.assertRaises(AuthError) as cm:
                Client.connect("127.0.0.1", relay.port, "admin", TOKEN, timeout=10,
                               fingerprint=relay.fingerprint, send_binding=send_binding)
            relay.join()
            self.assertEqual(cm.exception.code, "auth_failed")
            self.assertIn(message, cm.exception.message)
            # The relay passed the client's auth through unchanged, and learnt no token.
            auth = frames_of(relay.to_server)[0][0]
            self.assertEqual(auth["type"], "auth")
            self.assertEqual("binding" in auth, send_binding)
            self.assertNotIn(TOKEN.encode(), relay.to_server)

    def test_cli_wrong_token_and_refused(self):
        r = run_my_cli(f"127.0.0.1:{self.srv.port}", "--token", "definitely-the-wrong-token",
                       "--count", "3", "--fingerprint", self.srv.fingerprint)
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        self.assertNotIn("ping 1:", r.stdout)
        r = run_my_cli(f"127.0.0.1:{free_port()}", "--token", TOKEN, "--count", "1",
                       "--timeout", "5", "--fingerprint", self.srv.fingerprint)
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)


# --------------------------------------------------------------------------
# The document's numbers

class DocVectors(unittest.TestCase):
    """Test vectors and the example session must be self-consistent (no network)."""

    @staticmethod
    def mac(token, label, user, kind, binding):
        # Own HMAC code, straight from "Proofs" (not cskit_client's).
        msg = label + b"\x00" + user.encode() + b"\x00" + kind + b"\x00" + binding
        return hmac.new(token.encode("utf-8"), msg, hashlib.sha256).hexdigest()

    def test_proof_vectors_tls(self):
        sect = doc_section("### Proofs")
        token = re.search(r"Test vectors \(token `([^`]+)`, user `([^`]+)`\)", sect)
        token, user = token.group(1), token.group(2)
        rows = dict(re.findall(r"^\| (.+?)\s*\| `([0-9a-f]+)` \|$", sect, re.M))
        exporter = bytes.fromhex(rows["TLS exporter"])
        self.assertEqual(len(exporter), 32)
        msg = bytes.fromhex(rows["client HMAC input (66 bytes)"])
        self.assertEqual(len(msg), 66)
        self.assertEqual(msg, cc.proof_input(cc.CLIENT_LABEL, user, cc.KIND_TLS, exporter))
        for proof, label in ((rows["client proof"], b"cskit/2 client"),
                             (rows["server proof"], b"cskit/2 server")):
            self.assertEqual(self.mac(token, label, user, b"tls-exporter", exporter), proof)
        self.assertEqual(cc.client_proof(token, user, cc.KIND_TLS, exporter).hex(), rows["client proof"])
        self.assertEqual(cc.server_proof(token, user, cc.KIND_TLS, exporter).hex(), rows["server proof"])
        self.assertEqual(hashlib.sha256(b"cskit/2 binding\x00" + exporter).hexdigest()[:32],
                         rows["`auth.binding`"])
        self.assertEqual(cc.auth_binding_field(exporter), rows["`auth.binding`"])

    def test_proof_vectors_cleartext(self):
        sect = doc_section("### Proofs")
        m = re.search(r"Cleartext, with server nonce\s+`([0-9a-f]{64})` and\s+client nonce "
                      r"`([0-9a-f]{64})`\s+\((\d+)-byte input .*?client\s+proof `([0-9a-f]{64})`,"
                      r"\s+server proof `([0-9a-f]{64})`", sect, re.S)
        self.assertIsNotNone(m)
        sn, cn = bytes.fromhex(m.group(1)), bytes.fromhex(m.group(2))
        binding = cc.nonces_binding(sn, cn)
        self.assertEqual(binding, sn + cn)
        self.assertEqual(len(cc.proof_input(cc.CLIENT_LABEL, "admin", cc.KIND_NONCES, binding)),
                         int(m.group(3)))
        token = "example-token-0123456789abcdef"
        self.assertEqual(self.mac(token, b"cskit/2 client", "admin", b"nonces", sn + cn), m.group(4))
        self.assertEqual(self.mac(token, b"cskit/2 server", "admin", b"nonces", sn + cn), m.group(5))
        self.assertEqual(cc.client_proof(token, "admin", cc.KIND_NONCES, binding).hex(), m.group(4))
        self.assertEqual(cc.server_proof(token, "admin", cc.KIND_NONCES, binding).hex(), m.group(5))
        # Kind and direction separate the proofs.
        self.assertNotEqual(cc.client_proof(token, "admin", cc.KIND_TLS, binding).hex(), m.group(4))

    def test_python_snippets_print_the_client_proofs(self):
        snippets = re.findall(r"```python\n(.*?)```", DOC_TEXT, re.S)
        self.assertEqual(len(snippets), 2)
        printed = []
        for code in snippets:
            out = io.StringIO()
            with redirect_stdout(out):
                exec(compile(code, "protocol.md", "exec"), {})
            printed.append(out.getvalue().strip())
        proofs = doc_section("### Proofs")
        example = doc_section("## Example session")
        self.assertIn(f"| client proof | `{printed[0]}` |", proofs)
        self.assertIn(f"client proof   = HMAC-SHA256(token, client input) = {printed[1]}", example)

    def example_inputs(self):
        ex = doc_section("## Example session")

        def cell(item):
            m = re.search(r"^\| " + re.escape(item) + r"[^|]*\| `([^`]+)`", ex, re.M)
            self.assertIsNotNone(m, item)
            return m.group(1)

        return ex, cell("token"), cell("user"), bytes.fromhex(cell("TLS exporter"))

    def test_example_session_proofs(self):
        ex, token, user, exporter = self.example_inputs()
        m = re.search(r"\((\d+) bytes; hex `([0-9a-f]+)`\)", ex)
        self.assertEqual(token.encode().hex(), m.group(2))
        self.assertEqual(len(token.encode()), int(m.group(1)))
        self.assertEqual(len(exporter), 32)
        # The client input dump is the construction.
        dump = hex_dump_bytes(code_block_after(ex, "Client HMAC input"))
        self.assertEqual(dump, cc.proof_input(cc.CLIENT_LABEL, user, cc.KIND_TLS, exporter))
        self.assertEqual(len(dump), int(re.search(r"Client HMAC input \((\d+) bytes\)", ex).group(1)))
        label = re.search(r"except for the label,\s+`([0-9a-f ]+)`", ex).group(1)
        self.assertEqual(bytes.fromhex(label), cc.SERVER_LABEL)
        results = code_block_after(ex, "Results:")
        printed_client = re.search(r"client proof\s+= .* = ([0-9a-f]{64})", results).group(1)
        printed_server = re.search(r"server proof\s+= .* = ([0-9a-f]{64})", results).group(1)
        printed_binding = re.search(r"auth\.binding\s+= .* = ([0-9a-f]{32})$", results, re.M).group(1)
        self.assertEqual(self.mac(token, b"cskit/2 client", user, b"tls-exporter", exporter),
                         printed_client)
        self.assertEqual(self.mac(token, b"cskit/2 server", user, b"tls-exporter", exporter),
                         printed_server)
        self.assertEqual(cc.client_proof(token, user, cc.KIND_TLS, exporter).hex(), printed_client)
        self.assertEqual(cc.server_proof(token, user, cc.KIND_TLS, exporter).hex(), printed_server)
        self.assertEqual(cc.auth_binding_field(exporter), printed_binding)

    def test_example_session_frames(self):
        ex, token, user, exporter = self.example_inputs()
        frames = []
        for m in re.finditer(r"\*\*(\d)\. (S→C|C→S) `([^`]+)`\*\*[^(\n]*\((\d+) bytes: 4 \+ (\d+) "
                             r"\+ (\d+)\)\n+```\n(.*?)```", ex, re.S):
            data = hex_dump_bytes(m.group(7))
            self.assertEqual(len(data), int(m.group(4)), m.group(3))
            self.assertEqual(struct.unpack(">I", data[:4])[0], int(m.group(5)), m.group(3))
            header, body = cc.decode_frame_bytes(data)
            self.assertEqual(len(body), int(m.group(6)))
            self.assertEqual(header["type"], m.group(3))
            if m.group(2) == "S→C":
                # The reference encoder's shape (sorted keys, body last): ours reproduces it.
                h = dict(header)
                h.pop("body", None)
                self.assertEqual(cc.encode_frame(h, body), data, m.group(3))
            frames.append((int(m.group(1)), m.group(2), header, body))
        self.assertEqual([(n, d, h["type"]) for n, d, h, _ in frames],
                         [(1, "C→S", "auth"), (2, "S→C", "hello"), (3, "S→C", "welcome"),
                          (4, "C→S", "ping"), (5, "C→S", "info"), (6, "S→C", "pong"),
                          (7, "S→C", "info.reply")])
        auth, hello, welcome = frames[0][2], frames[1][2], frames[2][2]
        # auth, sent before hello: proto 2, bound to the exporter, no nonce
        self.assertEqual((auth["id"], auth["proto"], auth["user"]), (1, 2, user))
        self.assertNotIn("nonce", auth)
        self.assertEqual(auth["proof"], cc.client_proof(token, user, cc.KIND_TLS, exporter).hex())
        self.assertEqual(auth["binding"], cc.auth_binding_field(exporter))
        # hello over TLS: binding, no nonce
        self.assertEqual((hello["proto"], hello["binding"], hello["auth"]),
                         (2, "tls-exporter", ["hmac-sha256"]))
        self.assertNotIn("nonce", hello)
        self.assertEqual(hello["name"], "example")
        # welcome: the server proof of the doc's inputs
        self.assertEqual(welcome["id"], 1)
        self.assertEqual(welcome["permissions"], ADMIN_PERMISSIONS)
        self.assertTrue(hmac.compare_digest(
            bytes.fromhex(welcome["proof"]), cc.server_proof(token, user, cc.KIND_TLS, exporter)))
        self.assertEqual((frames[3][2], frames[3][3]), ({"type": "ping", "id": 2, "body": 3}, b"abc"))
        self.assertEqual(frames[4][2], {"type": "info", "id": 3})
        self.assertEqual((frames[5][2], frames[5][3]), ({"id": 2, "type": "pong", "body": 3}, b"abc"))
        info = frames[6][2]
        self.assertEqual((info["id"], info["proto"], info["services"]), (3, 2, ["core", "files"]))
        self.assertEqual(info["transport"]["tls"], True)
        self.assertEqual(info["transport"]["protocol"], "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519")

    def test_other_frames_lengths(self):
        sect = doc_section("### Other frames seen on the wire")
        rows = re.findall(r"^\s+([0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2} [0-9a-f]{2})  (\{.*\})$", sect, re.M)
        self.assertEqual(len(rows), 4)
        for prefix, text in rows:
            self.assertEqual(struct.unpack(">I", bytes.fromhex(prefix))[0], len(text.encode()), text)
            cc.decode_header(text.encode())

    def test_fingerprint_and_known_hosts_examples(self):
        sect = doc_section("### Server identity")
        example = re.search(r"for example\s+`(SHA256:[^`]+)`", sect).group(1)
        self.assertEqual(len(example), 50)
        cc.check_fingerprint_syntax(example)
        self.assertEqual(len(base64.b64decode(example[7:] + "=")), 32)
        kh = doc_section("### Known hosts")
        block = code_block_after(kh, "Entries are appended")
        d = tempfile.mkdtemp(prefix="cskit-indep-kh-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "known_hosts")
        with open(path, "w") as f:
            f.write(block + "garbage line\nexample.org:7701 SHA256:short\n"
                    "FILES.Example.ORG:7701 " + example + " second key, a comment\n")
        self.assertEqual([fp for _, fp in cc.known_hosts_entries(path, "127.0.0.1", 7701)], [example])
        self.assertEqual([fp for _, fp in cc.known_hosts_entries(path, "::1", 7701)], [example])
        self.assertEqual(len(cc.known_hosts_entries(path, "files.example.org", 7701)), 2)
        self.assertEqual(cc.known_hosts_entries(path, "Files.Example.Org", 7701),
                         cc.known_hosts_entries(path, "files.example.org", 7701))
        self.assertEqual(cc.known_hosts_entries(path, "127.0.0.1", 7702), [])
        self.assertEqual(cc.known_hosts_key("::1", 7701), "[::1]:7701")


class Fingerprints(unittest.TestCase):
    """The own DER walk agrees with the doc's openssl recipe (EC, RSA, Ed25519 keys)."""

    def test_key_types(self):
        d = tempfile.mkdtemp(prefix="cskit-indep-fp-")
        self.addCleanup(shutil.rmtree, d, True)
        for name, args in (("ec", ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256")),
                           ("ec384", ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384")),
                           ("rsa", ("-newkey", "rsa:2048")),
                           ("ed25519", ("-newkey", "ed25519"))):
            crt, _ = make_cert(d, name, key_args=args)
            self.assertEqual(cc.certificate_fingerprint(cert_der(crt)), doc_fingerprint(crt), name)
        self.assertEqual(CERTS["fake_fp"], cc.certificate_fingerprint(cert_der(CERTS["fake"][0])))

    def test_bad_der(self):
        for bad in (b"", b"\x30", b"\x30\x05\x30\x03\x02\x01\x01", b"\x04\x00"):
            with self.assertRaises(ValueError):
                cc.spki_from_certificate(bad)


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
        with self.assertRaises(ValueError):
            cc.encode_frame({"type": "x", "id": -1})
        with self.assertRaises(ValueError):
            cc.encode_frame({"type": "x", "id": 2 ** 64})
        self.assertEqual(cc.encode_frame({"type": "x"}), b"\x00\x00\x00\x0c" + b'{"type":"x"}')
        # The largest header and body are accepted.
        pad = 65536 - len('{"pad":"","type":"x"}')
        self.assertEqual(len(cc.encode_frame({"type": "x", "pad": "a" * pad})), 4 + 65536)
        big = cc.encode_frame({"type": "x"}, bytes(16777216))
        self.assertEqual(cc.decode_frame_bytes(big)[0]["body"], 16777216)


# --------------------------------------------------------------------------
# Against fake servers

class AgainstFakeServer(unittest.TestCase):
    def fake_login_script(self, after_welcome=None, hello=None):
        """A fake that knows FAKE_TOKEN: checks the client's proof against its own exporter
        (from its key log) and proves itself the same way."""

        def script(fs, conn):
            conn.sendall(hello or hello_frame())
            auth, _, _ = read_frame(conn)
            exporter = fs.exporter(conn)
            fs.result["auth"] = auth
            fs.result["exporter"] = exporter
            fs.result["ctypes_exporter"] = cc.tls_exporter(conn)
            fs.result["proof_ok"] = auth["proof"] == cc.client_proof(
                FAKE_TOKEN, auth["user"], b"tls-exporter", exporter).hex()
            conn.sendall(welcome_frame(auth, cc.server_proof(FAKE_TOKEN, auth["user"],
                                                             b"tls-exporter", exporter).hex()))
            if after_welcome:
                after_welcome(fs, conn)
            fs.result["rest"] = read_rest(conn)

        return script

    def test_login_to_a_fake_that_knows_the_token(self):
        fs = FakeServer(self.fake_login_script())
        with Client.connect("127.0.0.1", fs.port, "alice", FAKE_TOKEN, timeout=5,
                            fingerprint=fs.fingerprint) as c:
            self.assertEqual(c.welcome["permissions"], ["chat"])
            self.assertEqual(c.cipher[0], "TLS_AES_256_GCM_SHA384")  # Python's server order
            binding = c.channel_binding
        fs.join()
        auth = fs.result["auth"]
        self.assertTrue(fs.result["proof_ok"])
        self.assertEqual(fs.result["exporter"], binding)
        self.assertEqual(fs.result["ctypes_exporter"], binding)
        self.assertEqual(auth["binding"], cc.auth_binding_field(binding))
        self.assertEqual((auth["id"], auth["proto"], auth["user"]), (1, 2, "alice"))
        self.assertNotIn("nonce", auth)
        self.assertEqual(set(auth), {"type", "id", "proto", "user", "proof", "binding"})

    def test_impostor_cannot_prove_the_token_and_the_client_goes_silent(self):
        def variants(auth, exporter):
            user = auth["user"]
            yield "zeros", "00" * 32
            yield "wrong token", cc.server_proof("another-token-0123456789", user, b"tls-exporter",
                                                 exporter).hex()
            yield "client proof reflected", auth["proof"]
            yield "nonces kind", cc.server_proof(FAKE_TOKEN, user, b"nonces", exporter).hex()
            yield "missing", None
            yield "not hex", "zz" * 32
            yield "short", cc.server_proof(FAKE_TOKEN, user, b"tls-exporter", exporter).hex()[:62]

        for i in range(7):
            def script(fs, conn, i=i):
                conn.sendall(hello_frame())
                auth, _, _ = read_frame(conn)
                name, proof = list(variants(auth, fs.exporter(conn)))[i]
                fs.result["name"] = name
                conn.sendall(welcome_frame(auth, proof))
                fs.result["after"] = read_rest(conn)

            fs = FakeServer(script)
            with self.assertRaises(AuthError) as cm:
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                               fingerprint=fs.fingerprint)
            fs.join()
            self.assertEqual(cm.exception.code, "bad_server_proof", fs.result["name"])
            self.assertEqual(fs.result["after"], b"", fs.result["name"])  # nothing after welcome

    def test_upper_case_server_proof_is_accepted(self):
        """"the welcome.proof (hex, either case)"."""
        def script(fs, conn):
            conn.sendall(hello_frame())
            auth, _, _ = read_frame(conn)
            proof = cc.server_proof(FAKE_TOKEN, auth["user"], b"tls-exporter", fs.exporter(conn))
            conn.sendall(welcome_frame(auth, proof.hex().upper()))
            fs.result["rest"] = read_rest(conn)

        fs = FakeServer(script)
        Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                       fingerprint=fs.fingerprint).close()
        fs.join()

    def test_reference_cli_refuses_the_impostor(self):
        def script(fs, conn):
            conn.sendall(hello_frame())
            auth, _, _ = read_frame(conn)
            exporter = fs.exporter(conn)
            fs.result["proof_ok"] = auth["proof"] == cc.client_proof(
                FAKE_TOKEN, auth["user"], b"tls-exporter", exporter).hex()
            fs.result["binding_ok"] = auth.get("binding") == cc.auth_binding_field(exporter)
            conn.sendall(welcome_frame(auth, "00" * 32))
            fs.result["after"] = read_rest(conn)

        fs = FakeServer(script)
        r = run_reference_cli("ping", "-c", "1", "-W", "5", "--fingerprint", fs.fingerprint,
                              f"127.0.0.1:{fs.port}")
        fs.join()
        self.assertEqual(r.returncode, 4, r.stdout + r.stderr)
        # The reference client's proof and binding field are those of the doc's construction.
        self.assertTrue(fs.result["proof_ok"])
        self.assertTrue(fs.result["binding_ok"])
        self.assertEqual(fs.result["after"], b"")

    def test_untrusted_key_nothing_is_sent(self):
        cases = [
            ("wrong pin", dict(fingerprint=OTHER_FINGERPRINT), HostKeyChanged),
            ("no decision", dict(), HostKeyUnknown),
        ]
        for name, kw, exc in cases:
            def script(fs, conn):
                fs.result["got"] = read_rest(conn)

            fs = FakeServer(script)
            with self.assertRaises(exc) as cm:
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5, **kw)
            fs.join()
            self.assertEqual(cm.exception.fingerprint, fs.fingerprint, name)
            self.assertEqual(fs.result["got"], b"", name)

    def test_reference_cli_wrong_fingerprint(self):
        def script(fs, conn):
            fs.result["got"] = read_rest(conn)

        fs = FakeServer(script)
        r = run_reference_cli("ping", "-c", "1", "-W", "5", "--fingerprint", OTHER_FINGERPRINT,
                              f"127.0.0.1:{fs.port}")
        fs.join()
        self.assertEqual(r.returncode, 15, r.stdout + r.stderr)
        self.assertIn("REMOTE HOST IDENTIFICATION HAS CHANGED", r.stdout + r.stderr)
        self.assertEqual(fs.result["got"], b"")

    def test_server_without_alpn_is_refused(self):
        def script(fs, conn):
            fs.result["alpn"] = conn.selected_alpn_protocol()
            fs.result["got"] = read_rest(conn)

        fs = FakeServer(script, alpn=None)
        with self.assertRaises(ProtocolError) as cm:
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                           fingerprint=fs.fingerprint)
        fs.join()
        self.assertIn("ALPN", str(cm.exception))
        self.assertIsNone(fs.result["alpn"])
        self.assertEqual(fs.result["got"], b"")

    def test_tls_client_does_not_move_its_proof_to_nonces(self):
        def script(fs, conn):
            conn.sendall(hello_frame(binding="nonces", nonce=os.urandom(32)))
            auth, _, _ = read_frame(conn)
            fs.result["auth"] = auth
            fs.result["proof_ok"] = auth["proof"] == cc.client_proof(
                FAKE_TOKEN, auth["user"], b"tls-exporter", fs.exporter(conn)).hex()
            fs.result["rest"] = read_rest(conn)

        fs = FakeServer(script)
        with self.assertRaises(ProtocolError) as cm:
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                           fingerprint=fs.fingerprint)
        fs.join()
        self.assertIn("binding", str(cm.exception))
        self.assertTrue(fs.result["proof_ok"])        # the auth sent at once was TLS-bound
        self.assertNotIn("nonce", fs.result["auth"])
        self.assertEqual(fs.result["rest"], b"")      # and nothing followed it

    def test_hello_checks(self):
        cases = [
            ("no hmac-sha256", hello_frame(auth=("plain",)), ProtocolError),
            ("no binding", hello_frame(binding=None), ProtocolError),
            ("not hello", cc.encode_frame({"type": "welcome", "proof": "00" * 32}), ProtocolError),
            ("bye", cc.encode_frame({"type": "bye", "code": "shutting_down", "message": "m"}),
             RemoteError),
        ]
        for name, first, exc in cases:
            def script(fs, conn, first=first):
                conn.sendall(first)
                fs.result["auth"] = read_frame(conn)[0]
                fs.result["rest"] = read_rest(conn)

            fs = FakeServer(script)
            with self.assertRaises(exc, msg=name):
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                               fingerprint=fs.fingerprint)
            fs.join()
            self.assertEqual(fs.result["auth"]["type"], "auth", name)
            self.assertEqual(fs.result["rest"], b"", name)

    def test_dribbled_records_sticky_frames_and_server_ping(self):
        def script(fs, conn):
            for byte in hello_frame():               # one TLS record per byte
                conn.sendall(bytes([byte]))
            auth, _, _ = read_frame(conn)
            proof = cc.server_proof(FAKE_TOKEN, auth["user"], b"tls-exporter", fs.exporter(conn))
            welcome = welcome_frame(auth, proof.hex())
            conn.sendall(welcome[:3])
            time.sleep(0.05)
            conn.sendall(welcome[3:])
            ping, body, _ = read_frame(conn)
            # Server ping + the pong, glued together (sticky) and cut at odd places, and
            # both again in a single record.
            data = (cc.encode_frame({"type": "ping", "id": 99}, b"srv-ping") +
                    cc.encode_frame({"type": "pong", "id": ping["id"]}, body))
            for i in range(0, len(data), 7):
                conn.sendall(data[i:i + 7])
            fs.result["pong1"] = read_frame(conn)[:2]
            ping2, body2, _ = read_frame(conn)
            conn.sendall(cc.encode_frame({"type": "ping"}, b"no-id") +
                         cc.encode_frame({"type": "pong", "id": ping2["id"]}, body2))
            fs.result["pong2"] = read_frame(conn)[:2]
            fs.result["rest"] = read_rest(conn)

        fs = FakeServer(script)
        c = Client.connect("127.0.0.1", fs.port, "alice", FAKE_TOKEN, timeout=5,
                           fingerprint=fs.fingerprint)
        self.assertEqual(c.welcome["permissions"], ["chat"])
        c.ping(b"x" * 3000)
        c.ping(b"y" * 20000)                         # more than one TLS record
        c.close()
        fs.join()
        self.assertEqual(fs.result["pong1"], ({"type": "pong", "id": 99, "body": 8}, b"srv-ping"))
        self.assertEqual(fs.result["pong2"], ({"type": "pong", "body": 5}, b"no-id"))
        self.assertEqual(fs.result["rest"], b"")

    def test_oversized_and_empty_header_prefix(self):
        for prefix, code in ((struct.pack(">I", 65537) + b"{", "header_too_large"),
                             (b"\x00\x00\x00\x00", "empty_header")):
            def script(fs, conn, prefix=prefix):
                conn.sendall(prefix)
                fs.result["auth"] = read_frame(conn)[0]
                fs.result["rest"] = read_rest(conn)

            fs = FakeServer(script)
            with self.assertRaises(ProtocolError) as cm:
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                               fingerprint=fs.fingerprint)
            fs.join()
            self.assertEqual(cm.exception.code, code)
            self.assertEqual(fs.result["rest"], b"")

    def test_version_mismatch(self):
        """Over TLS the client has already sent auth; it sends nothing after a hello of another
        version."""
        for proto in (3, 1, "2", True, 2.0):
            def script(fs, conn, proto=proto):
                conn.sendall(hello_frame(proto=proto))
                fs.result["auth"] = read_frame(conn)[0]
                fs.result["rest"] = read_rest(conn)

            fs = FakeServer(script)
            with self.assertRaises(ProtocolError) as cm:
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                               fingerprint=fs.fingerprint)
            fs.join()
            self.assertIn(f"server speaks protocol version {proto!r}, this client speaks 2: "
                          "upgrade the older side", str(cm.exception))
            self.assertEqual(fs.result["auth"]["proto"], 2)
            self.assertEqual(fs.result["rest"], b"")

    def test_reference_cli_version_mismatch(self):
        def script(fs, conn):
            conn.sendall(hello_frame(proto=3))
            fs.result["first"] = read_frame(conn)
            fs.result["rest"] = read_rest(conn)

        fs = FakeServer(script)
        r = run_reference_cli("ping", "-c", "1", "-W", "5", "--fingerprint", fs.fingerprint,
                              f"127.0.0.1:{fs.port}")
        fs.join()
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)
        self.assertIn("server speaks protocol version 3, this client speaks 2: upgrade the older side",
                      r.stdout + r.stderr)
        self.assertEqual(fs.result["rest"], b"")

    def test_version_1_server(self):
        """A version-1 server speaks no TLS: the TLS client says so; a cleartext client closes
        without sending auth."""
        v1_hello = cc.encode_frame({"type": "hello", "proto": 1, "server": "cskit", "version": "0",
                                    "name": "old", "auth": ["hmac-sha256"],
                                    "nonce": os.urandom(32).hex()})

        def script(fs, conn):
            conn.sendall(v1_hello)
            fs.result["got"] = read_rest(conn)

        fs = FakeServer(script, tls=False)
        with self.assertRaises(ProtocolError) as cm:
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                           fingerprint=OTHER_FINGERPRINT)
        fs.join()
        self.assertEqual(cm.exception.code, "not_tls")
        self.assertIn("server speaks protocol version 1, this client speaks 2", str(cm.exception))
        self.assertTrue(fs.result["got"].startswith(b"\x16\x03"))   # only the ClientHello

        fs = FakeServer(script, tls=False)
        with self.assertRaises(ProtocolError) as cm:
            Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5, plaintext=True)
        fs.join()
        self.assertIn("server speaks protocol version 1, this client speaks 2", str(cm.exception))
        self.assertEqual(fs.result["got"], b"")                    # no auth

    def test_cleartext_fake_checks(self):
        """Cleartext: binding nonces and a 64-hex nonce are required before auth is sent."""
        cases = [("binding tls-exporter", hello_frame(binding="tls-exporter", nonce=os.urandom(32))),
                 ("no nonce", hello_frame(binding="nonces")),
                 ("short nonce", cc.encode_frame({"type": "hello", "proto": 2, "auth": ["hmac-sha256"],
                                                  "binding": "nonces", "nonce": "ab" * 31}))]
        for name, first in cases:
            def script(fs, conn, first=first):
                conn.sendall(first)
                fs.result["got"] = read_rest(conn)

            fs = FakeServer(script, tls=False)
            with self.assertRaises(ProtocolError, msg=name):
                Client.connect("127.0.0.1", fs.port, "admin", FAKE_TOKEN, timeout=5,
                               plaintext=True)
            fs.join()
            self.assertEqual(fs.result["got"], b"", name)

    def test_cleartext_only_to_loopback(self):
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.connect(("192.0.2.1", 9))
            addr = probe.getsockname()[0]
            probe.close()
        except OSError:
            self.skipTest("no non-loopback IPv4 address")
        if ipaddress.ip_address(addr).is_loopback:
            self.skipTest("no non-loopback IPv4 address")

        def script(fs, conn):
            conn.sendall(hello_frame(binding="nonces", nonce=os.urandom(32)))
            fs.result["got"] = read_rest(conn)

        fs = FakeServer(script, tls=False, host=addr)
        with self.assertRaises(ValueError):
            Client.connect(addr, fs.port, "admin", FAKE_TOKEN, timeout=5, plaintext=True)
        fs.join()
        self.assertEqual(fs.result["got"], b"")


if __name__ == "__main__":
    unittest.main()
