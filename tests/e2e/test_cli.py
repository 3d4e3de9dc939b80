"""End-to-end: `cskit serve`, `cskit ping`, `cskit info`, `cskit help` as a user runs them."""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import unittest

import tlswire
import wire
from harness import BIN, TOKEN, Server, free_port

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH = 0, 1, 2, 3, 4
EXIT_PERMISSION, EXIT_PROTOCOL, EXIT_REMOTE, EXIT_TIMEOUT = 5, 6, 7, 8


class PingAndInfo(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server()

    @classmethod
    def tearDownClass(cls):
        cls.srv.__exit__(None, None, None)

    def test_ping_text(self):
        r = self.srv.cli("ping", self.srv.address, "-c", "3", "-i", "0.05")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertIn(f"PING {self.srv.address}", r.stdout)
        self.assertEqual(r.stdout.count("pong from"), 3)
        self.assertIn("3 probes sent, 3 received, 0% lost", r.stdout)
        self.assertRegex(r.stdout, r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms")

    def test_ping_json_and_payload(self):
        r = self.srv.cli("ping", self.srv.address, "-c", "4", "-i", "0", "-s", "100000", "--json")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual((j["sent"], j["received"], j["size"]), (4, 4, 100000))
        self.assertEqual(len(j["probes"]), 4)
        self.assertEqual([p["seq"] for p in j["probes"]], [1, 2, 3, 4])
        rtt = j["rtt_ms"]
        self.assertTrue(0 < rtt["min"] <= rtt["avg"] <= rtt["max"])
        self.assertEqual(j["user"], "admin")

    def test_ping_quiet(self):
        r = self.srv.cli("ping", self.srv.address, "-c", "2", "-i", "0", "-q")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertNotIn("pong from", r.stdout)
        self.assertIn("2 probes sent, 2 received", r.stdout)

    def test_ping_until_interrupted(self):
        env = dict(self.srv.env, CSKIT_TOKEN=TOKEN)
        p = subprocess.Popen([BIN, "ping", self.srv.address, "-i", "0.05"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        # Ctrl-C once it is pinging (its header line is printed as it takes
        # over SIGINT): a slow start (the sanitizers, a loaded machine) must
        # not turn the test into one of a SIGINT before the handler.
        first = p.stdout.readline()  # EOF at once if it failed
        self.assertTrue(first.startswith("PING "), first)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=10)
        out = first + rest
        self.assertEqual(p.returncode, EXIT_OK, err)
        self.assertIn("cskit ping statistics", out)
        self.assertRegex(out, r"(\d+) probes sent, \1 received")

    def test_info_text(self):
        r = self.srv.cli("info", self.srv.address)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertRegex(r.stdout, r"server:\s+cskit \d+\.\d+\.\d+ \(protocol 2\)")
        self.assertRegex(r.stdout, r"user:\s+admin")
        self.assertRegex(r.stdout, r"permissions:\s+files-read, files-write, chat\n")
        self.assertRegex(r.stdout, r"services:\s+chat, core")

    def test_info_json(self):
        r = self.srv.cli("info", self.srv.address, "--json")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual(j["server"], "cskit")
        self.assertEqual(j["proto"], 2)
        self.assertEqual(j["user"], "admin")
        self.assertEqual(j["permissions"], ["files-read", "files-write", "chat"])
        self.assertNotIn("exec", j["permissions"])
        self.assertIn("core", j["services"])
        self.assertEqual(j["address"], self.srv.address)

    def test_wrong_token(self):
        r = self.srv.cli("info", self.srv.address, token="wrong-token-0123456789")
        self.assertEqual(r.returncode, EXIT_AUTH)
        self.assertIn("authentication failed", r.stderr)
        r = self.srv.cli("ping", self.srv.address, "-c", "1", "--json", token="wrong-token-0123456789")
        self.assertEqual(r.returncode, EXIT_AUTH)
        self.assertEqual(json.loads(r.stdout)["error"]["code"], "auth_failed")

    def test_unknown_user(self):
        r = self.srv.cli("info", self.srv.address, "--user", "nobody")
        self.assertEqual(r.returncode, EXIT_AUTH)
        self.assertIn("authentication failed for user 'nobody'", r.stderr)

    def test_token_flag_overrides_environment(self):
        r = self.srv.cli("info", self.srv.address, "--token", TOKEN, token="wrong-token-0123456789")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)

    def test_token_from_client_config(self):
        cfg = os.path.join(self.srv.dir, "client.toml")
        with open(cfg, "w") as f:
            f.write('token = "wrong-default-token-123"\n'
                    f'[hosts."{self.srv.address}"]\ntoken = "{TOKEN}"\n')
        os.chmod(cfg, 0o600)
        r = self.srv.cli("info", self.srv.address, "--client-config", cfg, token=None)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        r = self.srv.cli("info", f"localhost:{self.srv.port}", "--client-config", cfg, token=None)
        self.assertEqual(r.returncode, EXIT_AUTH, r.stderr)

    def test_the_client_config_is_as_strict_as_the_servers(self):
        cfg = os.path.join(self.srv.dir, "strict.toml")

        def info(text, mode=0o600):
            with open(cfg, "w") as f:
                f.write(text)
            os.chmod(cfg, mode)
            return self.srv.cli("info", self.srv.address, "--client-config", cfg)

        # An unknown key (a typo) is named with the file and its line: exit 1, a local failure.
        r = info(f'user = "admin"\n[hosts."{self.srv.address}"]\naddress = "127.0.0.1"\nfingerprnt = "x"\n')
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn(f"{cfg}:4: unknown key 'fingerprnt' in [hosts.{self.srv.address}]", r.stderr)
        r = info('usr = "admin"\n')
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn(f"{cfg}:1: unknown key 'usr'", r.stderr)
        r = info('fingerprint = "SHA256:x"\n')
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn("a pinned key belongs in a [hosts.NAME] table", r.stderr)
        r = info('user = \n')
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn(f"{cfg}:1:", r.stderr)
        # A token others may read is refused, as ssh refuses such a key;
        # without a token the file may be readable.
        r = info(f'token = "{TOKEN}"\n', mode=0o644)
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn("holds a token and may be read by others (chmod 600", r.stderr)
        self.assertEqual(info('user = "admin"\n', mode=0o644).returncode, EXIT_OK)
        self.assertEqual(info(f'token = "{TOKEN}"\n').returncode, EXIT_OK)
        # A config file named on the command line that is not there: 1, not 4.
        r = self.srv.cli("info", self.srv.address, "--client-config", cfg + ".missing")
        self.assertEqual(r.returncode, EXIT_FAILURE, r.stderr)
        self.assertIn(f"client config {cfg}.missing does not exist", r.stderr)

    def test_missing_token(self):
        r = self.srv.cli("info", self.srv.address, "--user", "alice", token=None)
        self.assertEqual(r.returncode, EXIT_AUTH)
        self.assertIn("no token", r.stderr)

    def test_localhost_name_and_ipv6_syntax(self):
        r = self.srv.cli("ping", f"localhost:{self.srv.port}", "-c", "1")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        r = self.srv.cli("ping", "[::1]:1", "-c", "1", "--connect-timeout", "2")
        self.assertEqual(r.returncode, EXIT_CONNECT)

    def test_cannot_connect(self):
        r = self.srv.cli("ping", f"127.0.0.1:{free_port()}", "-c", "1")
        self.assertEqual(r.returncode, EXIT_CONNECT)
        self.assertIn("cannot connect", r.stderr)
        r = self.srv.cli("ping", "bad host!", "-c", "1")
        self.assertEqual(r.returncode, EXIT_CONNECT)
        self.assertIn("invalid host", r.stderr)


class Help(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30)

    def test_help(self):
        r = self.run_cli("help")
        self.assertEqual(r.returncode, EXIT_OK)
        for word in ("serve", "ping", "info", "Exit codes", "permission denied"):
            self.assertIn(word, r.stdout)
        r = self.run_cli("help", "ping")
        self.assertEqual(r.returncode, EXIT_OK)
        self.assertIn("--count", r.stdout)
        r = self.run_cli("serve", "--help")
        self.assertEqual(r.returncode, EXIT_OK)
        self.assertIn("--idle-timeout", r.stdout)
        r = self.run_cli("help", "nosuch")
        self.assertEqual(r.returncode, EXIT_USAGE)

    def test_every_command_has_its_help(self):
        # main.cpp builds only the command named on the command line; each
        # must still be listed by `cskit help` and describe itself both ways.
        commands = ("serve", "ping", "time", "sync", "info", "exec", "chat", "put", "get", "ls", "stat",
                    "mkdir", "rm", "mv", "help", "version")
        listing = self.run_cli("help").stdout
        for name in commands:
            with self.subTest(command=name):
                self.assertRegex(listing, rf"(?m)^\s+{name}\s")
                own = self.run_cli(name, "--help")
                self.assertEqual(own.returncode, EXIT_OK, own.stderr)
                self.assertIn(f"cskit {name}", own.stdout)
                topic = self.run_cli("help", name)
                self.assertEqual(topic.returncode, EXIT_OK, topic.stderr)
                self.assertIn("--help", topic.stdout)
        # Options of one command are not accepted by another.
        self.assertEqual(self.run_cli("ls", "--fanout", "3", "h:").returncode, EXIT_USAGE)

    def test_usage_errors(self):
        self.assertEqual(self.run_cli().returncode, EXIT_USAGE)
        self.assertEqual(self.run_cli("ping").returncode, EXIT_USAGE)
        self.assertEqual(self.run_cli("ping", "h", "-c", "x").returncode, EXIT_USAGE)
        self.assertEqual(self.run_cli("frobnicate").returncode, EXIT_USAGE)

    def test_version(self):
        r = self.run_cli("--version")
        self.assertEqual(r.returncode, EXIT_OK)
        self.assertRegex(r.stdout, r"cskit \d+\.\d+\.\d+ \(protocol 2\)")
        v = self.run_cli("version")  # as git, go, docker have it
        self.assertEqual((v.returncode, v.stdout), (EXIT_OK, r.stdout))

    def test_a_typo_gets_did_you_mean(self):
        for typed, meant in (("pnig", "ping"), ("chta", "chat"), ("rn", "rm"), ("serv", "serve"), ("exe", "exec"),
                             ("versoin", "version")):
            with self.subTest(typed=typed):
                r = self.run_cli(typed, "127.0.0.1")
                self.assertEqual(r.returncode, EXIT_USAGE)
                self.assertIn(f"cskit: '{typed}' is not a cskit command; did you mean '{meant}'", r.stderr)
                self.assertNotIn("A subcommand is required", r.stderr)
        r = self.run_cli("frobnicate")
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertNotIn("did you mean", r.stderr)
        self.assertIn("commands: serve, ping", r.stderr)

    def test_errors_name_the_command_and_the_argument(self):
        r = self.run_cli("put", "--frob", "a", "h:")
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertEqual(r.stderr, "cskit put: unknown option '--frob' (cskit help put)\n")
        r = self.run_cli("ls", "h:", "--fanout", "3")
        self.assertIn("cskit ls: unknown option '--fanout'", r.stderr)
        r = self.run_cli("info", "h", "extra")
        self.assertIn("cskit info: unexpected argument 'extra'", r.stderr)
        # A missing argument is named as the usage line (help) names it.
        for args, named in ((("put",), "LOCAL... HOST:[REMOTE]"), (("get",), "HOST:REMOTE..."),
                            (("ping", "-c", "3"), "HOST[:PORT]"), (("mv",), "HOST:FROM TO"),
                            (("time",), "HOST[:PORT]...")):
            with self.subTest(args=args):
                r = self.run_cli(*args)
                self.assertEqual(r.returncode, EXIT_USAGE)
                self.assertIn(f"cskit {args[0]}: missing {named}; usage: cskit {args[0]} ", r.stderr)
                usage = self.run_cli("help", args[0]).stdout
                self.assertIn(f"Usage: cskit {args[0]} ", usage)
                self.assertIn(named, usage)
        r = self.run_cli("ping", "h", "-c", "x")
        self.assertTrue(r.stderr.startswith("cskit ping: --count"), r.stderr)

    def test_the_exit_code_table_is_in_the_main_help_only(self):
        self.assertIn("Exit codes:", self.run_cli("help").stdout)
        for name in ("put", "ping", "serve"):
            with self.subTest(command=name):
                self.assertNotIn("Exit codes:", self.run_cli("help", name).stdout)
                self.assertNotIn("Exit codes:", self.run_cli(name, "--help").stdout)
        self.assertIn("exec", self.run_cli("serve", "--help").stdout)  # how to turn exec on


class ServerLifecycle(unittest.TestCase):
    def test_generated_token_is_private_and_reused(self):
        srv = Server(token=None)
        try:
            path = os.path.join(srv.state, "admin.token")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            token = open(path).read().strip()
            self.assertEqual(len(token), 64)
            self.assertTrue(any(token in line for line in srv.banner), srv.banner)
            r = srv.cli("info", srv.address, token=token)
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            self.assertEqual(srv.stop(), 0)
            srv2 = Server(token=None, state_dir=srv.state)
            with srv2:
                self.assertEqual(srv2.cli("info", srv2.address, token=token).returncode, EXIT_OK)
        finally:
            srv.cleanup()

    def test_config_file_users_and_permissions(self):
        cfg = ('[server]\nname = "e2e-box"\n'
               '[[users]]\nname = "alice"\ntoken = "alice-token-0123456789"\npermissions = ["chat"]\n'
               '[[users]]\nname = "bob"\ntoken = "bob-token-0123456789ab"\npermissions = ["files-read", "exec"]\n')
        with Server(token=None, config_text=cfg) as srv:
            r = srv.cli("info", srv.address, "--user", "alice", "--json", token="alice-token-0123456789")
            self.assertEqual(r.returncode, EXIT_OK, r.stderr)
            j = json.loads(r.stdout)
            self.assertEqual(j["permissions"], ["chat"])
            self.assertEqual(j["name"], "e2e-box")
            r = srv.cli("info", srv.address, "--user", "bob", "--json", token="bob-token-0123456789ab")
            self.assertEqual(json.loads(r.stdout)["permissions"], ["files-read", "exec"])
            # No default admin when the config lists users.
            self.assertEqual(srv.cli("info", srv.address, token=TOKEN).returncode, EXIT_AUTH)
            # alice's token does not work for bob.
            r = srv.cli("info", srv.address, "--user", "bob", token="alice-token-0123456789")
            self.assertEqual(r.returncode, EXIT_AUTH)

    def test_bad_config_is_reported(self):
        with self.assertRaises(RuntimeError) as cm:
            Server(config_text='[server]\nthreads = "many"\n')
        self.assertIn("threads", str(cm.exception))

    def test_listen_address_in_use(self):
        with Server() as srv:
            r = subprocess.run([BIN, "serve", "--listen", srv.address, "--root", srv.share,
                                "--state-dir", srv.state], capture_output=True, text=True,
                               timeout=30, env=srv.env)
            self.assertEqual(r.returncode, EXIT_FAILURE)
            self.assertIn("cannot listen on " + srv.address, r.stderr)

    def test_max_connections(self):
        with Server("--max-connections", "1") as srv:
            held, _ = wire.login(srv.port, TOKEN)
            try:
                r = srv.cli("info", srv.address)
                self.assertEqual(r.returncode, EXIT_CONNECT)
                self.assertIn("too_many_connections", r.stderr)
            finally:
                held.close()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if srv.cli("info", srv.address).returncode == EXIT_OK:
                    break
                time.sleep(0.05)
            else:
                self.fail("slot was not freed after the first client left")

    def test_sigterm_with_a_connected_client(self):
        srv = Server("--grace", "3")
        try:
            sock, _ = wire.login(srv.port, TOKEN)
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            bye, _ = wire.read_frame(sock, 5)
            self.assertEqual(bye["type"], "bye")
            self.assertEqual(bye["code"], "shutting_down")
            wire.wait_closed(sock, 5)
            self.assertEqual(srv.proc.wait(timeout=10), 0)
            self.assertLess(time.monotonic() - t0, 5)
            # The port is closed: no new connections after shutdown.
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        finally:
            srv.cleanup()

    def test_readiness_and_stopping_reach_a_service_manager(self):
        # systemd's Type=notify protocol, with a socket of our own as
        # NOTIFY_SOCKET: a path, then an abstract name ('@').
        for abstract in (False, True):
            with self.subTest(abstract=abstract):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.addCleanup(sock.close)
                if abstract:
                    name = f"@cskit-notify-{os.getpid()}-{time.monotonic_ns()}"
                    sock.bind("\0" + name[1:])
                else:
                    where = tempfile.mkdtemp(prefix="cskit-notify-")
                    self.addCleanup(shutil.rmtree, where, ignore_errors=True)
                    name = os.path.join(where, "notify")
                    sock.bind(name)
                sock.settimeout(10)
                srv = Server(env={"NOTIFY_SOCKET": name})
                try:
                    ready = sock.recv(4096).decode().split("\n")
                    self.assertIn("READY=1", ready)
                    self.assertIn(f"MAINPID={srv.proc.pid}", ready)
                    self.assertIn(f"STATUS=listening on {srv.address}", ready)
                    # Ready means serving: a client gets in at once.
                    self.assertEqual(srv.cli("ping", "-c", "1", srv.address).returncode, 0)
                    srv.proc.send_signal(signal.SIGTERM)
                    self.assertIn("STOPPING=1", sock.recv(4096).decode().split("\n"))
                    self.assertEqual(srv.proc.wait(timeout=30), 0)
                finally:
                    srv.cleanup()
        # Without NOTIFY_SOCKET (or with one nobody listens on) the server runs as ever.
        srv = Server(env={"NOTIFY_SOCKET": "/nonexistent/notify"})
        try:
            self.assertEqual(srv.cli("ping", "-c", "1", srv.address).returncode, 0)
        finally:
            srv.cleanup()

    def test_the_banner_says_sizes_as_people_read_them(self):
        with Server(config_text='[files]\nquota = "3G"\nmax_file_size = "1536M"\n') as srv:
            share = next(line for line in srv.banner if line.startswith("share: "))
            self.assertIn(", quota 3.0 GiB, files up to 1.5 GiB", share)

    def test_sigint_exits_zero(self):
        srv = Server()
        try:
            self.assertEqual(srv.stop(signal.SIGINT), 0)
            self.assertIn("received SIGINT", srv.stderr())
        finally:
            srv.cleanup()

    def test_log_lines(self):
        with Server() as srv:
            srv.cli("info", srv.address)
            srv.cli("info", srv.address, token="wrong-token-0123456789")
            time.sleep(0.2)
            log = srv.stderr()
        self.assertRegex(log, r"connection from 127\.0\.0\.1:\d+")
        self.assertRegex(log, r"authenticated 127\.0\.0\.1:\d+ as admin")
        self.assertRegex(log, r"authentication failed from 127\.0\.0\.1:\d+ for user 'admin'")
        self.assertRegex(log, r"closed 127\.0\.0\.1:\d+ user=admin")


class FakeServer:
    """A server that says whatever the test wants, to check the client's checks. With `tls`, the
    script gets the connection after a TLS handshake with a throwaway identity, which the client
    is told to trust (--fingerprint)."""

    def __init__(self, script, tls=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.identity = tlswire.Identity() if tls else None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(20)
        try:
            conn, _ = self.sock.accept()
            with conn:
                if self.identity:
                    conn = self.identity.wrap(conn)
                self.script(conn)
        except OSError:
            pass

    def trust_args(self):
        return ["--fingerprint", self.identity.fingerprint] if self.identity else []

    def close(self):
        self.sock.close()
        self.thread.join(timeout=10)
        if self.identity:
            self.identity.cleanup()


def hello(**fields):
    h = {"type": "hello", "proto": 2, "server": "cskit", "version": "9", "name": "fake",
         "auth": ["hmac-sha256"], "binding": "tls-exporter"}
    h.update(fields)
    return wire.encode(h)


class ClientChecksTheServer(unittest.TestCase):
    def run_client(self, script, tls=True, *extra):
        fake = FakeServer(script, tls)
        try:
            return subprocess.run([BIN, "info", f"127.0.0.1:{fake.port}", "--token", TOKEN, *fake.trust_args(),
                                   *extra], capture_output=True, text=True, timeout=30)
        finally:
            fake.close()

    def test_server_that_cannot_prove_the_token_is_rejected(self):
        def impostor(conn):
            conn.sendall(hello(name="evil"))
            auth, _ = wire.read_frame(conn)
            conn.sendall(wire.encode({"type": "welcome", "id": auth["id"], "user": "admin",
                                      "permissions": [], "proof": "00" * 32}))
            wire.wait_closed(conn, 10)

        r = self.run_client(impostor)
        self.assertEqual(r.returncode, EXIT_AUTH)
        self.assertIn("could not prove it knows your token", r.stderr)

    def test_auth_frame_never_contains_the_token(self):
        seen = {}

        def recorder(conn):
            conn.sendall(hello(name="rec"))
            conn.settimeout(10)
            seen["bytes"] = conn.recv(65536)
            seen["exporter"] = tlswire.exporter(conn)

        self.run_client(recorder)
        self.assertTrue(seen.get("bytes"))
        self.assertNotIn(TOKEN.encode(), seen["bytes"])
        # The proof is bound to this TLS session (RFC 9266 tls-exporter).
        auth = json.loads(seen["bytes"][4:])
        self.assertEqual(auth["proof"], wire.proof(b"cskit/2 client", TOKEN, "admin", "tls-exporter",
                                                   seen["exporter"]))
        self.assertNotIn("nonce", auth)

    def test_version_mismatch(self):
        def future(conn):
            conn.sendall(hello(proto=3))
            wire.wait_closed(conn, 10)

        r = self.run_client(future)
        self.assertEqual(r.returncode, EXIT_PROTOCOL)
        self.assertIn("protocol version 3", r.stderr)

    def test_hello_with_wrong_field_types(self):
        def odd(conn):
            conn.sendall(hello(version=9, name=["x"], binding=5))
            wire.wait_closed(conn, 10)

        r = self.run_client(odd)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        self.assertIn("malformed frame from server", r.stderr)

    def test_hello_without_a_known_auth_method(self):
        def other(conn):
            conn.sendall(hello(auth=["password"]))
            wire.wait_closed(conn, 10)

        r = self.run_client(other)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        self.assertIn("hmac-sha256", r.stderr)

    def test_hello_binding_to_nonces_over_tls_is_refused(self):
        # A server that tries to move the login off the TLS channel.
        def downgrade(conn):
            conn.sendall(hello(binding="nonces", nonce=os.urandom(32).hex()))
            wire.wait_closed(conn, 10)

        r = self.run_client(downgrade)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        self.assertIn("binds its login to 'nonces'", r.stderr)

    def test_garbage_from_server(self):
        # Inside TLS, and instead of TLS. The fake server waits for the client to hang up: closing
        # with the client's bytes unread would reset the connection, which the client may see first.
        def garbage(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            wire.wait_closed(conn, 10)

        r = self.run_client(garbage)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        r = self.run_client(garbage, False)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        self.assertIn("does not speak TLS", r.stderr)

    def test_cleartext_cskit_server_is_never_used_silently(self):
        # A cskit server without TLS greets in cleartext: the client says so, and stops.
        def cleartext(conn):
            conn.sendall(hello(binding="nonces", nonce=os.urandom(32).hex()))
            wire.wait_closed(conn, 10)

        r = self.run_client(cleartext, False)
        self.assertEqual(r.returncode, EXIT_PROTOCOL, r.stderr)
        self.assertIn("does not speak TLS: it answered with a cskit frame without TLS", r.stderr)
        self.assertIn("never falls back to cleartext", r.stderr)

    def test_silent_server_times_out(self):
        def silent(conn):
            time.sleep(3)

        for tls in (False, True):  # silent before the TLS handshake, and after it
            fake = FakeServer(silent, tls)
            try:
                r = subprocess.run([BIN, "info", f"127.0.0.1:{fake.port}", "--token", TOKEN, "--timeout", "0.5",
                                    *fake.trust_args()], capture_output=True, text=True, timeout=30)
            finally:
                fake.close()
            self.assertEqual(r.returncode, EXIT_TIMEOUT, r.stderr)
            self.assertIn("no answer", r.stderr)


if __name__ == "__main__":
    unittest.main()
