#!/usr/bin/env python3
"""Captures the example session of docs/protocol.md from a real server and prints it as the
document shows it: the inputs (token, user, the TLS exporter value), the HMAC inputs and proofs,
and every frame as a hex dump. Usage: scripts/protocol-example.py [path/to/cskit]

The frames travel inside TLS 1.3; what is shown is the plaintext of the TLS records.
"""
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import tlswire  # noqa: E402
import wire  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "build", "release", "cskit")
TOKEN = "example-token-0123456789abcdef"


def encode(header, body=b""):
    """As the reference encoder writes a frame: compact JSON, keys sorted, "body" last."""
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    if body:
        raw = raw[:-1] + ',"body":%d}' % len(body)
    raw = raw.encode()
    return len(raw).to_bytes(4, "big") + raw + body


def frame_dump(raw):
    # Prefix on its own row, then the header and body in rows of 16 from offset 4.
    n = int.from_bytes(raw[:4], "big")
    rows = [f"0000  {raw[:4].hex(' '):<47}  length prefix = {n}"]
    header_end = 4 + n
    off = 4
    while off < len(raw):
        end = min(off + 16, header_end if off < header_end else len(raw))
        chunk = raw[off:end]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        label = "body: " + text if off >= header_end else text
        rows.append(f"{off:04x}  {chunk.hex(' '):<47}  {label}")
        off = end
    return "\n".join(rows)


def capture():
    """Runs a session and returns (exporter, [(direction, raw frame bytes)])."""
    state = tempfile.mkdtemp()
    share = tempfile.mkdtemp()
    conf = os.path.join(state, "c.toml")
    with open(conf, "w") as f:
        f.write("[chat]\nenabled = false\n")
    env = dict(os.environ, CSKIT_TOKEN=TOKEN)
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--root", share, "--state-dir", state,
                          "--name", "example", "--threads", "1", "--config", conf, "--log-level", "warn"],
                         stdout=subprocess.PIPE, env=env)
    port = int(re.search(rb"listening on 127\.0\.0\.1:(\d+)", p.stdout.readline()).group(1))
    out = []
    try:
        s = tlswire.connect(port)
        exporter = tlswire.exporter(s)

        def read_raw():
            prefix = wire.recv_exact(s, 4, time.monotonic() + 10)
            n = int.from_bytes(prefix, "big")
            header = wire.recv_exact(s, n, time.monotonic() + 10)
            body_len = json.loads(header).get("body", 0)
            body = wire.recv_exact(s, body_len, time.monotonic() + 10) if body_len else b""
            return prefix + header + body

        s.settimeout(10)
        proof = wire.proof(b"cskit/2 client", TOKEN, "admin", "tls-exporter", exporter)
        auth = encode({"type": "auth", "id": 1, "proto": 2, "user": "admin", "proof": proof,
                       "binding": wire.binding_check(exporter)})
        s.sendall(auth)
        out.append(("C→S `auth`", auth))
        out.append(("S→C `hello`", read_raw()))
        out.append(("S→C `welcome`", read_raw()))
        ping = encode({"type": "ping", "id": 2}, b"abc")
        info = encode({"type": "info", "id": 3})
        s.sendall(ping + info)
        out.append(("C→S `ping`", ping))
        out.append(("C→S `info`", info))
        out.append(("S→C `pong`", read_raw()))
        out.append(("S→C `info.reply`", read_raw()))
        s.close()
        return exporter, out
    finally:
        p.terminate()
        p.wait(timeout=10)


if __name__ == "__main__":
    exporter, frames = capture()
    cin = b"cskit/2 client\0admin\0tls-exporter\0" + exporter
    sin = b"cskit/2 server\0admin\0tls-exporter\0" + exporter
    print("exporter:", exporter.hex())
    print("client input (%d bytes): %s" % (len(cin), cin.hex()))
    print("client proof:", hmac.new(TOKEN.encode(), cin, hashlib.sha256).hexdigest())
    print("server proof:", hmac.new(TOKEN.encode(), sin, hashlib.sha256).hexdigest())
    print("binding check:", wire.binding_check(exporter))
    for i, (name, raw) in enumerate(frames, 1):
        n = int.from_bytes(raw[:4], "big")
        print(f"\n**{i}. {name}** ({len(raw)} bytes: 4 + {n} + {len(raw) - 4 - n})\n")
        print("```")
        print(frame_dump(raw))
        print("```")
