#!/usr/bin/env python3
"""Writes src/app/startup.order: the functions a cskit client runs.

The release link (lld --symbol-ordering-file) puts these functions first in
the text segment, so starting a client touches a few of its 64 KiB
fault-around windows instead of most of them (docs/architecture.md, "Text
laid out for start-up"). Run it after changes to the client's start-up
path, then rebuild and commit the new file:

    cmake --build --preset release
    python3 scripts/startup-order.py build/release/cskit src/app/startup.order

Needs valgrind (callgrind counts every function that runs). With perf, it
also samples native runs: valgrind's virtual CPU lacks AVX-512, so glibc
picks other string functions under it than on the real machine.

A stale list does no harm beyond speed: names that no longer exist are
ignored by the linker, and new functions are simply placed after the list.

The output varies between runs: perf samples differ, and where several
names share an address (constructor aliases, glibc's aliases) callgrind
may report either. So measure before committing a new list, against the
binary linked with the old one:

    perf stat -r 100 -e page-faults build/release/cskit exec HOST true

(a regenerated list once gave 79 faults where the committed one gave 71).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from run_bench import CLIENT_HOME, start_server, stop_server  # noqa: E402

TOKEN = "startup-order-token-0123456789abcdef"
SERVER_CONFIG = ('[exec]\nenabled = true\n[[users]]\nname = "order"\n'
                 f'token = "{TOKEN}"\npermissions = ["files-read", "files-write", "exec", "chat"]\n')


def client_commands(binary, port, tmp):
    host = f"127.0.0.1:{port}"
    small = os.path.join(tmp, "small.txt")
    with open(small, "w") as f:
        f.write("hello\n")
    return [
        [binary, "--version"],
        [binary, "exec", host, "true"],
        [binary, "put", small, f"{host}:"],
        [binary, "get", f"{host}:small.txt", os.path.join(tmp, "back.txt")],
        [binary, "ls", "-l", f"{host}:"],
        [binary, "stat", f"{host}:small.txt"],
        [binary, "mkdir", f"{host}:dir"],
        [binary, "mv", f"{host}:dir", "dir2"],
        [binary, "rm", "-r", f"{host}:dir2"],
    ]


def callgrind_functions(cmd, env, tmp):
    out = os.path.join(tmp, "callgrind.out")
    r = subprocess.run(["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}", *cmd],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    # valgrind 3.19 lacks openat2, so `get` stops where it opens its
    # destination; what ran until then still counts. Any other failure
    # (a wrong token, a server gone) would silently shorten the list.
    if r.returncode != 0 and cmd[1] != "get":
        sys.exit(f"startup-order: {' '.join(cmd[1:])} failed under valgrind ({r.returncode}):\n{r.stderr[-2000:]}")
    names, ran = {}, set()
    with open(out) as f:
        for line in f:
            m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
            if not m:
                continue
            kind, ident, name = m.groups()
            if name:
                names[ident] = name
            if kind == "fn":
                ran.add(ident)
    os.unlink(out)
    return {names[i] for i in ran if i in names}


def perf_functions(binary, cmd, env, tmp):
    if not shutil.which("perf"):
        print("startup-order: no perf; the list lacks the string functions glibc picks natively", file=sys.stderr)
        return set()
    data = os.path.join(tmp, "perf.data")
    script = "for i in $(seq 200); do \"$@\" >/dev/null; done"
    r = subprocess.run(["perf", "record", "-q", "-F", "20000", "-o", data, "--", "sh", "-c", script, "sh", *cmd],
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    if r.returncode != 0:
        print(f"startup-order: perf record failed ({r.returncode}); the list lacks the string functions "
              "glibc picks natively", file=sys.stderr)
        return set()
    rep = subprocess.run(["perf", "report", "-i", data, "--no-demangle", "--dsos", os.path.basename(binary),
                          "--sort", "sym", "--stdio", "-q"], capture_output=True, text=True)
    os.unlink(data)
    return {m.group(1) for m in re.finditer(r"\[\.\] (\S+)", rep.stdout)}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, output = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not shutil.which("valgrind"):
        sys.exit("startup-order: needs valgrind (apt-get install valgrind)")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as conf:
        conf.write(SERVER_CONFIG)
        conf.flush()
        server, port, tmp = start_server(binary, "--config", conf.name)
    # CLIENT_HOME's known_hosts has the server's key (start_server puts it
    # there): the clients trust it as after an accepted first contact.
    env = dict(os.environ, CSKIT_USER="order", CSKIT_TOKEN=TOKEN, HOME=CLIENT_HOME)
    env.pop("XDG_CONFIG_HOME", None)  # it would hide CLIENT_HOME's known_hosts
    functions = set()
    try:
        for cmd in client_commands(binary, port, tmp):
            functions |= callgrind_functions(cmd, env, tmp)
        for cmd in client_commands(binary, port, tmp)[:2]:  # --version and exec, natively
            functions |= perf_functions(binary, cmd, env, tmp)
    finally:
        stop_server(server, tmp)
    # Only real symbol names: callgrind also reports "(below main)" and
    # bare addresses, perf "[unknown]".
    symbols = sorted(f for f in functions if re.fullmatch(r"[A-Za-z_.$][A-Za-z0-9_.$@]*", f))
    symbols = list(dict.fromkeys(s.split("@")[0] for s in symbols))
    if len(symbols) < 500:  # a client start runs over a thousand functions
        sys.exit(f"startup-order: only {len(symbols)} functions found; {output} left as it was")
    part = output + ".part"
    with open(part, "w") as f:
        f.write("\n".join(symbols) + "\n")
    os.replace(part, output)
    print(f"startup-order: {len(symbols)} functions written to {output}")


if __name__ == "__main__":
    main()
