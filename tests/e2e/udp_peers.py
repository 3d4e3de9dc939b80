"""Third-party UDP peers for the end-to-end tests, all on loopback:
chronyd (server, and one-shot measuring client), python3-ntplib, a socat echo
server, and a scriptable fake NTP server for client-side checks.

python3-ntplib is a Debian package, so it is imported by Debian's own
/usr/bin/python3, which may differ from the interpreter running the tests.
"""
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

SYSTEM_PYTHON = "/usr/bin/python3"
NTP_EPOCH = 2208988800


def privileged_prefix():
    """chronyd insists on running as root; use sudo when the tests are not root."""
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ntplib_query(port, version=4, host="127.0.0.1", timeout=2):
    """Runs python3-ntplib against HOST:PORT; returns a dict of the reply's fields."""
    script = (
        "import json, ntplib, sys\n"
        "r = ntplib.NTPClient().request(sys.argv[1], port=int(sys.argv[2]), version=int(sys.argv[3]),"
        " timeout=float(sys.argv[4]))\n"
        "print(json.dumps({'version': r.version, 'mode': r.mode, 'stratum': r.stratum, 'offset': r.offset,"
        " 'delay': r.delay, 'ref_id': r.ref_id, 'leap': r.leap, 'tx_time': r.tx_time, 'recv_time': r.recv_time,"
        " 'orig_time': r.orig_time, 'precision': r.precision, 'root_delay': r.root_delay,"
        " 'root_dispersion': r.root_dispersion}))\n")
    p = subprocess.run([SYSTEM_PYTHON, "-c", script, host, str(port), str(version), str(timeout)],
                       capture_output=True, text=True, timeout=timeout + 20)
    if p.returncode != 0:
        raise AssertionError("ntplib query failed: " + p.stderr[-2000:])
    import json
    return json.loads(p.stdout)


def chronyd_measure(port, timeout=20):
    """`chronyd -Q`: measures the server once and never touches the clock.
    Returns the offset in seconds as chronyd reports it (positive: the
    local clock is ahead of the server)."""
    d = tempfile.mkdtemp(prefix="cskit-chronyq-")
    os.chmod(d, 0o777)  # chronyd drops to its own user before removing its pid file
    try:
        cmd = privileged_prefix() + [
            "chronyd", "-Q", "-t", "10", "-f", "/dev/null",
            f"server 127.0.0.1 port {port} iburst maxsamples 4",
            f"pidfile {d}/chronyd.pid", "cmdport 0"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
        m = re.search(r"System clock wrong by (-?[0-9.]+) seconds", out)
        if not m:
            raise AssertionError("chronyd -Q did not measure: " + out[-2000:])
        return float(m.group(1))
    finally:
        shutil.rmtree(d, ignore_errors=True)


class ChronyServer:
    """chronyd serving its local clock at stratum 10 on 127.0.0.1:PORT, with
    -x so that it never adjusts the system clock."""

    def __init__(self, start_timeout=15):
        self.dir = tempfile.mkdtemp(prefix="cskit-chronyd-")
        os.chmod(self.dir, 0o777)
        self.port = free_udp_port()
        conf = os.path.join(self.dir, "chrony.conf")
        with open(conf, "w") as f:
            f.write(f"port {self.port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 10\n"
                    f"cmdport 0\npidfile {self.dir}/chronyd.pid\ndriftfile {self.dir}/drift\n")
        self.log = open(os.path.join(self.dir, "chronyd.log"), "wb")
        self.proc = subprocess.Popen(privileged_prefix() + ["chronyd", "-x", "-d", "-f", conf],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                ntplib_query(self.port, timeout=0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError("chronyd did not start serving: " + self.output())

    def output(self):
        with open(os.path.join(self.dir, "chronyd.log"), "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SocatEcho:
    """A socat UDP echo server (one child per peer, as inetd would)."""

    def __init__(self):
        self.port = free_udp_port()
        self.proc = subprocess.Popen(
            ["socat", f"UDP4-RECVFROM:{self.port},bind=127.0.0.1,fork", "PIPE"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # socat binds at once; nothing to poll without consuming its first child

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def to_ntp(t):
    sec = int(t)
    frac = int((t - sec) * 2**32) & 0xffffffff
    return ((sec + NTP_EPOCH) & 0xffffffff) << 32 | frac


class FakeNtpServer:
    """Answers NTP requests the way `behaviour` says, to check what the
    client trusts: 'offset' (a clock `offset` seconds off), 'bad_origin',
    'unsync' (LI 3), 'kiss:CODE', 'stratum16', 'zero_tx', 'silent'."""

    def __init__(self, behaviour="offset", offset=0.0):
        self.behaviour = behaviour
        self.offset = offset
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            rx = time.time() + self.offset
            if len(data) < 48:
                continue
            self.requests += 1
            if self.behaviour == "silent":
                continue
            vn = (data[0] >> 3) & 7
            li, stratum, refid = 0, 2, b"\x7f\x00\x00\x01"
            origin = data[40:48]
            if self.behaviour == "bad_origin":
                origin = bytes(b ^ 0xff for b in origin)
            if self.behaviour == "unsync":
                li = 3
            if self.behaviour == "stratum16":
                stratum = 16
            if self.behaviour.startswith("kiss:"):
                li, stratum, refid = 3, 0, self.behaviour[5:].encode().ljust(4, b"\0")
            tx = time.time() + self.offset
            tx_field = 0 if self.behaviour == "zero_tx" else to_ntp(tx)
            reply = struct.pack("!BBbbII4sQ8sQQ", li << 6 | vn << 3 | 4, stratum, 6, -20, 0, 0x100,
                                refid, to_ntp(rx), origin, to_ntp(rx), tx_field)
            self.sock.sendto(reply, peer)

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
