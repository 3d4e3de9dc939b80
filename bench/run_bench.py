#!/usr/bin/env python3
"""make bench: runs every cskit benchmark on loopback and prints medians.

Each case runs RUNS times (default 5, alternating where there are several
cases); the median and the min-max range are reported, with the command that
produced them. Results also go to build/bench/results.json.
"""
import argparse
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import wire  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def start_server(binary, *args):
    tmp = tempfile.mkdtemp(prefix="cskit-bench-")
    env = dict(os.environ, CSKIT_TOKEN=TOKEN, HOME=tmp)
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--root", os.path.join(tmp, "share"),
                          "--state-dir", os.path.join(tmp, "state"), "--log-level", "warn", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 1)
        if r:
            line = p.stdout.readline().decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                return p, int(m.group(1)), tmp
    p.kill()
    raise RuntimeError("server did not start")


def stop_server(p, tmp):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    shutil.rmtree(tmp, ignore_errors=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def bench_codec(build, runs):
    exe = os.path.join(build, "bench", "bench_codec")
    cmd = [exe, f"--benchmark_repetitions={runs}", "--benchmark_format=json", "--benchmark_min_time=0.5"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    res = {}
    for b in out["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["run_name"]
        res.setdefault(name, {"items_per_second": [], "bytes_per_second": []})
        res[name]["items_per_second"].append(b.get("items_per_second", 0))
        res[name]["bytes_per_second"].append(b.get("bytes_per_second", 0))
    return {"command": " ".join(cmd), "cases": {k: {m: summary(v) for m, v in d.items() if any(v)}
                                                for k, d in res.items()}}


def bench_roundtrip(binary, build, runs):
    exe = os.path.join(build, "bench", "bench_roundtrip")
    p, port, tmp = start_server(binary, "--threads", "1")
    try:
        cmd = [exe, f"127.0.0.1:{port}", TOKEN, "20000", "200000", "64"]
        samples = []
        for _ in range(runs):
            samples.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                                     timeout=300).stdout))
    finally:
        stop_server(p, tmp)
    flat = {
        "sequential_per_second": [s["sequential"]["per_second"] for s in samples],
        "sequential_p50_us": [s["sequential"]["p50_us"] for s in samples],
        "sequential_p99_us": [s["sequential"]["p99_us"] for s in samples],
        "pipelined_per_second": [s["pipelined"]["per_second"] for s in samples],
    }
    return {"command": f"cskit serve --threads 1 & {' '.join(cmd[:1])} 127.0.0.1:PORT TOKEN 20000 200000 64",
            "cases": {k: summary(v) for k, v in flat.items()}}


def bench_idle_memory(binary, runs, connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_conn = []
    for _ in range(runs):
        p, port, tmp = start_server(binary, "--max-connections", str(connections + 100))
        socks = []
        try:
            warm, _ = wire.login(port, TOKEN)  # first connection pays one-off allocations
            warm.sendall(wire.encode({"type": "ping", "id": 1}))
            wire.read_frame(warm)
            time.sleep(0.3)
            base = rss_kib(p.pid)
            for i in range(connections):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                socks.append(s)
                if len(socks) % 200 == 0 or i == connections - 1:
                    # authenticate in batches: hello, auth, welcome
                    batch = socks[-200:] if len(socks) % 200 == 0 else socks[-(len(socks) % 200):]
                    hellos = [wire.read_frame(x, 30)[0] for x in batch]
                    for x, h in zip(batch, hellos):
                        x.sendall(wire.auth_frame(h, TOKEN)[0])
                    for x in batch:
                        if wire.read_frame(x, 30)[0]["type"] != "welcome":
                            raise RuntimeError("login failed")
            # every connection is authenticated and idle; check a sample still answers
            for j, x in enumerate(socks[:: max(1, connections // 100)]):
                x.sendall(wire.encode({"type": "ping", "id": j}))
                if wire.read_frame(x, 30)[0]["type"] != "pong":
                    raise RuntimeError("no pong")
            time.sleep(0.5)
            after = rss_kib(p.pid)
            per_conn.append((after - base) * 1024 / connections)
        finally:
            for x in socks:
                x.close()
            stop_server(p, tmp)
    return {"command": f"bench/run_bench.py --only memory --connections {connections}",
            "connections": connections,
            "cases": {"rss_bytes_per_idle_authenticated_connection": summary(per_conn)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--only", choices=["codec", "roundtrip", "memory"])
    a = ap.parse_args()
    binary = os.path.join(a.build, "cskit")
    results = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release}}
    if a.only in (None, "codec"):
        results["codec"] = bench_codec(a.build, a.runs)
    if a.only in (None, "roundtrip"):
        results["roundtrip"] = bench_roundtrip(binary, a.build, a.runs)
    if a.only in (None, "memory"):
        results["memory"] = bench_idle_memory(binary, max(1, a.runs // 2 + 1), a.connections)
    os.makedirs(os.path.join(a.build, "..", "bench"), exist_ok=True)
    out = os.path.join(ROOT, "build", "bench", "results.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
