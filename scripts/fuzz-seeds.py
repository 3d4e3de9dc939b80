#!/usr/bin/env python3
"""Records real traffic and writes it as seeds for the libFuzzer targets.

Starts `cskit serve --plaintext` (exec enabled, a small share), runs the
real `cskit` client through a recording relay for each operation, and
splits what each side sent into frames:

  fuzz/corpus-session/  0x01 + the client's frames after its `auth` (the
                        harness logs in itself), and 0x00 + all of them
                        (the login exchange: the harness sends them as is)
  fuzz/corpus-client/   the operation byte fuzz_client.cpp expects + the
                        server's frames after `welcome`
  fuzz/corpus-ntp/      a `cskit time` request and cskit's reply to it

Usage: scripts/fuzz-seeds.py [path/to/cskit]   (default build/release/cskit)
"""
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "release", "cskit")
os.environ["CSKIT_BIN"] = BIN
from harness import Server  # noqa: E402

TOKEN = "seed-token-0123456789abcdef0123"


def frames(data):
    """Splits a byte stream into whole frames: (header bytes, raw frame bytes)."""
    out, i = [], 0
    while i + 4 <= len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        if i + 4 + n > len(data):
            break
        header = data[i + 4:i + 4 + n]
        body = 0
        try:
            import json
            body = int(json.loads(header).get("body", 0))
        except (ValueError, AttributeError):
            pass
        end = i + 4 + n + body
        out.append((header, data[i:end]))
        i = end
    return out


class Relay:
    """Forwards one loopback port to the server and records each connection."""

    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.sessions = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target))
            rec = {"c2s": bytearray(), "s2c": bytearray()}
            self.sessions.append(rec)
            for a, b, key in ((c, s, "c2s"), (s, c, "s2c")):
                threading.Thread(target=self._pump, args=(a, b, rec[key]), daemon=True).start()

    @staticmethod
    def _pump(src, dst, log):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            log += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def take(self):
        time.sleep(0.3)  # the last bytes of the session
        got, self.sessions = self.sessions, []
        return got


def write_seed(directory, data):
    os.makedirs(directory, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def after(frame_list, kind):
    """The raw bytes of the frames after the first frame of type `kind`."""
    import json
    for k, (header, _) in enumerate(frame_list):
        try:
            if json.loads(header).get("type") == kind:
                return b"".join(raw for _, raw in frame_list[k + 1:])
        except ValueError:
            continue
    return b""


def record_tcp(server, relay, env):
    share = server.share
    os.makedirs(os.path.join(share, "tree", "sub"), exist_ok=True)
    for name, size in (("tree/a.txt", 100), ("tree/sub/b.bin", 40000), ("file", 3000), ("dir-file", 10)):
        with open(os.path.join(share, name), "wb") as f:
            f.write(os.urandom(size))
    os.symlink("a.txt", os.path.join(share, "tree", "link"))
    scratch = tempfile.mkdtemp(prefix="cskit-seeds-")
    local = os.path.join(scratch, "up.bin")
    with open(local, "wb") as f:
        f.write(os.urandom(50000))
    addr = f"127.0.0.1:{relay.port}"
    cli = [BIN]
    runs = [  # (fuzz_client operation byte, or None; the command)
        (0, ["ls", "-R", "--plaintext", f"{addr}:tree"]),
        (1, ["ls", "--plaintext", f"{addr}:tree"]),
        (2, ["stat", "--plaintext", f"{addr}:file"]),
        (3, ["get", "-r", "--plaintext", f"{addr}:tree", os.path.join(scratch, "got-tree")]),
        (4, ["get", "--plaintext", f"{addr}:file", os.path.join(scratch, "got-file")]),
        (None, ["put", "--plaintext", local, f"{addr}:up.bin"]),
        (None, ["put", "-r", "--plaintext", os.path.join(scratch, "got-tree"), f"{addr}:tree2"]),
        (None, ["mkdir", "-p", "--plaintext", f"{addr}:m/n/o"]),
        (None, ["mv", "--plaintext", f"{addr}:up.bin", f"{addr}:m/up.bin"]),
        (None, ["rm", "-r", "--plaintext", f"{addr}:m"]),
        (None, ["info", "--plaintext", addr]),
        (None, ["ping", "-c", "2", "-i", "0.05", "--plaintext", addr]),
        (None, ["exec", "--plaintext", addr, "--", "echo", "hi"]),
    ]
    for op, args in runs:
        subprocess.run(cli + args, env=env, capture_output=True, timeout=60)
        for rec in relay.take():
            record_session(rec, op)
    chat = subprocess.run([BIN, "chat", "--plaintext", addr, "--nick", "seed"], input=b"hello\n/me waves\n/who\n"
                          b"/topic t\n/msg seed hi\n/nick seed2\n/rooms\n/part\n/quit bye\n",
                          env=env, capture_output=True, timeout=60)
    del chat
    for rec in relay.take():
        record_session(rec, None)
    shutil.rmtree(scratch, ignore_errors=True)


def record_session(rec, client_op):
    c2s, s2c = frames(bytes(rec["c2s"])), frames(bytes(rec["s2c"]))
    requests = after(c2s, "auth")
    write_seed(os.path.join(ROOT, "fuzz", "corpus-session"), b"\x01" + requests)
    write_seed(os.path.join(ROOT, "fuzz", "corpus-session"), b"\x00" + b"".join(raw for _, raw in c2s))
    if client_op is not None:
        write_seed(os.path.join(ROOT, "fuzz", "corpus-client"), bytes([client_op]) + after(s2c, "welcome"))


def record_ntp(server_port):
    """A real `cskit time` request (caught by a UDP socket standing in for the server), and cskit's
    own time service's answer to it."""
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind(("127.0.0.1", 0))
    catcher.settimeout(5)
    p = subprocess.Popen([BIN, "time", f"127.0.0.1:{catcher.getsockname()[1]}", "-n", "1", "-W", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request, _ = catcher.recvfrom(2048)
    p.wait(timeout=10)
    write_seed(os.path.join(ROOT, "fuzz", "corpus-ntp"), request)
    catcher.sendto(request, ("127.0.0.1", server_port))
    reply, _ = catcher.recvfrom(2048)
    write_seed(os.path.join(ROOT, "fuzz", "corpus-ntp"), reply)
    catcher.close()


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    ntp_port = free_udp_port()
    conf = f'[exec]\nenabled = true\nallow_shell = false\n[time]\nlisten = "127.0.0.1:{ntp_port}"\n'
    conf += f'[[users]]\nname = "admin"\ntoken = "{TOKEN}"\npermissions = ["files-read", "files-write", "exec", "chat"]\n'
    server = Server("--plaintext", config_text=conf, token=TOKEN)
    try:
        relay = Relay(server.port)
        env = dict(server.env, CSKIT_TOKEN=TOKEN)
        record_tcp(server, relay, env)
        record_ntp(ntp_port)
    finally:
        server.stop()
        server.cleanup()
    for d in ("corpus-session", "corpus-client", "corpus-ntp"):
        print(d, len(os.listdir(os.path.join(ROOT, "fuzz", d))), "seeds")


if __name__ == "__main__":
    main()
