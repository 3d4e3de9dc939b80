"""Remote execution end to end: the real server and `cskit exec`."""
import hashlib
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import fcntl
import tempfile
import termios
import threading
import time
import unittest
import uuid

from harness import BIN, Server
import wire

OPS_TOKEN = "ops-token-0123456789abcdef"
VIEW_TOKEN = "viewer-token-0123456789abcdef"

USERS = f"""
[[users]]
name = "ops"
token = "{OPS_TOKEN}"
permissions = ["exec"]

[[users]]
name = "viewer"
token = "{VIEW_TOKEN}"
permissions = ["files-read"]
"""

EXEC_ON = """
[exec]
enabled = true
max_concurrent = 300
max_concurrent_per_user = 300
""" + USERS


def exec_server(config=EXEC_ON, *args):
    return Server(*args, config_text=config, token=None)


def run(server, *args, user="ops", token=OPS_TOKEN, timeout=120, input=None, binary=False):
    env = dict(server.env, CSKIT_USER=user, CSKIT_TOKEN=token)
    return subprocess.run([BIN, "exec", server.address, *args], capture_output=True, env=env, timeout=timeout,
                          input=input, text=not binary)


def processes_matching(marker, argv=None):
    """PIDs whose command line contains `marker` (or, with argv, is exactly argv)."""
    found = []
    exact = b"".join(a.encode() + b"\0" for a in argv) if argv else None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (cmdline == exact) if exact else (marker.encode() in cmdline):
            found.append(int(pid))
    return found


def wait_until(predicate, timeout=10, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def children(pid):
    """(pid, state) of the direct children of `pid`."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append((int(p), fields[0]))
    return out


class ExecTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = exec_server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def test_exit_statuses_come_back_exactly(self):
        for code in (0, 1, 4, 44):
            p = run(self.server, "--", "sh", "-c", f"exit {code}")
            self.assertEqual(p.returncode, code, p.stderr)
        p = run(self.server, "--", "sh", "-c", "kill -TERM $$")
        self.assertEqual(p.returncode, 128 + signal.SIGTERM)
        p = run(self.server, "--json", "--", "sh", "-c", "kill -KILL $$")
        self.assertEqual(p.returncode, 128 + signal.SIGKILL)
        j = json.loads(p.stdout.strip().splitlines()[-1])
        self.assertEqual((j["signal"], j["core_dumped"], j["status"]), (9, False, 137))
        self.assertNotIn("exit_code", j)

    def test_injection_strings_arrive_literally(self):
        corpus = ["; id", "$(id)", "`id`", "a\nb", "&& touch /tmp/pwned", "| cat /etc/passwd", "'", '"', "\\",
                  "$HOME", "${PATH}", "*", "?", "~", "-n", "--", " leading and trailing ", "", "\t", "文件传输",
                  "emoji 🎉", "\x1b[31mred", "a=b", "> /tmp/x", "< /etc/shadow", "$((1+1))", "!!", "#comment"]
        p = run(self.server, "--", "printf", "%s\\0", *corpus, binary=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        got = p.stdout.split(b"\0")[:-1]
        self.assertEqual([g.decode() for g in got], corpus)

    def test_separate_streams_and_stdin_until_eof(self):
        p = run(self.server, "--", "sh", "-c", "echo to-out; echo to-err >&2")
        self.assertEqual((p.stdout, p.stderr), ("to-out\n", "to-err\n"))
        p = run(self.server, "--", "sort", input="pear\napple\nfig\n")
        self.assertEqual(p.stdout, "apple\nfig\npear\n")
        p = run(self.server, "--", "cat", input="")
        self.assertEqual((p.returncode, p.stdout), (0, ""))  # cat saw EOF at once
        big = os.urandom(20 << 20)
        p = run(self.server, "--", "sha256sum", input=big, binary=True)
        self.assertEqual(p.stdout.split()[0].decode(), hashlib.sha256(big).hexdigest())
        p = run(self.server, "-n", "--", "cat")
        self.assertEqual((p.returncode, p.stdout), (0, ""))

    def test_50_mb_on_stdout_and_stderr_at_once(self):
        script = "head -c 50000000 /dev/zero | tr '\\0' o & head -c 50000000 /dev/zero | tr '\\0' e >&2; wait"
        p = run(self.server, "-n", "--", "sh", "-c", script, binary=True, timeout=300)
        self.assertEqual(p.returncode, 0)
        self.assertEqual(len(p.stdout), 50_000_000)
        self.assertEqual(len(p.stderr), 50_000_000)
        self.assertEqual(p.stdout.count(b"o"), 50_000_000)
        self.assertEqual(p.stderr.count(b"e"), 50_000_000)

    def test_output_intact_when_the_client_reads_late(self):
        # The client's stdout is not read at first, so the socket fills and
        # the server queues the rest of each output frame: every byte must
        # still arrive once and in order (distinct lines show a reordering).
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        p = subprocess.Popen([BIN, "exec", self.server.address, "-n", "--", "seq", "1", "3000000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            time.sleep(1.5)
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual((p.returncode, err), (0, b""))
        expected = "".join(f"{i}\n" for i in range(1, 3000001)).encode()
        self.assertEqual(len(out), len(expected))
        self.assertEqual(hashlib.sha256(out).hexdigest(), hashlib.sha256(expected).hexdigest())

    def test_disconnect_kills_the_process_group(self):
        marker = "999.%06d" % (uuid.uuid4().int % 1000000)
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        client = subprocess.Popen([BIN, "exec", self.server.address, "--", "sh", "-c",
                                   f"sleep {marker} & sleep {marker}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.assertTrue(wait_until(lambda: len(processes_matching(None, ["sleep", marker])) == 2),
                        "both sleeps started")
        client.kill()
        client.wait(timeout=10)
        self.assertTrue(wait_until(lambda: not processes_matching(marker)),
                        f"left behind: {processes_matching(marker)}")

    def test_timeout_kills_the_group(self):
        marker = "998.%06d" % (uuid.uuid4().int % 1000000)
        t0 = time.monotonic()
        p = run(self.server, "--timeout", "1", "--json", "--", "sh", "-c", f"sleep {marker} & sleep {marker}")
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(p.returncode, 128 + signal.SIGTERM, p.stderr)
        self.assertTrue(json.loads(p.stdout.strip().splitlines()[-1])["timed_out"])
        self.assertIn("timed out", p.stderr)
        self.assertTrue(wait_until(lambda: not processes_matching(marker)))

    def test_ctrl_c_interrupts_the_remote_command(self):
        # Ctrl-C once the remote command runs (the client catches it from before it connects;
        # a fixed half-second was too short for a sanitized client on a loaded machine).
        marker = "997.%06d" % (uuid.uuid4().int % 1000000)
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        client = subprocess.Popen([BIN, "exec", self.server.address, "--", "sleep", marker], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertTrue(wait_until(lambda: processes_matching(None, ["sleep", marker])), "the command started")
        client.send_signal(signal.SIGINT)
        client.communicate(timeout=10)
        self.assertEqual(client.returncode, 128 + signal.SIGINT)

    def test_the_command_starts_after_the_host_as_with_ssh(self):
        p = run(self.server, "uname", "-s")
        self.assertEqual((p.returncode, p.stdout), (0, "Linux\n"), p.stderr)
        # exec's options may come between the host and the command; from the
        # command's first word on, every word is the command's, even one
        # that is also an option of exec.
        p = run(self.server, "--json", "sh", "-c", 'echo "$@"', "sh", "--json", "-t", "--timeout", "1")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines()[0], "--json -t --timeout 1")
        self.assertEqual(json.loads(p.stdout.splitlines()[-1])["status"], 0)
        # A -- before the command ends exec's options; one after the
        # command's first word is the command's own, as with ssh.
        p = run(self.server, "--", "printf", "%s,", "--json")
        self.assertEqual(p.stdout, "--json,", p.stderr)
        p = run(self.server, "printf", "%s,", "--", "-x", "--")
        self.assertEqual(p.stdout, "--,-x,--,", p.stderr)
        p = run(self.server, "sh", "-c", 'for a; do printf "%s," "$a"; done', "sh", "--", "-r", "dir")
        self.assertEqual(p.stdout, "--,-r,dir,", p.stderr)
        # --env takes one value each time; HOST and the command follow.
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        p = subprocess.run([BIN, "exec", "--env", "LC_ALL=C.UTF-8", "--env", "TZ=UTC", self.server.address,
                            "sh", "-c", "echo $LC_ALL $TZ"], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(p.stdout, "C.UTF-8 UTC\n", p.stderr)
        # --hosts: no HOST word; the command's own options stay its own.
        hosts = os.path.join(tempfile.mkdtemp(prefix="cskit-hosts-"), "hosts")
        self.addCleanup(shutil.rmtree, os.path.dirname(hosts), ignore_errors=True)
        with open(hosts, "w") as f:
            f.write(f"{self.server.address}\n{self.server.address}\n")
        for argv, out in ((["uname", "-s"], "Linux"), (["sh", "-c", 'printf "%s\\n" "$0"', "-n"], "-n"),
                          (["printf", "%s\n", "-t", "-f"], "-t")):
            with self.subTest(argv=argv):
                p = subprocess.run([BIN, "exec", "--hosts", hosts, *argv], capture_output=True, text=True, env=env,
                                   timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr)
                lines = [line.split(": ", 1)[1] for line in p.stdout.splitlines()]
                self.assertEqual(lines.count(out), 2, p.stdout)
        p = run(self.server, "--frob", "true")
        self.assertEqual(p.returncode, 2)
        self.assertIn("cskit exec: unknown option '--frob'", p.stderr)
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        p = subprocess.run([BIN, "exec"], capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("missing HOST", p.stderr)

    def test_a_program_that_cannot_run_exits_as_from_a_shell(self):
        p = run(self.server, "no-such-program-here")
        self.assertEqual(p.returncode, 127, p.stderr)
        self.assertIn("no such program", p.stderr)
        self.assertFalse(p.stderr.startswith("\r"), repr(p.stderr))  # not a terminal: no stray carriage return
        p = run(self.server, "/no/such/dir/prog")
        self.assertEqual(p.returncode, 127, p.stderr)
        # There, but not executable: a file without x bits, a directory, and
        # an executable file that is no program (execve: ENOEXEC).
        scratch = tempfile.mkdtemp(prefix="cskit-exec-126-")
        self.addCleanup(shutil.rmtree, scratch, ignore_errors=True)
        os.chmod(scratch, 0o755)  # commands of a server run as root run as nobody
        plain, garbage = os.path.join(scratch, "plain"), os.path.join(scratch, "garbage")
        for path, mode in ((plain, 0o644), (garbage, 0o755)):
            with open(path, "wb") as f:
                f.write(b"\x7fELF\x00\x01 not a program")
            os.chmod(path, mode)
        orphan = os.path.join(scratch, "orphan")  # a script whose interpreter is missing: 126 from a shell too
        with open(orphan, "w") as f:
            f.write("#!/no/such/interpreter\n")
        os.chmod(orphan, 0o755)
        for path, said in ((plain, "cannot be executed"), (scratch, "cannot be executed"),
                           (garbage, "cannot execute: Exec format error"), (orphan, "cannot execute")):
            with self.subTest(path=path):
                p = run(self.server, path)
                self.assertEqual(p.returncode, 126, p.stderr)
                self.assertIn(said, p.stderr)
        p = run(self.server, "--json", "no-such-program-here")
        self.assertEqual(json.loads(p.stdout.strip())["status"], 127)
        # Fan-out: each host's status, and the largest as the exit status.
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        p = subprocess.run([BIN, "exec", "--json", f"{self.server.address},{self.server.address}",
                            "no-such-program-here"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 127, p.stderr)
        self.assertEqual([h["status"] for h in json.loads(p.stdout.strip().splitlines()[-1])["hosts"]], [127, 127])

    def test_errors_of_the_client_are_255(self):
        p = run(self.server, "--", "relative/path")
        self.assertEqual(p.returncode, 255)
        self.assertFalse(p.stderr.startswith("\r"), repr(p.stderr))
        p = run(self.server, "--shell", "echo hi")
        self.assertEqual(p.returncode, 255)
        self.assertIn("does not run shell command lines", p.stderr)
        p = run(self.server, "--env", "PATH=/evil", "--", "true")
        self.assertEqual(p.returncode, 255)
        self.assertIn("does not let clients set PATH", p.stderr)
        p = run(self.server, "--env", "LC_ALL=C.UTF-8", "--", "sh", "-c", "echo $LC_ALL")
        self.assertEqual(p.stdout, "C.UTF-8\n")
        p = run(self.server, "--cwd", "/tmp", "--", "pwd")
        self.assertEqual(p.stdout, "/tmp\n")

    def test_100_concurrent_commands(self):
        env = dict(self.server.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
        procs = [subprocess.Popen([BIN, "exec", self.server.address, "-n", "--", "sh", "-c",
                                   f"sleep 1; echo done-{i}"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(100)]
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=120)
            self.assertEqual((p.returncode, out), (0, f"done-{i}\n"), err)

    def test_audit_line(self):
        run(self.server, "--", "echo", "audit-me")
        self.assertTrue(wait_until(lambda: re.search(
            r'exec user=ops peer=127\.0\.0\.1:\d+ argv=\["[^"]*echo","audit-me"\] exit 0 duration=[0-9.]+s bytes_out=9',
            self.server.stderr())), self.server.stderr()[-2000:])


class ExecHygieneTest(unittest.TestCase):
    def test_1000_sequential_commands_leave_no_zombie_and_no_descriptor(self):
        with exec_server() as srv:
            sock, _ = wire.login(srv.port, OPS_TOKEN, user="ops")
            sock.settimeout(30)

            def one(i):
                sock.sendall(wire.encode({"type": "exec", "id": i, "argv": ["true"], "stdin": False}))
                while True:
                    h, _ = wire.read_frame(sock, 30)
                    if h.get("id") == i and h["type"] == "exec.exit":
                        return h
                    self.assertNotEqual(h["type"], "error", h)

            one(1)  # warm-up: first-use allocations
            fds_before = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
            for i in range(2, 1002):
                self.assertEqual(one(i)["exit_code"], 0)
            time.sleep(0.3)
            fds_after = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
            self.assertEqual(fds_after, fds_before)
            self.assertEqual([c for c in children(srv.proc.pid) if c[1] == "Z"], [], "zombies")
            self.assertEqual(children(srv.proc.pid), [])
            sock.close()

    def test_no_descriptor_of_the_server_leaks_into_the_command(self):
        with exec_server() as srv:
            p = run(srv, "-n", "--", "ls", "/proc/self/fd")
            # ls itself opens one descriptor for the directory it lists.
            self.assertLessEqual(set(p.stdout.split()), {"0", "1", "2", "3"}, p.stdout)


class ExecPolicyTest(unittest.TestCase):
    def test_disabled_by_default_and_without_permission_nothing_is_spawned(self):
        marker = f"/tmp/cskit-e2e-spawned-{uuid.uuid4().hex}"
        with exec_server(USERS) as srv:  # no [exec] table: disabled
            p = run(srv, "--", "touch", marker)
            self.assertEqual(p.returncode, 255)
            self.assertIn("disabled", p.stderr)
        with exec_server() as srv:
            p = run(srv, "--", "touch", marker, user="viewer", token=VIEW_TOKEN)
            self.assertEqual(p.returncode, 255)
            self.assertIn("lacks the 'exec' permission", p.stderr)
            p = run(srv, "--", "touch", marker, token="wrong-token-0123456789abcdef")
            self.assertEqual(p.returncode, 255)
        self.assertFalse(os.path.exists(marker))

    def test_allow_list_and_shell_policy(self):
        conf = """
[exec]
enabled = true
allow_shell = true
programs = ["echo", "/usr/bin/id"]
""" + USERS
        with exec_server(conf) as srv:
            self.assertEqual(run(srv, "--", "echo", "ok").stdout, "ok\n")
            self.assertEqual(run(srv, "--", "id", "-u").returncode, 0)
            p = run(srv, "--", "cat", "/etc/hostname")
            self.assertEqual(p.returncode, 255)
            self.assertIn("not on the server's list of allowed programs", p.stderr)
            p = run(srv, "--shell", "echo $((6*7)) | cat")
            self.assertEqual((p.returncode, p.stdout), (0, "42\n"))

    def test_commands_run_as_nobody_when_the_server_is_root(self):
        import pwd
        expected = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        with exec_server() as srv:
            self.assertEqual(run(srv, "--", "id", "-un").stdout, expected + "\n")


class ExecLimitsTest(unittest.TestCase):
    def test_resource_and_concurrency_limits(self):
        conf = """
[exec]
enabled = true
cpu_seconds = 1
memory_bytes = 200000000
max_concurrent_per_user = 2
""" + USERS
        with exec_server(conf) as srv:
            # CPU: the kernel sends SIGXCPU at the soft limit.
            p = run(srv, "-n", "--", "sh", "-c", "while :; do :; done", timeout=60)
            self.assertEqual(p.returncode, 128 + signal.SIGXCPU, p.stderr)
            # Memory: allocating beyond the address-space limit fails.
            p = run(srv, "-n", "--", "sh", "-c", "head -c 300000000 /dev/zero | tr -d x | sort > /dev/null; "
                                                   "echo sort-status=$?")
            self.assertRegex(p.stdout, r"sort-status=[1-9]")
            # Processes: RLIMIT_NPROC counts every process of the account.
            if os.geteuid() == 0:  # commands run as nobody, who runs nothing else here
                conf_nproc = conf.replace("cpu_seconds = 1", "max_processes = 4")
                with exec_server(conf_nproc) as srv2:
                    p = run(srv2, "-n", "--", "sh", "-c",
                            "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait; echo ok")
                    self.assertNotEqual(p.stderr.count("fork") + p.stderr.count("Resource temporarily"), 0,
                                        p.stdout + p.stderr)
            # Concurrency: two may run, the third is told to wait.
            env = dict(srv.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
            marker = "997.%06d" % (uuid.uuid4().int % 1000000)
            busy = [subprocess.Popen([BIN, "exec", srv.address, "-n", "--", "sleep", marker], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
            try:
                self.assertTrue(wait_until(lambda: len(processes_matching(None, ["sleep", marker])) == 2))
                p = run(srv, "--", "true")
                self.assertEqual(p.returncode, 255)
                self.assertIn("maximum of 2 commands", p.stderr)
            finally:
                for b in busy:
                    b.kill()
                    b.wait(timeout=10)
            self.assertTrue(wait_until(lambda: run(srv, "--", "true").returncode == 0), "slots are given back")

    def test_server_shutdown_kills_running_commands(self):
        srv = exec_server()
        try:
            marker = "996.%06d" % (uuid.uuid4().int % 1000000)
            env = dict(srv.env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
            client = subprocess.Popen([BIN, "exec", srv.address, "--", "sh", "-c", f"sleep {marker} & sleep {marker}"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.assertTrue(wait_until(lambda: len(processes_matching(None, ["sleep", marker])) == 2))
            srv.stop()
            _, err = client.communicate(timeout=30)
            self.assertEqual(client.returncode, 255, err)
            self.assertTrue(wait_until(lambda: not processes_matching(None, ["sleep", marker])))
        finally:
            srv.cleanup()


class ExecTerminalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = exec_server()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def spawn(self, *command, rows=33, cols=101):
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN, HOME=self.server.home, TERM="xterm")
            os.execv(BIN, [BIN, "exec", self.server.address, "-t", "--", *command])
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        return pid, fd

    def read_until(self, fd, pattern, timeout=10):
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if re.search(pattern, out):
                    return out
        self.fail(f"no {pattern!r} in {out!r}")

    def finish(self, pid, fd):
        try:
            while True:
                r, _, _ = select.select([fd], [], [], 5)
                if not r or not os.read(fd, 4096):
                    break
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status)

    def test_tty_is_a_terminal(self):
        pid, fd = self.spawn("tty")
        self.read_until(fd, rb"/dev/pts/\d+")
        self.assertEqual(self.finish(pid, fd), 0)

    def test_stty_size_follows_a_resize(self):
        pid, fd = self.spawn("sh", "-c", "stty size; read line; stty size")
        self.read_until(fd, rb"33 101")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # SIGWINCH to the client
        time.sleep(0.5)
        os.write(fd, b"go\r")
        self.read_until(fd, rb"40 120")
        self.assertEqual(self.finish(pid, fd), 0)

    def test_ctrl_c_interrupts_sleep(self):
        pid, fd = self.spawn("sh", "-c", "echo ready; exec sleep 30")
        self.read_until(fd, rb"ready")
        time.sleep(0.3)
        t0 = time.monotonic()
        os.write(fd, b"\x03")
        self.assertEqual(self.finish(pid, fd), 128 + signal.SIGINT)
        self.assertLess(time.monotonic() - t0, 5)

    def test_terminal_is_restored(self):
        pid, fd = self.spawn("true")
        before = termios.tcgetattr(fd)
        _, status = os.waitpid(pid, 0)
        after = termios.tcgetattr(fd)
        os.close(fd)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(before[3] & termios.ECHO, after[3] & termios.ECHO)
        self.assertTrue(after[3] & termios.ICANON, "canonical mode is back")


class FanOutTest(unittest.TestCase):
    def test_three_servers_prefixed_output_and_largest_status(self):
        servers = [exec_server() for _ in range(3)]
        try:
            for s in servers[1:]:
                s.trust(servers[0].home)  # the client runs with the first one's home
            hosts = ",".join(s.address for s in servers)
            env = dict(servers[0].env, CSKIT_USER="ops", CSKIT_TOKEN=OPS_TOKEN)
            p = subprocess.run([BIN, "exec", hosts, "-f", "3", "--", "sh", "-c", "echo line1; echo line2; exit 3"],
                               capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(p.returncode, 3, p.stderr)
            for s in servers:
                self.assertIn(f"{s.address}: line1\n", p.stdout)
                self.assertIn(f"{s.address}: line2\n", p.stdout)
                self.assertIn(f"{s.address}: exit 3", p.stderr)
            # --hosts FILE and --json; one host failing gives 255
            path = os.path.join(servers[0].dir, "hosts")
            with open(path, "w") as f:
                f.write("# the fleet\n" + "\n".join(s.address for s in servers) + "\n127.0.0.1:1\n")
            p = subprocess.run([BIN, "exec", "--hosts", path, "--json", "--", "true"], capture_output=True, text=True,
                               env=env, timeout=60)
            self.assertEqual(p.returncode, 255)
            j = json.loads(p.stdout.strip().splitlines()[-1])
            self.assertEqual([h["status"] for h in j["hosts"]], [0, 0, 0, 255])
        finally:
            for s in servers:
                s.stop()
                s.cleanup()


if __name__ == "__main__":
    unittest.main()
