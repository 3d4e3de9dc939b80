#!/usr/bin/env python3
"""make bench: runs every cskit benchmark on loopback and prints medians.

Each case runs RUNS times (default 5, alternating where there are several
cases); the median and the min-max range are reported, with the command that
produced them. Results also go to build/bench/results.json.
"""
import argparse
import json
import os
import pwd
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
import udp_peers  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def start_server(binary, *args, root=None):
    """`root`: the directory to share (default: a new one in the server's temp dir)."""
    tmp = tempfile.mkdtemp(prefix="cskit-bench-")
    env = dict(os.environ, CSKIT_TOKEN=TOKEN, HOME=tmp)
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--root", root or os.path.join(tmp, "share"),
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


def banner_port(p, name):
    # The banner is printed in one go right after "listening on", so plain
    # reads are bounded (select would miss lines already buffered by Python).
    for _ in range(30):
        line = p.stdout.readline().decode()
        if not line:
            break
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
    os.unlink(conf.name)
    sshd = PrivateSshd()
    big = os.path.join(tmp, "1GiB")
    with open(big, "wb") as f:
        f.write(b"\0" * (1 << 30))
    os.chmod(tmp, 0o755)
    os.chmod(big, 0o644)
    env = dict(os.environ, CSKIT_USER="ops", CSKIT_TOKEN=token)
    cskit = [binary, "exec", f"127.0.0.1:{port}", "--"]
    rtt = {"cskit": [], "cskit_in_session": [], "ssh_controlmaster": [], "ssh": [],
           "startup_cskit_version": [], "startup_ssh_version": []}
    stream = {"cskit": [], "ssh": []}
    session = {"p50": [], "p99": []}
    try:
        timed_runs(sshd.command("true", control_master=True), 3)  # start the master
        for _ in range(runs):
            rtt["cskit"] += timed_runs(cskit + ["true"], 60, env)
            rtt["ssh_controlmaster"] += timed_runs(sshd.command("true", control_master=True), 60)
            rtt["ssh"] += timed_runs(sshd.command("true"), 8)
            # The floor under any CLI round trip: starting the client program.
            rtt["startup_cskit_version"] += timed_runs([binary, "--version"], 60)
            rtt["startup_ssh_version"] += timed_runs(["ssh", "-V"], 60)
            r = json.loads(subprocess.run([os.path.join(build, "bench", "bench_exec"), f"127.0.0.1:{port}", "ops",
                                           token, "500"], capture_output=True, text=True, check=True).stdout)
            session["p50"].append(r["p50_us"] / 1000)
            session["p99"].append(r["p99_us"] / 1000)
            for name, cmd in (("cskit", cskit + ["cat", big]), ("ssh", sshd.command("cat", big))):
                t = timed_runs(cmd, 1, env)[0]
                stream[name].append((1 << 30) / (t / 1000) / 1e9)
    finally:
        sshd.stop()
        stop_server(p, tmp)
    cases = {}
    for k, v in rtt.items():
        if v:
            cases[f"true_round_trip_ms_{k}"] = {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "runs": len(v)}
    cases["true_round_trip_ms_cskit_in_session"] = {"p50": statistics.median(session["p50"]),
                                                    "p99": statistics.median(session["p99"]),
                                                    "runs": runs}
    for k, v in stream.items():
        cases[f"cat_1GiB_GBps_{k}"] = summary(v)
    return {
        "commands": {
            "cskit": "cskit exec 127.0.0.1:P -- true   (a new process and connection each time, like ssh)",
            "cskit_in_session": "bench_exec 127.0.0.1:P ops TOKEN 500   (exec true on one open connection)",
            "ssh": "ssh -F /dev/null -i KEY -p P root@127.0.0.1 true   (private sshd, ~/.bashrc masked)",
            "ssh_controlmaster": "the same with -o ControlMaster=auto -o ControlPath=... -o ControlPersist=120",
            "stream": "cskit exec 127.0.0.1:P -- cat FILE > /dev/null   vs   ssh ... cat FILE > /dev/null",
        },
        "cases": cases,
        "ratios": {
            "ssh_over_cskit_p50": cases["true_round_trip_ms_ssh"]["p50"] / cases["true_round_trip_ms_cskit"]["p50"],
            "ssh_controlmaster_over_cskit_p50": cases["true_round_trip_ms_ssh_controlmaster"]["p50"]
            / cases["true_round_trip_ms_cskit"]["p50"],
            "cat_cskit_over_ssh": statistics.median(stream["cskit"]) / statistics.median(stream["ssh"]),
        },
    }


def bench_chat(binary, build, runs, receivers=1000, messages=10000, rate=300):
    """One sender, RECEIVERS receivers in one room, MESSAGES messages at RATE/s:
    cskit against ngircd, with the same load generator (bench_chat)."""
    exe = os.path.join(build, "bench", "bench_chat")
    results = {"cskit": [], "ngircd": []}
    memory = {"cskit": [], "ngircd": []}
    for _ in range(runs):
        for name in ("cskit", "ngircd"):
            if name == "cskit":
                conf = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
                conf.write("[chat]\nrate = 0\nhistory = 0\n")  # one fast sender; IRC has no history
                conf.close()
                p, port, tmp = start_server(binary, "--config", conf.name)
                os.unlink(conf.name)
                pid, proto_name = p.pid, "cskit"
            else:
                tmp = tempfile.mkdtemp(prefix="cskit-ngircd-")
                port = free_tcp_port()
                with open(f"{tmp}/ngircd.conf", "w") as f:
                    f.write(f"[Global]\nName = bench.local\nInfo = bench\nListen = 127.0.0.1\nPorts = {port}\n"
                            f"PidFile = {tmp}/ngircd.pid\nMotdPhrase = bench\n"
                            "[Limits]\nMaxConnections = 0\nMaxConnectionsIP = 0\nMaxJoins = 0\n"
                            "MaxPenaltyTime = 0\nPingTimeout = 600\nPongTimeout = 600\n"
                            "[Options]\nDNS = no\nIdent = no\nPAM = no\n")
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
                                        str(rate)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                if name == "cskit":
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
    return {
        "command": f"bench_chat cskit|irc 127.0.0.1:P TOKEN {receivers} {messages} {rate}   "
                   "(cskit with [chat] rate = 0, history = 0; ngircd -n with MaxPenaltyTime = 0, "
                   "MaxConnectionsIP = 0)",
        "cases": cases,
        "ratios": {
            "p99_ngircd_over_cskit": cases["p99_ms_ngircd"]["median"] / max(1e-9, cases["p99_ms_cskit"]["median"]),
            "deliveries_cskit_over_ngircd": cases["deliveries_per_second_cskit"]["median"]
            / max(1e-9, cases["deliveries_per_second_ngircd"]["median"]),
            "memory_ngircd_over_cskit": cases["server_bytes_per_client_peak_ngircd"]["median"]
            / max(1e-9, cases["server_bytes_per_client_peak_cskit"]["median"]),
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--only", choices=["codec", "roundtrip", "memory", "udp", "exec", "chat"])
    a = ap.parse_args()
    binary = os.path.join(a.build, "cskit")
    results = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release}}
    if a.only in (None, "codec"):
        results["codec"] = bench_codec(a.build, a.runs)
    if a.only in (None, "roundtrip"):
        results["roundtrip"] = bench_roundtrip(binary, a.build, a.runs)
    if a.only in (None, "udp"):
        results["udp"] = bench_udp(binary, a.build, a.runs)
    if a.only in (None, "exec"):
        results["exec"] = bench_exec(binary, a.build, a.runs)
    if a.only in (None, "chat"):
        results["chat"] = bench_chat(binary, a.build, max(1, a.runs // 2 + 1))
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
