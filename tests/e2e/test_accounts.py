"""Accounts without hand-editing (`cskit user`) and `systemctl reload`
(SIGHUP): users, tokens, permissions and limits re-read by a running
server; sessions whose account was removed, got a new token or lost a
permission are told and closed, over the cskit protocol and IRC alike;
readiness and reload reported to a fake service manager (NOTIFY_SOCKET)."""
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
import unittest

import wire
from harness import BIN, TOKEN, Server
from test_irc import Irc, irc_port

ALICE = "alice-token-0123456789abcdef"

CONF = f"""
[server]
frame_timeout = 5

[irc]
listen = "127.0.0.1:0"
tls = false

[[users]]
name = "alice"
token = "{ALICE}"
permissions = ["files-read", "chat"]
"""


class NotifySocket:
    """A fake service manager: the datagrams a server sends to NOTIFY_SOCKET."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cskit-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def next(self, timeout=20):
        self.sock.settimeout(timeout)
        return dict(line.split("=", 1) for line in self.sock.recv(4096).decode().split("\n") if "=" in line)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def user(srv, *args):
    """`cskit user ARGS --config <the server's config>`."""
    return srv.cli("user", *args, "--config", srv._config_path, token=None)


class UserCommand(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="cskit-users-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.state = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "cskit.toml")
        with open(self.config, "w") as f:
            f.write(f"# hand-written comment\n[server]\nstate_dir = \"{self.state}\"\n")
        self.users = os.path.join(self.dir, "users.toml")

    def run_user(self, *args):
        import subprocess
        env = {k: v for k, v in os.environ.items() if k not in ("CSKIT_TOKEN", "XDG_STATE_HOME")}
        env["HOME"] = self.dir
        return subprocess.run([BIN, "user", *args, "--config", self.config], capture_output=True, text=True,
                              env=env, timeout=30)

    def test_add_list_set_rotate_del(self):
        r = self.run_user("add", "bob", "--perm", "files-read,chat")
        self.assertEqual(r.returncode, 0, r.stderr)
        token = r.stdout.strip()
        self.assertRegex(token, r"^[0-9a-f]{64}$")  # the token alone on stdout
        self.assertIn("shown this once", r.stderr)
        self.assertIn("systemctl reload cskit", r.stderr)
        # The users file is beside the config, private to its group, and
        # cskit.toml (with its comment) is untouched.
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o640)
        self.assertIn("# hand-written comment", open(self.config).read())
        self.assertIn(token, open(self.users).read())

        listing = self.run_user("list")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertRegex(listing.stdout, r"(?m)^admin +files-read,files-write,chat +the default account")
        self.assertRegex(listing.stdout, r"(?m)^bob +files-read,chat +.*users\.toml:\d+$")
        self.assertNotIn(token, listing.stdout)

        r = self.run_user("set", "bob", "--perm", "+exec,-chat")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("bob now has: files-read,exec", r.stderr)
        r = self.run_user("token", "bob", "--rotate")
        self.assertEqual(r.returncode, 0, r.stderr)
        new = r.stdout.strip()
        self.assertRegex(new, r"^[0-9a-f]{64}$")
        self.assertNotEqual(new, token)
        text = open(self.users).read()
        self.assertIn(new, text)
        self.assertNotIn(token, text)
        r = self.run_user("del", "bob")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("bob", self.run_user("list").stdout)

    def test_the_default_admin_gets_exec_without_a_token_copied(self):
        r = self.run_user("set", "admin", "--perm", "+exec")
        self.assertEqual(r.returncode, 0, r.stderr)
        text = open(self.users).read()
        self.assertIn('name = "admin"', text)
        self.assertNotIn("token", text.split('name = "admin"')[1])
        self.assertRegex(self.run_user("list").stdout, r"(?m)^admin +files-read,files-write,exec,chat ")
        # Its token is the generated one, rotated in admin.token.
        r = self.run_user("token", "admin", "--rotate")
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(self.state, "admin.token")
        with open(path) as f:
            self.assertEqual(f.read().strip(), r.stdout.strip())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_mistakes_are_refused_with_a_reason(self):
        self.assertEqual(self.run_user("add", "bob").returncode, 0)
        cases = [
            (("add", "bob"), 1, "exists already"),
            (("add", "bad name"), 1, "must be 1-64 characters"),
            (("add", "carol", "--perm", "files-read,root"), 1, "unknown permission 'root'"),
            (("set", "bob", "--perm", "files-read,+exec"), 1, "not both"),
            (("set", "bob"), 2, "--perm is required"),
            (("del", "nobody"), 1, "no user 'nobody'"),
            (("del", "admin"), 1, "default account"),
            (("token", "bob"), 2, "--rotate"),
            (("add",), 2, "NAME is required"),
            (("frobnicate",), 2, "frobnicate"),
        ]
        for args, code, text in cases:
            with self.subTest(args=args):
                r = self.run_user(*args)
                self.assertEqual(r.returncode, code, r.stderr)
                self.assertIn(text, r.stderr)
        # An account of cskit.toml is edited there, not by `cskit user`.
        with open(self.config, "a") as f:
            f.write('\n[[users]]\nname = "carol"\ntoken = "carol-token-0123456789"\npermissions = ["chat"]\n')
        for args in (("del", "carol"), ("set", "carol", "--perm", "+exec"), ("token", "carol", "--rotate"),
                     ("add", "carol")):
            with self.subTest(args=args):
                r = self.run_user(*args)
                self.assertEqual(r.returncode, 1)
                self.assertIn("cskit.toml:", r.stderr)
        # A name in both files is refused by the server, naming both places.
        with open(self.users, "a") as f:
            f.write('\n[[users]]\nname = "carol"\ntoken = "carol-token-0123456789"\n')
        srv_dir = tempfile.mkdtemp(prefix="cskit-users-srv-")
        self.addCleanup(shutil.rmtree, srv_dir, ignore_errors=True)
        import subprocess
        r = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--config", self.config, "--root", srv_dir],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"users\.toml:\d+: user 'carol' is declared in .*cskit\.toml:\d+ already")

    def test_a_users_file_others_can_read_is_refused(self):
        self.assertEqual(self.run_user("add", "bob").returncode, 0)
        os.chmod(self.users, 0o644)
        r = self.run_user("list")
        self.assertEqual(r.returncode, 1)
        self.assertIn("every user may read it", r.stderr)


class Reload(unittest.TestCase):
    def setUp(self):
        self.notify = NotifySocket()
        self.addCleanup(self.notify.close)
        self.srv = Server(config_text=CONF, token=None, env={"NOTIFY_SOCKET": self.notify.path})
        self.addCleanup(self.srv.cleanup)
        self.assertEqual(self.notify.next().get("READY"), "1")
        self.config = self.srv._config_path

    def reload(self):
        self.srv.proc.send_signal(signal.SIGHUP)
        reloading = self.notify.next()
        self.assertEqual(reloading.get("RELOADING"), "1")
        self.assertRegex(reloading.get("MONOTONIC_USEC", ""), r"^\d+$")
        ready = self.notify.next()
        self.assertEqual(ready.get("READY"), "1")
        return ready.get("STATUS", "")

    def ping(self, name, token):
        return self.srv.cli("ping", "-c", "1", "--user", name, "--token", token, self.srv.address, timeout=30)

    def test_new_users_and_permissions_apply_without_a_restart(self):
        r = user(self.srv, "add", "bob", "--perm", "files-read,files-write,chat")
        self.assertEqual(r.returncode, 0, r.stderr)
        bob = r.stdout.strip()
        self.assertEqual(self.ping("bob", bob).returncode, 4)  # not yet: the server has not reloaded
        alice, _ = wire.login(self.srv.port, ALICE, "alice")
        self.assertIn("reloaded: 2 account(s)", self.reload())
        self.assertEqual(self.ping("bob", bob).returncode, 0)
        # alice's session, whose account did not change, goes on.
        alice.sendall(wire.encode({"type": "ping", "id": 7}))
        self.assertEqual(wire.read_frame(alice)[0]["type"], "pong")
        # The refusal says how to grant the permission.
        r = self.srv.cli("exec", "--user", "bob", "--token", bob, self.srv.address, "true", timeout=30)
        self.assertEqual(r.returncode, 255, r.stderr)  # exec, as ssh: 255 for its own errors
        self.assertIn("cskit user set bob --perm +exec", r.stderr)

    def test_sessions_that_lost_their_account_are_told_and_closed(self):
        bob = user(self.srv, "add", "bob").stdout.strip()
        carol = user(self.srv, "add", "carol", "--perm", "chat").stdout.strip()
        self.reload()
        bob_files, _ = wire.login(self.srv.port, bob, "bob")
        carol_files, _ = wire.login(self.srv.port, carol, "carol")
        alice_files, _ = wire.login(self.srv.port, ALICE, "alice")
        port, _ = irc_port(self.srv)
        irc = Irc(port, tls=False)
        self.addCleanup(irc.close)
        irc.send(f"PASS bob:{bob}")
        irc.send("NICK bob")
        irc.send("USER bob 0 * :Bob")
        irc.expect(r" 001 bob ")

        # bob loses files-write: his cskit session is closed (it may have
        # been writing); his IRC session, which only chats, goes on.
        self.assertEqual(user(self.srv, "set", "bob", "--perm", "-files-write").returncode, 0)
        self.reload()
        err, _ = wire.read_frame(bob_files)
        self.assertEqual((err["type"], err["code"]), ("error", "permission_denied"))
        self.assertIn("the 'files-write' permission of 'bob' was withdrawn", err["message"])
        wire.wait_closed(bob_files)
        irc.send("PING :still-here")
        irc.expect(r"PONG .*still-here")

        # bob loses chat: his IRC session is closed with the reason.
        self.assertEqual(user(self.srv, "set", "bob", "--perm", "files-read").returncode, 0)
        self.reload()
        irc.expect(r"^ERROR :Closing link: the server's configuration changed: the 'chat' permission of 'bob' "
                   r"was withdrawn")
        self.assertTrue(irc.closed())

        # carol gets a new token: the old one's session ends, the new one logs in.
        new = user(self.srv, "token", "carol", "--rotate").stdout.strip()
        self.reload()
        err, _ = wire.read_frame(carol_files)
        self.assertEqual(err["code"], "auth_failed")
        self.assertIn("token of 'carol' was replaced", err["message"])
        wire.wait_closed(carol_files)
        self.assertEqual(self.ping("carol", carol).returncode, 4)
        self.assertEqual(self.ping("carol", new).returncode, 0)

        # alice is removed from cskit.toml.
        with open(self.config, "w") as f:
            f.write(CONF.split("[[users]]")[0])
        self.reload()
        err, _ = wire.read_frame(alice_files)
        self.assertEqual(err["code"], "auth_failed")
        self.assertIn("the account 'alice' was removed", err["message"])
        wire.wait_closed(alice_files)
        # A client sees why, and exits as for a failed login.
        self.assertEqual(self.ping("alice", ALICE).returncode, 4)
        log = self.srv.stderr()
        self.assertIn("closed after the configuration was reloaded", log)

    def test_a_broken_config_keeps_the_running_one(self):
        bob = user(self.srv, "add", "bob").stdout.strip()
        self.reload()
        with open(self.config, "a") as f:
            f.write("\n[files]\nno_such_key = 1\n")
        status = self.reload()
        self.assertIn("reload failed, the running configuration is kept", status)
        self.assertIn("no_such_key", self.srv.stderr())
        self.assertEqual(self.ping("bob", bob).returncode, 0)
        self.assertEqual(self.ping("alice", ALICE).returncode, 0)
        self.assertIsNone(self.srv.proc.poll())

    def test_limits_reload_and_what_needs_a_restart_is_named(self):
        src = os.path.join(self.srv.dir, "big")
        with open(src, "wb") as f:
            f.write(b"x" * 200_000)
        dest = f"{self.srv.address}:big"
        admin = user(self.srv, "add", "writer", "--perm", "files-read,files-write").stdout.strip()
        self.reload()
        put = ["put", "--user", "writer", "--token", admin, src, dest]
        self.assertEqual(self.srv.cli(*put, token=None).returncode, 0)
        with open(self.config, "w") as f:
            f.write(CONF.replace("[server]\n", '[server]\nthreads = 3\n') +
                    '\n[files]\nmax_file_size = "100K"\n')
        status = self.reload()
        self.assertIn("a restart is needed", status)
        self.assertIn("applied only at the next restart: threads", self.srv.stderr())
        r = self.srv.cli(*put, token=None)
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertIn("accepts files up to 102400", r.stderr)
        # The server still listens where it did.
        self.assertEqual(self.ping("alice", ALICE).returncode, 0)

    def test_an_invalid_users_file_applies_nothing(self):
        # Valid new limits in cskit.toml, and a users file the server must
        # refuse: the reload fails whole, the limits stay as they were.
        src = os.path.join(self.srv.dir, "big")
        with open(src, "wb") as f:
            f.write(b"x" * 200_000)
        writer = user(self.srv, "add", "writer", "--perm", "files-read,files-write").stdout.strip()
        self.reload()
        with open(self.config, "a") as f:
            f.write('\n[files]\nmax_file_size = "100K"\n')
        os.chmod(os.path.join(self.srv.dir, "users.toml"), 0o644)
        self.assertIn("every user may read it", self.reload())
        r = self.srv.cli("put", "--user", "writer", "--token", writer, src, f"{self.srv.address}:big", token=None)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_connection_limits_reload(self):
        with open(self.config, "w") as f:
            f.write(CONF.replace("[server]\n", "[server]\nmax_connections = 1\n"))
        self.reload()
        held, _ = wire.login(self.srv.port, ALICE, "alice")
        self.addCleanup(held.close)
        r = self.ping("alice", ALICE)
        self.assertEqual(r.returncode, 3)
        self.assertIn("too_many_connections", r.stderr)

    def test_sighup_without_a_config_file_rereads_the_users_file(self):
        srv = Server(token=None)
        self.addCleanup(srv.cleanup)
        r = srv.cli("user", "add", "dave", "--state-dir", srv.state, token=None)
        self.assertEqual(r.returncode, 0, r.stderr)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reloaded: 2 account(s)" not in srv.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("reloaded: 2 account(s)", srv.stderr())
        r = srv.cli("ping", "-c", "1", "--user", "dave", "--token", r.stdout.strip(), srv.address, token=None)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(srv.proc.poll())


class DefaultAdmin(unittest.TestCase):
    def test_the_default_admin_is_given_exec_and_uses_it(self):
        with Server(config_text="[exec]\nenabled = true\n") as srv:
            r = srv.cli("exec", srv.address, "true")
            self.assertEqual(r.returncode, 255)
            self.assertIn("cskit user set admin --perm +exec", r.stderr)
            r = user(srv, "set", "admin", "--perm", "+exec")
            self.assertEqual(r.returncode, 0, r.stderr)
            srv.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "reloaded: 1 account(s)" not in srv.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            # Its token is still the generated one (here CSKIT_TOKEN): no token was copied.
            r = srv.cli("exec", srv.address, "echo", "granted")
            self.assertEqual((r.returncode, r.stdout), (0, "granted\n"), r.stderr)


class TerminalHangup(unittest.TestCase):
    def test_a_server_whose_terminal_hangs_up_stops_and_kill_hup_reloads(self):
        import fcntl
        import pty
        import subprocess
        import termios
        tmp = tempfile.mkdtemp(prefix="cskit-hup-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        master, slave = pty.openpty()
        err_path = os.path.join(tmp, "stderr")
        with open(err_path, "wb") as err:
            env = dict(os.environ, HOME=tmp, CSKIT_TOKEN=TOKEN)
            env.pop("NOTIFY_SOCKET", None)
            # A session of its own whose controlling terminal is the pty, as in a terminal window.
            proc = subprocess.Popen(
                [BIN, "serve", "--listen", "127.0.0.1:0", "--state-dir", os.path.join(tmp, "state")],
                stdin=slave, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True,
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(10)))
        self.assertIn(b"listening on", proc.stdout.readline())

        def stderr_has(text, timeout=20):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with open(err_path, encoding="utf-8", errors="replace") as f:
                    if text in f.read():
                        return True
                time.sleep(0.05)
            return False

        # kill -HUP while the terminal is there: a reload.
        proc.send_signal(signal.SIGHUP)
        self.assertTrue(stderr_has("reloaded: 1 account(s)"))
        self.assertIsNone(proc.poll())
        # The terminal closes: the kernel hangs it up, and the server stops.
        os.close(master)
        self.assertEqual(proc.wait(timeout=30), 0)
        self.assertTrue(stderr_has("received SIGHUP: the terminal hung up", 1))


if __name__ == "__main__":
    unittest.main()
