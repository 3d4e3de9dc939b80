"""End-to-end: transport security (docs/protocol.md, "Transport security").

TLS 1.3 as third-party tools see it (openssl s_client), the server's key and how clients pin it
(known hosts, first contact on a terminal, --accept-new, --fingerprint, a changed key), a relay in
the path (refused, and with its key pinned on purpose still unable to pass a login through), what
a capture of the wire shows, CA-issued certificates, the cleartext opt-in, and hostile TLS input.
"""
import os
import random
import re
import select
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import unittest

import cskit_client
import tlswire
import wire
from harness import BIN, TOKEN, Server, free_port, raise_fd_limit

EXIT_OK, EXIT_FAILURE, EXIT_CONNECT, EXIT_AUTH, EXIT_PROTOCOL = 0, 1, 3, 4, 6
EXIT_TIMEOUT, EXIT_KEY_CHANGED, EXIT_KEY_UNKNOWN = 8, 15, 16


def run(*args, env=None, timeout=60, input=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=timeout, input=input)


def fresh_home():
    """A client home with no known hosts and no state (a user on another machine)."""
    home = tempfile.mkdtemp(prefix="cskit-home-")
    return home


def client_env(srv, home, token=TOKEN):
    env = dict(os.environ, HOME=home, CSKIT_TOKEN=token)
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_STATE_HOME", None)
    return env


def known_hosts(home):
    return os.path.join(home, ".config", "cskit", "known_hosts")


class OpenSSLClient(unittest.TestCase):
    """What a generic TLS client sees: openssl s_client."""

    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def s_client(self, *args, input=b""):
        return subprocess.run(["openssl", "s_client", "-connect", self.srv.address, *args], input=input,
                              capture_output=True, timeout=30)

    def test_tls13_is_negotiated(self):
        r = self.s_client("-brief")
        out = r.stdout.decode() + r.stderr.decode()
        self.assertIn("Protocol version: TLSv1.3", out)
        self.assertRegex(out, r"Ciphersuite: TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)")
        self.assertRegex(out, r"(Server Temp Key|Negotiated TLS1.3 group): X25519")

    def test_tls12_and_lower_are_refused(self):
        for flag in ("-tls1_2", "-tls1_1"):
            r = self.s_client(flag)
            out = r.stdout.decode() + r.stderr.decode()
            self.assertNotEqual(r.returncode, 0, out)
            self.assertNotIn("Protocol version: TLSv1.2", out)
            self.assertRegex(out, r"alert protocol version|no protocols available|unsupported protocol", out)

    def test_certificate_fingerprint_is_the_printed_one(self):
        r = self.s_client("-showcerts")
        pem = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S).group(0)
        fp = tlswire.fingerprint_of_der_cert(ssl.PEM_cert_to_DER_cert(pem.decode()))
        self.assertEqual(fp, self.srv.fingerprint)
        # `serve --print-fingerprint` prints the same without starting a server.
        p = run("serve", "--state-dir", self.srv.state, "--print-fingerprint", env=self.srv.env)
        self.assertEqual(p.returncode, EXIT_OK, p.stderr)
        self.assertEqual(p.stdout.strip(), self.srv.fingerprint)
        # `cskit info` shows it.
        p = self.srv.cli("info", self.srv.address)
        self.assertIn(f"server key:  {self.srv.fingerprint}", p.stdout)
        self.assertIn("transport:   TLSv1.3", p.stdout)

    def test_identity_files_are_private(self):
        for name in ("server.key", "server.crt"):
            mode = stat.S_IMODE(os.stat(os.path.join(self.srv.state, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertEqual(stat.S_IMODE(os.stat(self.srv.state).st_mode), 0o700)

    def test_no_alpn_is_served_a_wrong_alpn_refused(self):
        ctx = tlswire.client_context(alpn=False)
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as s:
                self.assertEqual(wire.read_frame(s)[0]["type"], "hello")
        # (http/1.1 is HTTPS on the same port, test_https; h2 is not served.)
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError):
                ctx.wrap_socket(raw)

    def test_key_update_flood_closes_that_connection_only(self):
        # s_client sends a KeyUpdate (update requested) for each line "K" it reads on its own.
        p = subprocess.Popen(["openssl", "s_client", "-connect", self.srv.address], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for _ in range(40):
                try:
                    p.stdin.write(b"K\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    break
                time.sleep(0.02)
            try:
                p.stdin.close()
            except BrokenPipeError:
                pass  # the server has closed the connection, and s_client has exited
            out = p.stdout.read()
            p.stdout.close()
        finally:
            p.wait(timeout=20)
        self.assertGreaterEqual(out.count(b"KEYUPDATE"), 9)
        deadline = time.monotonic() + 5
        while "too many TLS KeyUpdate messages" not in self.srv.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn("too many TLS KeyUpdate messages", self.srv.stderr())
        r = self.srv.cli("ping", self.srv.address, "-c", "1")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)


class KnownHosts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def setUp(self):
        self.home = fresh_home()
        self.addCleanup(shutil.rmtree, self.home, True)
        self.env = client_env(self.srv, self.home)

    def test_non_interactive_first_contact_is_refused_with_what_to_do(self):
        logins = self.srv.stderr().count("authenticated 127.0.0.1")
        r = run("info", self.srv.address, env=self.env, input="")
        self.assertEqual(r.returncode, EXIT_KEY_UNKNOWN, r.stderr)
        self.assertIn(f"its key fingerprint is {self.srv.fingerprint}", r.stderr)
        self.assertIn(f"--fingerprint {self.srv.fingerprint}", r.stderr)
        self.assertIn("--accept-new", r.stderr)
        self.assertIn("cskit serve --print-fingerprint", r.stderr)
        self.assertFalse(os.path.exists(known_hosts(self.home)))
        time.sleep(0.2)
        self.assertEqual(self.srv.stderr().count("authenticated 127.0.0.1"), logins)  # nothing was sent

    def test_accept_new_stores_the_key(self):
        r = run("info", self.srv.address, "--accept-new", env=self.env)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertIn("permanently added", r.stderr)
        with open(known_hosts(self.home)) as f:
            self.assertEqual(f.read(), f"{self.srv.address} {self.srv.fingerprint}\n")
        self.assertEqual(stat.S_IMODE(os.stat(known_hosts(self.home)).st_mode), 0o600)
        r = run("info", self.srv.address, env=self.env)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertIn("trusted: known_hosts line 1", r.stdout)

    def test_fingerprint_right_and_wrong(self):
        other = tlswire.Identity()
        self.addCleanup(other.cleanup)
        r = run("ping", self.srv.address, "-c", "1", "--fingerprint", other.fingerprint, env=self.env)
        self.assertEqual(r.returncode, EXIT_KEY_CHANGED, r.stderr)
        self.assertIn("REMOTE HOST IDENTIFICATION HAS CHANGED", r.stderr)
        self.assertIn(self.srv.fingerprint, r.stderr)
        self.assertFalse(os.path.exists(known_hosts(self.home)))
        r = run("ping", self.srv.address, "-c", "1", "--fingerprint", self.srv.fingerprint, env=self.env)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        # Remembered: the next connection needs no flag.
        r = run("ping", self.srv.address, "-c", "1", env=self.env)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        r = run("ping", self.srv.address, "-c", "1", "--fingerprint", "SHA256:nope", env=self.env)
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("not a key fingerprint", r.stderr)

    def test_pin_in_the_client_config(self):
        cfg = os.path.join(self.home, "client.toml")
        with open(cfg, "w") as f:
            f.write(f'[hosts."{self.srv.address}"]\nfingerprint = "{self.srv.fingerprint}"\n')
        r = run("info", self.srv.address, "--client-config", cfg, env=self.env)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertIn("trusted: pinned fingerprint", r.stdout)
        other = tlswire.Identity()
        self.addCleanup(other.cleanup)
        with open(cfg, "w") as f:
            f.write(f'[hosts."{self.srv.address}"]\nfingerprint = "{other.fingerprint}"\n')
        r = run("info", self.srv.address, "--client-config", cfg, env=self.env)
        self.assertEqual(r.returncode, EXIT_KEY_CHANGED, r.stderr)

    def test_first_contact_on_a_terminal_asks_and_stores(self):
        session = f"cskit-tls-{os.getpid()}"
        sock = os.path.join(self.home, "tmux.sock")
        tmux = ["tmux", "-S", sock]
        env = dict(self.env, TERM="xterm-256color")
        out = os.path.join(self.home, "out.txt")
        try:
            subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "150", "-y", "30",
                                   f"{BIN} info {self.srv.address} > {out}; echo EXIT=$? >> {out}; sleep 30"],
                           check=True, env=env)

            def wait_screen(pattern, timeout=10):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    s = subprocess.run(tmux + ["capture-pane", "-p", "-J", "-t", session], capture_output=True,
                                       text=True, env=env).stdout
                    if re.search(pattern, s):
                        return s
                    time.sleep(0.1)
                self.fail(f"no {pattern!r} on screen:\n{s}")

            s = wait_screen(r"continue connecting \(yes/no/\[fingerprint\]\)\?")
            self.assertIn(self.srv.fingerprint, s)
            self.assertIn(f"The authenticity of server '{self.srv.address}' can't be established", s)
            subprocess.run(tmux + ["send-keys", "-t", session, "-l", "yes"], check=True, env=env)
            subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
            def output():
                if not os.path.exists(out):
                    return ""
                with open(out) as f:
                    return f.read()

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "EXIT=" not in output():
                time.sleep(0.1)
            with open(out) as f:
                text = f.read()
            self.assertIn("EXIT=0", text)
            self.assertIn("server key:", text)
            with open(known_hosts(self.home)) as f:
                self.assertIn(f"{self.srv.address} {self.srv.fingerprint}", f.read())
        finally:
            subprocess.run(tmux + ["kill-server"], capture_output=True, env=env)

    def test_no_on_a_terminal_refuses(self):
        session = f"cskit-tls-no-{os.getpid()}"
        sock = os.path.join(self.home, "tmux.sock")
        tmux = ["tmux", "-S", sock]
        env = dict(self.env, TERM="xterm-256color")
        out = os.path.join(self.home, "out.txt")
        try:
            subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "150", "-y", "30",
                                   f"{BIN} info {self.srv.address} 2>/dev/null; echo EXIT=$? > {out}; sleep 30"],
                           check=True, env=env)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                s = subprocess.run(tmux + ["capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                   env=env).stdout
                if "yes/no" in s or os.path.exists(out):
                    break
                time.sleep(0.1)
            # stderr went to /dev/null: not a terminal on both ends, so no question is asked.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not os.path.exists(out):
                time.sleep(0.1)
            with open(out) as f:
                self.assertIn(f"EXIT={EXIT_KEY_UNKNOWN}", f.read())
            self.assertFalse(os.path.exists(known_hosts(self.home)))
        finally:
            subprocess.run(tmux + ["kill-server"], capture_output=True, env=env)

    def test_changed_key_is_a_hard_failure(self):
        port = free_port()
        first = Server(listen=f"127.0.0.1:{port}")
        try:
            r = run("info", first.address, "--accept-new", env=self.env)
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        finally:
            first.stop()
            first.cleanup()
        # Another server (another state directory: another key) on the same address.
        second = Server(listen=f"127.0.0.1:{port}")
        try:
            r = run("info", second.address, env=self.env)
            self.assertEqual(r.returncode, EXIT_KEY_CHANGED, r.stderr)
            self.assertIn("REMOTE HOST IDENTIFICATION HAS CHANGED", r.stderr)
            self.assertIn(f"{known_hosts(self.home)} line 1", r.stderr)
            self.assertIn(second.fingerprint, r.stderr)
            self.assertNotIn("authenticated 127.0.0.1", second.stderr())  # nothing was sent
            r = run("info", second.address, "--accept-new", env=self.env)  # accept-new never overrides a change
            self.assertEqual(r.returncode, EXIT_KEY_CHANGED, r.stderr)
        finally:
            second.stop()
            second.cleanup()

    def test_same_machine_server_needs_no_setup(self):
        # The server's state directory is this user's default one (what `make run` does).
        home = fresh_home()
        self.addCleanup(shutil.rmtree, home, True)
        state = os.path.join(home, ".local", "state", "cskit")
        srv = Server(state_dir=state, env={"HOME": home})
        try:
            env = client_env(srv, home)
            r = run("info", srv.address, env=env, input="")
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            self.assertIn("trusted: this machine's own server", r.stdout)
            self.assertFalse(os.path.exists(known_hosts(home)))
        finally:
            srv.stop()
            srv.cleanup()


class Relay:
    """A relay in the path. `terminate`: it ends TLS on both sides with its own key (a man in the
    middle); otherwise it copies TCP bytes unchanged and records them (a capture)."""

    def __init__(self, server_port, terminate=False):
        self.server_port = server_port
        self.identity = tlswire.Identity("relay") if terminate else None
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self.relay, args=(conn,), daemon=True).start()

    def relay(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.server_port), timeout=20)
            if self.identity:
                client = self.identity.wrap(client)
                upstream = tlswire.client_context().wrap_socket(upstream)
            self.pump(client, upstream)
        except (OSError, ssl.SSLError):
            pass

    def pump(self, a, b):
        a.settimeout(None)
        b.settimeout(None)
        deadline = time.monotonic() + 60
        socks = [a, b]
        while time.monotonic() < deadline:
            pending = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            ready = pending or select.select(socks, [], [], 0.5)[0]
            for s in ready:
                try:
                    data = s.recv(1 << 16)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                if not data:
                    a.close()
                    b.close()
                    return
                with self.lock:
                    self.captured += data
                (b if s is a else a).sendall(data)

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=10)
        if self.identity:
            self.identity.cleanup()


class RelayInThePath(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def test_relay_with_its_own_key_is_refused(self):
        relay = Relay(self.srv.port, terminate=True)
        try:
            r = self.srv.cli("info", f"127.0.0.1:{relay.port}")
            self.assertEqual(r.returncode, EXIT_KEY_UNKNOWN, r.stderr)
            self.assertIn(relay.identity.fingerprint, r.stderr)
        finally:
            relay.close()

    def test_relay_whose_key_was_pinned_cannot_pass_a_login_through(self):
        relay = Relay(self.srv.port, terminate=True)
        try:
            r = self.srv.cli("exec", f"127.0.0.1:{relay.port}", "--fingerprint", relay.identity.fingerprint,
                             "--", "true")
            self.assertNotEqual(r.returncode, EXIT_OK, r.stderr)
            self.assertIn("bound to another TLS session", r.stderr)
            r = self.srv.cli("info", f"127.0.0.1:{relay.port}", "--fingerprint", relay.identity.fingerprint)
            self.assertEqual(r.returncode, EXIT_AUTH, r.stderr)
            time.sleep(0.2)
            log = self.srv.stderr()
            self.assertIn("channel binding mismatch", log)
            self.assertIn("TLS-terminating relay is in the path", log)
        finally:
            relay.close()

    def test_forged_proof_for_another_session_is_refused(self):
        # A relay's best move: compute nothing, replay the client's proof onto its own session.
        with tlswire.connect(self.srv.port) as victim, tlswire.connect(self.srv.port) as attacker:
            stolen = wire.auth_frame(victim, TOKEN)  # a proof bound to the victim's session
            wire.read_frame(attacker)
            attacker.sendall(stolen)
            h, _ = wire.read_frame(attacker)
            self.assertEqual((h["type"], h["code"]), ("error", "auth_failed"))

    def test_capture_shows_no_file_content_names_or_argv(self):
        marker = "MARKER-" + os.urandom(8).hex()
        relay = Relay(self.srv.port)
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        try:
            src = os.path.join(tmp, marker + ".txt")
            with open(src, "w") as f:
                f.write((marker + "\n") * 1000)
            r = self.srv.cli("put", src, f"127.0.0.1:{relay.port}:", "--fingerprint", self.srv.fingerprint)
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            r = self.srv.cli("info", f"127.0.0.1:{relay.port}", "--fingerprint", self.srv.fingerprint)
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            with open(os.path.join(self.srv.share, marker + ".txt")) as f:
                self.assertIn(marker, f.read())
        finally:
            relay.close()
        with relay.lock:
            captured = bytes(relay.captured)
        self.assertGreater(len(captured), 1000 * len(marker))
        self.assertNotIn(marker.encode(), captured)
        self.assertNotIn(TOKEN.encode(), captured)

    def test_capture_of_an_exec_argument(self):
        marker = "ARGV-" + os.urandom(8).hex()
        conf = '[exec]\nenabled = true\n[[users]]\nname = "ops"\ntoken = "ops-token-0123456789abcdef"\n' \
               'permissions = ["exec"]\n'
        for plaintext in (False, True):
            args = ("--plaintext",) if plaintext else ()
            srv = Server(*args, config_text=conf)
            relay = Relay(srv.port)
            try:
                r = srv.cli("exec", f"127.0.0.1:{relay.port}", "--user", "ops", *args,
                            *(() if plaintext else ("--fingerprint", srv.fingerprint)), "--", "echo", marker,
                            token="ops-token-0123456789abcdef")
                self.assertEqual(r.returncode, EXIT_OK, r.stderr)
                self.assertEqual(r.stdout.strip(), marker)
            finally:
                relay.close()
                srv.stop()
                srv.cleanup()
            with relay.lock:
                captured = bytes(relay.captured)
            # The capture works: in cleartext the argument is plain to see; with TLS it is not.
            self.assertEqual(marker.encode() in captured, plaintext)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class TestCA:
    """A CA made for the test, and certificates it signs."""

    def __init__(self, name="cskit test CA"):
        self.dir = tempfile.mkdtemp(prefix="cskit-ca-")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "ca.key", "-out", "ca.pem", "-days", "3", "-subj", "/CN=" + name,
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
                cwd=self.dir)
        self.cert = os.path.join(self.dir, "ca.pem")
        with open(os.path.join(self.dir, "ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\n"
                    "serial = serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n"
                    "unique_subject = no\n[p]\ncommonName = supplied\n")
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")

    def issue(self, name, san, start=None, end=None):
        """A server key and certificate (leaf then CA in the chain file); returns (chain, key)."""
        key, csr, crt, chain = (os.path.join(self.dir, f"{name}.{x}") for x in ("key", "csr", "crt", "chain"))
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out",
                csr, "-subj", "/CN=" + name, "-addext", "subjectAltName=" + san, cwd=self.dir)
        dates = ["-startdate", start, "-enddate", end] if start else ["-days", "2"]
        openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", csr, "-out",
                crt, "-notext", *dates, cwd=self.dir)
        with open(chain, "w") as out:
            for p in (crt, self.cert):
                with open(p) as f:
                    out.write(f.read())
        return chain, key

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class CAIssuedCertificates(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ca = TestCA()
        cls.other_ca = TestCA("another CA")
        chain, key = cls.ca.issue("localhost", "DNS:localhost,IP:127.0.0.1")
        cls.srv = Server("--tls-cert", chain, "--tls-key", key)

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)
        cls.ca.cleanup()
        cls.other_ca.cleanup()

    def setUp(self):
        self.home = fresh_home()
        self.addCleanup(shutil.rmtree, self.home, True)
        self.env = client_env(self.srv, self.home)

    def test_chain_and_host_name_verify(self):
        for host in (f"localhost:{self.srv.port}", self.srv.address):
            r = run("info", host, "--ca-file", self.ca.cert, env=self.env, input="")
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            self.assertIn(f"trusted: certificate ({self.ca.cert})", r.stdout)
        self.assertFalse(os.path.exists(known_hosts(self.home)))  # nothing to pin: the CA vouches

    def test_untrusted_ca_is_refused(self):
        r = run("info", f"localhost:{self.srv.port}", "--ca-file", self.other_ca.cert, env=self.env, input="")
        self.assertEqual(r.returncode, EXIT_KEY_UNKNOWN, r.stderr)
        self.assertIn("not vouched for by a CA", r.stderr)
        r = run("info", f"localhost:{self.srv.port}", env=self.env, input="")  # the system's CAs do not know it
        self.assertEqual(r.returncode, EXIT_KEY_UNKNOWN, r.stderr)

    def test_wrong_host_name_is_refused(self):
        chain, key = self.ca.issue("elsewhere", "DNS:elsewhere.example")
        srv = Server("--tls-cert", chain, "--tls-key", key)
        try:
            r = run("info", f"localhost:{srv.port}", "--ca-file", self.ca.cert, env=client_env(srv, self.home),
                    input="")
            self.assertEqual(r.returncode, EXIT_KEY_UNKNOWN, r.stderr)
            self.assertIn("not for 'localhost'", r.stderr)
        finally:
            srv.stop()
            srv.cleanup()

    def test_bad_certificate_files_stop_the_server_at_start(self):
        expired, expired_key = self.ca.issue("old", "DNS:localhost", "20200101000000Z", "20200102000000Z")
        chain, key = self.ca.issue("fine", "DNS:localhost")
        _, other_key = self.ca.issue("other", "DNS:localhost")
        unreadable = os.path.join(self.ca.dir, "missing.pem")
        cases = [
            ((expired, expired_key), "expired"),
            ((chain, other_key), "does not match"),
            ((unreadable, key), "No such file"),
            ((key, key), "no PEM certificate"),
        ]
        for (cert, k), message in cases:
            with self.subTest(message=message):
                tmp = tempfile.mkdtemp()
                try:
                    r = run("serve", "--listen", "127.0.0.1:0", "--state-dir", tmp, "--root", tmp,
                            "--tls-cert", cert, "--tls-key", k, env=dict(os.environ, CSKIT_TOKEN=TOKEN), timeout=20)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
                self.assertIn(message, r.stderr)


class Cleartext(unittest.TestCase):
    """The explicit opt-in: both sides say --plaintext; nothing falls back by itself."""

    def test_both_sides_opt_in_on_loopback(self):
        with Server("--plaintext") as srv:
            self.assertTrue(any("tls: OFF" in line for line in srv.banner), srv.banner)
            r = srv.cli("ping", srv.address, "-c", "1", "--plaintext")
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            r = srv.cli("info", srv.address, "--plaintext", "--json")
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            self.assertIn('"tls":false', r.stdout.replace(" ", ""))
            # A TLS client never falls back.
            r = srv.cli("info", srv.address)
            self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
            self.assertIn("does not speak TLS", r.stderr)
            self.assertIn("never falls back to cleartext", r.stderr)

    def test_cleartext_client_against_a_tls_server_gets_nothing(self):
        with Server() as srv:
            r = srv.cli("info", srv.address, "--plaintext", "-W", "1")
            self.assertEqual(r.returncode, EXIT_TIMEOUT, r.stderr)
            self.assertNotIn("authenticated", srv.stderr())

    def test_no_cleartext_login_to_a_non_loopback_address(self):
        # A private network namespace with 10.9.9.9 on its loopback interface: an address that
        # is not a loopback address, reachable without any network.
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp, True)
        script = f"""
            set -e
            ip link set lo up
            ip addr add 10.9.9.9/32 dev lo
            {BIN} serve --plaintext --listen 10.9.9.9:7701 --root {tmp}/share --state-dir {tmp}/state \
                >{tmp}/out 2>{tmp}/err &
            server=$!
            for i in $(seq 50); do grep -q listening {tmp}/out 2>/dev/null && break; sleep 0.1; done
            set +e
            {BIN} ping 10.9.9.9:7701 -c 1 --plaintext; echo "exit=$?"
            {BIN} ping 127.0.0.1:1 -c 1 --plaintext --connect-timeout 1 >/dev/null 2>&1
            kill $server; wait $server
        """
        r = subprocess.run(["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, CSKIT_TOKEN=TOKEN, HOME=tmp))
        self.assertIn("exit=3", r.stdout, r.stderr)
        self.assertIn("refusing to log in to 10.9.9.9:7701 over cleartext", r.stderr)
        with open(os.path.join(tmp, "err")) as f:
            self.assertNotIn("authenticated", f.read())


class HostileTLS(unittest.TestCase):
    """Garbage, stalled and truncated TLS: that connection ends, the others keep working."""

    @classmethod
    def setUpClass(cls):
        raise_fd_limit()
        cls.srv = Server("--handshake-timeout", "2", "--frame-timeout", "2", log_level="warn")
        cls.good, _ = wire.login(cls.srv.port, TOKEN)
        cls.good_id = 0

    @classmethod
    def tearDownClass(cls):
        cls.good.close()
        cls.srv.__exit__(None, None, None)

    def assert_others_work(self):
        HostileTLS.good_id += 1
        self.good.sendall(wire.encode({"type": "ping", "id": HostileTLS.good_id}))
        self.assertEqual(wire.read_frame(self.good, 5)[0]["id"], HostileTLS.good_id)
        r = self.srv.cli("ping", self.srv.address, "-c", "1")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)

    def client_hello(self):
        """The first flight of a real TLS 1.3 client, as bytes."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tlswire.client_context().wrap_bio(incoming, outgoing)
        with self.assertRaises(ssl.SSLWantReadError):
            obj.do_handshake()
        return outgoing.read()

    def test_random_bytes(self):
        for size in (1, 5, 100, 20000):
            with socket.create_connection(("127.0.0.1", self.srv.port), timeout=10) as s:
                s.sendall(random.Random(size).randbytes(size) if size > 5 else b"\x16\x03\x01\xff\xff"[:size])
                t0 = time.monotonic()
                wire.wait_closed(s, 6)
                self.assertLess(time.monotonic() - t0, 5)
        self.assert_others_work()

    def test_half_a_handshake_held_open(self):
        hello = self.client_hello()
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=10) as s:
            s.sendall(hello[: len(hello) // 2])
            t0 = time.monotonic()
            self.assert_others_work()
            wire.wait_closed(s, 10)
            self.assertGreater(time.monotonic() - t0, 1.0)
            self.assertLess(time.monotonic() - t0, 5)

    def test_truncated_record_after_login(self):
        # TLS in memory over a raw socket, so that half a record can be sent.
        raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tlswire.client_context().wrap_bio(incoming, outgoing)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        obj.write(wire.encode({"type": "ping", "id": 1}, b"x" * 1000))
        record = outgoing.read()
        raw.sendall(record[: len(record) // 2])
        t0 = time.monotonic()
        self.assert_others_work()
        wire.wait_closed(raw, 10)
        self.assertLess(time.monotonic() - t0, 6)
        raw.close()

    def test_many_stalled_handshakes(self):
        hello = self.client_hello()
        stalled = []
        try:
            # From ten addresses (127.0.0.10-19, each under its limit of connections not
            # logged in yet), so that the server really holds all thousand.
            for i in range(1000):
                s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10,
                                             source_address=(f"127.0.0.{10 + i % 10}", 0))
                s.sendall(hello[:10] if i % 2 else b"")
                stalled.append(s)
            t0 = time.monotonic()
            self.assert_others_work()
            # Every stalled one is closed at the handshake deadline (2 s), give or take.
            closed = 0
            deadline = time.monotonic() + 15
            pending = list(stalled)
            while pending and time.monotonic() < deadline:
                ready, _, _ = select.select(pending, [], [], 0.5)
                for s in ready:
                    try:
                        data = s.recv(100)
                    except OSError:
                        data = b""
                    if not data:
                        closed += 1
                        pending.remove(s)
            self.assertEqual(closed, len(stalled))
            self.assertLess(time.monotonic() - t0, 12)
            self.assert_others_work()
        finally:
            for s in stalled:
                s.close()


class RecordCounter:
    """Counts the TLS records in a ciphertext stream fed to it in any pieces."""

    def __init__(self):
        self.records = 0
        self._header = b""
        self._left = 0  # bytes of the current record's payload still to come

    def feed(self, data):
        view = memoryview(data)
        while view:
            if self._left:
                n = min(self._left, len(view))
                self._left -= n
                view = view[n:]
                continue
            need = 5 - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) == 5:
                self._left = int.from_bytes(self._header[3:5], "big")
                self._header = b""
                self.records += 1


class RecordsOnTheWire(unittest.TestCase):
    """What the server sends is sealed in as few records as the queue allows."""

    def setUp(self):
        self.srv = Server("--threads", "1", config_text="[chat]\nrate = 0\nhistory = 0\n")

    def tearDown(self):
        self.srv.stop()
        self.srv.cleanup()

    def connect_counted(self, nick):
        """A logged-in chat client in #records whose received TLS records are counted from now on."""
        c = cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                        fingerprint=self.srv.fingerprint, timeout=20)
        self.addCleanup(c.close)
        c.request("chat.hello", nick=nick)
        c.request("chat.join", room="#records")
        counter = RecordCounter()
        c._t.on_received = counter.feed
        return c, counter

    def read_messages(self, c, n, want_oks):
        """Reads until n chat.message frames (and n chat.ok if `want_oks`) came; returns the frame count."""
        oks = messages = 0
        while messages < n or (want_oks and oks < n):
            h, b = c.recv()
            if h["type"] == "chat.ok":
                oks += 1
            elif h["type"] == "chat.message":
                self.assertEqual(b, b"line %d" % messages)  # in order, none lost
                messages += 1
        return oks + messages

    def test_queued_small_frames_share_records(self):
        receiver, receiver_records = self.connect_counted("reader")
        sender, sender_records = self.connect_counted("writer")
        # 300 messages in one write: the server reads them in one batch, answers each
        # with chat.ok and the room's chat.message (600 small frames to the sender), and
        # queues 300 shared frames for the receiver, which reads only afterwards.
        n = 300
        sender._send_raw(b"".join(
            cskit_client.encode_frame({"type": "chat.say", "id": sender.next_id(), "room": "#records"},
                                      b"line %d" % i) for i in range(n)))
        sender_frames = self.read_messages(sender, n, want_oks=True)
        receiver_frames = self.read_messages(receiver, n, want_oks=False)
        # One record per frame, or per run of replies, before small frames were sealed together.
        for who, records, frames in (("sender", sender_records.records, sender_frames),
                                     ("receiver", receiver_records.records, receiver_frames)):
            self.assertLess(records * 4, frames, f"{who}: {records} records for {frames} frames")


if __name__ == "__main__":
    unittest.main()
