#!/usr/bin/env python3
"""make bench: runs every cskit benchmark on loopback and prints medians.

Each case runs RUNS times (default 5, alternating where there are several
cases); the median and the min-max range are reported, with the command that
produced them. Results also go to build/bench/results.json.

--only files: file transfer over TLS against scp, rsync over ssh, socat with
TLS (one big page-cached file, a tree of small files), beside cleartext
cskit, socat and iperf3, and the server's memory with 100 concurrent
transfers; prints a Markdown section after the JSON.
Needs 10 GB free in the temp dir; --file-size-mb and --tree-files shrink it.
"""
import argparse
import filecmp
import json
import os
import pwd
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import tlswire  # noqa: E402
import wire  # noqa: E402
import udp_peers  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


# The HOME of every client this script runs: its known_hosts learns the key
# of every server start_server() starts (clients then trust it as after an
# accepted first contact).
CLIENT_HOME = tempfile.mkdtemp(prefix="cskit-bench-home-")


def trust(home, port, fingerprint):
    path = os.path.join(home, ".config", "cskit", "known_hosts")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(f"127.0.0.1:{port} {fingerprint}\n")


def client_env(**extra):
    return dict(os.environ, HOME=CLIENT_HOME, **extra)


def start_server(binary, *args, root=None):
    """`root`: the directory to share (default: a new one in the server's temp dir). The
    server's key goes into CLIENT_HOME's known_hosts."""
    tmp = tempfile.mkdtemp(prefix="cskit-bench-")
    env = dict(os.environ, CSKIT_TOKEN=TOKEN, HOME=tmp)
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--root", root or os.path.join(tmp, "share"),
                          "--state-dir", os.path.join(tmp, "state"), "--log-level", "warn", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 1)
        if not r:
            continue
        line = p.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            continue
        port = int(m.group(1))
        # The rest of the banner was written with that line (one flush); it
        # ends with the "connect:" line. Kept for banner_port.
        p.banner = []
        for _ in range(50):
            line = p.stdout.readline().decode()
            p.banner.append(line)
            m = re.search(r"server key (SHA256:[A-Za-z0-9+/]{43})", line)
            if m:
                trust(CLIENT_HOME, port, m.group(1))
            if not line or line.startswith("connect:"):
                break
        return p, port, tmp
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


def stop_started(started):
    """Stops what a benchmark started, last first: ("cskit", (proc, tmp)) or (name, obj with stop())."""
    for kind, obj in reversed(started):
        if kind == "cskit":
            stop_server(*obj)
        else:
            obj.stop()


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
    flat = {}
    for mode in ("tls", "plaintext"):
        p, port, tmp = start_server(binary, "--threads", "1", *(() if mode == "tls" else ("--plaintext",)))
        env = client_env(BENCH_PLAINTEXT="1" if mode == "plaintext" else "0")
        try:
            cmd = [exe, f"127.0.0.1:{port}", TOKEN, "20000", "200000", "64"]
            samples = []
            for _ in range(runs):
                samples.append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env,
                                                         timeout=300).stdout))
        finally:
            stop_server(p, tmp)
        flat.update({
            f"sequential_per_second_{mode}": [s["sequential"]["per_second"] for s in samples],
            f"sequential_p50_us_{mode}": [s["sequential"]["p50_us"] for s in samples],
            f"sequential_p99_us_{mode}": [s["sequential"]["p99_us"] for s in samples],
            f"pipelined_per_second_{mode}": [s["pipelined"]["per_second"] for s in samples],
        })
    return {"command": "cskit serve --threads 1 [--plaintext] & bench_roundtrip 127.0.0.1:PORT TOKEN 20000 200000 64 "
                       "(BENCH_PLAINTEXT=1 for --plaintext)",
            "cases": {k: summary(v) for k, v in flat.items()}}


def login_batch(port, n, tls):
    """`n` connections, authenticated in batches (TLS: the default; else --plaintext). A batch
    stays under the server's default limit of connections not logged in yet from one
    address (max_unauthenticated_per_address = 128)."""
    socks = []
    size = 100
    for i in range(n):
        if tls:
            socks.append(tlswire.connect(port, timeout=30))
        else:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        if len(socks) % size == 0 or i == n - 1:
            batch = socks[-size:] if len(socks) % size == 0 else socks[-(len(socks) % size):]
            hellos = [wire.read_frame(x, 30)[0] for x in batch]
            for x, h in zip(batch, hellos):
                if tls:
                    x.sendall(wire.auth_frame(x, TOKEN))
                else:
                    cn = os.urandom(32)
                    b = bytes.fromhex(h["nonce"]) + cn
                    x.sendall(wire.encode({"type": "auth", "id": 1, "proto": 2, "user": "admin", "nonce": cn.hex(),
                                           "proof": wire.proof(b"cskit/2 client", TOKEN, "admin", "nonces", b)}))
            for x in batch:
                if wire.read_frame(x, 30)[0]["type"] != "welcome":
                    raise RuntimeError("login failed")
    return socks


def bench_idle_memory(binary, runs, connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    per_conn = {"tls": [], "plaintext": []}
    for _ in range(runs):
        for mode in ("tls", "plaintext"):
            tls = mode == "tls"
            p, port, tmp = start_server(binary, "--max-connections", str(connections + 100),
                                        *(() if tls else ("--plaintext",)))
            socks = []
            try:
                warm = login_batch(port, 1, tls)[0]  # the first connection pays one-off allocations
                warm.sendall(wire.encode({"type": "ping", "id": 1}))
                wire.read_frame(warm)
                socks.append(warm)
                time.sleep(0.3)
                base = rss_kib(p.pid)
                socks += login_batch(port, connections, tls)
                # every connection is authenticated and idle; check a sample still answers
                for j, x in enumerate(socks[:: max(1, connections // 100)]):
                    x.sendall(wire.encode({"type": "ping", "id": j}))
                    if wire.read_frame(x, 30)[0]["type"] != "pong":
                        raise RuntimeError("no pong")
                time.sleep(0.5)
                after = rss_kib(p.pid)
                per_conn[mode].append((after - base) * 1024 / connections)
            finally:
                for x in socks:
                    x.close()
                stop_server(p, tmp)
    return {"command": f"bench/run_bench.py --only memory --connections {connections}",
            "connections": connections,
            "cases": {f"rss_bytes_per_idle_authenticated_connection_{m}": summary(v) for m, v in per_conn.items()}}


def banner_port(p, name):
    # start_server has read the whole banner (up to its "connect:" line).
    for line in p.banner:
        m = re.match(name + r": 127\.0\.0\.1:(\d+) ", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no {name} line in the banner")


def start_udp_server(binary):
    """cskit with echo and NTP on, rate limits off (the load comes from one source)."""
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write("[echo]\nrate = 0\nbyte_rate = 0\n[time]\nrate = 0\n")
    conf.close()
    p, _, tmp = start_server(binary, "--threads", "1", "--config", conf.name,
                             "--echo-listen", "127.0.0.1:0", "--ntp-listen", "127.0.0.1:0")
    os.unlink(conf.name)
    # The banner prints echo before time.
    return p, tmp, banner_port(p, "echo"), banner_port(p, "time")


def run_load(build, mode, port, seconds, window, size=None):
    cmd = [os.path.join(build, "bench", "bench_udp"), mode, f"127.0.0.1:{port}", str(seconds), str(window)]
    if size:
        cmd.append(str(size))
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout)


def bench_udp(binary, build, runs, seconds=2.0):
    """NTP: cskit vs chronyd (accuracy with chronyd -Q, throughput with
    bench_udp). Echo: cskit vs a socat echo server. Alternating, same run."""
    p, tmp, echo_port, ntp_port = start_udp_server(binary)
    chrony = udp_peers.ChronyServer()
    acc = {"cskit": [], "chronyd": []}
    ntp = {"cskit": [], "chronyd": []}
    ntp_seq = {"cskit": [], "chronyd": []}
    echo = {"cskit": [], "socat": []}
    echo_seq = {"cskit": [], "socat": []}
    echo_p50 = {"cskit": [], "socat": []}
    try:
        for _ in range(runs):
            for name, port in (("cskit", ntp_port), ("chronyd", chrony.port)):
                acc[name].append(abs(udp_peers.chronyd_measure(port)) * 1e6)
            for name, port in (("cskit", ntp_port), ("chronyd", chrony.port)):
                ntp[name].append(run_load(build, "ntp", port, seconds, 32)["per_second"])
                ntp_seq[name].append(run_load(build, "ntp", port, seconds, 1)["per_second"])
            for name in ("cskit", "socat"):
                for window, target in ((32, echo), (1, echo_seq)):
                    if name == "socat":
                        # UDP4-LISTEN serves the first peer only: one socat per run.
                        port = udp_peers.free_udp_port()
                        # -b 64: socat's PIPE is a byte stream; with a block size
                        # equal to the datagram size it returns each one whole.
                        sp = subprocess.Popen(["socat", "-b", "64", f"UDP4-LISTEN:{port},bind=127.0.0.1", "PIPE"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.2)
                    else:
                        port = echo_port
                    try:
                        r = run_load(build, "echo", port, seconds, window, 64)
                    finally:
                        if name == "socat":
                            sp.terminate()
                            sp.wait(timeout=10)
                    target[name].append(r["per_second"])
                    if window == 1:
                        echo_p50[name].append(r["p50_us"])
    finally:
        chrony.stop()
        stop_server(p, tmp)

    def ratio(d, a, b):
        return statistics.median(d[a]) / statistics.median(d[b])

    return {
        "commands": {
            "accuracy": "chronyd -Q -t 10 -f /dev/null 'server 127.0.0.1 port P iburst maxsamples 4' "
                        "'pidfile TMP/pid' 'cmdport 0'   (against cskit, then chronyd -x 'local stratum 10')",
            "ntp_throughput": "bench_udp ntp 127.0.0.1:P 2 32   (and window 1: sequential)",
            "echo": "bench_udp echo 127.0.0.1:P 2 32 64   (and window 1); socat -b 64 UDP4-LISTEN:P,bind=127.0.0.1 PIPE",
            "server": "cskit serve --threads 1 --echo-listen 127.0.0.1:0 --ntp-listen 127.0.0.1:0 "
                      "(rate limits off in its config)",
        },
        "cases": {
            **{f"chronyd_Q_abs_offset_us_{k}": summary(v) for k, v in acc.items()},
            **{f"ntp_requests_per_second_window32_{k}": summary(v) for k, v in ntp.items()},
            **{f"ntp_requests_per_second_sequential_{k}": summary(v) for k, v in ntp_seq.items()},
            **{f"echo_round_trips_per_second_window32_{k}": summary(v) for k, v in echo.items()},
            **{f"echo_round_trips_per_second_sequential_{k}": summary(v) for k, v in echo_seq.items()},
            **{f"echo_sequential_p50_us_{k}": summary(v) for k, v in echo_p50.items()},
        },
        "ratios": {
            "ntp_throughput_cskit_over_chronyd": ratio(ntp, "cskit", "chronyd"),
            "ntp_sequential_cskit_over_chronyd": ratio(ntp_seq, "cskit", "chronyd"),
            "echo_window32_cskit_over_socat": ratio(echo, "cskit", "socat"),
            "echo_sequential_cskit_over_socat": ratio(echo_seq, "cskit", "socat"),
        },
    }


class PrivateSshd:
    """A second sshd on 127.0.0.1 with its own config, host key and client
    key (../shared/BENCHMARKING.md). The login shell's ~/.bashrc is masked
    with an empty file in a private mount namespace, so ssh is not charged
    for whatever the rc file does."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="cskit-sshd-")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
        self.port = free_tcp_port()
        d = self.dir
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host"], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/client"], check=True)
        shutil.copy(f"{d}/client.pub", f"{d}/authorized_keys")
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d}/host\n"
                    f"PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n")
            # scp speaks SFTP since OpenSSH 9.0: the stock Debian subsystem.
            sftp = "/usr/lib/openssh/sftp-server"
            f.write(f"Subsystem sftp {sftp if os.path.exists(sftp) else 'internal-sftp'}\n")
        open(f"{d}/empty", "w").close()
        home = os.path.expanduser("~")
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        sshd = f"/usr/sbin/sshd -D -e -f {d}/sshd_config"
        if os.geteuid() == 0 and os.path.exists(f"{home}/.bashrc"):
            # A private mount namespace needs root; without it the rc file is not masked.
            cmd = ["unshare", "-m", "sh", "-c", f"mount --bind {d}/empty {home}/.bashrc && exec {sshd}"]
        else:
            cmd = ["sh", "-c", f"exec {sshd}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{d}/log", "w"))
        self.base = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", f"{d}/client", "-p", str(self.port)]
        self.cm = ["-o", "ControlMaster=auto", "-o", f"ControlPath={d}/cm", "-o", "ControlPersist=120"]
        deadline = time.monotonic() + 20
        while subprocess.run(self.base + [f"{self.user}@127.0.0.1", "true"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("private sshd did not start")
            time.sleep(0.2)

    def command(self, *args, control_master=False):
        return self.base + (self.cm if control_master else []) + [f"{self.user}@127.0.0.1", *args]

    def stop(self):
        subprocess.run(self.base + self.cm + ["-O", "exit", f"{self.user}@127.0.0.1"], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_runs(cmd, n, env=None):
    """Milliseconds per run of `cmd` (output discarded, exit status checked)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * (len(v) - 1)))]


def bench_exec(binary, build, runs):
    """`cskit exec` vs ssh to a private sshd: round trip of `true`, and cat of a 1 GiB file."""
    token = "bench-exec-token-0123456789abcdef"
    conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    conf.write(f'[exec]\nenabled = true\n[[users]]\nname = "ops"\ntoken = "{token}"\npermissions = ["exec"]\n')
    conf.close()
    p, port, tmp = start_server(binary, "--config", conf.name)
    pp, pport, ptmp = start_server(binary, "--config", conf.name, "--plaintext")
    os.unlink(conf.name)
    sshd = PrivateSshd()
    big = os.path.join(tmp, "1GiB")
    with open(big, "wb") as f:
        f.write(b"\0" * (1 << 30))
    os.chmod(tmp, 0o755)
    os.chmod(big, 0o644)
    env = client_env(CSKIT_USER="ops", CSKIT_TOKEN=token)
    cskit = [binary, "exec", f"127.0.0.1:{port}", "--"]
    cskit_plain = [binary, "exec", f"127.0.0.1:{pport}", "--plaintext", "--"]
    rtt = {"cskit": [], "cskit_plaintext": [], "cskit_in_session": [], "ssh_controlmaster": [], "ssh": [],
           "startup_cskit_version": [], "startup_ssh_version": []}
    stream = {"cskit": [], "ssh": []}
    session = {"p50": [], "p99": []}
    # The same commands timed by bench_spawn (posix_spawn + waitpid, no Python
    # in between): per round, its p50 and p99.
    spawner = os.path.join(build, "bench", "bench_spawn")
    lean_cmds = {"cskit": (cskit + ["true"], 60), "cskit_plaintext": (cskit_plain + ["true"], 60),
                 "ssh_controlmaster": (sshd.command("true", control_master=True), 60),
                 "ssh": (sshd.command("true"), 8), "startup_cskit_version": ([binary, "--version"], 60),
                 "startup_true": (["/bin/true"], 60)}
    lean = {k: {"p50": [], "p99": []} for k in lean_cmds}
    try:
        timed_runs(sshd.command("true", control_master=True), 3)  # start the master
        for _ in range(runs):
            rtt["cskit"] += timed_runs(cskit + ["true"], 60, env)
            rtt["cskit_plaintext"] += timed_runs(cskit_plain + ["true"], 60, env)
            rtt["ssh_controlmaster"] += timed_runs(sshd.command("true", control_master=True), 60)
            rtt["ssh"] += timed_runs(sshd.command("true"), 8)
            # The floor under any CLI round trip: starting the client program.
            rtt["startup_cskit_version"] += timed_runs([binary, "--version"], 60)
            rtt["startup_ssh_version"] += timed_runs(["ssh", "-V"], 60)
            for name, (cmd, n) in lean_cmds.items():
                r = json.loads(subprocess.run([spawner, str(n), *cmd], capture_output=True, text=True, check=True,
                                              env=env, timeout=600).stdout)
                lean[name]["p50"].append(r["p50_ms"])
                lean[name]["p99"].append(r["p99_ms"])
            r = json.loads(subprocess.run([os.path.join(build, "bench", "bench_exec"), f"127.0.0.1:{port}", "ops",
                                           token, "500"], capture_output=True, text=True, check=True,
                                          env=env).stdout)
            session["p50"].append(r["p50_us"] / 1000)
            session["p99"].append(r["p99_us"] / 1000)
            for name, cmd in (("cskit", cskit + ["cat", big]), ("ssh", sshd.command("cat", big))):
                t = timed_runs(cmd, 1, env)[0]
                stream[name].append((1 << 30) / (t / 1000) / 1e9)
    finally:
        sshd.stop()
        stop_server(p, tmp)
        stop_server(pp, ptmp)
    cases = {}
    for k, v in rtt.items():
        if v:
            cases[f"true_round_trip_ms_{k}"] = {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "runs": len(v)}
    cases["true_round_trip_ms_cskit_in_session"] = {"p50": statistics.median(session["p50"]),
                                                    "p99": statistics.median(session["p99"]),
                                                    "runs": runs}
    for k, v in lean.items():
        cases[f"true_round_trip_ms_lean_{k}"] = {"p50": statistics.median(v["p50"]), "p99": statistics.median(v["p99"]),
                                                "runs": runs}
    for k, v in stream.items():
        cases[f"cat_1GiB_GBps_{k}"] = summary(v)
    return {
        "commands": {
            "cskit": "cskit exec 127.0.0.1:P -- true   (a new process and TLS connection each time, like ssh)",
            "cskit_plaintext": "cskit exec 127.0.0.1:P --plaintext -- true   (against cskit serve --plaintext: "
                               "what TLS costs is the difference)",
            "cskit_in_session": "bench_exec 127.0.0.1:P ops TOKEN 500   (exec true on one open connection)",
            "ssh": "ssh -F /dev/null -i KEY -p P root@127.0.0.1 true   (private sshd, ~/.bashrc masked)",
            "ssh_controlmaster": "the same with -o ControlMaster=auto -o ControlPath=... -o ControlPersist=120",
            "stream": "cskit exec 127.0.0.1:P -- cat FILE > /dev/null   vs   ssh ... cat FILE > /dev/null",
            "lean_*": "the same commands (and /bin/true) timed by bench/bench_spawn RUNS CMD...: posix_spawn and "
                      "waitpid, no Python in between; p50 and p99 per round, median over the rounds",
        },
        "cases": cases,
        "ratios": {
            "ssh_over_cskit_p50": cases["true_round_trip_ms_ssh"]["p50"] / cases["true_round_trip_ms_cskit"]["p50"],
            "ssh_controlmaster_over_cskit_p50": cases["true_round_trip_ms_ssh_controlmaster"]["p50"]
            / cases["true_round_trip_ms_cskit"]["p50"],
            "cat_cskit_over_ssh": statistics.median(stream["cskit"]) / statistics.median(stream["ssh"]),
            "lean_ssh_over_cskit_p50": cases["true_round_trip_ms_lean_ssh"]["p50"]
            / cases["true_round_trip_ms_lean_cskit"]["p50"],
            "lean_ssh_controlmaster_over_cskit_p50": cases["true_round_trip_ms_lean_ssh_controlmaster"]["p50"]
            / cases["true_round_trip_ms_lean_cskit"]["p50"],
            "lean_tls_cost_ms_p50": cases["true_round_trip_ms_lean_cskit"]["p50"]
            - cases["true_round_trip_ms_lean_cskit_plaintext"]["p50"],
        },
    }


CHAT_CASES = ("cskit", "cskit_1loop", "ngircd", "cskit_plaintext", "ngircd_plaintext", "cskit_irc", "cskit_irc_plaintext",
              "cskit_nostore")


def bench_chat(binary, build, runs, receivers=1000, messages=10000, rate=300, names=CHAT_CASES):
    """One sender, RECEIVERS receivers in one room, MESSAGES messages at RATE/s:
    cskit against ngircd, with the same load generator (bench_chat).
    cskit_irc: the receivers and the sender on cskit's IRC front end (TLS),
    as against ngircd. cskit_nostore: history not stored ([chat]
    history_keep = 0); every other cskit case stores it in SQLite (the
    default), so the two show what storing costs fan-out."""
    exe = os.path.join(build, "bench", "bench_chat")
    # cskit twice: with its default of one event loop per core, and with one
    # loop. On this 2-core machine the generator needs one core for itself,
    # and ngircd is single-threaded.
    # TLS is the default for cskit; ngircd's TLS port (Debian's is built with
    # SSL) is its peer. The cleartext cases show what TLS costs each.
    results = {n: [] for n in names}
    memory = {n: [] for n in names}
    for _ in range(runs):
        for name in names:
            tls = not name.endswith("_plaintext")
            if name.startswith("cskit"):
                conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
                # One fast sender; no join replay (ngircd has none).
                conf.write("[chat]\nrate = 0\nhistory = 0\n" +
                           ("history_keep = 0\n" if name == "cskit_nostore" else "") +
                           ("[irc]\nlisten = \"127.0.0.1:0\"\n" if name.startswith("cskit_irc") else ""))
                conf.close()
                loops = ["--threads", "1"] if name == "cskit_1loop" else []
                p, port, tmp = start_server(binary, "--config", conf.name, *loops, *(() if tls else ("--plaintext",)))
                os.unlink(conf.name)
                pid, proto_name = p.pid, "cskit"
                if name.startswith("cskit_irc"):
                    port, proto_name = banner_port(p, "irc"), "cskit-irc"
            else:
                tmp = tempfile.mkdtemp(prefix="cskit-ngircd-")
                port, plain_port = free_tcp_port(), free_tcp_port()
                subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                "-nodes", "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem", "-days", "2",
                                "-subj", "/CN=bench.local"], check=True, capture_output=True)
                ssl_section = (f"[SSL]\nCertFile = {tmp}/cert.pem\nKeyFile = {tmp}/key.pem\nPorts = {port}\n"
                               if tls else "")
                with open(f"{tmp}/ngircd.conf", "w") as f:
                    f.write(f"[Global]\nName = bench.local\nInfo = bench\nListen = 127.0.0.1\n"
                            f"Ports = {plain_port if tls else port}\n"
                            f"PidFile = {tmp}/ngircd.pid\nMotdPhrase = bench\n"
                            "[Limits]\nMaxConnections = 0\nMaxConnectionsIP = 0\nMaxJoins = 0\n"
                            "MaxPenaltyTime = 0\nPingTimeout = 600\nPongTimeout = 600\n"
                            "[Options]\nDNS = no\nIdent = no\nPAM = no\n" + ssl_section)
                p = subprocess.Popen(["ngircd", "-n", "-f", f"{tmp}/ngircd.conf"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 10
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise RuntimeError("ngircd did not start")
                        time.sleep(0.1)
                pid, proto_name = p.pid, "irc"
            try:
                time.sleep(0.3)
                base = rss_kib(pid)
                gen = subprocess.Popen([exe, proto_name, f"127.0.0.1:{port}", TOKEN, str(receivers), str(messages),
                                        str(rate), "tls" if tls else "plain"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=client_env())
                # Memory with every receiver connected and joined, before the messages flow.
                peak = base
                while gen.poll() is None:
                    peak = max(peak, rss_kib(pid))
                    time.sleep(0.2)
                out, err = gen.communicate()
                if gen.returncode != 0:
                    raise RuntimeError(f"bench_chat {name}: {err.strip()} {out.strip()}")
                r = json.loads(out)
                results[name].append(r)
                memory[name].append((peak - base) * 1024 / (receivers + 1))
            finally:
                if name.startswith("cskit"):
                    stop_server(p, tmp)
                else:
                    p.terminate()
                    p.wait(timeout=10)
                    shutil.rmtree(tmp, ignore_errors=True)
    cases = {}
    for name in results:
        for key in ("p50_ms", "p99_ms", "deliveries_per_second"):
            cases[f"{key}_{name}"] = summary([r[key] for r in results[name]])
        cases[f"server_bytes_per_client_peak_{name}"] = summary(memory[name])

    def ratio(a, b):
        return cases[a]["median"] / max(1e-9, cases[b]["median"]) if a in cases and b in cases else None

    if names != CHAT_CASES:
        return {
            "command": f"bench_chat cskit|irc|cskit-irc 127.0.0.1:P TOKEN {receivers} {messages} {rate} tls   "
                       f"(cases {', '.join(names)}; cskit with [chat] rate = 0, history = 0, and history_keep = 0 "
                       "for cskit_nostore; cskit_irc: [irc] listen, PASS admin:TOKEN; ngircd as in --only chat)",
            "cases": cases,
            "ratios": {
                "p99_ngircd_over_cskit_irc": ratio("p99_ms_ngircd", "p99_ms_cskit_irc"),
                "p50_ngircd_over_cskit_irc": ratio("p50_ms_ngircd", "p50_ms_cskit_irc"),
                "memory_ngircd_over_cskit_irc": ratio("server_bytes_per_client_peak_ngircd",
                                                      "server_bytes_per_client_peak_cskit_irc"),
                "p99_ngircd_plaintext_over_cskit_irc_plaintext": ratio("p99_ms_ngircd_plaintext",
                                                                       "p99_ms_cskit_irc_plaintext"),
                "memory_ngircd_plaintext_over_cskit_irc_plaintext": ratio(
                    "server_bytes_per_client_peak_ngircd_plaintext", "server_bytes_per_client_peak_cskit_irc_plaintext"),
                "p99_stored_over_not_stored": ratio("p99_ms_cskit", "p99_ms_cskit_nostore"),
                "p50_stored_over_not_stored": ratio("p50_ms_cskit", "p50_ms_cskit_nostore"),
            },
        }
    return {
        "command": f"bench_chat cskit|irc 127.0.0.1:P TOKEN {receivers} {messages} {rate} tls|plain   "
                   "(cskit with [chat] rate = 0, history = 0, default threads and --threads 1 (cskit_1loop), "
                   "TLS unless *_plaintext (cskit serve --plaintext); ngircd -n with MaxPenaltyTime = 0, "
                   "MaxConnectionsIP = 0, an [SSL] port with a P-256 certificate unless *_plaintext)",
        "cases": cases,
        "ratios": {
            "p99_ngircd_over_cskit": cases["p99_ms_ngircd"]["median"] / max(1e-9, cases["p99_ms_cskit"]["median"]),
            "p99_ngircd_over_cskit_1loop": cases["p99_ms_ngircd"]["median"]
            / max(1e-9, cases["p99_ms_cskit_1loop"]["median"]),
            "p50_ngircd_over_cskit": cases["p50_ms_ngircd"]["median"] / max(1e-9, cases["p50_ms_cskit"]["median"]),
            "p50_ngircd_over_cskit_1loop": cases["p50_ms_ngircd"]["median"]
            / max(1e-9, cases["p50_ms_cskit_1loop"]["median"]),
            "p99_ngircd_plaintext_over_cskit_plaintext": cases["p99_ms_ngircd_plaintext"]["median"]
            / max(1e-9, cases["p99_ms_cskit_plaintext"]["median"]),
            "deliveries_cskit_over_ngircd": cases["deliveries_per_second_cskit"]["median"]
            / max(1e-9, cases["deliveries_per_second_ngircd"]["median"]),
            "memory_ngircd_over_cskit": cases["server_bytes_per_client_peak_ngircd"]["median"]
            / max(1e-9, cases["server_bytes_per_client_peak_cskit"]["median"]),
            "memory_ngircd_over_cskit_1loop": cases["server_bytes_per_client_peak_ngircd"]["median"]
            / max(1e-9, cases["server_bytes_per_client_peak_cskit_1loop"]["median"]),
        },
    }


def bench_history(binary, runs, messages=1000, queries=200, joins=200):
    """IRC CHATHISTORY LATEST of MESSAGES stored messages, and the join
    replay of 50 (JOIN until the end of its chathistory batch, then PART),
    each timed from the command sent to the last line read, over TLS on
    loopback, the history in SQLite."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def connect(port, nick, caps):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        s.sendall(f"PASS admin:{TOKEN}\r\nCAP REQ :{caps}\r\nNICK {nick}\r\nUSER {nick} 0 * :b\r\nCAP END\r\n"
                  .encode())
        until(s, b" 376 ", b" 422 ")
        return s

    def until(s, *marks, buf=None):
        data = b""
        while not any(m in data for m in marks):
            chunk = s.recv(1 << 20)
            if not chunk:
                raise RuntimeError("connection closed: " + data[-300:].decode(errors="replace"))
            data = data[-64:] + chunk if len(data) > 1 << 20 else data + chunk
        return data

    latest, replay = [], []
    for _ in range(runs):
        conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        conf.write("[chat]\nrate = 0\nhistory = 50\n[irc]\nlisten = \"127.0.0.1:0\"\n")
        conf.close()
        p, _, tmp = start_server(binary, "--config", conf.name)
        os.unlink(conf.name)
        try:
            port = banner_port(p, "irc")
            a = connect(port, "writer", "batch server-time message-tags draft/chathistory")
            a.sendall(b"JOIN #h\r\n")
            until(a, b" 366 ")
            a.sendall(b"".join(f"PRIVMSG #h :message number {i} of the history benchmark\r\n".encode()
                               for i in range(messages)))
            # Stored (or waiting to be): every one is in the answer.
            for _ in range(100):
                a.sendall(f"CHATHISTORY LATEST #h * {messages}\r\n".encode())
                if until(a, b"BATCH -").count(b"PRIVMSG #h") >= messages:
                    break
                time.sleep(0.1)
            times = []
            for _ in range(queries):
                t0 = time.perf_counter()
                a.sendall(f"CHATHISTORY LATEST #h * {messages}\r\n".encode())
                until(a, b"BATCH -")
                times.append((time.perf_counter() - t0) * 1000)
            latest.append((percentile(times, 0.5), percentile(times, 0.99)))
            b = connect(port, "joiner", "batch server-time")
            times = []
            for _ in range(joins):
                t0 = time.perf_counter()
                b.sendall(b"JOIN #h\r\n")
                until(b, b"BATCH -")
                times.append((time.perf_counter() - t0) * 1000)
                b.sendall(b"PART #h\r\n")
                until(b, b" PART #h")
            replay.append((percentile(times, 0.5), percentile(times, 0.99)))
            a.close()
            b.close()
        finally:
            stop_server(p, tmp)
    return {
        "command": f"bench/run_bench.py --only history --runs {runs}  (Python over TLS: CHATHISTORY LATEST #h * "
                   f"{messages} x {queries}, JOIN/PART with a replay of 50 x {joins}; [chat] rate = 0, history = 50)",
        "cases": {
            "chathistory_latest_1000_p50_ms": summary([x[0] for x in latest]),
            "chathistory_latest_1000_p99_ms": summary([x[1] for x in latest]),
            "join_replay_50_p50_ms": summary([x[0] for x in replay]),
            "join_replay_50_p99_ms": summary([x[1] for x in replay]),
        },
    }


def stop_proc(p):
    """Stops one process this script started (by its PID), at most ~15 s."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def wait_listening(port, proc=None, timeout=15):
    """Waits until something listens on 127.0.0.1:port, without connecting
    (a probe connection would be taken as the client by `iperf3 -1` or socat)."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.02)


class RsyncDaemon:
    """rsync --daemon --no-detach on 127.0.0.1 (../shared/BENCHMARKING.md),
    with one writable module `up` and one read-only module `src`."""

    def __init__(self, up_dir, src_dir):
        self.dir = tempfile.mkdtemp(prefix="cskit-rsyncd-")
        self.port = free_tcp_port()
        owner = "uid = 0\ngid = 0\n" if os.geteuid() == 0 else ""  # root would otherwise become nobody
        with open(f"{self.dir}/rsyncd.conf", "w") as f:
            f.write(f"address = 127.0.0.1\nport = {self.port}\nuse chroot = no\n{owner}"
                    f"log file = {self.dir}/log\nmax connections = 0\n"
                    f"[up]\npath = {up_dir}\nread only = false\n"
                    f"[src]\npath = {src_dir}\nread only = true\n")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={self.dir}/rsyncd.conf"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(self.port, self.proc)
        except Exception:
            self.stop()
            raise

    def url(self, module, path=""):
        return f"rsync://127.0.0.1:{self.port}/{module}/{path}"

    def stop(self):
        stop_proc(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_checked(cmd, timeout, env=None):
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=timeout)
    if r.returncode != 0:
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        raise RuntimeError(f"exit {r.returncode}: {shown}: {r.stderr.decode(errors='replace').strip()[-500:]}")


def timed(cmd, timeout, env=None):
    """Wall seconds of one whole command (exit status checked)."""
    t0 = time.perf_counter()
    run_checked(cmd, timeout, env)
    return time.perf_counter() - t0


def timed_pipe(receiver, sender, port, timeout):
    """Starts `receiver` (listening on port), then times `sender` until the
    receiver has exited too, i.e. until the data is in place."""
    rp = subprocess.Popen(receiver, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_listening(port, rp)
        t0 = time.perf_counter()
        run_checked(sender, timeout)
        rp.wait(timeout=timeout)
        t = time.perf_counter() - t0
        if rp.returncode != 0:
            raise RuntimeError(f"exit {rp.returncode}: {receiver}: {rp.stderr.read().decode(errors='replace')[-500:]}")
        return t
    finally:
        if rp.poll() is None:
            os.killpg(rp.pid, signal.SIGTERM)  # its own session: the shell and its pipeline
            rp.wait(timeout=10)
        rp.stderr.close()


def shuffled(cases, rnd):
    """The cases of round `rnd` in an order of their own (seeded by the round,
    so a run can be repeated): what a case runs after matters on this VM
    (iperf3 leaves it slower for a while; deleting a big tree slows ext4),
    and in a fixed or merely rotated order each case would nearly always
    follow the same other one."""
    order = list(cases)
    random.Random(1000 + rnd).shuffle(order)
    return order


def sync():
    subprocess.run(["sync"], check=True, timeout=600)


def write_random_file(path, size, chunk=64 << 20):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n


def same_file(a, b, size):
    return os.path.getsize(b) == size and subprocess.run(["cmp", "-s", a, b], timeout=600).returncode == 0


def check_tree(dst, expected):
    """Every file of `expected` (relative path -> bytes) is in `dst` with its content, and nothing else."""
    found = 0
    for dirpath, _, files in os.walk(dst):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), dst)
            want = expected.get(rel)
            if want is None:
                raise RuntimeError(f"{dst}: unexpected file {rel}")
            with open(os.path.join(dirpath, name), "rb") as f:
                if f.read() != want:
                    raise RuntimeError(f"{dst}: {rel} differs")
            found += 1
    if found != len(expected):
        raise RuntimeError(f"{dst}: {found} files, expected {len(expected)}")


def server_sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def bench_files(binary, runs, file_mb=2048, tree_files=10000, command="", clients=100, client_mb=20):
    """File transfer over TLS (and cleartext, --plaintext): cskit get/put against scp, rsync over ssh,
    socat with TLS and without, and iperf3 (one big page-cached file), a tree of small files against
    scp -r, rsync -e ssh and tar|socat|tar with TLS and without, and the server's RSS during
    concurrent transfers.
    Every tool runs once per round, in an order shuffled anew each round; round 0 is an untimed warm-up."""
    size = file_mb << 20
    client_size = client_mb << 20
    tmp_root = tempfile.gettempdir()
    free = shutil.disk_usage(tmp_root).free
    # at most: the big file and two copies, every tree (12 tools, runs + 1 rounds), the concurrent files and one copy
    need = max(10e9, 3 * size + 12 * (runs + 1) * tree_files * 4096 * 1.2 + 2 * clients * client_size)
    if free < need:
        msg = f"skipped: {free / 1e9:.1f} GB free in {tmp_root}, the files benchmark needs {need / 1e9:.1f} GB"
        print(f"files: {msg}", file=sys.stderr)
        return {"skipped": msg, "markdown": f"## File transfer\n\n{msg}\n"}

    work = tempfile.mkdtemp(prefix="cskit-bench-files-")
    share = os.path.join(work, "share")  # the cskit share; also the rsync `src` module
    recv = os.path.join(work, "recv")  # downloads land here
    rsync_up = os.path.join(work, "rsync-up")  # the rsync `up` module
    trees = os.path.join(work, "trees")  # every tree run gets a new directory in here
    for d in (share, recv, rsync_up, trees):
        os.makedirs(d)
    env = client_env(CSKIT_TOKEN=TOKEN)  # no client config from the real home; the servers' keys known
    big = os.path.join(share, "big.bin")
    started = []  # (kind, object) to stop in `finally`
    big_res = {}
    tree_res = {}
    mem = {}
    try:
        p, port, ptmp = start_server(binary, root=share)
        started.append(("cskit", (p, ptmp)))
        conf = os.path.join(work, "nofsync.toml")
        with open(conf, "w") as f:
            f.write("[files]\nfsync = false\n")
        p2, port_nofsync, ptmp2 = start_server(binary, "--config", conf, root=share)
        started.append(("cskit", (p2, ptmp2)))
        p3, port_plain, ptmp3 = start_server(binary, "--config", conf, "--plaintext", root=share)
        started.append(("cskit", (p3, ptmp3)))
        # socat with TLS 1.3: a P-256 key and certificate in one PEM (BENCHMARKING.md).
        socat_pem = os.path.join(work, "socat.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", socat_pem + ".key", "-out", socat_pem + ".crt", "-days", "2",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
        with open(socat_pem, "w") as out:
            for part in (".crt", ".key"):
                with open(socat_pem + part) as f:
                    out.write(f.read())
        sshd = PrivateSshd()
        started.append(("sshd", sshd))
        host = f"{sshd.user}@127.0.0.1"
        scp = ["scp", "-q"] + sshd.base[1:-2] + ["-P", str(sshd.port)]  # ssh options, -p PORT -> -P PORT
        rsync_ssh = ["rsync", "-a", "--whole-file", "-e", " ".join(shlex.quote(a) for a in sshd.base)]
        cs = f"127.0.0.1:{port}:"
        cs_plain = f"127.0.0.1:{port_plain}:"

        # ---- 1. one big page-cached file ------------------------------------------------
        write_random_file(big, size)
        sync()
        subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True, timeout=600)  # page-cached

        def iperf(extra):
            iport = free_tcp_port()
            srv = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iport), "-1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(iport, srv)
                out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(iport), "-t", "5", "-J", *extra],
                                     capture_output=True, text=True, timeout=60)
                r = json.loads(out.stdout)
                if out.returncode != 0 or "error" in r:
                    raise RuntimeError(f"iperf3 {extra}: {r.get('error')}")
                srv.wait(timeout=10)
                return r["end"]["sum_received"]["bits_per_second"] / 8e9, None
            finally:
                stop_proc(srv)

        def file_case(cmd, dst, pipe_port=None, receiver=None):
            def run():
                if receiver:
                    t = timed_pipe(receiver, cmd, pipe_port, 600)
                else:
                    t = timed(cmd, 600, env)
                return size / t / 1e9, dst
            return run

        def socat_case():
            sport = free_tcp_port()
            dst = os.path.join(recv, "socat.bin")
            return file_case(["socat", "-u", "-b", "1048576", f"OPEN:{big}", f"TCP:127.0.0.1:{sport}"], dst, sport,
                             ["socat", "-u", "-b", "1048576", f"TCP-LISTEN:{sport},bind=127.0.0.1,reuseaddr",
                              f"OPEN:{dst},creat,trunc"])()

        def socat_tls_case():
            sport = free_tcp_port()
            dst = os.path.join(recv, "socat-tls.bin")
            return file_case(["socat", "-u", "-b", "1048576", f"OPEN:{big}", f"OPENSSL:127.0.0.1:{sport},verify=0"],
                             dst, sport,
                             ["socat", "-u", "-b", "1048576",
                              f"OPENSSL-LISTEN:{sport},bind=127.0.0.1,reuseaddr,cert={socat_pem},verify=0,"
                              "openssl-min-proto-version=TLS1.3", f"OPEN:{dst},creat,trunc"])()

        big_cases = [
            ("cskit_get", file_case([binary, "get", "-q", cs + "big.bin", os.path.join(recv, "cskit.bin")],
                                    os.path.join(recv, "cskit.bin"))),
            ("cskit_put", file_case([binary, "put", "-q", big, cs + "put.bin"], os.path.join(share, "put.bin"))),
            ("cskit_get_nofsync", file_case([binary, "get", "-q", "--no-fsync", cs + "big.bin",
                                             os.path.join(recv, "cskit-nofsync.bin")],
                                            os.path.join(recv, "cskit-nofsync.bin"))),
            ("cskit_put_nofsync", file_case([binary, "put", "-q", big, f"127.0.0.1:{port_nofsync}:put-nofsync.bin"],
                                            os.path.join(share, "put-nofsync.bin"))),
            ("cskit_get_plaintext", file_case([binary, "get", "-q", "--no-fsync", "--plaintext", cs_plain + "big.bin",
                                               os.path.join(recv, "cskit-plain.bin")],
                                              os.path.join(recv, "cskit-plain.bin"))),
            ("cskit_put_plaintext", file_case([binary, "put", "-q", "--plaintext", big, cs_plain + "put-plain.bin"],
                                              os.path.join(share, "put-plain.bin"))),
            ("scp_get", file_case(scp + [f"{host}:{big}", os.path.join(recv, "scp.bin")],
                                  os.path.join(recv, "scp.bin"))),
            ("scp_put", file_case(scp + [big, f"{host}:{recv}/scp-put.bin"], os.path.join(recv, "scp-put.bin"))),
            ("rsync_ssh_get", file_case(rsync_ssh + [f"{host}:{big}", os.path.join(recv, "rsync-ssh.bin")],
                                        os.path.join(recv, "rsync-ssh.bin"))),
            ("rsync_ssh_put", file_case(rsync_ssh + [big, f"{host}:{recv}/rsync-ssh-put.bin"],
                                        os.path.join(recv, "rsync-ssh-put.bin"))),
            ("socat_tls", socat_tls_case),
            ("socat", socat_case),
            ("iperf3", lambda: iperf([])),
        ]
        big_res = {name: [] for name, _ in big_cases}
        previous = None
        scratch = os.path.join(recv, "scratch.bin")
        for rnd in range(runs + 1):
            for name, run in shuffled(big_cases, rnd):
                # Warm (BENCHMARKING.md quirk 1): delete the last received file, sync, run at once.
                if previous:
                    os.unlink(previous)
                    previous = None
                sync()
                gbps, dst = run()
                if dst:
                    previous = dst
                    if not same_file(big, dst, size):
                        raise RuntimeError(f"{name}: {dst} is not a copy of {big}")
                else:
                    # iperf3 leaves no file: write one (untimed), so that the next
                    # case, too, starts right after a file of this size was freed.
                    # Without it, the case after iperf3 met memory the VM had
                    # handed back meanwhile and ran at 0.6 of its speed.
                    subprocess.run(["cp", big, scratch], check=True, timeout=600)
                    previous = scratch
                if rnd:
                    big_res[name].append(gbps)
        if previous:
            os.unlink(previous)
        os.unlink(big)
        sync()

        # ---- 2. a tree of small files --------------------------------------------------
        tree = os.path.join(share, "tree")
        expected = {}
        for i in range(tree_files):
            rel = f"d{i // 100:03d}/f{i:05d}"
            expected[rel] = os.urandom(4096)
            os.makedirs(os.path.join(tree, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(tree, rel), "wb") as f:
                f.write(expected[rel])
        sync()
        subprocess.run(["tar", "cf", "/dev/null", "-C", tree, "."], check=True, timeout=600)  # page-cached

        def tree_case(name, make):
            # make(r) -> (command, destination directory); a new, never-used one every run
            def run(r):
                cmd, dst = make(r)
                if name in ("tar_socat", "tar_socat_tls"):
                    sport = free_tcp_port()
                    os.mkdir(dst)
                    listen, connect = (f"TCP-LISTEN:{sport},bind=127.0.0.1,reuseaddr", f"TCP:127.0.0.1:{sport}")
                    if name == "tar_socat_tls":
                        listen = (f"OPENSSL-LISTEN:{sport},bind=127.0.0.1,reuseaddr,cert={socat_pem},verify=0,"
                                  "openssl-min-proto-version=TLS1.3")
                        connect = f"OPENSSL:127.0.0.1:{sport},verify=0"
                    t = timed_pipe(["bash", "-c", f"set -o pipefail; socat -u -b 1048576 {listen} STDOUT | "
                                    f"tar x -C {dst}"],
                                   ["bash", "-c", f"set -o pipefail; tar c -C {tree} . | "
                                    f"socat -u -b 1048576 STDIN {connect}"], sport, 600)
                else:
                    t = timed(cmd, 600, env)
                return t, dst
            return run

        cs_nofsync = f"127.0.0.1:{port_nofsync}:"
        tree_cases = [
            ("cskit_put", tree_case("cskit_put", lambda r: ([binary, "put", "-r", "-q", tree, f"{cs}put-tree-{r}"],
                                                            os.path.join(share, f"put-tree-{r}")))),
            ("cskit_put_nofsync", tree_case("cskit_put_nofsync", lambda r: (
                [binary, "put", "-r", "-q", tree, f"{cs_nofsync}put-tree-nofsync-{r}"],
                os.path.join(share, f"put-tree-nofsync-{r}")))),
            ("cskit_put_plaintext", tree_case("cskit_put_plaintext", lambda r: (
                [binary, "put", "-r", "-q", "--plaintext", tree, f"{cs_plain}put-tree-plain-{r}"],
                os.path.join(share, f"put-tree-plain-{r}")))),
            ("cskit_get", tree_case("cskit_get", lambda r: ([binary, "get", "-r", "-q", cs + "tree",
                                                             os.path.join(trees, f"cskit-get-{r}")],
                                                            os.path.join(trees, f"cskit-get-{r}")))),
            ("cskit_get_nofsync", tree_case("cskit_get_nofsync", lambda r: (
                [binary, "get", "-r", "-q", "--no-fsync", cs + "tree", os.path.join(trees, f"cskit-get-nofsync-{r}")],
                os.path.join(trees, f"cskit-get-nofsync-{r}")))),
            ("cskit_get_plaintext", tree_case("cskit_get_plaintext", lambda r: (
                [binary, "get", "-r", "-q", "--no-fsync", "--plaintext", cs_plain + "tree",
                 os.path.join(trees, f"cskit-get-plain-{r}")], os.path.join(trees, f"cskit-get-plain-{r}")))),
            ("scp_put", tree_case("scp_put", lambda r: (scp + ["-r", tree, f"{host}:{trees}/scp-put-{r}"],
                                                        os.path.join(trees, f"scp-put-{r}")))),
            ("scp_get", tree_case("scp_get", lambda r: (scp + ["-r", f"{host}:{tree}",
                                                                os.path.join(trees, f"scp-get-{r}")],
                                                        os.path.join(trees, f"scp-get-{r}")))),
            ("rsync_ssh_put", tree_case("rsync_ssh_put", lambda r: (
                rsync_ssh + [tree + "/", f"{host}:{trees}/rsync-ssh-put-{r}/"],
                os.path.join(trees, f"rsync-ssh-put-{r}")))),
            ("rsync_ssh_get", tree_case("rsync_ssh_get", lambda r: (
                rsync_ssh + [f"{host}:{tree}/", os.path.join(trees, f"rsync-ssh-get-{r}")],
                os.path.join(trees, f"rsync-ssh-get-{r}")))),
            ("tar_socat_tls", tree_case("tar_socat_tls", lambda r: (None, os.path.join(trees, f"tar-tls-{r}")))),
            ("tar_socat", tree_case("tar_socat", lambda r: (None, os.path.join(trees, f"tar-{r}")))),
        ]
        tree_res = {name: [] for name, _ in tree_cases}
        for rnd in range(runs + 1):
            for name, run in shuffled(tree_cases, rnd):
                sync()  # nothing of the previous run is left to write back (cskit ends with syncfs)
                t, dst = run(rnd)
                check_tree(dst, expected)
                if rnd:
                    tree_res[name].append(tree_files / t)
        # Deleted only at the end (quirk 2): in `finally`, with everything else.

        # ---- 3. server memory during concurrent transfers ------------------------------
        # The clients read from / write to pipes that this script holds back
        # until every transfer is open at the server, so all of them really run
        # at once (100 processes started in a row otherwise overlap only partly).
        conc = os.path.join(share, "conc")
        os.makedirs(conc)
        block = os.urandom(client_size)
        view = memoryview(block)

        def head(i):
            return i.to_bytes(8, "big")  # file i: these 8 bytes, then block[8:]

        for i in range(clients):
            with open(os.path.join(conc, f"c{i:03d}"), "wb") as f:
                f.write(head(i))
                f.write(view[8:])
        sync()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        mem = {k: {"base": [], "gate": [], "peak": [], "per": [], "sockets": [], "seconds": []}
               for k in ("get", "put")}
        for rnd in range(runs):
            for mode in ("get", "put"):
                mp, mport, mtmp = start_server(binary, root=share)
                started.append(("cskit", (mp, mtmp)))
                mcs = f"127.0.0.1:{mport}:"
                out = os.path.join(share, f"conc-put-{rnd}")  # uploads land here
                if mode == "get":
                    cmds = [[binary, "get", "-q", f"{mcs}conc/c{i:03d}", "-"] for i in range(clients)]
                    warm = [binary, "get", "-q", f"{mcs}conc/c000", os.path.join(work, f"warm-{rnd}")]
                else:
                    os.makedirs(out)
                    cmds = [[binary, "put", "-q", "-", f"{mcs}conc-put-{rnd}/c{i:03d}"] for i in range(clients)]
                    warm = [binary, "put", "-q", f"{conc}/c000", f"{mcs}warm-{rnd}"]
                procs, errors = [], []
                try:
                    run_checked(warm, 120, env)  # one-off allocations are not per transfer
                    time.sleep(0.3)
                    base = rss_kib(mp.pid)
                    listening = server_sockets(mp.pid)
                    pipe = {"stdout": subprocess.PIPE} if mode == "get" else {"stdin": subprocess.PIPE}
                    procs = [subprocess.Popen(c, stderr=subprocess.PIPE, env=env, **pipe) for c in cmds]
                    # Gate: every get has started to write to its stdout; every put holds its part file open.
                    deadline = time.monotonic() + 120
                    waiting = set(range(clients))
                    while waiting and time.monotonic() < deadline:
                        if mode == "get":
                            ready, _, _ = select.select([procs[i].stdout for i in waiting], [], [], 0.05)
                            waiting -= {i for i in waiting if procs[i].stdout in ready}
                        else:
                            parts = 0
                            for fd in os.listdir(f"/proc/{mp.pid}/fd"):
                                try:
                                    parts += "/.cskit-part." in os.readlink(f"/proc/{mp.pid}/fd/{fd}")
                                except OSError:
                                    pass
                            waiting = set(range(clients - parts))
                            time.sleep(0.05)
                        if any(x.poll() is not None for x in procs):
                            break
                    if waiting:
                        raise RuntimeError(f"concurrent {mode}: {len(waiting)} of {clients} transfers did not start "
                                           "(exits: " + ", ".join(str(x.poll()) for x in procs if x.poll()) + ")")
                    gate = rss_kib(mp.pid)
                    socks = server_sockets(mp.pid) - listening

                    def drain(i):
                        pos, fd = 0, procs[i].stdout.fileno()
                        while True:
                            chunk = os.read(fd, 1 << 20)
                            if not chunk:
                                break
                            n = len(chunk)
                            if pos + n > client_size or chunk != (
                                    view[pos:pos + n] if pos >= 8 else (head(i) + bytes(view[8:pos + n]))[pos:]):
                                errors.append(f"get c{i:03d}: bytes differ at {pos}")
                                return
                            pos += n
                        if pos != client_size:
                            errors.append(f"get c{i:03d}: {pos} bytes, expected {client_size}")

                    def feed(i):
                        try:
                            procs[i].stdin.write(head(i))
                            procs[i].stdin.write(view[8:])
                            procs[i].stdin.close()
                        except OSError as e:
                            errors.append(f"put c{i:03d}: {e}")

                    t0 = time.perf_counter()
                    threads = [threading.Thread(target=drain if mode == "get" else feed, args=(i,), daemon=True)
                               for i in range(clients)]
                    for t in threads:
                        t.start()
                    peak = gate
                    deadline = time.monotonic() + 600
                    while (any(t.is_alive() for t in threads) or any(x.poll() is None for x in procs)) \
                            and time.monotonic() < deadline:
                        peak = max(peak, rss_kib(mp.pid))
                        time.sleep(0.01)
                    elapsed = time.perf_counter() - t0
                    failed = []
                    for c, x in zip(cmds, procs):
                        if x.poll() is None:
                            x.kill()
                        x.wait(timeout=10)
                        err = x.stderr.read().decode(errors="replace").strip()
                        if x.returncode != 0:
                            failed.append(f"exit {x.returncode}: {' '.join(c)}: {err[-300:]}")
                    if failed or errors:
                        raise RuntimeError(f"concurrent {mode}s: {len(failed)} of {clients} failed, "
                                           f"{len(errors)} wrong; first: {(failed + errors)[0]}")
                    if mode == "put":
                        for i in range(clients):
                            with open(f"{out}/c{i:03d}", "rb") as f:
                                if f.read(8) != head(i) or f.read() != view[8:]:
                                    raise RuntimeError(f"concurrent put: {out}/c{i:03d} differs")
                finally:
                    for x in procs:
                        if x.poll() is None:  # only if something above failed half-way
                            x.kill()
                            x.wait(timeout=10)
                        for f in (x.stdin, x.stdout, x.stderr):
                            if f:
                                try:
                                    f.close()
                                except OSError:
                                    pass
                    stop_server(mp, mtmp)
                    started.remove(("cskit", (mp, mtmp)))
                    shutil.rmtree(out, ignore_errors=True)
                    for w in (os.path.join(work, f"warm-{rnd}"), os.path.join(share, f"warm-{rnd}")):
                        if os.path.exists(w):
                            os.unlink(w)
                m = mem[mode]
                m["base"].append(base)
                m["gate"].append(gate)
                m["peak"].append(peak)
                m["per"].append((peak - base) / clients)
                m["sockets"].append(socks)
                m["seconds"].append(elapsed)
    finally:
        for kind, obj in reversed(started):
            try:
                if kind == "cskit":
                    stop_server(*obj)
                else:
                    obj.stop()
            except Exception as e:  # keep stopping the others
                print(f"files: stopping {kind}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    return files_report(big_res, tree_res, mem, runs, file_mb, tree_files, clients, client_mb, command)


def files_report(big_res, tree_res, mem, runs, file_mb, tree_files, clients, client_mb, command):
    med = {k: statistics.median(v) for k, v in big_res.items()}
    tmed = {k: statistics.median(v) for k, v in tree_res.items()}
    ratios = {}
    for d in ("get", "put"):
        # Like for like: no peer flushes what it receives, so the targets are
        # judged on cskit with --no-fsync / [files] fsync = false (TLS, the
        # default). The durable default is reported beside it.
        c = f"cskit_{d}_nofsync"
        ratios[f"big_{c}_over_scp_{d}"] = (med[c] / med[f"scp_{d}"], 3.0)
        ratios[f"big_{c}_over_rsync_ssh_{d}"] = (med[c] / med[f"rsync_ssh_{d}"], 1.0)
        ratios[f"big_{c}_over_socat_tls"] = (med[c] / med["socat_tls"], 1.0)
        ratios[f"big_{c}_over_cskit_{d}_plaintext"] = (med[c] / med[f"cskit_{d}_plaintext"], None)
        ratios[f"big_{c}_over_iperf3"] = (med[c] / med["iperf3"], None)
        ratios[f"big_cskit_{d}_over_scp_{d}"] = (med[f"cskit_{d}"] / med[f"scp_{d}"], None)
        ratios[f"big_cskit_{d}_plaintext_over_socat"] = (med[f"cskit_{d}_plaintext"] / med["socat"], None)
        ratios[f"tree_{c}_over_rsync_ssh_{d}"] = (tmed[c] / tmed[f"rsync_ssh_{d}"], 1.0)
        ratios[f"tree_{c}_over_tar_socat_tls"] = (tmed[c] / tmed["tar_socat_tls"], 0.6)
        ratios[f"tree_{c}_over_scp_{d}"] = (tmed[c] / tmed[f"scp_{d}"], None)
        ratios[f"tree_{c}_over_cskit_{d}_plaintext"] = (tmed[c] / tmed[f"cskit_{d}_plaintext"], None)
        ratios[f"tree_cskit_{d}_over_rsync_ssh_{d}"] = (tmed[f"cskit_{d}"] / tmed[f"rsync_ssh_{d}"], None)

    size_label = f"{file_mb / 1024:g} GiB" if file_mb % 1024 == 0 else f"{file_mb} MiB"
    rsync_e = "rsync -a --whole-file -e 'ssh -F /dev/null -i KEY -p P -o StrictHostKeyChecking=no ...'"
    socat_tls = ("socat -u -b 1048576 OPEN:SRC OPENSSL:127.0.0.1:P,verify=0 → socat -u -b 1048576 "
                 "OPENSSL-LISTEN:P,bind=127.0.0.1,reuseaddr,cert=S.pem,verify=0,openssl-min-proto-version=TLS1.3 "
                 "OPEN:DST,creat,trunc")
    big_cmds = {
        "cskit_get": "cskit get -q 127.0.0.1:P:big.bin DST   (TLS, the default)",
        "cskit_put": "cskit put -q SRC 127.0.0.1:P:put.bin",
        "cskit_get_nofsync": "cskit get -q --no-fsync 127.0.0.1:P:big.bin DST",
        "cskit_put_nofsync": "cskit put -q SRC 127.0.0.1:P:put-nofsync.bin   (server: [files] fsync = false)",
        "cskit_get_plaintext": "cskit get -q --no-fsync --plaintext ...   (server: --plaintext, fsync = false)",
        "cskit_put_plaintext": "cskit put -q --plaintext SRC ...   (server: --plaintext, fsync = false)",
        "scp_get": "scp -q -F /dev/null -i KEY -P P USER@127.0.0.1:SRC DST",
        "scp_put": "scp -q -F /dev/null -i KEY -P P SRC USER@127.0.0.1:DST",
        "rsync_ssh_get": rsync_e + " USER@127.0.0.1:SRC DST",
        "rsync_ssh_put": rsync_e + " SRC USER@127.0.0.1:DST",
        "socat_tls": socat_tls,
        "socat": "socat -u -b 1048576 OPEN:SRC TCP:127.0.0.1:P → "
                 "socat -u -b 1048576 TCP-LISTEN:P,bind=127.0.0.1,reuseaddr OPEN:DST,creat,trunc",
        "iperf3": "iperf3 -c 127.0.0.1 -p P -t 5 -J (receiver bits_per_second)",
    }
    tree_cmds = {
        "cskit_put": "cskit put -r -q TREE 127.0.0.1:P:NEW",
        "cskit_put_nofsync": "cskit put -r -q TREE 127.0.0.1:P:NEW   (server: [files] fsync = false)",
        "cskit_put_plaintext": "cskit put -r -q --plaintext TREE 127.0.0.1:P:NEW   (server: --plaintext, fsync = false)",
        "cskit_get": "cskit get -r -q 127.0.0.1:P:tree NEW",
        "cskit_get_nofsync": "cskit get -r -q --no-fsync 127.0.0.1:P:tree NEW",
        "cskit_get_plaintext": "cskit get -r -q --no-fsync --plaintext 127.0.0.1:P:tree NEW",
        "scp_put": "scp -q -r ... TREE USER@127.0.0.1:NEW",
        "scp_get": "scp -q -r ... USER@127.0.0.1:TREE NEW",
        "rsync_ssh_put": rsync_e + " TREE/ USER@127.0.0.1:NEW/",
        "rsync_ssh_get": rsync_e + " USER@127.0.0.1:TREE/ NEW",
        "tar_socat_tls": "tar c -C TREE . | socat -u -b 1048576 STDIN OPENSSL:127.0.0.1:P,verify=0 → "
                         "socat ... OPENSSL-LISTEN:P,...,openssl-min-proto-version=TLS1.3 STDOUT | tar x -C NEW",
        "tar_socat": "tar c -C TREE . | socat -u -b 1048576 STDIN TCP:127.0.0.1:P → socat ... STDOUT | tar x -C NEW",
    }

    def cell(cmd):
        return "`" + cmd.replace("|", "\\|") + "`"  # a | would end the table cell

    def rng(v, d):
        return f"{min(v):,.{d}f}–{max(v):,.{d}f}"

    def ratio_rows(prefix):
        rows = []
        for k, (v, target) in ratios.items():
            if k.startswith(prefix):
                ok = v > 1.0 if target == 1.0 else v >= (target or 0)
                met = "" if target is None else ("met" if ok else "**not met**")
                tgt = "" if target is None else ("> 1 (faster)" if target == 1.0 else f"≥ {target:g}")
                rows.append(f"| {k[len(prefix):]} | {v:.2f} | {tgt} | {met} |")
        return rows

    md = [f"## File transfer (`{command}`)", "",
          f"Loopback, {runs} timed round{'s' if runs != 1 else ''} after one untimed warm-up round, "
          "every tool once per round, in an order shuffled anew each round (seeded, so that no tool always "
          "runs right after the same one); median and min–max. Every received file or tree is checked "
          "(size and `cmp`, or every file's bytes) outside the timed part. cskit runs TLS 1.3 (its default) "
          "except in the `_plaintext` rows (`--plaintext` on both sides). scp and rsync -e ssh are OpenSSH's "
          "against a private sshd with ~/.bashrc masked when run as root; socat_tls is socat with TLS 1.3 and "
          "1 MiB blocks. cskit fsyncs every received file before renaming it into place "
          "(the client unless `--no-fsync`, the server unless `[files] fsync = false`; the `_nofsync` rows "
          "turn that off); no peer fsyncs, so the targets are judged on the `_nofsync` rows, and the durable "
          "rows, which wait for the disk, are shown beside them.",
          "",
          f"### One {size_label} page-cached file (warm: received file deleted, `sync`, run at once)", "",
          "| tool | command | GB/s median | min–max |", "|---|---|---|---|"]
    for k, v in big_res.items():
        md.append(f"| {k} | {cell(big_cmds[k])} | {statistics.median(v):.2f} | {rng(v, 2)} |")
    md += ["", "GB/s = bytes / wall time of the whole client command (socat: until the receiver has exited); "
           "iperf3: its receiver's figure over 5 s, memory to memory.", "",
           "| ratio of medians | value | target | |", "|---|---|---|---|", *ratio_rows("big_"), "",
           f"### {tree_files:,} files of 4 KiB in {(tree_files + 99) // 100} directories "
           "(each run into a new directory, all deleted at the end; `sync` before each run)", "",
           "| tool | command | files/s median | min–max |", "|---|---|---|---|"]
    for k, v in tree_res.items():
        md.append(f"| {k} | {cell(tree_cmds[k])} | {statistics.median(v):,.0f} | {rng(v, 0)} |")
    md += ["", "| ratio of medians | value | target | |", "|---|---|---|---|", *ratio_rows("tree_"), "",
           f"### Server memory: {clients} concurrent transfers of different {client_mb} MiB files", "",
           f"A fresh `cskit serve` per measurement and one warm-up transfer; then {clients} `cskit get -q "
           "127.0.0.1:P:conc/cNNN -` (or `cskit put -q - 127.0.0.1:P:DIR/cNNN`) processes whose stdout (stdin) "
           "this script holds back until every transfer is open at the server (gets: each has written output; "
           "puts: the server holds all part files open), then drains (feeds) all at once. The server's VmRSS is "
           "read at that moment and every 10 ms until all clients have exited.", "",
           "| case | RSS before KiB | all open KiB | peak KiB | (peak − before) / transfer KiB median | min–max "
           "| connections open | wall s |", "|---|---|---|---|---|---|---|---|"]
    for k, m in mem.items():
        md.append(f"| {clients} × {k} | {statistics.median(m['base']):,.0f} | {statistics.median(m['gate']):,.0f} | "
                  f"{statistics.median(m['peak']):,.0f} | {statistics.median(m['per']):,.1f} | {rng(m['per'], 1)} | "
                  f"{statistics.median(m['sockets']):.0f} | {statistics.median(m['seconds']):.2f} |")
    cases = {f"big_GBps_{k}": summary(v) for k, v in big_res.items()}
    cases.update({f"tree_files_per_second_{k}": summary(v) for k, v in tree_res.items()})
    for k, m in mem.items():
        cases[f"concurrent_{k}_server_rss_peak_kib"] = summary(m["peak"])
        cases[f"concurrent_{k}_server_rss_kib_per_transfer"] = summary(m["per"])
        cases[f"concurrent_{k}_server_rss_all_open_kib"] = summary(m["gate"])
        cases[f"concurrent_{k}_connections_open"] = summary(m["sockets"])
    return {
        "command": command,
        "commands": {"big": big_cmds, "tree": tree_cmds},
        "cases": cases,
        "ratios": {k: v for k, (v, _) in ratios.items()},
        "markdown": "\n".join(md) + "\n",
    }


def make_small_tree(root, files, size=4096):
    """`files` files of `size` random bytes in 100 directories."""
    for i in range(files):
        d = os.path.join(root, f"d{i % 100:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(size))


def change_files(root, files, every, rnd):
    """Rewrites every `every`-th file of make_small_tree's tree with new bytes of the same size
    (a new modification time too), as an editor would; returns how many."""
    n = 0
    for i in range(rnd % every, files, every):
        path = os.path.join(root, f"d{i % 100:02d}", f"f{i:05d}")
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        n += 1
    return n


def rsync_stat_bytes(stdout, what):
    """A byte count from rsync --stats: what = "sent" or "received"."""
    m = re.search(rf"Total bytes {what}: ([\d,]+)", stdout)
    return int(m.group(1).replace(",", "")) if m else None


def bench_sync(binary, runs, tree_files=10000):
    """Keeping a tree in step (issue 20): a no-op re-sync of `tree_files` files of 4 KiB and one
    after 1% of them changed, both ways, `cskit put/get -a` against `rsync -a -e ssh` as users
    run it (its delta algorithm on, --stats for the bytes it sent). The trees start equal; each
    round times every case once, in an order shuffled anew each round."""
    work = tempfile.mkdtemp(prefix="cskit-bench-sync-")
    share = os.path.join(work, "share")
    local = os.path.join(work, "local")
    for d in (share, local):
        os.makedirs(d)
    env = client_env(CSKIT_TOKEN=TOKEN)
    src = os.path.join(local, "src")
    make_small_tree(src, tree_files)
    os.makedirs(os.path.join(work, "rsync-up"))
    os.makedirs(os.path.join(local, "rsync-down"))
    started = []
    res = {}
    sent = {}
    wire = {}
    try:
        p, port, ptmp = start_server(binary, root=share)
        started.append(("cskit", (p, ptmp)))
        sshd = PrivateSshd()
        started.append(("sshd", sshd))
        host = f"{sshd.user}@127.0.0.1"
        rsync = ["rsync", "-a", "--stats", "-e", " ".join(shlex.quote(a) for a in sshd.base)]
        cs = f"127.0.0.1:{port}:"
        # The copies each tool keeps in step: on the server side for put, locally for get.
        cskit_up = os.path.join(share, "up")  # cskit put -a src HOST:up  ->  share/up/src
        rsync_up = os.path.join(work, "rsync-up")  # rsync -a src/ host:rsync-up/src/
        cskit_down = os.path.join(local, "cskit-down")  # cskit get -a HOST:up/src cskit-down -> cskit-down/src
        rsync_down = os.path.join(local, "rsync-down")
        cases = {
            "cskit_put": [binary, "put", "-a", "--json", src, cs + "up"],
            "rsync_put": rsync + [src + "/", f"{host}:{rsync_up}/src/"],
            "cskit_get": [binary, "get", "-a", "--json", cs + "up/src", cskit_down],
            "rsync_get": rsync + [f"{host}:{rsync_up}/src/", os.path.join(rsync_down, "src") + "/"],
        }
        def run_case(name):
            b0 = lo_rx_bytes()
            t0 = time.perf_counter()
            r = subprocess.run(cases[name], capture_output=True, text=True, env=env, timeout=1800)
            t = time.perf_counter() - t0
            wire_bytes = lo_rx_bytes() - b0
            if r.returncode != 0:
                raise RuntimeError(f"{name}: exit {r.returncode}: {r.stderr[-500:]}")
            if name.startswith("cskit"):
                b = json.loads(r.stdout)["bytes"]
            else:  # what crossed the connection towards the receiving side
                b = rsync_stat_bytes(r.stdout, "sent" if name.endswith("_put") else "received")
            return t, b, wire_bytes
        # The first copies (untimed), then the puts once more so that the gets copy what they keep.
        for name in ("cskit_put", "rsync_put", "cskit_get", "rsync_get"):
            run_case(name)
        for rnd in range(runs):
            for phase in ("noop", "changed_1pct"):
                if phase == "changed_1pct":
                    # 1% of the source changes; the puts carry it to the server side, the gets back.
                    change_files(src, tree_files, 100, rnd)
                # The puts first: then the gets fetch what the puts just carried (the same 1%).
                for name in (shuffled(["cskit_put", "rsync_put"], rnd) + shuffled(["cskit_get", "rsync_get"], rnd)):
                    t, b, w = run_case(name)
                    res.setdefault(f"{phase}_{name}", []).append(t)
                    sent.setdefault(f"{phase}_{name}", []).append(b)
                    wire.setdefault(f"{phase}_{name}", []).append(w)
        for name, dst in (("cskit_put", os.path.join(cskit_up, "src")), ("rsync_put", os.path.join(rsync_up, "src")),
                          ("cskit_get", os.path.join(cskit_down, "src")), ("rsync_get", os.path.join(rsync_down, "src"))):
            expected = src if name.endswith("_put") else (os.path.join(cskit_up, "src") if name == "cskit_get"
                                                         else os.path.join(rsync_up, "src"))
            r = subprocess.run(["diff", "-r", "-q", expected, dst], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{name}: the copy differs from its source: {r.stdout[:500]}")
    finally:
        stop_started(started)
        shutil.rmtree(work, ignore_errors=True)
    cases_out = {f"{k}_seconds": summary(v) for k, v in res.items()}
    cases_out.update({f"{k}_bytes_sent": summary([x for x in v if x is not None]) for k, v in sent.items()
                      if any(x is not None for x in v)})
    cases_out.update({f"{k}_wire_bytes": summary(v) for k, v in wire.items()})
    ratios = {}
    for phase in ("noop", "changed_1pct"):
        for d in ("put", "get"):
            ratios[f"{phase}_{d}_rsync_over_cskit"] = (statistics.median(res[f"{phase}_rsync_{d}"]) /
                                                       statistics.median(res[f"{phase}_cskit_{d}"]))
            ratios[f"{phase}_{d}_rsync_over_cskit_wire_bytes"] = (statistics.median(wire[f"{phase}_rsync_{d}"]) /
                                                                  statistics.median(wire[f"{phase}_cskit_{d}"]))
    md = [f"## Keeping a tree in step: {tree_files:,} files of 4 KiB, `-a` against `rsync -a -e ssh` ({runs} rounds)", "",
          "| case | cskit | rsync over ssh | rsync / cskit | bytes on the wire: cskit | rsync over ssh | "
          "file bytes cskit moved | bytes rsync sent (all) |", "|---|---|---|---|---|---|---|---|"]
    for phase, label in (("noop", "nothing changed"), ("changed_1pct", "1% of the files changed")):
        for d in ("put", "get"):
            c, r = statistics.median(res[f"{phase}_cskit_{d}"]), statistics.median(res[f"{phase}_rsync_{d}"])
            cb = statistics.median(sent[f"{phase}_cskit_{d}"])
            rb = [x for x in sent[f"{phase}_rsync_{d}"] if x is not None]
            rbs = f"{statistics.median(rb):,.0f}" if rb else "?"
            cw, rw = statistics.median(wire[f"{phase}_cskit_{d}"]), statistics.median(wire[f"{phase}_rsync_{d}"])
            md.append(f"| {d}, {label} | {c * 1000:.0f} ms | {r * 1000:.0f} ms | {r / c:.2f} | {cw:,.0f} | {rw:,.0f} | "
                      f"{cb:,.0f} | {rbs} |")
    md.append("")
    md.append("Bytes on the wire: what the loopback interface received during the command (both directions, "
              "TCP/IP headers, TLS and ssh included). rsync's `--stats` bytes are its total bytes sent (put) or "
              "received (get), protocol and file lists included; cskit's file bytes are what it moved "
              "(`--json` `bytes`).")
    return {"commands": {"cskit_put": "cskit put -a --json SRC HOST:up", "rsync_put": "rsync -a --stats -e ssh SRC/ HOST:DST/src/",
                         "cskit_get": "cskit get -a --json HOST:up/src DST", "rsync_get": "rsync -a --stats -e ssh HOST:SRC/ DST/src/"},
            "cases": cases_out, "ratios": ratios, "markdown": "\n".join(md) + "\n"}


def lo_rx_bytes():
    """Bytes received on the loopback interface so far (each packet once, headers included)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def bench_delta(binary, runs, size_mb=1024):
    """Delta transfer of one large file (issue 20), both ways: a `size_mb` MiB file with 1 MiB
    appended, and with 1 MiB changed in its middle, sent over its old version by `cskit put -a`
    (to a server with `[files] fsync = false`: rsync does not flush either) and fetched over it
    by `cskit get -a --no-fsync`, against `rsync -a` with an rsync daemon and `rsync -a -e ssh`,
    each in its delta mode. Every timed run starts from the old version at the destination
    (copied there with an old time, then `sync`). Bytes on the wire: what the loopback interface
    received during the command (both directions, TCP/IP headers, TLS and ssh included); the
    machine is otherwise idle."""
    work = tempfile.mkdtemp(prefix="cskit-bench-delta-")
    size = size_mb << 20
    old = os.path.join(work, "old.bin")
    local = os.path.join(work, "local")
    share = os.path.join(work, "share")
    dests = {d: os.path.join(work, d) for d in ("rsyncd", "ssh", "get_cskit", "get_rsyncd", "get_ssh")}
    for d in (local, share, os.path.join(share, "new"), *dests.values()):
        os.makedirs(d)
    write_random(old, size)
    edits = {"append": os.path.join(local, "append.bin"), "middle": os.path.join(local, "middle.bin")}
    shutil.copyfile(old, edits["append"])
    with open(edits["append"], "ab") as f:
        f.write(os.urandom(1 << 20))
    shutil.copyfile(old, edits["middle"])
    with open(edits["middle"], "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(1 << 20))
    for path in edits.values():  # what the server offers to get (never written: links will do)
        os.link(path, os.path.join(share, "new", os.path.basename(path)))
    old_time = time.time() - 86400
    env = client_env(CSKIT_TOKEN=TOKEN)
    started = []
    res, wire = {}, {}
    try:
        conf = os.path.join(work, "nofsync.toml")
        with open(conf, "w") as f:
            f.write("[files]\nfsync = false\n")
        p, port, ptmp = start_server(binary, "--config", conf, root=share)
        started.append(("cskit", (p, ptmp)))
        rsyncd = RsyncDaemon(dests["rsyncd"], local)
        started.append(("rsyncd", rsyncd))
        sshd = PrivateSshd()
        started.append(("sshd", sshd))
        ssh_e = " ".join(shlex.quote(a) for a in sshd.base)
        remote = f"{sshd.user}@127.0.0.1:"
        # (direction, tool) -> (destination directory, command for a file name)
        tools = {
            ("put", "cskit"): (share, lambda n: [binary, "put", "-a", "-q", os.path.join(local, n), f"127.0.0.1:{port}:"]),
            ("put", "rsyncd"): (dests["rsyncd"], lambda n: ["rsync", "-a", os.path.join(local, n), rsyncd.url("up")]),
            ("put", "rsync_ssh"): (dests["ssh"], lambda n: ["rsync", "-a", "-e", ssh_e, os.path.join(local, n),
                                                            f"{remote}{dests['ssh']}/"]),
            ("get", "cskit"): (dests["get_cskit"], lambda n: [binary, "get", "-a", "-q", "--no-fsync",
                                                              f"127.0.0.1:{port}:new/{n}", os.path.join(dests["get_cskit"], n)]),
            ("get", "rsyncd"): (dests["get_rsyncd"], lambda n: ["rsync", "-a", rsyncd.url("src", n), dests["get_rsyncd"] + "/"]),
            ("get", "rsync_ssh"): (dests["get_ssh"], lambda n: ["rsync", "-a", "-e", ssh_e, f"{remote}{local}/{n}",
                                                                dests["get_ssh"] + "/"]),
        }

        def run_case(edit, direction, tool, check):
            dest_dir, command = tools[(direction, tool)]
            name = os.path.basename(edits[edit])
            dest = os.path.join(dest_dir, name)
            shutil.copyfile(old, dest)
            os.utime(dest, (old_time, old_time))
            os.sync()
            b0 = lo_rx_bytes()
            t0 = time.perf_counter()
            r = subprocess.run(command(name), capture_output=True, text=True, env=env, timeout=900)
            t = time.perf_counter() - t0
            b = lo_rx_bytes() - b0
            if r.returncode != 0:
                raise RuntimeError(f"{direction} {tool} {edit}: exit {r.returncode}: {r.stderr[-500:]}")
            if check and not filecmp.cmp(edits[edit], dest, shallow=False):
                raise RuntimeError(f"{direction} {tool} {edit}: the copy differs from its source")
            return t, b

        cases = [(e, d, t) for e in edits for (d, t) in tools]
        for rnd in range(runs):
            for edit, direction, tool in shuffled(cases, rnd):
                t, b = run_case(edit, direction, tool, check=rnd == 0)
                res.setdefault(f"{direction}_{edit}_{tool}", []).append(t)
                wire.setdefault(f"{direction}_{edit}_{tool}", []).append(b)
    finally:
        stop_started(started)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    wmed = {k: statistics.median(v) for k, v in wire.items()}
    cases_out = {f"{k}_seconds": summary(v) for k, v in res.items()}
    cases_out.update({f"{k}_wire_bytes": summary(v) for k, v in wire.items()})
    ratios = {}
    for direction in ("put", "get"):
        for edit in ("append", "middle"):
            k = f"{direction}_{edit}"
            for peer in ("rsyncd", "rsync_ssh"):
                ratios[f"{k}_{peer}_over_cskit_seconds"] = med[f"{k}_{peer}"] / med[f"{k}_cskit"]
                ratios[f"{k}_{peer}_over_cskit_wire_bytes"] = wmed[f"{k}_{peer}"] / wmed[f"{k}_cskit"]
    label = {"append": f"{size_mb} MiB + 1 MiB appended", "middle": f"{size_mb} MiB, 1 MiB changed in the middle"}
    md = [f"## Delta transfer of a large file: `put -a` / `get -a` against rsync's delta algorithm ({runs} rounds)", "",
          "| case | cskit | rsync daemon | rsync -e ssh | bytes on the wire: cskit | rsync daemon | rsync -e ssh |",
          "|---|---|---|---|---|---|---|"]
    for direction in ("put", "get"):
        for edit in ("append", "middle"):
            k = f"{direction}_{edit}"
            md.append(f"| {direction}: {label[edit]} | {med[f'{k}_cskit']:.2f} s | {med[f'{k}_rsyncd']:.2f} s | "
                      f"{med[f'{k}_rsync_ssh']:.2f} s | {wmed[f'{k}_cskit']:,.0f} | {wmed[f'{k}_rsyncd']:,.0f} | "
                      f"{wmed[f'{k}_rsync_ssh']:,.0f} |")
    md.append("")
    md.append("Medians. Bytes on the wire: what the loopback interface received during the command (each "
              "direction, TCP/IP headers, TLS and ssh included). cskit's server runs with `[files] fsync = "
              "false` and its downloads with `--no-fsync`, as rsync does not flush what it writes.")
    return {"commands": {"put_cskit": "cskit put -a -q SRC 127.0.0.1:P:",
                         "put_rsyncd": "rsync -a SRC rsync://127.0.0.1:P/up/",
                         "put_rsync_ssh": "rsync -a -e 'ssh -F /dev/null -i KEY -p P ...' SRC USER@127.0.0.1:DST/",
                         "get_cskit": "cskit get -a -q --no-fsync 127.0.0.1:P:new/NAME DST/NAME",
                         "get_rsyncd": "rsync -a rsync://127.0.0.1:P/src/NAME DST/",
                         "get_rsync_ssh": "rsync -a -e 'ssh -F /dev/null -i KEY -p P ...' USER@127.0.0.1:SRC/NAME DST/"},
            "cases": cases_out, "ratios": ratios, "markdown": "\n".join(md) + "\n"}


class NginxTls:
    """nginx serving `root` over TLS 1.3 on 127.0.0.1 with the same certificate and key as cskit
    (../shared/BENCHMARKING.md): sendfile, keep-alive, no access log, a worker per core."""

    def __init__(self, root, cert, key):
        self.dir = tempfile.mkdtemp(prefix="cskit-nginx-")
        self.port = free_tcp_port()
        temp = "".join(f"{k}_temp_path {self.dir}/{k};\n" for k in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(f"{self.dir}/nginx.conf", "w") as f:
            f.write(f"daemon off;\nworker_processes auto;\npid {self.dir}/nginx.pid;\n"
                    f"error_log {self.dir}/error.log;\nevents {{ worker_connections 4096; }}\n"
                    f"http {{\n{temp}access_log off;\nsendfile on;\ntcp_nopush on;\nkeepalive_requests 10000000;\n"
                    f"server {{ listen 127.0.0.1:{self.port} ssl; ssl_protocols TLSv1.3;\n"
                    f"ssl_certificate {cert}; ssl_certificate_key {key};\nroot {root}; location / {{ }} }}\n}}\n")
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", f"{self.dir}/nginx.conf"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)

    def stop(self):
        stop_proc(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_https(binary, runs, file_mb=2048):
    """HTTPS against nginx (issue 23), both over TLS 1.3 with the same key on loopback: one big
    page-cached file downloaded by curl, and small-file requests per second with keep-alive from
    wrk (16 connections, one thread, 5 s)."""
    share = tempfile.mkdtemp(prefix="cskit-bench-https-")
    os.chmod(share, 0o755)  # nginx's workers run as www-data
    big = os.path.join(share, "big.bin")
    subprocess.run(["dd", "if=/dev/urandom", f"of={big}", "bs=1M", f"count={file_mb}", "status=none"], check=True)
    with open(os.path.join(share, "small.txt"), "wb") as f:
        f.write(os.urandom(1024))
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)  # page-cached
    started = []
    try:
        p, port, tmp = start_server(binary, root=share)
        started.append(("cskit", (p, tmp)))
        cert, key = os.path.join(tmp, "state", "server.crt"), os.path.join(tmp, "state", "server.key")
        nginx = NginxTls(share, cert, key)
        started.append(("nginx", nginx))
        auth = "Basic " + __import__("base64").b64encode(f"admin:{TOKEN}".encode()).decode()
        urls = {"cskit": f"https://127.0.0.1:{port}/files/", "nginx": f"https://127.0.0.1:{nginx.port}/"}
        rate = {"cskit": [], "nginx": []}
        rps = {"cskit": [], "nginx": []}
        for _ in range(runs):
            for name, base in urls.items():
                r = subprocess.run(["curl", "-sS", "--cacert", cert, "-H", f"Authorization: {auth}", "-o", "/dev/null",
                                    "-w", "%{size_download} %{time_total}", base + "big.bin"],
                                   capture_output=True, text=True, check=True, timeout=600)
                size, secs = r.stdout.split()
                if int(size) != file_mb << 20:
                    raise RuntimeError(f"{name}: {size} bytes downloaded")
                rate[name].append(int(size) / float(secs) / 1e6)
                r = subprocess.run(["wrk", "-t1", "-c16", "-d5s", "-H", f"Authorization: {auth}", base + "small.txt"],
                                   capture_output=True, text=True, check=True, timeout=60)
                m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
                if not m or "Non-2xx" in r.stdout or "Socket errors" in r.stdout:
                    raise RuntimeError(f"{name}: wrk: {r.stdout}")
                rps[name].append(float(m.group(1)))
    finally:
        stop_started(started)
        shutil.rmtree(share, ignore_errors=True)
    cases = {f"{n}_download_MBps": summary(rate[n]) for n in rate}
    cases.update({f"{n}_small_file_rps": summary(rps[n]) for n in rps})
    ratio_dl = cases["cskit_download_MBps"]["median"] / cases["nginx_download_MBps"]["median"]
    ratio_rps = cases["cskit_small_file_rps"]["median"] / cases["nginx_small_file_rps"]["median"]
    command = f"python3 bench/run_bench.py --only https --runs {runs} --file-size-mb {file_mb}"
    md = (f"| case | cskit | nginx | ratio | target |\n|---|---|---|---|---|\n"
          f"| {file_mb} MiB download, curl (MB/s) | {cases['cskit_download_MBps']['median']:.0f} | "
          f"{cases['nginx_download_MBps']['median']:.0f} | {ratio_dl:.2f} | >= 0.9 |\n"
          f"| 1 KiB file, wrk -c16 keep-alive (requests/s) | {cases['cskit_small_file_rps']['median']:.0f} | "
          f"{cases['nginx_small_file_rps']['median']:.0f} | {ratio_rps:.2f} | >= 0.8 |\n\n`{command}`\n")
    return {"command": command, "cases": cases, "ratio_download": ratio_dl, "ratio_small_rps": ratio_rps,
            "markdown": md}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--only", choices=["codec", "roundtrip", "memory", "udp", "exec", "chat", "irc", "irc-plaintext",
                                       "history", "files", "sync", "delta", "https"])
    ap.add_argument("--file-size-mb", type=int, default=2048, help="files: size of the big file (MiB)")
    ap.add_argument("--tree-files", type=int, default=10000, help="files: number of 4 KiB files in the tree")
    ap.add_argument("--delta-size-mb", type=int, default=1024, help="delta: size of the file that changes (MiB)")
    a = ap.parse_args()
    binary = os.path.join(a.build, "cskit")
    out = os.path.join(ROOT, "build", "bench", "results.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    # Each section is written as soon as it is done, into what earlier runs
    # left (so --only runs add up, and a failure late in a run keeps the rest).
    results = {}
    if os.path.exists(out):
        with open(out) as f:
            results = json.load(f)
    results["machine"] = {"cores": os.cpu_count(), "kernel": os.uname().release}
    markdown = []
    sections = {
        "codec": lambda: bench_codec(a.build, a.runs),
        "roundtrip": lambda: bench_roundtrip(binary, a.build, a.runs),
        "udp": lambda: bench_udp(binary, a.build, a.runs),
        "exec": lambda: bench_exec(binary, a.build, a.runs),
        "chat": lambda: bench_chat(binary, a.build, max(1, a.runs // 2 + 1)),
        # The IRC front end against ngircd, and what storing history costs
        # fan-out: a part of "chat" (that runs every case) for a shorter run.
        "irc": lambda: bench_chat(binary, a.build, max(1, a.runs // 2 + 1),
                                  names=("cskit", "cskit_nostore", "cskit_irc", "ngircd")),
        "irc-plaintext": lambda: bench_chat(binary, a.build, max(1, a.runs // 2 + 1),
                                            names=("cskit_irc_plaintext", "ngircd_plaintext")),
        "history": lambda: bench_history(binary, max(1, a.runs // 2 + 1)),
        "files": lambda: bench_files(binary, a.runs, a.file_size_mb, a.tree_files,
                                     f"python3 bench/run_bench.py --only files --runs {a.runs} "
                                     f"--file-size-mb {a.file_size_mb} --tree-files {a.tree_files}"),
        "memory": lambda: bench_idle_memory(binary, max(1, a.runs // 2 + 1), a.connections),
        "sync": lambda: bench_sync(binary, a.runs, a.tree_files),
        "delta": lambda: bench_delta(binary, a.runs, a.delta_size_mb),
        "https": lambda: bench_https(binary, a.runs, a.file_size_mb),
    }
    for name, run in sections.items():
        if a.only not in (None, name) or (a.only is None and name.startswith("irc")):  # "chat" has their cases
            continue
        r = run()
        r["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if isinstance(r, dict) and "markdown" in r:
            markdown.append(r.pop("markdown"))
            with open(os.path.join(os.path.dirname(out), name + ".md"), "w") as f:
                f.write(markdown[-1])
        results[name] = r
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"{name}: done", flush=True)
    print(json.dumps(results, indent=2))
    for m in markdown:
        print("\n" + m)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
