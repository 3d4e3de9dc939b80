"""Test harness: starts the real `cskit` binary on loopback and runs its CLI.

The binary comes from $CSKIT_BIN (set by CTest). Every wait is bounded.
"""
import errno
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

BIN = os.environ.get("CSKIT_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "release", "cskit")
TOKEN = "e2e-test-token-0123456789abcdef"
# An ASan build is a 250 MB binary that starts slowly when the machine is
# busy with other tests (CI once took over 20 s to see a banner).
START_TIMEOUT = 90 if os.environ.get("CSKIT_SANITIZED") else 30


def raise_fd_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A `cskit serve` process on 127.0.0.1 with a free port."""

    def __init__(self, *args, token=TOKEN, config_text=None, env=None, start_timeout=None, state_dir=None,
                 log_level="info", listen="127.0.0.1:0", share=None):
        self.dir = tempfile.mkdtemp(prefix="cskit-e2e-")
        self.state = state_dir or os.path.join(self.dir, "state")
        self.share = share or os.path.join(self.dir, "share")
        self.home = os.path.join(self.dir, "home")
        os.makedirs(self.home)
        self._args = args
        self._log_level = log_level
        self._config_path = None
        if config_text is not None:
            self._config_path = os.path.join(self.dir, "server.toml")
            with open(self._config_path, "w") as f:
                f.write(config_text)
        self.env = dict(os.environ, HOME=self.home)
        self.env.pop("CSKIT_TOKEN", None)
        self.env.pop("XDG_STATE_HOME", None)
        self.env.pop("XDG_CONFIG_HOME", None)
        if token is not None:
            self.env["CSKIT_TOKEN"] = token
        self.env.update(env or {})
        self.token = token
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self._readers = []
        self._start(listen, start_timeout or START_TIMEOUT, "wb")

    def _start(self, listen, start_timeout, stderr_mode):
        cmd = [BIN, "serve", "--listen", listen, "--root", self.share,
               "--state-dir", self.state, "--log-level", self._log_level, *self._args]
        if self._config_path is not None:
            cmd += ["--config", self._config_path]
        self._stderr = open(self.stderr_path, stderr_mode)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=self.env, stdin=subprocess.DEVNULL)
        self.banner = []
        started = time.monotonic()
        deadline = started + start_timeout
        port = None
        while port is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self._fail_to_start(remaining <= 0, time.monotonic() - started)
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                continue
            line = self.proc.stdout.readline().decode()
            if not line:
                continue
            self.banner.append(line)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        # The rest of the banner was written with the first line (one
        # flush); it ends with the "connect:" line.
        while not self.banner[-1].startswith("connect:") and len(self.banner) < 50:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.banner.append(line)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.fingerprint = None
        for line in self.banner:
            m = re.search(r"server key (SHA256:[A-Za-z0-9+/]{43})", line)
            if m:
                self.fingerprint = m.group(1)
        # Clients run by cli() know this server's key, as after a first
        # contact that was accepted (tests of first contact use other homes).
        if self.fingerprint:
            self.trust(self.home)
        # Keep reading stdout so the pipe can never fill and block the server.
        self._reader = threading.Thread(target=self._drain, args=(self.proc,), daemon=True)
        self._reader.start()
        self._readers.append((self.proc, self._reader))

    def _fail_to_start(self, timed_out, elapsed):
        if timed_out:
            how = "no banner within %.1f s" % elapsed
        else:
            how = "exited with status %s after %.1f s" % (self.proc.returncode, elapsed)
        self.stop()
        err = self.stderr()
        self.cleanup()
        raise RuntimeError("server did not start (%s); stdout so far: %r; stderr: %s" % (how, self.banner, err))

    def trust(self, home):
        """Adds this server's key to the known_hosts file under `home`, under the names tests
        reach it by (127.0.0.1 and localhost)."""
        path = os.path.join(home, ".config", "cskit", "known_hosts")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        existing = open(path).read() if os.path.exists(path) else ""
        with open(path, "a") as f:
            for name in (self.address, f"localhost:{self.port}"):
                entry = f"{name} {self.fingerprint}\n"
                if entry not in existing:
                    f.write(entry)

    def restart(self, sig=signal.SIGKILL, start_timeout=None):
        """Ends the server (SIGKILL unless told otherwise) and starts it again on the same
        port, share, state and config. The stderr log is appended to."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        if not self._stderr.closed:
            self._stderr.close()
        self._start(self.address, start_timeout or START_TIMEOUT, "ab")

    def _drain(self, proc):
        for line in proc.stdout:
            self.banner.append(line.decode(errors="replace"))

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def cli(self, *args, token="default", env=None, timeout=60, input=None):
        """Runs `cskit ARGS...` as a client of this server; returns CompletedProcess (text)."""
        e = dict(self.env)
        e.pop("CSKIT_TOKEN", None)
        if token == "default":
            token = self.token
        if token is not None:
            e["CSKIT_TOKEN"] = token
        e.update(env or {})
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=e,
                              timeout=timeout, input=input)

    def connect(self, timeout=10):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return s

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError("server did not stop within %s s" % timeout)
        if not self._stderr.closed:
            self._stderr.close()
        return self.proc.returncode

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for proc, reader in getattr(self, "_readers", []):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            reader.join(timeout=5)
            if proc.stdout:
                proc.stdout.close()
        if self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.stop()
        finally:
            self.cleanup()


def read_pty(fd, wait=0.2):
    """One read from the master side of a pseudo-terminal: the bytes, b"" when none came
    within `wait` seconds, None once the terminal's other side is closed (EIO or EOF)."""
    ready, _, _ = select.select([fd], [], [], wait)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536) or None
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
