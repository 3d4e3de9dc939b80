"""File transfer end to end: the real server and `cskit put/get/ls/stat/mkdir/rm/mv`.

Covers every command and flag, buffer-boundary sizes, a 1 GiB file, UTF-8
names, a 2,000-file tree, hostile paths in both directions (a fake server
for the client's side), SIGKILL of either end with resume, disk full, quota,
size limit, concurrent writers, permissions and the progress line.

Every wait is bounded; everything runs on 127.0.0.1 in temporary directories.
"""
import filecmp
import glob
import hashlib
import io
import json
import os
import pty
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import unittest
import uuid

from harness import BIN, TOKEN, Server, read_pty
import cskit_client
import tlswire
import wire

EXIT_OK, EXIT_USAGE, EXIT_CONNECT, EXIT_AUTH, EXIT_PERMISSION = 0, 2, 3, 4, 5
EXIT_REMOTE, EXIT_NO_SPACE, EXIT_QUOTA, EXIT_INTEGRITY = 7, 9, 10, 11
EXIT_CHANGED, EXIT_NOT_FOUND, EXIT_EXISTS = 12, 13, 14
EXIT_LOCAL, EXIT_REMOTE, EXIT_NOT_EMPTY = 1, 7, 17

PART_PREFIX = ".cskit-part."
MiB = 1 << 20

UMASK = os.umask(0o022)
os.umask(UMASK)


# ---------------------------------------------------------------- helpers

def random_bytes(n):
    return os.urandom(n)


def write_file(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def write_big(path, size, block=None):
    """Writes `size` bytes (no holes) made of a rotating random 1 MiB block; returns the sha256."""
    block = block or os.urandom(MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            r = (i * 4099) % len(block)
            chunk = (block[r:] + block[:r])[:size - written]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            i += 1
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def part_files(root):
    """Every part file (or temporary link) below root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            if n.startswith(PART_PREFIX):
                found.append(os.path.join(dirpath, n))
    return found


def part_size(directory):
    """Size of the largest part file directly in `directory` (-1: none)."""
    best = -1
    for p in glob.glob(os.path.join(glob.escape(directory), PART_PREFIX + "*")):
        try:
            best = max(best, os.path.getsize(p))
        except OSError:
            pass
    return best


def snapshot(root):
    """relative path -> (kind, content or target) for everything below root (links not followed)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                snap[rel] = ("file", read_file(full), stat.S_IMODE(st.st_mode))
            else:
                snap[rel] = ("other",)
    return snap


def wait_until(predicate, timeout=10, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def kill_when(p, ready, timeout=60, step=0.01):
    """Kills the process p once ready() is true (or once it has ended), and reaps it."""
    try:
        wait_until(lambda: ready() or p.poll() is not None, timeout, step)
        p.kill()
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def digest_snapshot(root):
    """snapshot() with each file's content as its SHA-256: cheap to compare and to print."""
    return {rel: (v[0], hashlib.sha256(v[1]).hexdigest(), v[2]) if v[0] == "file" else v
            for rel, v in snapshot(root).items()}


def server_holds_a_part(pid):
    """True while the process has a part file open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if PART_PREFIX in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            pass
    return False


def resolves_inside(path, root):
    real = os.path.realpath(path)
    root = os.path.realpath(root)
    return real == root or real.startswith(root + os.sep)


class FilesTestCase(unittest.TestCase):
    """A class-wide server (admin can read and write) and a class-wide scratch directory."""
    server_args = ()
    config_text = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(*cls.server_args, config_text=cls.config_text)
        cls.tmp = tempfile.mkdtemp(prefix="cskit-files-")

    @classmethod
    def tearDownClass(cls):
        try:
            cls.srv.stop()
        finally:
            cls.srv.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        # A fresh local directory and a fresh remote directory per test.
        self.name = self.id().rsplit(".", 1)[-1]
        self.local = os.path.join(self.tmp, self.name)
        os.makedirs(self.local)
        self.rdir = self.name
        os.makedirs(os.path.join(self.srv.share, self.rdir))
        self.rshare = os.path.join(self.srv.share, self.rdir)

    def r(self, path=""):
        """HOST:PORT:PATH for this server (path relative to the share's root)."""
        return f"{self.srv.address}:{path}"

    def rr(self, path=""):
        """A remote path inside this test's remote directory."""
        return self.r(f"{self.rdir}/{path}" if path else self.rdir)

    def lp(self, *names):
        return os.path.join(self.local, *names)

    def env(self, token=None, user=None):
        e = dict(self.srv.env)
        e["CSKIT_TOKEN"] = token or self.srv.token or TOKEN
        if user:
            e["CSKIT_USER"] = user
        return e

    def cli(self, *args, input=None, binary=False, timeout=120, token=None, user=None, cwd=None):
        return subprocess.run([BIN, *args], capture_output=True, env=self.env(token, user), input=input,
                              text=not binary, timeout=timeout, cwd=cwd)

    def ok(self, *args, **kw):
        r = self.cli(*args, **kw)
        self.assertEqual(r.returncode, EXIT_OK, f"cskit {' '.join(args)}: {r.stderr}")
        return r

    def json_ok(self, *args, **kw):
        r = self.ok(*args, "--json", **kw)
        j = json.loads(r.stdout)
        self.assertTrue(j["ok"], j)
        return j

    def assert_no_parts(self, *roots):
        for root in roots:
            self.assertEqual(part_files(root), [], f"part files left under {root}")


# ---------------------------------------------------------------- 1. commands and flags

class Commands(FilesTestCase):
    def test_put_and_get_single_file(self):
        data = random_bytes(1000)
        write_file(self.lp("one.bin"), data)
        self.ok("put", self.lp("one.bin"), self.rr())  # into a directory: keeps its name
        self.assertEqual(read_file(os.path.join(self.rshare, "one.bin")), data)
        self.ok("put", self.lp("one.bin"), self.rr("renamed.bin"))  # to a new name
        self.assertEqual(read_file(os.path.join(self.rshare, "renamed.bin")), data)
        os.makedirs(self.lp("down"))
        self.ok("get", self.rr("one.bin"), self.lp("down"))  # into a directory
        self.assertEqual(read_file(self.lp("down", "one.bin")), data)
        self.ok("get", self.rr("renamed.bin"), self.lp("down", "other.bin"))  # to a new name
        self.assertEqual(read_file(self.lp("down", "other.bin")), data)
        # LOCAL defaults to '.'
        os.makedirs(self.lp("cwd"))
        self.ok("get", self.rr("one.bin"), cwd=self.lp("cwd"))
        self.assertEqual(read_file(self.lp("cwd", "one.bin")), data)
        self.assert_no_parts(self.rshare, self.local)

    def test_several_files_into_a_directory(self):
        files = {f"f{i}.txt": random_bytes(i * 300 + 1) for i in range(4)}
        for n, d in files.items():
            write_file(self.lp("src", n), d)
        self.ok("mkdir", self.rr("multi"))
        j = self.json_ok("put", *[self.lp("src", n) for n in sorted(files)], self.rr("multi"))
        self.assertEqual(j["files"], 4)
        self.assertEqual(j["bytes"], sum(len(d) for d in files.values()))
        for n, d in files.items():
            self.assertEqual(read_file(os.path.join(self.rshare, "multi", n)), d)
        os.makedirs(self.lp("back"))
        j = self.json_ok("get", *[self.rr(f"multi/{n}") for n in sorted(files)], self.lp("back"))
        self.assertEqual(j["files"], 4)
        self.assertEqual(j["bytes"], sum(len(d) for d in files.values()))
        for n, d in files.items():
            self.assertEqual(read_file(self.lp("back", n)), d)
        # Several sources need an existing directory on the other side.
        r = self.cli("put", self.lp("src", "f0.txt"), self.lp("src", "f1.txt"), self.rr("nodir"))
        self.assertEqual(r.returncode, EXIT_NOT_FOUND, r.stderr)
        r = self.cli("get", self.rr("multi/f0.txt"), self.rr("multi/f1.txt"), self.lp("nolocaldir"))
        self.assertEqual(r.returncode, EXIT_NOT_FOUND, r.stderr)
        self.assertFalse(os.path.exists(self.lp("nolocaldir")))

    def make_tree(self, root):
        write_file(os.path.join(root, "top.txt"), b"top\n")
        write_file(os.path.join(root, "empty.txt"), b"")
        write_file(os.path.join(root, "a", "b", "deep.bin"), random_bytes(300000))
        write_file(os.path.join(root, "a", "small"), b"s")
        os.makedirs(os.path.join(root, "emptydir"))
        os.makedirs(os.path.join(root, "a", "emptier"))
        os.symlink("a/b/deep.bin", os.path.join(root, "link-to-file"))
        os.symlink("../top.txt", os.path.join(root, "a", "up-link"))
        os.symlink("b", os.path.join(root, "a", "dir-link"))
        os.symlink("does-not-exist", os.path.join(root, "dangling"))

    def test_recursive_tree_both_ways(self):
        src = self.lp("tree")
        self.make_tree(src)
        j = self.json_ok("put", "-r", src, self.rr())
        self.assertEqual((j["files"], j["dirs"], j["symlinks"]), (4, 5, 4), j)
        self.assertEqual(j["bytes"], 4 + 0 + 300000 + 1)
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "tree")))
        self.assertTrue(os.path.islink(os.path.join(self.rshare, "tree", "a", "dir-link")))
        os.makedirs(self.lp("back"))
        j = self.json_ok("get", "-r", self.rr("tree"), self.lp("back"))
        self.assertEqual((j["files"], j["dirs"], j["symlinks"]), (4, 5, 4), j)
        self.assertGreater(j["seconds"], 0, j)  # get once reported 0 (timed after its result was moved out)
        self.assertGreater(j["bytes_per_second"], 0, j)
        self.assertEqual(snapshot(src), snapshot(self.lp("back", "tree")))
        self.assertEqual(os.readlink(self.lp("back", "tree", "a", "up-link")), "../top.txt")
        # The contents of a directory into a new name.
        self.ok("get", "-r", self.rr("tree"), self.lp("renamed"))
        self.assertEqual(snapshot(src), snapshot(self.lp("renamed")))
        # A directory without -r is refused, both ways.
        r = self.cli("put", src, self.rr("again"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("-r", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "again")))
        r = self.cli("get", self.rr("tree"), self.lp("norec"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("-r", r.stderr)
        self.assertFalse(os.path.exists(self.lp("norec")))
        self.assert_no_parts(self.rshare, self.local)

    def test_preserve_times_and_modes(self):
        old_ns = 981173106123456789  # 2001-02-03 04:05:06.123456789
        write_file(self.lp("src", "p.sh"), b"#!/bin/sh\n")
        os.chmod(self.lp("src", "p.sh"), 0o751)
        os.utime(self.lp("src", "p.sh"), ns=(old_ns, old_ns))
        os.chmod(self.lp("src"), 0o750)
        os.utime(self.lp("src"), ns=(old_ns + 7, old_ns + 7))

        def times_and_modes(root):
            out = {}
            for rel in ("", "p.sh"):
                st = os.lstat(os.path.join(root, rel))
                out[rel] = (st.st_mtime_ns, stat.S_IMODE(st.st_mode))
            return out

        want = times_and_modes(self.lp("src"))
        self.ok("put", "-r", "-p", self.lp("src"), self.rr("kept"))
        self.assertEqual(times_and_modes(os.path.join(self.rshare, "kept")), want)
        self.ok("get", "-r", "-p", self.rr("kept"), self.lp("kept-back"))
        self.assertEqual(times_and_modes(self.lp("kept-back")), want)
        # Single files too.
        self.ok("put", "-p", self.lp("src", "p.sh"), self.rr("single.sh"))
        st = os.stat(os.path.join(self.rshare, "single.sh"))
        self.assertEqual((st.st_mtime_ns, stat.S_IMODE(st.st_mode)), (old_ns, 0o751))
        self.ok("get", "-p", self.rr("single.sh"), self.lp("single.sh"))
        st = os.stat(self.lp("single.sh"))
        self.assertEqual((st.st_mtime_ns, stat.S_IMODE(st.st_mode)), (old_ns, 0o751))

        # Without -p: a new time, and the source's permission bits less the umask (as cp and scp).
        before = time.time_ns() - 2_000_000_000
        self.ok("put", self.lp("src", "p.sh"), self.rr("fresh.sh"))
        st = os.stat(os.path.join(self.rshare, "fresh.sh"))
        self.assertGreater(st.st_mtime_ns, before)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o751 & ~UMASK)
        self.ok("get", self.rr("single.sh"), self.lp("fresh-local.sh"))
        st = os.stat(self.lp("fresh-local.sh"))
        self.assertGreater(st.st_mtime_ns, before)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o751 & ~UMASK)

    def test_no_clobber(self):
        write_file(self.lp("new.txt"), b"new content\n")
        write_file(os.path.join(self.rshare, "t.txt"), b"old remote\n")
        write_file(os.path.join(self.rshare, "big.bin"), b"old big\n")
        write_file(self.lp("big.bin"), random_bytes(600000))
        with self.subTest("put -n, a small file (sent inline)"):
            r = self.cli("put", "--no-clobber", self.lp("new.txt"), self.rr("t.txt"))
            self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
            self.assertIn("exists", r.stderr)
            self.assertEqual(read_file(os.path.join(self.rshare, "t.txt")), b"old remote\n")
        with self.subTest("put -n, a large file (streamed)"):
            r = self.cli("put", "-n", "--json", self.lp("big.bin"), self.rr())
            self.assertEqual(read_file(os.path.join(self.rshare, "big.bin")), b"old big\n")
            self.assertEqual(r.returncode, EXIT_EXISTS, f"stdout {r.stdout} stderr {r.stderr}")
            self.assertFalse(json.loads(r.stdout)["ok"])
        with self.subTest("put without -n replaces"):
            self.ok("put", self.lp("new.txt"), self.rr("t.txt"))
            self.assertEqual(read_file(os.path.join(self.rshare, "t.txt")), b"new content\n")
            self.ok("put", self.lp("big.bin"), self.rr())
            self.assertEqual(read_file(os.path.join(self.rshare, "big.bin")), read_file(self.lp("big.bin")))
        with self.subTest("get -n"):
            write_file(self.lp("down", "t.txt"), b"old local\n")
            write_file(self.lp("down", "big.bin"), b"old local big\n")
            r = self.cli("get", "-n", self.rr("t.txt"), self.lp("down"))
            self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
            self.assertEqual(read_file(self.lp("down", "t.txt")), b"old local\n")
            r = self.cli("get", "-n", self.rr("big.bin"), self.lp("down"))
            self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
            self.assertEqual(read_file(self.lp("down", "big.bin")), b"old local big\n")
            self.ok("get", self.rr("t.txt"), self.lp("down"))
            self.assertEqual(read_file(self.lp("down", "t.txt")), b"new content\n")
        with self.subTest("put -r -n: the existing file stays, the rest arrives, exit 14"):
            write_file(self.lp("tree", "a.txt"), b"tree a\n")
            write_file(self.lp("tree", "b.txt"), b"tree b\n")
            write_file(os.path.join(self.rshare, "tree", "a.txt"), b"remote a\n")
            r = self.cli("put", "-r", "-n", self.lp("tree"), self.rr())
            self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
            self.assertEqual(read_file(os.path.join(self.rshare, "tree", "a.txt")), b"remote a\n")
            self.assertEqual(read_file(os.path.join(self.rshare, "tree", "b.txt")), b"tree b\n")
        self.assert_no_parts(self.rshare, self.local)

    def test_get_over_a_directory_or_a_link(self):
        """A download never replaces a local directory (its content stays) and replaces a local
        symlink itself rather than writing through it; whether the file comes whole in one frame
        (an unnamed file, linked into place) or streamed (a named part, renamed into place)."""
        for size in (1000, 600000):
            with self.subTest(size=size):
                data = random_bytes(size)
                write_file(os.path.join(self.rshare, f"x{size}"), data)
                down = self.lp(f"over{size}")
                write_file(os.path.join(down, f"x{size}", "inside"), b"keep me")
                for flags in ((), ("-n",)):
                    r = self.cli("get", *flags, self.rr(f"x{size}"), down)
                    self.assertNotEqual(r.returncode, EXIT_OK, r.stderr)
                    self.assertIn(f"x{size}", r.stderr)
                    self.assertEqual(read_file(os.path.join(down, f"x{size}", "inside")), b"keep me")
                target = self.lp(f"target{size}")
                write_file(target, b"not to be touched")
                os.symlink(target, os.path.join(down, f"l{size}"))
                self.ok("get", self.rr(f"x{size}"), os.path.join(down, f"l{size}"))
                self.assertFalse(os.path.islink(os.path.join(down, f"l{size}")))
                self.assertEqual(read_file(os.path.join(down, f"l{size}")), data)
                self.assertEqual(read_file(target), b"not to be touched")
                self.assertEqual(sorted(os.listdir(down)), [f"l{size}", f"x{size}"])

    def test_put_over_a_directory(self):
        """A file of a tree upload whose name is a directory on the server is refused and the
        directory keeps its content, whether the file travels whole in its put (inline: refused at
        commit) or streamed (refused before any data is sent); the other files arrive."""
        for size in (1000, 600000):
            with self.subTest(size=size):
                tree = self.lp(f"up{size}")
                write_file(os.path.join(tree, "clash"), random_bytes(size))
                write_file(os.path.join(tree, "fine"), b"fine\n")
                remote = os.path.join(self.rshare, f"up{size}")
                write_file(os.path.join(remote, "clash", "inside"), b"keep me")
                for flags in ((), ("-n",)):
                    r = self.cli("put", "-r", *flags, tree, self.rr())
                    self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
                    self.assertIn("is a directory", r.stderr)
                    self.assertEqual(read_file(os.path.join(remote, "clash", "inside")), b"keep me")
                    self.assertEqual(read_file(os.path.join(remote, "fine")), b"fine\n")
                    os.unlink(os.path.join(remote, "fine"))
                self.assert_no_parts(self.rshare)

    def test_stale_parts_are_reclaimed_by_a_small_file(self):
        """A part left by an interrupted transfer of a large version of a file is removed once a small
        version (sent whole, through an unnamed file) is committed under that name, on both sides."""
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, fingerprint=self.srv.fingerprint) as c:
            h, _ = c.request("put", path=f"{self.rdir}/was-large", size=MiB)
            self.assertEqual(h["type"], "put.ready")
            c.send({"type": "put.data", "id": h["id"], "offset": 0}, random_bytes(100000))
        # The connection is gone: the server keeps the part, resumable.
        self.assertTrue(wait_until(lambda: len(part_files(self.rshare)) == 1, 20), part_files(self.rshare))
        write_file(self.lp("was-large"), b"small now\n")
        self.ok("put", self.lp("was-large"), self.rr())
        self.assertEqual(read_file(os.path.join(self.rshare, "was-large")), b"small now\n")
        self.assertEqual(part_files(self.rshare), [])
        # The client: a part of the same name (the name is a digest of the file name) in the destination.
        write_file(os.path.join(self.rshare, "name-of-part"), b"was-large")
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, fingerprint=self.srv.fingerprint) as c:
            digest = c.request("get", path=f"{self.rdir}/name-of-part")[0]["xxh3"]
        down = self.lp("down-stale")
        write_file(os.path.join(down, PART_PREFIX + digest[:16]), random_bytes(100000))
        self.ok("get", self.rr("was-large"), down)
        self.assertEqual(read_file(os.path.join(down, "was-large")), b"small now\n")
        self.assertEqual(os.listdir(down), ["was-large"])

    def test_verify_sha256(self):
        for size in (10, 300000, 5 * MiB):
            with self.subTest(size=size):
                data = random_bytes(size)
                write_file(self.lp(f"v{size}"), data)
                j = self.json_ok("put", "--verify", "sha256", self.lp(f"v{size}"), self.rr())
                self.assertEqual(j["digest"], "xxh3-128+sha256")
                self.assertEqual((j["files"], j["bytes"]), (1, size))
                self.assertEqual(read_file(os.path.join(self.rshare, f"v{size}")), data)
                j = self.json_ok("get", "--verify", "sha256", self.rr(f"v{size}"), self.lp(f"back{size}"))
                self.assertEqual(j["digest"], "xxh3-128+sha256")
                self.assertEqual(read_file(self.lp(f"back{size}")), data)
        write_file(self.lp("plain"), b"plain")
        j = self.json_ok("put", self.lp("plain"), self.rr("plain"))
        self.assertEqual(j["digest"], "xxh3-128")
        r = self.cli("put", "--verify", "md5", self.lp("plain"), self.rr())
        self.assertEqual(r.returncode, EXIT_USAGE)

    def test_quiet_and_json_summaries(self):
        write_file(self.lp("q.txt"), b"quiet")
        r = self.ok("put", "-q", self.lp("q.txt"), self.rr())
        self.assertEqual((r.stdout, r.stderr), ("", ""))
        r = self.ok("get", "-q", self.rr("q.txt"), self.lp("q2.txt"))
        self.assertEqual((r.stdout, r.stderr), ("", ""))
        j = self.json_ok("put", self.lp("q.txt"), self.rr("j.txt"))
        for key in ("files", "dirs", "symlinks", "bytes", "resumed_bytes", "seconds", "bytes_per_second", "errors"):
            self.assertIn(key, j)
        self.assertEqual((j["files"], j["bytes"], j["resumed_bytes"], j["errors"]), (1, 5, 0, []))
        # A failure in JSON: ok false, the error listed, and the exit code.
        r = self.cli("put", "--json", "-n", self.lp("q.txt"), self.rr("j.txt"))
        self.assertEqual(r.returncode, EXIT_EXISTS)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertEqual(j["errors"][0]["code"], "exists")
        r = self.cli("get", "--json", self.rr("missing.txt"), self.lp("m"))
        self.assertEqual(r.returncode, EXIT_NOT_FOUND)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertEqual(j["errors"][0]["code"], "not_found")

    def test_stdin_tar_stream_and_stdout(self):
        # A tar stream of a few files, some larger than one data chunk.
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, size in enumerate((0, 1000, 5 * MiB + 3, 300000)):
                info = tarfile.TarInfo(f"member{i}")
                info.size = size
                tar.addfile(info, io.BytesIO(random_bytes(size)))
        stream = buf.getvalue()
        j = json.loads(self.ok("put", "--json", "-", self.rr("stream.tar"), input=stream, binary=True).stdout)
        self.assertEqual((j["files"], j["bytes"]), (1, len(stream)))
        self.assertEqual(read_file(os.path.join(self.rshare, "stream.tar")), stream)
        r = self.ok("get", self.rr("stream.tar"), "-", binary=True)
        self.assertEqual(r.stdout, stream)
        with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
            self.assertEqual(tar.getnames(), ["member0", "member1", "member2", "member3"])
        # An empty stdin makes an empty file; stdin needs a file name.
        self.ok("put", "-", self.rr("empty"), input=b"", binary=True)
        self.assertEqual(read_file(os.path.join(self.rshare, "empty")), b"")
        r = self.cli("put", "-", self.rr(), input=b"x", binary=True)
        self.assertNotEqual(r.returncode, EXIT_OK)
        # stdout takes one file, not a directory.
        r = self.cli("get", self.rr(), "-", binary=True)
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertEqual(r.stdout, b"")
        self.assert_no_parts(self.rshare)

    def test_ls(self):
        write_file(os.path.join(self.rshare, "d", "inner.txt"), b"12345")
        write_file(os.path.join(self.rshare, "f.txt"), b"abc")
        os.chmod(os.path.join(self.rshare, "f.txt"), 0o640)
        os.symlink("f.txt", os.path.join(self.rshare, "l"))
        write_file(os.path.join(self.rshare, PART_PREFIX + "0123456789abcdef"), b"hidden part")
        r = self.ok("ls", self.rr())
        self.assertEqual(r.stdout.splitlines(), ["d/", "f.txt", "l"])
        r = self.ok("ls", "-l", self.rr())
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 3, r.stdout)
        self.assertRegex(lines[0], r"^drwx[-rwx]{6}\s+\d+ \d{4}-\d\d-\d\d \d\d:\d\d d$")
        self.assertRegex(lines[1], r"^-rw-r-----\s+3 \d{4}-\d\d-\d\d \d\d:\d\d f\.txt$")
        self.assertRegex(lines[2], r"^lrwxrwxrwx\s+0 .* l -> f\.txt$")
        r = self.ok("ls", "-R", self.rr())
        self.assertEqual(r.stdout.splitlines(), ["d/", "d/inner.txt", "f.txt", "l"])
        r = self.ok("ls", "-l", "-R", self.rr())
        self.assertIn(" d/inner.txt", r.stdout)
        j = self.json_ok("ls", self.rr())
        self.assertEqual(j["path"], self.rdir)
        by_name = {e["name"]: e for e in j["entries"]}
        self.assertEqual(set(by_name), {"d", "f.txt", "l"})
        self.assertEqual(by_name["f.txt"]["type"], "file")
        self.assertEqual(by_name["f.txt"]["size"], 3)
        self.assertEqual(by_name["f.txt"]["mode"], 0o640)
        self.assertEqual(by_name["f.txt"]["mtime_ns"], os.stat(os.path.join(self.rshare, "f.txt")).st_mtime_ns)
        self.assertEqual(by_name["d"]["type"], "dir")
        self.assertEqual((by_name["l"]["type"], by_name["l"]["target"]), ("symlink", "f.txt"))
        j = self.json_ok("ls", "-R", self.rr())
        self.assertEqual([e["name"] for e in j["entries"]], ["d", "d/inner.txt", "f.txt", "l"])
        # A file: one entry. The root: lists this test's directory. Missing: 13.
        j = self.json_ok("ls", self.rr("f.txt"))
        self.assertEqual([e["name"] for e in j["entries"]], ["f.txt"])
        self.assertIn(f"{self.rdir}/", self.ok("ls", self.r()).stdout.splitlines())
        self.assertEqual(self.cli("ls", self.rr("nope")).returncode, EXIT_NOT_FOUND)

    def test_stat(self):
        write_file(os.path.join(self.rshare, "s.txt"), b"hello")
        os.chmod(os.path.join(self.rshare, "s.txt"), 0o604)
        os.symlink("s.txt", os.path.join(self.rshare, "sl"))
        r = self.ok("stat", self.rr("s.txt"))
        self.assertRegex(r.stdout, r"type: file\n")
        self.assertRegex(r.stdout, r"size: 5\n")
        self.assertRegex(r.stdout, r"mode: -rw----r-- \(0604\)")
        j = self.json_ok("stat", self.rr("s.txt"))["entry"]
        st = os.stat(os.path.join(self.rshare, "s.txt"))
        self.assertEqual((j["name"], j["type"], j["size"], j["mode"], j["mtime_ns"]),
                         ("s.txt", "file", 5, 0o604, st.st_mtime_ns))
        j = self.json_ok("stat", self.rr())["entry"]
        self.assertEqual(j["type"], "dir")
        j = self.json_ok("stat", self.rr("sl"))["entry"]
        self.assertEqual((j["type"], j["target"]), ("symlink", "s.txt"))
        self.assertIn("target: s.txt", self.ok("stat", self.rr("sl")).stdout)
        self.assertEqual(self.json_ok("stat", self.r())["entry"]["type"], "dir")
        self.assertEqual(self.cli("stat", self.rr("nope")).returncode, EXIT_NOT_FOUND)

    def test_mkdir(self):
        self.ok("mkdir", self.rr("m"))
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "m")))
        r = self.cli("mkdir", self.rr("m"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        j = self.json_ok("mkdir", "-p", self.rr("p/q/r"))
        self.assertEqual(j["path"], f"{self.rdir}/p/q/r")
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "p", "q", "r")))
        self.ok("mkdir", "-p", self.rr("p/q/r"))  # exists: fine with -p
        self.ok("mkdir", "--parents", self.rr("p/q2"))
        write_file(os.path.join(self.rshare, "file"), b"x")
        self.assertEqual(self.cli("mkdir", self.rr("file")).returncode, EXIT_EXISTS)
        self.assertEqual(self.cli("mkdir", "-p", self.rr("file/sub")).returncode, EXIT_EXISTS)
        self.assertEqual(read_file(os.path.join(self.rshare, "file")), b"x")
        self.assertEqual(self.cli("mkdir", self.r()).returncode, EXIT_EXISTS)

    def test_rm(self):
        write_file(os.path.join(self.rshare, "f"), b"x")
        write_file(os.path.join(self.rshare, "full", "a", "b"), b"y")
        write_file(os.path.join(self.rshare, "full", "c"), b"z")
        os.makedirs(os.path.join(self.rshare, "emptyd"))
        self.ok("rm", self.rr("f"))
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "f")))
        self.assertEqual(self.cli("rm", self.rr("f")).returncode, EXIT_NOT_FOUND)
        self.ok("rm", self.rr("emptyd"))  # an empty directory needs no -r
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "emptyd")))
        before = snapshot(os.path.join(self.rshare, "full"))
        r = self.cli("rm", self.rr("full"))
        self.assertEqual(r.returncode, EXIT_NOT_EMPTY, r.stderr)  # not 14, "already exists"
        self.assertIn("not empty (use -r)", r.stderr)
        self.assertEqual(snapshot(os.path.join(self.rshare, "full")), before)
        j = self.json_ok("rm", "-r", self.rr("full"))
        self.assertEqual(j["removed"], 4)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "full")))
        r = self.cli("rm", "-r", self.r())
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertTrue(os.path.isdir(self.rshare))

    def test_local_errors_are_not_the_servers(self):
        # Found here, before or without the server: 1 (or the class's own
        # code), never 7, "the server reported an error".
        local_dir = os.path.join(self.local, "adir")
        os.makedirs(local_dir, exist_ok=True)
        r = self.cli("put", local_dir, self.r())
        self.assertEqual(r.returncode, EXIT_LOCAL, r.stderr)
        self.assertIn("is a directory (use -r)", r.stderr)
        os.makedirs(os.path.join(self.rshare, "rdir"), exist_ok=True)
        r = self.cli("get", self.rr("rdir"), self.local)
        self.assertEqual(r.returncode, EXIT_LOCAL, r.stderr)
        write_file(os.path.join(self.local, "one"), b"1")
        r = self.cli("put", os.path.join(self.local, "one"), self.rr("../escape"))
        self.assertEqual(r.returncode, EXIT_LOCAL, r.stderr)
        self.assertIn("'..' is not allowed", r.stderr)
        r = self.cli("put", os.path.join(self.local, "missing"), self.r())
        self.assertEqual(r.returncode, EXIT_NOT_FOUND, r.stderr)
        write_file(os.path.join(self.rshare, "r1"), b"x")
        r = self.cli("get", self.rr("r1"), os.path.join(self.local, "no", "such", "dir", "x"))
        self.assertNotIn(r.returncode, (EXIT_OK, EXIT_REMOTE), r.stderr)
        # What the server reports is still 7 or its class.
        r = self.cli("get", self.rr("nothing-here"), self.local)
        self.assertEqual(r.returncode, EXIT_NOT_FOUND, r.stderr)

    def test_get_to_a_closed_pipe_ends_quietly(self):
        # `cskit get HOST:f - | head -c 10`: head exits, cskit stops at once
        # without a message, killed by SIGPIPE as cat would be.
        write_file(os.path.join(self.rshare, "big"), os.urandom(8 << 20))
        env = self.env()
        p = subprocess.Popen([BIN, "get", self.rr("big"), "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)
        first = p.stdout.read(10)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=30)
        self.assertEqual(len(first), 10)
        self.assertEqual(p.returncode, -signal.SIGPIPE, err)
        self.assertEqual(err, b"")

    def test_mv(self):
        write_file(os.path.join(self.rshare, "a"), b"A")
        write_file(os.path.join(self.rshare, "b"), b"B")
        os.makedirs(os.path.join(self.rshare, "dir"))
        j = self.json_ok("mv", self.rr("a"), self.rr("dir"))  # into a directory
        self.assertEqual(j["to"], f"{self.rdir}/dir/a")
        self.assertEqual(read_file(os.path.join(self.rshare, "dir", "a")), b"A")
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "a")))
        self.ok("mv", self.rr("dir/a"), f"{self.rdir}/renamed")  # TO without the host
        self.assertEqual(read_file(os.path.join(self.rshare, "renamed")), b"A")
        r = self.cli("mv", "-n", self.rr("renamed"), self.rr("b"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.assertEqual(read_file(os.path.join(self.rshare, "renamed")), b"A")
        self.assertEqual(read_file(os.path.join(self.rshare, "b")), b"B")
        r = self.cli("mv", "--no-clobber", self.rr("renamed"), self.rr("b"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.ok("mv", self.rr("renamed"), self.rr("b"))  # replaces without -n
        self.assertEqual(read_file(os.path.join(self.rshare, "b")), b"A")
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "renamed")))
        self.assertEqual(self.cli("mv", self.rr("nope"), self.rr("x")).returncode, EXIT_NOT_FOUND)
        r = self.cli("mv", self.rr("dir"), self.rr("dir/inside"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "dir")))

    def test_wrong_token(self):
        write_file(self.lp("f"), b"x")
        for args in (("put", self.lp("f"), self.rr()), ("get", self.rr("f"), self.lp("g")), ("ls", self.rr()),
                     ("mkdir", self.rr("d"))):
            with self.subTest(cmd=args[0]):
                r = self.cli(*args, token="wrong-token-0123456789abcdef")
                self.assertEqual(r.returncode, EXIT_AUTH, r.stderr)
        self.assertEqual(os.listdir(self.rshare), [])
        self.assertFalse(os.path.exists(self.lp("g")))

    def test_missing_parent_is_not_found(self):
        """A path whose parent directory does not exist is 'not found' (13), whatever the command."""
        write_file(self.lp("f"), b"x")
        cases = [
            ("stat", self.rr("nodir/x")),
            ("get", self.rr("nodir/x"), self.lp("out")),
            ("rm", self.rr("nodir/x")),
            ("mkdir", self.rr("nodir/x")),
            ("mv", self.rr("nodir/x"), self.rr("y")),
            ("put", self.lp("f"), self.rr("nodir/x")),
        ]
        for args in cases:
            with self.subTest(args=args[0]):
                r = self.cli(*args)
                self.assertEqual(r.returncode, EXIT_NOT_FOUND, f"cskit {' '.join(args)}: {r.stderr}")
                self.assertNotIn("[permission_denied]", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "nodir")))

    def test_port_option_and_a_port_that_looks_like_a_path(self):
        write_file(self.lp("f"), b"x")
        port = str(self.srv.port)
        # HOST:DIGITS would name a file at the default port: refused with what to write instead.
        for args in (("put", self.lp("f"), f"127.0.0.1:{port}"), ("get", f"127.0.0.1:{port}", self.lp("g")),
                     ("ls", f"127.0.0.1:{port}"), ("rm", f"127.0.0.1:{port}")):
            with self.subTest(args=args[0]):
                r = self.cli(*args)
                self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
                self.assertIn(f"would name a file '{port}'", r.stderr)
                self.assertIn(f"write 127.0.0.1:{port}: (the share's root) or -P {port}", r.stderr)
                self.assertIn(f"127.0.0.1:./{port}", r.stderr)
        self.assertFalse(os.path.exists(self.lp("g")))
        # -P gives the port; HOST:./DIGITS names the file.
        self.ok("put", "-P", port, self.lp("f"), f"127.0.0.1:{self.rdir}/a")
        self.assertEqual(read_file(os.path.join(self.rshare, "a")), b"x")
        digits = str(40000 + os.getpid() % 20000)
        try:
            self.ok("put", self.lp("f"), f"127.0.0.1:./{digits}", "--port", port)
            self.assertEqual(read_file(os.path.join(self.srv.share, digits)), b"x")
            self.ok("get", "-P", port, f"127.0.0.1:./{digits}", self.lp("back"))
            self.assertEqual(read_file(self.lp("back")), b"x")
            self.ok("rm", "-P", port, f"127.0.0.1:./{digits}")
        finally:
            if os.path.exists(os.path.join(self.srv.share, digits)):
                os.unlink(os.path.join(self.srv.share, digits))
        self.assertEqual(self.ok("ls", "-P", port, f"127.0.0.1:{self.rdir}").stdout, "a\n")
        # The same port twice is fine; two different ones are refused.
        self.ok("ls", "-P", port, self.rr())
        r = self.cli("ls", "-P", "1", self.rr())
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertIn(f"names port {port} and -P names port 1", r.stderr)

    def test_both_ends_remote_is_refused(self):
        write_file(os.path.join(self.rshare, "f"), b"remote")
        for args in (("get", self.rr("f"), self.rr("g")), ("put", self.rr("f"), self.rr("g"))):
            with self.subTest(cmd=args[0]):
                r = self.cli(*args, cwd=self.local)
                self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
                self.assertIn("is a remote path too", r.stderr)
        self.assertEqual(os.listdir(self.local), [])
        self.assertEqual(os.listdir(self.rshare), ["f"])
        # A local name with a colon is written ./NAME.
        self.ok("get", self.rr("f"), "./x:y", cwd=self.local)
        self.assertEqual(read_file(self.lp("x:y")), b"remote")

    def test_ls_leaves_out_dot_names_unless_all(self):
        for name in (".hidden", ".hd/x", "vis", "d/.inner", "d/seen"):
            write_file(os.path.join(self.rshare, name), b"x")
        self.assertEqual(self.ok("ls", self.rr()).stdout.splitlines(), ["d/", "vis"])
        self.assertEqual(self.ok("ls", "-R", self.rr()).stdout.splitlines(), ["d/", "d/seen", "vis"])
        self.assertEqual(self.ok("ls", "-aR", self.rr()).stdout.splitlines(),
                         [".hd/", ".hd/x", ".hidden", "d/", "d/.inner", "d/seen", "vis"])
        lines = self.ok("ls", "-la", self.rr()).stdout.splitlines()  # combined short flags
        self.assertEqual([line.rsplit(" ", 1)[1] for line in lines], [".hd", ".hidden", "d", "vis"])
        self.assertEqual([e["name"] for e in self.json_ok("ls", self.rr())["entries"]], ["d", "vis"])
        self.assertEqual(len(self.json_ok("ls", "--all", self.rr())["entries"]), 4)
        # Named on the command line: a hidden file is shown, a hidden directory's content too.
        self.assertEqual(self.ok("ls", self.rr(".hidden")).stdout, ".hidden\n")
        self.assertEqual(self.ok("ls", self.rr(".hd")).stdout, "x\n")

    def test_mkdir_and_rm_take_several_paths(self):
        write_file(os.path.join(self.rshare, "file"), b"x")
        r = self.cli("mkdir", self.rr("a"), self.rr("file"), self.rr("b"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.assertIn("'" + self.rdir + "/file' already exists", r.stderr)
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "a")))
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "b")))  # the one after the failure too
        self.ok("mkdir", "-p", self.rr("a/1"), self.rr("a/2"))
        r = self.cli("rm", "-r", "--json", self.rr("a"), self.rr("nope"), self.rr("file"))
        self.assertEqual(r.returncode, EXIT_NOT_FOUND, r.stderr)
        j = json.loads(r.stdout)
        self.assertFalse(j["ok"])
        self.assertEqual([(x["path"], x["ok"]) for x in j["results"]],
                         [(f"{self.rdir}/a", True), (f"{self.rdir}/nope", False), (f"{self.rdir}/file", True)])
        self.assertEqual(j["results"][0]["removed"], 3)
        self.assertEqual(j["results"][1]["error"]["code"], "not_found")
        self.assertEqual(sorted(os.listdir(self.rshare)), ["b"])
        # Paths on two servers are refused before anything is done.
        r = self.cli("rm", self.rr("b"), f"127.0.0.2:{self.srv.port}:{self.rdir}/b")
        self.assertEqual(r.returncode, EXIT_USAGE)
        self.assertIn("same server", r.stderr)
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "b")))

    def test_new_directories_keep_their_permission_bits_both_ways(self):
        """Without -p, as scp and cp: a new directory gets the source's bits (the owner's rwx added,
        so that it can be filled) less the umask, both ways, a new tree's top included."""
        umask = os.umask(0)
        os.umask(umask)
        for d, mode in (("", 0o750), ("private", 0o700), ("open", 0o775), ("readonly", 0o555)):
            write_file(self.lp("src", d, "f"), b"x")
            os.chmod(self.lp("src", d), mode)
        want = {d: (mode | 0o700) & ~umask for d, mode in (("", 0o750), ("private", 0o700), ("open", 0o775),
                                                           ("readonly", 0o555))}
        try:
            self.ok("put", "-r", self.lp("src"), self.rr("up"))
            there = os.path.join(self.rshare, "up")
            got = {d: stat.S_IMODE(os.stat(os.path.join(there, d)).st_mode) for d in want}
            self.assertEqual(got, want)
            self.assertEqual(read_file(os.path.join(there, "readonly", "f")), b"x")  # filled all the same
            self.ok("get", "-r", self.rr("up"), self.lp("down"))
            got = {d: stat.S_IMODE(os.stat(self.lp("down", d)).st_mode) for d in want}
            self.assertEqual(got, {d: (m | 0o700) & ~umask for d, m in want.items()})
            # -p: the exact bits.
            self.ok("put", "-r", "-p", self.lp("src"), self.rr("exact"))
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.rshare, "exact", "readonly")).st_mode), 0o555)
        finally:
            for root in (self.lp("src"), os.path.join(self.rshare, "up"), os.path.join(self.rshare, "exact")):
                for dirpath, _, _ in os.walk(root):
                    os.chmod(dirpath, 0o755)

    def test_new_files_keep_their_permission_bits_both_ways(self):
        """Without -p, as cp and scp: a new file gets the source's bits less the umask; a file
        that is replaced keeps its own. Small (one frame) and large (streamed) files alike."""
        umask = os.umask(0)
        os.umask(umask)
        modes = {"key": 0o600, "tool": 0o755, "readonly": 0o444, "shared": 0o664}
        for name, mode in modes.items():
            for size, suffix in ((10, ""), (300 * 1024, ".big")):
                write_file(self.lp("src", name + suffix), b"k" * size)
                os.chmod(self.lp("src", name + suffix), mode)
        os.makedirs(os.path.join(self.rshare, "up"))
        write_file(os.path.join(self.rshare, "up", "key"), b"old")
        os.chmod(os.path.join(self.rshare, "up", "key"), 0o640)  # replaced: keeps 0640
        write_file(os.path.join(self.rshare, "up", "key.big"), b"old")
        os.chmod(os.path.join(self.rshare, "up", "key.big"), 0o604)  # a streamed one too
        self.ok("put", *sorted(glob.glob(self.lp("src", "*"))), self.rr("up/"))
        write_file(self.lp("down", "tool"), b"old")
        os.chmod(self.lp("down", "tool"), 0o700)  # replaced: keeps 0700
        self.ok("get", *[self.rr("up/" + n) for n in sorted(os.listdir(os.path.join(self.rshare, "up")))],
                self.lp("down"))
        for name, mode in modes.items():
            for suffix in ("", ".big"):
                up = stat.S_IMODE(os.stat(os.path.join(self.rshare, "up", name + suffix)).st_mode)
                down = stat.S_IMODE(os.stat(self.lp("down", name + suffix)).st_mode)
                want_up = {"key": 0o640, "key.big": 0o604}.get(name + suffix, mode & ~umask)
                want_down = 0o700 if name + suffix == "tool" else want_up & ~umask
                with self.subTest(file=name + suffix):
                    self.assertEqual(oct(up), oct(want_up))
                    self.assertEqual(oct(down), oct(want_down))
        # -p still imposes the source's bits, replaced file or not.
        self.ok("put", "-p", self.lp("src", "tool"), self.rr("up/key"))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.rshare, "up", "key")).st_mode), 0o755)

    def test_host_alias_in_the_client_config(self):
        """[hosts.NAME] as ssh_config's Host: address, port, token_file; `cskit get box:PATH` works."""
        write_file(os.path.join(self.rshare, "notes.txt"), b"notes")
        token_file = os.path.join(self.srv.home, ".config", "cskit", "box.token")  # written as ~/... below
        os.makedirs(os.path.dirname(token_file), exist_ok=True)
        write_file(token_file, (self.srv.token or TOKEN).encode() + b"\n")
        os.chmod(token_file, 0o600)
        config = self.lp("client.toml")
        with open(config, "w") as f:
            f.write(f'token = "wrong-token-at-the-top-level-0123"\n'
                    f'[hosts.box]\naddress = "127.0.0.1"\nport = {self.srv.port}\ntoken_file = "~/.config/cskit/box.token"\n')
        os.chmod(config, 0o600)  # it holds a token
        env = self.env()
        env.pop("CSKIT_TOKEN")

        def run(*args):
            return subprocess.run([BIN, *args, "--client-config", config], capture_output=True, text=True,
                                  env=env, timeout=60, cwd=self.local)

        r = run("get", f"box:{self.rdir}/notes.txt", "got.txt")
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertEqual(read_file(self.lp("got.txt")), b"notes")
        self.assertEqual(run("ls", f"box:{self.rdir}").stdout, "notes.txt\n")
        self.assertEqual(run("put", "got.txt", f"box:{self.rdir}/again.txt").returncode, EXIT_OK)
        self.assertEqual(read_file(os.path.join(self.rshare, "again.txt")), b"notes")
        # A port on the command line wins over the table's (nothing listens on port 1).
        self.assertEqual(run("ls", f"box:1:{self.rdir}").returncode, EXIT_CONNECT)
        # A token file others may read is refused, as ssh refuses such a key.
        os.chmod(token_file, 0o644)
        r = run("ls", f"box:{self.rdir}")
        self.assertEqual(r.returncode, EXIT_LOCAL, r.stderr)  # refused here: not "authentication failed"
        self.assertIn("may be read by others", r.stderr)
        # A port that is no port is named with its table.
        with open(config, "w") as f:
            f.write('[hosts.box]\naddress = "127.0.0.1"\nport = 70000\n')
        r = run("ls", "box:")
        self.assertEqual(r.returncode, EXIT_LOCAL, r.stderr)
        self.assertIn('[hosts."box"]: \'port\' must be a number from 1 to 65535', r.stderr)

    def test_rerun_of_an_unfinished_tree_copy_continues_it(self):
        """put -r t HOST:new and get -r HOST:t new that did not finish, run again, continue into
        `new` (they used to nest a second copy in it); the mark goes when the copy is complete."""
        marker = ".cskit-part.tree"
        src = self.lp("t")
        write_file(os.path.join(src, "a"), b"a" * 1000)
        write_file(os.path.join(src, "b", "c"), b"c" * 300_000)
        os.mkfifo(os.path.join(src, "fifo"))  # cannot be sent: the first run ends with an error
        r = self.cli("put", "-r", src, self.rr("new"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("not a regular file", r.stderr)
        self.assertRegex(read_file(os.path.join(self.rshare, "new", marker)), rb"^t [0-9a-f]{16}$")
        self.assertNotIn(marker, self.ok("ls", "-a", self.rr("new")).stdout)  # hidden
        os.unlink(os.path.join(src, "fifo"))
        write_file(os.path.join(src, "d"), b"d")
        self.ok("put", "-r", src, self.rr("new"))
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "new")))  # no new/t, no mark
        # Complete: a later copy of the same tree goes into it, as scp and cp do.
        self.ok("put", "-r", src, self.rr("new"))
        self.assertTrue(os.path.isdir(os.path.join(self.rshare, "new", "t")))
        # Only a re-run of the same source continues: another tree goes inside.
        write_file(self.lp("other", "x"), b"x")
        os.mkfifo(self.lp("other", "fifo"))
        self.cli("put", "-r", self.lp("other"), self.rr("new2"))
        os.unlink(self.lp("other", "fifo"))
        self.ok("put", "-r", src, self.rr("new2"))
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "new2", "t")))

        # get -r: a link the client refuses ends the first run with an error.
        tree = os.path.join(self.rshare, "g")
        write_file(os.path.join(tree, "a"), b"a" * 1000)
        write_file(os.path.join(tree, "b", "c"), b"c" * 300_000)
        os.symlink("../../../outside", os.path.join(tree, "bad-link"))
        r = self.cli("get", "-r", self.rr("g"), self.lp("local"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertEqual(read_file(self.lp("local", marker)), f"{self.rdir}/g".encode())
        os.unlink(os.path.join(tree, "bad-link"))
        write_file(os.path.join(tree, "d"), b"d")
        self.ok("get", "-r", self.rr("g"), self.lp("local"))
        self.assertEqual(snapshot(tree), snapshot(self.lp("local")))  # no local/g, no mark
        self.ok("get", "-r", self.rr("g"), self.lp("local"))
        self.assertEqual(snapshot(tree), snapshot(self.lp("local", "g")))
        # Continued from inside the new name (as "."), it still continues there.
        os.symlink("../../../outside", os.path.join(tree, "bad-link"))
        self.cli("get", "-r", self.rr("g"), self.lp("again"))
        os.unlink(os.path.join(tree, "bad-link"))
        self.ok("get", "-r", self.rr("g"), ".", cwd=self.lp("again"))
        self.assertEqual(snapshot(tree), snapshot(self.lp("again")))

    def test_unfinished_copy_marks_are_only_where_a_copy_made_them(self):
        marker = ".cskit-part.tree"
        os.makedirs(os.path.join(self.rshare, "theirs"))
        write_file(os.path.join(self.rshare, "theirs", "keep"), b"theirs")
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                         fingerprint=self.srv.fingerprint) as c:
            # A directory made by someone else (or meanwhile) is never marked as a copy's.
            with self.assertRaises(cskit_client.RemoteError) as cm:
                c.request("fs.mkdir", path=f"{self.rdir}/theirs", parents=True, tree_of="t 0123456789abcdef")
            self.assertEqual(cm.exception.code, "exists")
            self.assertIn("not an unfinished copy", str(cm.exception))
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "theirs", marker)))
            self.assertNotIn("unfinished_copy_of", c.request("fs.stat", path=f"{self.rdir}/theirs")[0]["entry"])
            # A bad tree_of is refused before anything is made.
            for bad in ("", 7, "x" * 4097):
                with self.assertRaises(cskit_client.RemoteError) as cm:
                    c.request("fs.mkdir", path=f"{self.rdir}/made", parents=True, tree_of=bad)
                self.assertEqual(cm.exception.code, "bad_request")
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "made")))
            # A copy's own directory: marked, seen by fs.stat, marked again by its re-run.
            c.request("fs.mkdir", path=f"{self.rdir}/mine", parents=True, tree_of="t 0123456789abcdef")
            c.request("fs.mkdir", path=f"{self.rdir}/mine", parents=True, tree_of="t 0123456789abcdef")
            entry = c.request("fs.stat", path=f"{self.rdir}/mine")[0]["entry"]
            self.assertEqual(entry["unfinished_copy_of"], "t 0123456789abcdef")
            with self.assertRaises(cskit_client.RemoteError):  # another copy's name: not this one's
                c.request("fs.mkdir", path=f"{self.rdir}/mine", parents=True, tree_of="u 0123456789abcdef")
        # Empty but for the hidden mark: rm removes it, as it looks empty.
        self.ok("rm", self.rr("mine"))
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "mine")))
        # Not empty: rm refuses and the mark stays.
        os.makedirs(os.path.join(self.rshare, "busy"))
        write_file(os.path.join(self.rshare, "busy", marker), b"t 0123456789abcdef")
        write_file(os.path.join(self.rshare, "busy", "f"), b"f")
        self.assertEqual(self.cli("rm", self.rr("busy")).returncode, EXIT_NOT_EMPTY)
        self.assertEqual(read_file(os.path.join(self.rshare, "busy", marker)), b"t 0123456789abcdef")


# ---------------------------------------------------------------- 2, 3. sizes

class Sizes(FilesTestCase):
    SIZES = [0, 1, 65535, 65536, 65537, 262143, 262144, 262145, 4194303, 4194304, 4194305, 8388609]

    def test_boundary_sizes_both_ways(self):
        data = {n: random_bytes(n) for n in self.SIZES}
        for n, d in data.items():
            write_file(self.lp("src", f"s{n}"), d)
        j = self.json_ok("put", *[self.lp("src", f"s{n}") for n in self.SIZES], self.rr())
        self.assertEqual((j["files"], j["bytes"]), (len(self.SIZES), sum(self.SIZES)))
        for n, d in data.items():
            self.assertEqual(read_file(os.path.join(self.rshare, f"s{n}")), d, f"put of {n} bytes")
        j = self.json_ok("get", "-r", self.rr(), self.lp("back"))
        self.assertEqual((j["files"], j["bytes"]), (len(self.SIZES), sum(self.SIZES)))
        for n, d in data.items():
            self.assertEqual(read_file(self.lp("back", f"s{n}")), d, f"get -r of {n} bytes")
        for n, d in data.items():
            with self.subTest(size=n):
                # One file at a time, each way; stdin and stdout too.
                self.ok("put", self.lp("src", f"s{n}"), self.rr(f"single{n}"))
                self.assertEqual(read_file(os.path.join(self.rshare, f"single{n}")), d)
                self.ok("get", self.rr(f"single{n}"), self.lp(f"single{n}"))
                self.assertEqual(read_file(self.lp(f"single{n}")), d)
                self.ok("put", "-", self.rr(f"stdin{n}"), input=d, binary=True)
                self.assertEqual(read_file(os.path.join(self.rshare, f"stdin{n}")), d)
                self.assertEqual(self.ok("get", self.rr(f"stdin{n}"), "-", binary=True).stdout, d)
        self.assert_no_parts(self.rshare, self.local)

    def test_one_gibibyte_both_ways(self):
        size = 1 << 30
        src = self.lp("big")
        want = write_big(src, size)
        try:
            j = self.json_ok("put", "-q", src, self.rr(), timeout=600)
            self.assertEqual((j["files"], j["bytes"]), (1, size))
            remote = os.path.join(self.rshare, "big")
            self.assertEqual(os.path.getsize(remote), size)
            self.assertEqual(sha256_file(remote), want)
            os.unlink(src)
            j = self.json_ok("get", "-q", self.rr("big"), self.lp("big-back"), timeout=600)
            self.assertEqual((j["files"], j["bytes"]), (1, size))
            self.assertEqual(sha256_file(self.lp("big-back")), want)
            self.assert_no_parts(self.rshare, self.local)
        finally:
            for p in (src, self.lp("big-back"), os.path.join(self.rshare, "big")):
                if os.path.exists(p):
                    os.unlink(p)


# ---------------------------------------------------------------- 4, 5. names and many files

class NamesAndTrees(FilesTestCase):
    NAMES = ["文件传输/报告.pdf", "🚀 launch 🎉.txt", "name with  spaces .txt", " leading space",
             "Ελληνικά/ñandú/Ωmega.bin", "日本語 ディレクトリ/ファイル", "emoji 👩‍👩‍👧‍👦/family", "trailing.dot.",
             "-dash-first", "e\u0301 combining"]

    def test_utf8_names_both_ways(self):
        for i, n in enumerate(self.NAMES):
            write_file(self.lp("u", n), f"content {i} {n}\n".encode())
        self.ok("put", "-r", self.lp("u"), self.rr())
        self.assertEqual(snapshot(self.lp("u")), snapshot(os.path.join(self.rshare, "u")))
        listed = self.ok("ls", "-R", self.rr("u")).stdout.splitlines()
        for n in self.NAMES:
            self.assertIn(n, listed)
        j = self.json_ok("ls", "-R", self.rr("u"))
        self.assertEqual({e["name"] for e in j["entries"] if e["type"] == "file"}, set(self.NAMES))
        j = self.json_ok("ls", self.rr("u/文件传输"))
        self.assertEqual([e["name"] for e in j["entries"]], ["报告.pdf"])
        self.ok("get", "-r", self.rr("u"), self.lp("back"))
        self.assertEqual(snapshot(self.lp("u")), snapshot(self.lp("back")))
        # Single files by their UTF-8 names, both ways, and the other commands.
        self.ok("put", self.lp("u", "文件传输", "报告.pdf"), self.rr("报告 副本.pdf"))
        self.ok("get", self.rr("报告 副本.pdf"), self.lp("下载.pdf"))
        self.assertEqual(read_file(self.lp("下载.pdf")), read_file(self.lp("u", "文件传输", "报告.pdf")))
        self.assertEqual(self.json_ok("stat", self.rr("报告 副本.pdf"))["entry"]["name"], "报告 副本.pdf")
        self.ok("mkdir", self.rr("新目录 🗂"))
        self.ok("mv", self.rr("报告 副本.pdf"), self.rr("新目录 🗂"))
        self.assertTrue(os.path.isfile(os.path.join(self.rshare, "新目录 🗂", "报告 副本.pdf")))
        self.ok("rm", "-r", self.rr("新目录 🗂"))
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "新目录 🗂")))

    def test_two_thousand_small_files(self):
        src = self.lp("many")
        for i in range(2000):
            write_file(os.path.join(src, f"d{i % 25:02d}", f"sub{i % 3}", f"f{i:04d}.dat"), random_bytes(i % 1500))
        j = self.json_ok("put", "-r", src, self.rr(), timeout=300)
        self.assertEqual(j["files"], 2000)
        j = self.json_ok("get", "-r", self.rr("many"), self.lp("back"), timeout=300)
        self.assertEqual(j["files"], 2000)

        def same_tree(a, b):
            cmp = filecmp.dircmp(a, b)
            self.assertEqual((cmp.left_only, cmp.right_only, cmp.funny_files), ([], [], []), (a, b))
            _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
            self.assertEqual((mismatch, errors), ([], []), (a, b))
            for d in cmp.common_dirs:
                same_tree(os.path.join(a, d), os.path.join(b, d))

        same_tree(src, os.path.join(self.rshare, "many"))
        same_tree(src, self.lp("back"))  # a new name: the directory's contents go straight in
        self.assertEqual(sum(len(f) for _, _, f in os.walk(self.lp("back"))), 2000)
        self.assert_no_parts(self.rshare, self.local)


def make_deep_tree(root, levels, name_format, leaf=b"at the bottom\n"):
    """root/<name 0>/<name 1>/.../<name levels-1>/deepest.txt, built one level at a time through
    directory descriptors (its full path may be longer than PATH_MAX). Returns the relative path of
    the deepest file."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    names = []
    try:
        for i in range(levels):
            name = name_format % i
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
            names.append(name)
        with os.fdopen(os.open("deepest.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(leaf)
    finally:
        os.close(fd)
    return "/".join(names + ["deepest.txt"])


def read_deep(root, rel):
    """The content of root/rel, opened one component at a time (rel may be longer than PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    parts = rel.split("/")
    try:
        for name in parts[:-1]:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with os.fdopen(os.open(parts[-1], os.O_RDONLY, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


class DeepTrees(FilesTestCase):
    """Trees of any depth whose paths fit the protocol (4096 bytes) are listed, fetched, sent and
    removed whole; a deeper path is an error with a non-zero status, never a silent gap; rm -r
    removes a tree of any depth."""

    def test_three_hundred_levels_both_ways(self):
        deepest = make_deep_tree(os.path.join(self.rshare, "deep"), 300, "d%03d")
        listed = self.json_ok("ls", "-R", self.rr("deep"))["entries"]
        names = [e["name"] for e in listed]
        self.assertTrue(deepest in names, f"the deepest file is not listed ({len(names)} entries)")
        self.assertEqual(len(listed), 301)
        self.ok("get", "-r", self.rr("deep"), self.lp("back"))
        self.assertEqual(read_deep(self.lp("back"), deepest), b"at the bottom\n")
        up_deepest = make_deep_tree(self.lp("up"), 300, "u%03d", leaf=b"sent up\n")
        self.ok("put", "-r", self.lp("up"), self.rr())
        self.assertEqual(read_deep(os.path.join(self.rshare, "up"), up_deepest), b"sent up\n")
        for tree in ("deep", "up"):
            self.ok("rm", "-r", self.rr(tree))
            self.assertFalse(os.path.exists(os.path.join(self.rshare, tree)))

    def test_paths_longer_than_the_protocol_allows_are_refused_loudly(self):
        # 500 levels of 9 bytes: the deepest paths pass 4096 bytes.
        make_deep_tree(os.path.join(self.rshare, "toodeep"), 500, "level%03d")
        r = self.cli("ls", "-R", self.rr("toodeep"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("longer than 4096 bytes, the longest path a client can name", r.stderr)
        r = self.cli("get", "-r", self.rr("toodeep"), self.lp("back"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("longer than 4096 bytes", r.stderr)
        make_deep_tree(self.lp("up"), 500, "level%03d")
        r = self.cli("put", "-r", self.lp("up"), self.rr())
        self.assertNotEqual(r.returncode, EXIT_OK)
        self.assertIn("would be longer than 4096 bytes, the longest a server takes", r.stderr)
        self.assert_no_parts(self.rshare, self.local)
        # Removal works at any depth: it needs no path.
        self.ok("rm", "-r", self.rr("toodeep"))
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "toodeep")))


# ---------------------------------------------------------------- 6. hostile paths

LEXICAL_HOSTILE = [
    "..", "../x", "../../etc/passwd", "a/../../x", "a/b/../../../x", "a/..", "a/../b", "./..", "..//x",
    "../cskit-e2e-escape", "/etc/passwd", "/", "//x", "/../x", "a//b", "a/b//", "a\0b", "\0", "x\x01y", "x\ny", "x\ty", "x\x1b[31mred",
    "x\x7f", "x\ry", "n" * 256, "é" * 128, "d/" + "n" * 256, ("d/" * 2048) + "x",
    PART_PREFIX + "0123456789abcdef", "sub/" + PART_PREFIX + "0123456789abcdef", PART_PREFIX + "x/y",
]


class HostilePaths(FilesTestCase):
    """The server refuses paths that leave the share (or that it reserves), and changes nothing."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tag = "cskit-e2e-hostile-" + uuid.uuid4().hex[:12]
        cls.outside = os.path.join(cls.tmp, "outside")
        write_file(os.path.join(cls.outside, "secret"), b"outside secret\n")
        write_file(os.path.join(cls.outside, "sub", "deeper"), b"deeper secret\n")
        share = cls.srv.share
        os.symlink("/etc", os.path.join(share, "evil"))
        os.symlink(cls.outside, os.path.join(share, "evo"))
        os.symlink(os.path.join(cls.outside, "secret"), os.path.join(share, "lnk-file"))
        rel = os.path.relpath(cls.outside, share)
        os.symlink(rel, os.path.join(share, "rel-out"))
        os.symlink("../..", os.path.join(share, "upl"))
        write_file(os.path.join(share, "victim"), b"victim\n")
        cls.etc_before = sorted(os.listdir("/etc"))

    def setUp(self):
        super().setUp()
        self.outside_before = snapshot(self.outside)

    def tearDown(self):
        self.assertEqual(snapshot(self.outside), self.outside_before, "something changed outside the share")
        self.assert_nothing_tagged()

    def assert_nothing_tagged(self):
        places = ["/etc", "/tmp", self.tmp, self.outside, os.path.dirname(self.srv.share),
                  os.path.dirname(os.path.dirname(self.srv.share))]
        for place in places:
            for n in os.listdir(place):
                self.assertNotIn(self.tag, n, f"created outside the share: {place}/{n}")
        for dirpath, dirnames, filenames in os.walk(self.outside):
            for n in dirnames + filenames:
                self.assertNotIn(self.tag, n)

    def client(self):
        return cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, timeout=20, fingerprint=self.srv.fingerprint)

    def digest_of(self, body):
        path = os.path.join(self.srv.share, "digest-" + uuid.uuid4().hex)
        write_file(path, body)
        try:
            with self.client() as c:
                h, b = c.request("get", path=os.path.basename(path))
            self.assertEqual(b, body)
            return h["xxh3"]
        finally:
            os.unlink(path)

    def raw_requests(self, path, body, digest):
        return [
            ("fs.stat", {"path": path}, b""),
            ("fs.list", {"path": path, "recursive": True}, b""),
            ("get", {"path": path}, b""),
            ("put", {"path": path, "inline": True, "size": len(body), "xxh3": digest}, body),
            ("put", {"path": path, "size": 300000, "resume": True}, b""),
            ("fs.mkdir", {"path": path, "parents": True}, b""),
            ("fs.mkdir", {"path": path}, b""),
            ("fs.rm", {"path": path, "recursive": True}, b""),
            ("fs.mv", {"from": "victim", "to": path}, b""),
            ("fs.mv", {"from": path, "to": "moved-" + self.tag}, b""),
            ("fs.symlink", {"path": path, "target": "victim"}, b""),
            ("fs.setattr", {"path": path, "mode": 0o777}, b""),
        ]

    def test_lexical_paths_refused_by_the_server(self):
        self.assertGreaterEqual(len(LEXICAL_HOSTILE), 30)
        share_before = snapshot(self.srv.share)
        payload = b"hostile " + self.tag.encode()
        digest = self.digest_of(payload)
        with self.client() as c:
            for path in LEXICAL_HOSTILE:
                for typ, fields, body in self.raw_requests(path, payload, digest):
                    with self.subTest(path=path[:60], request=typ):
                        with self.assertRaises(cskit_client.RemoteError) as cm:
                            c.request(typ, body, **fields)
                        self.assertEqual(cm.exception.code, "bad_path", cm.exception.message)
        self.assertEqual(snapshot(self.srv.share), share_before)

    def test_lexical_paths_refused_via_the_cli(self):
        write_file(self.lp("f"), b"f")
        share_before = snapshot(self.srv.share)
        for path in ["..", "../x", "a/../../x", "a//b", "x\x01y", "n" * 256, PART_PREFIX + "0123456789abcdef",
                     "../" + self.tag]:
            for args in (("stat", self.r(path)), ("ls", self.r(path)), ("mkdir", "-p", self.r(path)),
                         ("rm", "-r", self.r(path)), ("mv", self.r("victim"), self.r(path)),
                         ("put", self.lp("f"), self.r(path)), ("get", self.r(path), self.lp("out"))):
                with self.subTest(path=path[:40], cmd=args[0]):
                    r = self.cli(*args)
                    self.assertNotEqual(r.returncode, EXIT_OK, r.stdout)
                    # put and get check a path before anything is sent (a local
                    # failure); the reserved part-file prefix, and every path
                    # of the other commands, the server refuses.
                    refused_here = args[0] in ("put", "get") and not path.startswith(PART_PREFIX)
                    self.assertEqual(r.returncode, EXIT_LOCAL if refused_here else EXIT_REMOTE, r.stderr)
        self.assertEqual(snapshot(self.srv.share), share_before)
        self.assertFalse(os.path.lexists(self.lp("out")))

    def test_symlinks_planted_in_the_share(self):
        share_before = snapshot(self.srv.share)
        t = self.tag
        write_file(self.lp("f"), b"payload")
        refused = [
            ("get", self.r("evil/passwd"), self.lp("got")),
            ("get", self.r("evil/hostname"), "-"),
            ("get", self.r("evo/secret"), self.lp("got")),
            ("get", self.r("rel-out/secret"), self.lp("got")),
            ("get", self.r("lnk-file"), self.lp("got")),
            ("get", self.r("upl/" + os.path.basename(self.tmp) + "/outside/secret"), self.lp("got")),
            ("get", "-r", self.r("evo/sub"), self.lp("got")),
            ("stat", self.r("evil/passwd")),
            ("stat", self.r("evo/secret")),
            ("ls", self.r("evo/sub")),
            ("ls", self.r("evil/ssl")),
            ("put", self.lp("f"), self.r("evil/" + t)),
            ("put", self.lp("f"), self.r("evo/" + t)),
            ("put", self.lp("f"), self.r("evo/secret")),
            ("put", self.lp("f"), self.r("upl/" + t)),
            ("put", self.lp("f"), self.r("rel-out/" + t)),
            ("mkdir", "-p", self.r(f"evil/{t}/x")),
            ("mkdir", "-p", self.r(f"evo/{t}/x")),
            ("mkdir", self.r(f"evo/{t}")),
            ("mkdir", self.r(f"upl/{t}")),
            ("rm", self.r("evo/secret")),
            ("rm", "-r", self.r("evo/sub")),
            ("rm", self.r("evil/../..")),
            ("rm", "-r", self.r("upl/..")),
            ("mv", self.r("evo/secret"), self.r("stolen-" + t)),
            ("mv", self.r("evo/sub"), self.r("stolen-" + t)),
            ("mv", self.r("victim"), self.r(f"evo/{t}")),
            ("mv", self.r("victim"), self.r(f"evil/{t}")),
            ("mv", self.r("victim"), self.r(f"upl/{t}")),
        ]
        for args in refused:
            with self.subTest(args=" ".join(args[:-1] if args[0] in ("get", "put") else args)):
                r = self.cli(*args, binary=True)
                self.assertNotEqual(r.returncode, EXIT_OK, r.stdout[:200])
                self.assertNotIn(b"root:", r.stdout)
                self.assertNotIn(b"secret", r.stdout)
        self.assertFalse(os.path.lexists(self.lp("got")))
        # Listing a link shows the link, never what is behind it.
        for link in ("evil", "evil/", "evo", "upl"):
            with self.subTest(ls=link):
                j = self.json_ok("ls", "-R", self.r(link))
                self.assertEqual([(e["name"], e["type"]) for e in j["entries"]], [(link.rstrip("/"), "symlink")])
        listed = self.json_ok("ls", "-R", self.r())["entries"]
        self.assertFalse([e for e in listed if "/" in e["name"] and e["name"].split("/")[0] in
                          ("evil", "evo", "upl", "rel-out")], listed)
        self.assertEqual(snapshot(self.srv.share), share_before)
        # Raw requests that the CLI does not make.
        with self.client() as c:
            for typ, fields in [("fs.setattr", {"path": "evo/secret", "mode": 0o777}),
                                ("fs.setattr", {"path": "evil/passwd", "mtime_ns": 0}),
                                ("fs.symlink", {"path": f"evo/{t}", "target": "x"}),
                                ("fs.symlink", {"path": f"upl/{t}", "target": "x"}),
                                ("put", {"path": f"evo/{t}", "size": 300000, "resume": True}),
                                ("fs.list", {"path": "evo/sub", "recursive": True}),
                                ("get", {"path": "lnk-file"})]:
                with self.subTest(raw=typ, path=fields["path"]):
                    with self.assertRaises(cskit_client.RemoteError):
                        c.request(typ, **fields)
            # On the link itself: a no-op at most (tearDown checks that the target kept its mode).
            try:
                c.request("fs.setattr", path="lnk-file", mode=0o777, mtime_ns=0)
            except cskit_client.RemoteError:
                pass
        self.assertEqual(snapshot(self.srv.share), share_before)
        # get -r of the share: the links that point outside are not recreated locally.
        r = self.cli("get", "-r", self.r(), self.lp("whole"))
        self.assertNotEqual(r.returncode, EXIT_OK)
        for dirpath, dirnames, filenames in os.walk(self.lp("whole")):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    self.assertTrue(resolves_inside(p, self.lp("whole")), f"{p} -> {os.readlink(p)}")

    def test_put_replaces_a_link_instead_of_writing_through_it(self):
        os.symlink(os.path.join(self.outside, "secret"), os.path.join(self.rshare, "through"))
        write_file(self.lp("f"), b"replacement")
        write_file(self.lp("big"), random_bytes(400000))
        self.ok("put", self.lp("f"), self.rr("through"))
        self.assertFalse(os.path.islink(os.path.join(self.rshare, "through")))
        self.assertEqual(read_file(os.path.join(self.rshare, "through")), b"replacement")
        os.unlink(os.path.join(self.rshare, "through"))
        os.symlink(os.path.join(self.outside, "secret"), os.path.join(self.rshare, "through"))
        self.ok("put", self.lp("big"), self.rr("through"))
        self.assertFalse(os.path.islink(os.path.join(self.rshare, "through")))
        # rm -r of a link to a directory removes the link only.
        os.symlink(self.outside, os.path.join(self.rshare, "dirlink"))
        self.ok("rm", "-r", self.rr("dirlink/"))
        self.assertFalse(os.path.lexists(os.path.join(self.rshare, "dirlink")))
        os.symlink(self.outside, os.path.join(self.rshare, "dirlink"))
        self.ok("rm", "-r", self.rr("dirlink"))
        self.assertFalse(os.path.lexists(os.path.join(self.rshare, "dirlink")))

    def test_symlink_targets_outside_refused(self):
        # Into the share's root, so that '../../x' from tree/ leaves the share.
        tname = "tree-" + uuid.uuid4().hex[:8]
        tree = self.lp(tname)
        write_file(os.path.join(tree, "ok.txt"), b"fine")
        os.symlink("/etc/passwd", os.path.join(tree, "abs"))
        os.symlink("/", os.path.join(tree, "root"))
        os.symlink("../../" + self.tag, os.path.join(tree, "up2"))
        os.makedirs(os.path.join(tree, "sub"))
        os.symlink("../../../" + self.tag, os.path.join(tree, "sub", "up3"))
        os.symlink("../ok.txt", os.path.join(tree, "sub", "fine-link"))
        r = self.cli("put", "-r", "--json", tree, self.r())
        self.assertEqual(r.returncode, EXIT_REMOTE, r.stderr)
        j = json.loads(r.stdout)
        self.assertEqual(j["symlinks"], 1)
        self.assertEqual({e["code"] for e in j["errors"]}, {"bad_path"})
        self.assertEqual(len(j["errors"]), 4, j["errors"])
        remote = os.path.join(self.srv.share, tname)
        self.assertEqual(read_file(os.path.join(remote, "ok.txt")), b"fine")
        self.assertEqual(os.readlink(os.path.join(remote, "sub", "fine-link")), "../ok.txt")
        for n in ("abs", "root", "up2", "sub/up3"):
            self.assertFalse(os.path.lexists(os.path.join(remote, n)), n)
        # The same targets in raw requests, at the share's root too.
        with self.client() as c:
            for path, target in [("l1", "/etc/passwd"), ("l2", "../x"), ("l3", ".."), ("d/l4", "../../x"),
                                 ("l5", "a/../../x"), ("l6", "/"), (f"{self.rdir}/l7", "../../" + self.tag),
                                 ("l8", "x\0y"), ("l9", "a" * 5000)]:
                with self.subTest(path=path, target=target[:20]):
                    with self.assertRaises(cskit_client.RemoteError) as cm:
                        c.request("fs.symlink", path=path, target=target)
                    self.assertIn(cm.exception.code, ("bad_path", "not_found", "bad_request"))
                    self.assertFalse(os.path.lexists(os.path.join(self.srv.share, path)))
        self.assert_no_parts(self.srv.share)

    def test_chained_symlink_target_resolving_outside_refused(self):
        """T -> '..' is inside; U -> 'T/../..' looks inside lexically but resolves outside the share."""
        tree = self.lp("trick")
        os.makedirs(tree)
        os.symlink("..", os.path.join(tree, "T"))
        os.symlink("T/../..", os.path.join(tree, "U"))
        self.cli("put", "-r", tree, self.rr())
        remote = os.path.join(self.rshare, "trick")
        try:
            for n in os.listdir(remote):
                p = os.path.join(remote, n)
                self.assertTrue(resolves_inside(p, self.srv.share),
                                f"the server created {p} -> {os.readlink(p)}, which resolves to "
                                f"{os.path.realpath(p)}, outside the share")
        finally:
            shutil.rmtree(remote, ignore_errors=True)

    def test_escape_reported_as_bad_path(self):
        """A path that leads outside through a link is bad_path (7) with the server's own message."""
        for args in (("stat", self.r("evo/secret")), ("get", self.r("evil/passwd"), self.lp("x")),
                     ("rm", self.r("evo/secret")), ("mkdir", self.r("evo/" + self.tag))):
            with self.subTest(cmd=args[0]):
                r = self.cli(*args)
                self.assertIn("leads outside the share", r.stderr)
                self.assertEqual(r.returncode, EXIT_REMOTE, r.stderr)
                self.assertIn("[bad_path]", r.stderr)

    def test_fifo_in_the_share_does_not_block_the_server(self):
        with Server() as srv:
            os.mkfifo(os.path.join(srv.share, "fifo"))
            env = dict(srv.env, CSKIT_TOKEN=TOKEN)
            try:
                for args in (("ls", f"{srv.address}:fifo"), ("get", f"{srv.address}:fifo", self.lp("fifo-out")),
                             ("stat", f"{srv.address}:fifo"), ("ls", "-R", f"{srv.address}:")):
                    with self.subTest(args=args):
                        try:
                            r = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=10)
                        except subprocess.TimeoutExpired:
                            self.fail(f"cskit {' '.join(args)} hung: the server blocked on the FIFO")
                        self.assertIn(r.returncode, (EXIT_OK, EXIT_REMOTE), r.stderr)
                r = subprocess.run([BIN, "stat", f"{srv.address}:"], env=env, capture_output=True, timeout=10)
                self.assertEqual(r.returncode, EXIT_OK)
            finally:
                # Unblock a server thread stuck in open(2) on the FIFO.
                try:
                    os.close(os.open(os.path.join(srv.share, "fifo"), os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass
            self.assertFalse(os.path.exists(self.lp("fifo-out")))


# ---------------------------------------------------------------- 6b. a malicious server

class FakeFileServer:
    """Speaks the handshake and answers fs.stat / fs.list / get from tables, to test the client."""

    def __init__(self, stats, listing, files, identity=None):
        self.stats, self.listing, self.files = stats, listing, files
        self.requests = []
        self.own_identity = identity is None
        self.identity = identity or tlswire.Identity()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                try:
                    self.serve(conn)
                except (OSError, EOFError, ValueError, KeyError):
                    pass

    def serve(self, conn):
        conn, _ = wire.fake_server_login(conn, self.identity, TOKEN)
        while not self.stop.is_set():
            h, _ = wire.read_frame(conn, 30)
            self.requests.append(h)
            t, rid = h["type"], h.get("id")
            if t == "ping":
                conn.sendall(wire.encode({"type": "pong", "id": rid}))
            elif t == "fs.stat" and h.get("path") in self.stats:
                conn.sendall(wire.encode({"type": "fs.stat.reply", "id": rid, "entry": self.stats[h["path"]]}))
            elif t == "fs.list" and h.get("path") in self.stats:
                body = json.dumps(self.listing).encode()
                conn.sendall(wire.encode({"type": "fs.list.reply", "id": rid, "count": len(self.listing),
                                          "done": True, "skipped": 0}, body))
            elif t == "get" and callable(self.files.get(h.get("path"))):
                self.files[h["path"]](conn, rid)
            elif t == "get" and h.get("path") in self.files:
                header, body = self.files[h["path"]]
                conn.sendall(wire.encode(dict(header, id=rid), body))
            elif t == "get":
                header, body = self.files["*"]  # anything else: a plausible file, to see if it is written
                conn.sendall(wire.encode(dict(header, id=rid), body))
            else:
                conn.sendall(wire.encode({"type": "error", "id": rid, "code": "not_found",
                                          "message": "no such file or directory"}))

    def trust_args(self):
        """What a client needs to trust this server's throwaway key."""
        return ["--fingerprint", self.identity.fingerprint]

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=10)
        if self.own_identity:
            self.identity.cleanup()


def F(name, bad=False):
    return {"name": name, "type": "file", "size": 6, "mode": 0o644, "mtime_ns": 10 ** 18, "bad": bad}


def D(name, bad=False):
    return {"name": name, "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 10 ** 18, "bad": bad}


def L(name, target, bad=False):
    return {"name": name, "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": target, "bad": bad}


# Listings a lying server sends for `get -r`: links to "..", absolute links, chains, links later
# replaced by directories, names that collide once normalised, files under links, entries listed
# twice with different types. `bad` marks the entries that must be refused (and reported).
HOSTILE_LISTINGS = [
    [L("up", "..", True), F("up/evil", True)],
    [L("up", "../..", True), F("up/evil", True)],
    [L("up3", "../../..", True), D("up3/x", True), F("up3/x/evil", True)],
    [L("abs", "/tmp", True), F("abs/evil", True)],
    [L("root", "/", True), F("root/etc/evil", True)],
    [L("a", "b"), L("b", "..", True), F("a/evil", True)],
    [L("a", "b"), L("b", "c"), L("c", "..", True), F("a/evil", True)],
    [D("sub"), L("sub/up", "../..", True), F("sub/up/evil", True)],
    [D("sub"), L("sub/up", ".."), F("sub/up/evil", True)],
    [L("x", "..", True), D("x")],
    [D("x"), L("x", "..", True)],
    [F("x", True), D("x")],
    [D("x"), F("x", True)],
    [F("x"), L("x", "..", True)],
    [L("x", "../sentinel", True)],
    [D("sub"), L("x", "sub/../../sentinel", True)],
    [L("x", "./../sentinel", True)],
    [L("x", "../dest/../sentinel", True)],
    [F("../evil", True)],
    [F("a/../../evil", True)],
    [F("/abs", True)],
    [D("../escape", True)],
    [D("sub"), F("sub/../../evil", True)],
    [F("a//b", True)],
    [F("./a", True)],
    [F("a/.", True)],
    [F("", True)],
    [F(".", True)],
    [F("..", True)],
    [L("l", "/etc/passwd", True), F("l")],
    [L("l", ".."), L("l/x", "..", True)],
    [L("l", "."), F("l/l/l/evil", True)],
    [L("l", "l"), F("l/evil", True)],
    [D("sub"), L("dir", "sub"), F("dir/f", True)],
    [F(".cskit-part.x", True)],
    [D("sub"), F("sub/.cskit-part.y", True)],
    [F("name\u0000nul", True)],
    [F("ctl\u001b[2Jname", True)],
    [F("nl\nname", True)],
    [F("n" * 300, True)],
    [F("a/" * 2100 + "f", True)],
    [D("deep/../..", True)],
    [L("x", "../" * 10, True)],
    [D("sub"), L("x", "sub/../../../etc", True)],
    [D("twice"), F("twice/f"), F("twice", True)],
    [F("up/evil", True), L("up", "..", True)],
    [D("d"), L("d/x", "../../sentinel", True)],
    [L("sib", "../sibling", True), F("sib/evil", True)],
    [L("tmp", "/tmp", True), D("tmp/sub", True)],
    [D("same/"), F("same", True)],
    [L("a", "b/c"), D("b"), L("b/c", "../..", True), F("a/evil", True)],
    [L("x", "..//..", True), F("x/evil", True)],
    [D("sub"), L("sub/l", "../../sentinel", True), F("sub/l", True)],
    [L("self", "self/..", True), F("self/evil", True)],
    [D("a"), D("a/b"), L("a/b/c", "../../../sentinel", True), F("a/b/c/evil", True)],
]


class HostileListings(FilesTestCase):
    """A server that lies in its listings never makes `get -r` write outside the destination:
    everything stays beneath the tree's own root, a link it sends is never followed, each refusal
    is reported, and the exit status is not 0 (docs/protocol.md, "Download")."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.identity = tlswire.Identity()

    @classmethod
    def tearDownClass(cls):
        cls.identity.cleanup()
        super().tearDownClass()

    def run_listing(self, i, listing, new_name):
        stats = {"root": {"name": "root", "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 10 ** 18}}
        wire_listing = [{k: v for k, v in e.items() if k != "bad"} for e in listing]
        body = (b"EVIL!\n")
        files = {"*": ({"type": "get.file", "size": len(body), "mode": 0o644, "mtime_ns": 10 ** 18,
                        "xxh3": self.evil_xxh3}, body)}
        fake = FakeFileServer(stats, wire_listing, files, identity=self.identity)
        parent = self.lp(f"case{i}-{'new' if new_name else 'existing'}")
        dest = os.path.join(parent, "dest")
        os.makedirs(os.path.join(parent, "sibling"))
        write_file(os.path.join(parent, "sentinel"), b"keep\n")
        if not new_name:
            os.makedirs(dest)
        before = snapshot(parent)
        try:
            r = subprocess.run([BIN, "get", "-r", *fake.trust_args(), f"127.0.0.1:{fake.port}:root", dest],
                               capture_output=True, text=True, env=self.env(), timeout=60)
        finally:
            fake.close()
        after = snapshot(parent)
        outside = {k: v for k, v in after.items() if k != "dest" and not k.startswith("dest/")}
        self.assertEqual(outside, {k: v for k, v in before.items() if k != "dest" and not k.startswith("dest/")},
                         f"listing {i}: the client wrote outside the destination")
        tree = dest if new_name else os.path.join(dest, "root")
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    self.assertTrue(resolves_inside(p, tree), f"listing {i}: {p} -> {os.readlink(p)}")
                elif os.path.isfile(p):
                    # Only files the listing names, where it names them: none through a link.
                    rel = os.path.relpath(p, tree)
                    if new_name and rel == ".cskit-part.tree":  # the client's own mark: an unfinished copy
                        self.assertEqual(read_file(p), b"root")
                        continue
                    self.assertIn(rel, [e["name"].rstrip("/") for e in listing if e["type"] == "file"],
                                  f"listing {i}: unexpected file {rel}")
        self.assertNotEqual(r.returncode, EXIT_OK, f"listing {i} ({'new' if new_name else 'existing'}): {r.stderr}")
        for e in listing:
            name = e["name"].rstrip("/")
            if e["bad"] and name and name.isprintable() and len(name) < 200:
                self.assertIn(name, r.stderr, f"listing {i}: the refusal of {e['name']!r} is not reported")
        # No part is left; the copy under a new name keeps its mark (it did not finish).
        self.assertEqual([p for p in part_files(parent) if not (new_name and p == os.path.join(dest, ".cskit-part.tree"))],
                         [])

    def test_corpus_into_a_new_name_and_into_an_existing_directory(self):
        self.assertGreaterEqual(len(HOSTILE_LISTINGS), 50)
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                         fingerprint=self.srv.fingerprint) as c:
            write_file(os.path.join(self.srv.share, "evil.txt"), b"EVIL!\n")
            self.evil_xxh3 = c.request("get", path="evil.txt")[0]["xxh3"]
        for i, listing in enumerate(HOSTILE_LISTINGS):
            for new_name in (True, False):
                with self.subTest(listing=i, new_name=new_name):
                    self.run_listing(i, listing, new_name)


class ClientRefusesHostileServer(FilesTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Genuine get.file replies (with their XXH3 digests) from the real server.
        write_file(os.path.join(cls.srv.share, "good.txt"), b"good content\n")
        write_file(os.path.join(cls.srv.share, "pwned"), b"PWNED\n")
        with cskit_client.Client.connect("127.0.0.1", cls.srv.port, "admin", TOKEN, fingerprint=cls.srv.fingerprint) as c:
            cls.good = c.request("get", path="good.txt")
            cls.pwned = c.request("get", path="pwned")

    def file_entry(self, name, size=6, mode=0o644):
        return {"name": name, "type": "file", "size": size, "mode": mode, "mtime_ns": 10 ** 18}

    def run_get(self, listing, *flags, new_name=False, replies=None):
        stats = {"root": {"name": "root", "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 10 ** 18}}
        good_header = dict(self.good[0], mode=0o4755)
        files = {"root/good.txt": (good_header, self.good[1]), "*": self.pwned, **(replies or {})}
        fake = FakeFileServer(stats, listing, files)
        parent = self.lp("parent")
        dest = os.path.join(parent, "dest")
        if not new_name:
            os.makedirs(dest)
        write_file(os.path.join(parent, "sentinel"), b"keep\n")
        before = snapshot(parent)
        try:
            r = subprocess.run([BIN, "get", "-r", *flags, *fake.trust_args(), f"127.0.0.1:{fake.port}:root", dest],
                               capture_output=True, text=True, env=self.env(), timeout=60)
        finally:
            fake.close()
        after = snapshot(parent)
        outside_before = {k: v for k, v in before.items() if k != "dest" and not k.startswith("dest/")}
        outside_after = {k: v for k, v in after.items() if k != "dest" and not k.startswith("dest/")}
        self.assertEqual(outside_after, outside_before, "the client wrote outside the destination")
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    self.assertTrue(resolves_inside(p, dest),
                                    f"the client created {p} -> {os.readlink(p)} (resolves to {os.path.realpath(p)})")
        return r, dest, fake

    def test_small_files_that_come_in_pieces_or_corrupt(self):
        """Files listed at up to 256 KiB are expected whole (get.file) and written to unnamed files.
        One that comes in pieces after all (get.begin, get.data, get.end) arrives all the same; one
        whose content does not match its digest is not committed; the others arrive, and nothing
        else is left in the destination."""
        good_h, good_b = self.good

        def in_pieces(conn, rid):
            conn.sendall(wire.encode({"type": "get.begin", "id": rid, "size": len(good_b), "offset": 0,
                                      "mode": 0o644, "mtime_ns": 10 ** 18}))
            conn.sendall(wire.encode({"type": "get.data", "id": rid}, good_b[:5]))
            conn.sendall(wire.encode({"type": "get.data", "id": rid}, good_b[5:]))
            conn.sendall(wire.encode({"type": "get.end", "id": rid, "size": len(good_b), "xxh3": good_h["xxh3"]}))

        names = [f"f{i:02d}" for i in range(12)]
        listing = [self.file_entry(n, size=len(good_b)) for n in names + ["pieces", "corrupt"]]
        replies = {f"root/{n}": (good_h, good_b) for n in names}
        replies["root/pieces"] = in_pieces
        replies["root/corrupt"] = (good_h, b"X" + good_b[1:])
        r, dest, _ = self.run_get(listing, replies=replies)
        self.assertEqual(r.returncode, EXIT_INTEGRITY, r.stderr)
        self.assertIn("corrupt: content digest mismatch", r.stderr)
        self.assertEqual(sorted(os.listdir(os.path.join(dest, "root"))), sorted(names + ["pieces"]))
        for n in names + ["pieces"]:
            self.assertEqual(read_file(os.path.join(dest, "root", n)), good_b, n)

    def test_hostile_names_from_the_server(self):
        hostile = [
            self.file_entry("../evil"), self.file_entry("../../evil2"), self.file_entry("/abs"),
            self.file_entry("/tmp/" + "cskit-abs-" + uuid.uuid4().hex), self.file_entry("a/../../x"),
            {"name": "sub", "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 10 ** 18},
            self.file_entry("sub/../../../y"), self.file_entry("sub/../../z"),
            {"name": "lnk", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": "/etc"},
            self.file_entry("lnk/passwd"),
            {"name": "up", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": "../../.."},
            self.file_entry("up/x"),
            {"name": "sub/l", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0,
             "target": "../../../sentinel"},
            {"name": "tmp", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": "/tmp"},
            {"name": "..", "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 0},
            {"name": "../escape-dir", "type": "dir", "size": 0, "mode": 0o755, "mtime_ns": 0},
            self.file_entry(PART_PREFIX + "0123456789abcdef"), self.file_entry("sub/" + PART_PREFIX + "x"),
            self.file_entry("ctl\x1b[2Jname"), self.file_entry("nl\nname"), self.file_entry(""),
            self.file_entry("a//b"), self.file_entry("a/."), self.file_entry("n" * 300),
        ]
        # setuid in the listing: -p must not carry it over.
        listing = [self.file_entry("good.txt", size=len(self.good[1]), mode=0o4755)] + hostile
        r, dest, fake = self.run_get(listing, "-p")
        self.assertEqual(r.returncode, EXIT_REMOTE, r.stderr)
        self.assertIn("refused a name from the server", r.stderr)
        # Only the good file and the good directory arrived; the setuid bit did not.
        got = snapshot(dest)
        self.assertEqual(set(got), {"root", "root/good.txt", "root/sub"}, got.keys())
        self.assertEqual(read_file(os.path.join(dest, "root", "good.txt")), b"good content\n")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(dest, "root", "good.txt")).st_mode), 0o755)
        self.assertNotIn("\x1b", r.stderr)  # control characters are shown escaped
        self.assertEqual(part_files(self.lp("parent")), [])

    def test_tampered_content_is_not_committed(self):
        """Bytes that do not match the server's digest: exit 11, nothing under the name, no part left."""
        good_header, good_body = self.good

        def streamed(conn, rid):
            size = 5 * MiB
            conn.sendall(wire.encode({"type": "get.begin", "id": rid, "size": size, "offset": 0, "mode": 0o644,
                                      "mtime_ns": 10 ** 18}))
            for _ in range(5):
                conn.sendall(wire.encode({"type": "get.data", "id": rid}, random_bytes(MiB)))
            conn.sendall(wire.encode({"type": "get.end", "id": rid, "size": size, "xxh3": "0" * 32}))

        stats = {n: self.file_entry(n, size=s) for n, s in (("small", len(good_body)), ("big", 5 * MiB))}
        files = {"small": (good_header, b"tampered body"), "big": streamed}
        for name in ("small", "big"):
            with self.subTest(name=name):
                fake = FakeFileServer(stats, [], files)
                try:
                    r = subprocess.run([BIN, "get", *fake.trust_args(), f"127.0.0.1:{fake.port}:{name}",
                                        self.lp(name)], capture_output=True, text=True, env=self.env(), timeout=60)
                finally:
                    fake.close()
                self.assertEqual(r.returncode, EXIT_INTEGRITY, r.stderr)
                self.assertIn("digest mismatch", r.stderr)
                self.assertFalse(os.path.lexists(self.lp(name)))
                self.assertEqual(part_files(self.local), [])

    def test_entry_named_dot_from_the_server(self):
        """'.' and './' are the listed directory itself, not an entry: nothing may be written for them
        (the client used to write the server's bytes into a part file beside the destination)."""
        for name in (".", "./"):
            with self.subTest(name=name):
                shutil.rmtree(self.lp("parent"), ignore_errors=True)
                r, dest, fake = self.run_get([self.file_entry(name)], new_name=True)
                self.assertNotEqual(r.returncode, EXIT_OK)
                self.assertEqual([h["path"] for h in fake.requests if h["type"] == "get"], [],
                                 "the client asked for the listed directory as a file")

    def test_chained_symlink_from_the_server_resolving_outside(self):
        """T -> '..' points at the destination; U -> 'T/../..' then resolves outside it."""
        listing = [
            {"name": "T", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": ".."},
            {"name": "U", "type": "symlink", "size": 0, "mode": 0o777, "mtime_ns": 0, "target": "T/../.."},
            self.file_entry("U/planted"),
        ]
        r, dest, fake = self.run_get(listing)
        self.assertFalse(os.path.lexists(os.path.join(self.lp("parent"), "planted")))


# ---------------------------------------------------------------- 7. interruptions

class TransferWatch(threading.Thread):
    """Samples the part file(s) in one directory and the final name, until stopped.

    Records every part size seen (a resumed transfer never shrinks its part) and
    every size seen under the final name that is not the complete size."""

    def __init__(self, directory, final, full_size):
        super().__init__(daemon=True)
        self.directory, self.final, self.full_size = directory, final, full_size
        self.sizes = []
        self.partial_finals = []
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + 600
        while not self.halt.is_set() and time.monotonic() < deadline:
            s = part_size(self.directory)
            if s >= 0 and (not self.sizes or self.sizes[-1] != s):
                self.sizes.append(s)
            try:
                fs = os.path.getsize(self.final)
                if fs != self.full_size:
                    self.partial_finals.append(fs)
            except OSError:
                pass
            time.sleep(0.001)

    def finish(self):
        self.halt.set()
        self.join(timeout=10)

    def shrank(self):
        return [(a, b) for a, b in zip(self.sizes, self.sizes[1:]) if b < a]


class Interruptions(FilesTestCase):
    """Each test has its own server (it is killed and restarted, and must not take the others down)."""
    SIZE = 200 * MiB

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cskit-files-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.srv = Server()
        self.addCleanup(self.srv.cleanup)
        self.addCleanup(self.srv.stop)
        super().setUp()

    def assert_server_alive(self, what):
        rc = self.srv.proc.poll()
        if rc is not None:
            how = f"killed by signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exit {rc}"
            self.fail(f"the server died ({how}) {what}")

    def start(self, *args):
        return subprocess.Popen([BIN, *args], env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run_and_interrupt(self, args, watch_dir, threshold, victim):
        """Runs `cskit ARGS`; once the part file in watch_dir has `threshold` bytes, SIGKILLs the
        client, or the server (which is then restarted on the same port and share)."""
        p = self.start(*args)
        killed = False
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and p.poll() is None:
                if part_size(watch_dir) >= threshold:
                    if victim == "client":
                        os.kill(p.pid, signal.SIGKILL)
                    else:
                        self.srv.restart(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.001)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        self.assertTrue(killed, f"the transfer ended before its part reached {threshold} bytes: "
                                f"rc {p.returncode} {err!r}")
        if victim == "client":
            self.assertEqual(p.returncode, -signal.SIGKILL)
            time.sleep(0.1)
            self.assert_server_alive(f"when a client of `cskit {args[0]}` was killed")
            # The server closes the upload (and unlocks its part) when it sees the connection go.
            self.assertTrue(wait_until(lambda: not server_holds_a_part(self.srv.proc.pid), 20))
        else:
            if p.returncode < 0:
                self.fail(f"`cskit {args[0]}` died of signal {-p.returncode} "
                          f"({signal.Signals(-p.returncode).name}) when the server went away; "
                          f"expected exit {EXIT_CONNECT}")
            self.assertEqual(p.returncode, EXIT_CONNECT, err)
        return p.returncode

    def interrupted_transfer(self, direction, victim, thresholds):
        src = self.lp("src.bin") if direction == "put" else os.path.join(self.rshare, "src.bin")
        want = write_big(src, self.SIZE)
        if direction == "put":
            args = ["put", "--json", src, self.rr("dst.bin")]
            watch_dir, final = self.rshare, os.path.join(self.rshare, "dst.bin")
        else:
            args = ["get", "--json", self.rr("src.bin"), self.lp("dst.bin")]
            watch_dir, final = self.local, self.lp("dst.bin")
        watch = TransferWatch(watch_dir, final, self.SIZE)
        watch.start()
        try:
            for threshold in thresholds:
                self.run_and_interrupt(args, watch_dir, threshold, victim)
                self.assertFalse(os.path.exists(final), "the final name exists after an interruption")
                self.assertGreaterEqual(part_size(watch_dir), threshold, "the part file was not kept")
            r = self.ok(*args, timeout=300)
        finally:
            watch.finish()
        j = json.loads(r.stdout)
        self.assertGreaterEqual(j["resumed_bytes"], thresholds[-1])
        self.assertLess(j["resumed_bytes"], self.SIZE + 1)
        self.assertEqual(j["bytes"], self.SIZE)
        self.assertEqual(sha256_file(final), want)
        self.assertEqual(watch.partial_finals, [], "a partial file appeared under the final name")
        self.assertEqual(watch.shrank(), [], "a part file shrank: a transfer started over instead of resuming")
        self.assert_no_parts(self.rshare, self.local)

    def kill_when(self, args, ready):
        """Runs `cskit ARGS` and SIGKILLs it once ready() is true; fails if it ended first."""
        p = self.start(*args)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and p.poll() is None and not ready():
                time.sleep(0.001)
            self.assertIsNone(p.poll(), "the transfer ended before it could be interrupted")
            os.kill(p.pid, signal.SIGKILL)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)

    def test_killed_tree_copies_under_a_new_name_continue_when_run_again(self):
        src = self.lp("t")
        block = os.urandom(MiB)
        for i in range(64):
            os.makedirs(os.path.join(src, f"d{i % 4}"), exist_ok=True)
            write_big(os.path.join(src, f"d{i % 4}", f"f{i:02}"), 4 * MiB, block)

        def files_below(root):
            return sum(len(files) for _, _, files in os.walk(root))

        dest = os.path.join(self.rshare, "copy")
        self.kill_when(["put", "-r", src, self.rr("copy")], lambda: files_below(dest) >= 3)
        self.assertTrue(wait_until(lambda: not server_holds_a_part(self.srv.proc.pid), 20))
        self.ok("put", "-r", src, self.rr("copy"), timeout=300)
        self.assertEqual(digest_snapshot(src), digest_snapshot(dest))  # not copy/t, no mark, no part left
        back = self.lp("back")
        self.kill_when(["get", "-r", self.rr("copy"), back], lambda: files_below(back) >= 3)
        self.ok("get", "-r", self.rr("copy"), back, timeout=300)
        self.assertEqual(digest_snapshot(src), digest_snapshot(back))

    def test_a_resumed_transfer_says_so_on_a_terminal(self):
        write_big(os.path.join(self.rshare, "src.bin"), self.SIZE)
        args = ["get", self.rr("src.bin"), self.lp("dst.bin")]
        self.run_and_interrupt(args, self.local, 64 * MiB, "client")
        rc, out = run_on_pty(self.env(), *args, timeout=300)
        self.assertEqual(rc, EXIT_OK, out)
        self.assertRegex(out, r"dst\.bin  +\d+%  [\d.]+ MiB / 200\.0 MiB  .*  \(resumed [\d.]+ MiB\)")
        self.assertRegex(out, r"\r\x1b\[Kdst\.bin  100%  200\.0 MiB  .*  \([\d.]+ MiB resumed\)\r\n$")

    def test_server_survives_clients_killed_during_downloads(self):
        """A downloading client that disappears (its kernel resets the connection) must not take the
        server with it. (The server's sendfile() to a reset socket raised SIGPIPE, which it does not ignore.)"""
        write_big(os.path.join(self.rshare, "dl.bin"), 64 * MiB)
        for i in range(20):
            s, _ = wire.login(self.srv.port, TOKEN)
            try:
                s.sendall(wire.encode({"type": "get", "id": 7, "path": f"{self.rdir}/dl.bin"}))
                got, want = 0, (i % 8 + 1) * 256 * 1024
                s.settimeout(20)
                while got < want:
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "the server closed the connection")
                    got += len(chunk)
                # What the kernel does for a killed client with unread data: a reset.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                s.close()
            time.sleep(0.05)
            self.assert_server_alive(f"after a client reset its connection during a download (attempt {i + 1})")
        # And killed CLI clients, at a few points.
        for i, threshold in enumerate((1, 20, 47)):
            p = self.start("get", self.rr("dl.bin"), self.lp(f"dl{i}.bin"))
            kill_when(p, lambda: part_size(self.local) >= threshold * MiB, step=0.001)
            time.sleep(0.1)
            self.assert_server_alive(f"after a `cskit get` was killed {threshold} MiB into a download")
            for f in glob.glob(os.path.join(glob.escape(self.local), PART_PREFIX + "*")):
                os.unlink(f)
        self.ok("get", self.rr("dl.bin"), self.lp("final.bin"))
        self.assertEqual(os.path.getsize(self.lp("final.bin")), 64 * MiB)

    def test_put_client_killed_three_times(self):
        self.interrupted_transfer("put", "client", [30 * MiB, 80 * MiB, 130 * MiB])

    def test_get_client_killed_three_times(self):
        self.interrupted_transfer("get", "client", [30 * MiB, 80 * MiB, 130 * MiB])

    def test_put_server_killed_twice(self):
        self.interrupted_transfer("put", "server", [40 * MiB, 110 * MiB])

    def test_get_server_killed_twice(self):
        self.interrupted_transfer("get", "server", [40 * MiB, 110 * MiB])

    def changed_between_attempts(self, direction, change):
        if direction == "put":
            src = self.lp("src.bin")
            args = ["put", "--json", src, self.rr("dst.bin")]
            watch_dir, final = self.rshare, os.path.join(self.rshare, "dst.bin")
        else:
            src = os.path.join(self.rshare, "src.bin")
            args = ["get", "--json", self.rr("src.bin"), self.lp("dst.bin")]
            watch_dir, final = self.local, self.lp("dst.bin")
        write_big(src, self.SIZE)
        self.run_and_interrupt(args, watch_dir, 100 * MiB, "client")
        new = change(src)
        r = self.ok(*args, timeout=300)
        j = json.loads(r.stdout)
        self.assertEqual(j["resumed_bytes"], 0, "resumed from a part of the old content")
        self.assertEqual(j["bytes"], len(new))
        self.assertEqual(os.path.getsize(final), len(new))
        self.assertTrue(read_file(final) == new, "the result is not the new source")
        self.assert_no_parts(self.rshare, self.local)

    @staticmethod
    def flip_early_bytes(path):
        with open(path, "r+b") as f:
            f.seek(1000)
            old = f.read(16)
            f.seek(1000)
            f.write(bytes(b ^ 0xFF for b in old))
        return read_file(path)

    @staticmethod
    def replace_with_smaller(path):
        new = os.urandom(50 * MiB)
        write_file(path + ".new", new)
        os.rename(path + ".new", path)
        return new

    def test_put_source_changed_between_attempts(self):
        self.changed_between_attempts("put", self.flip_early_bytes)

    def test_get_source_changed_between_attempts(self):
        self.changed_between_attempts("get", self.flip_early_bytes)

    def test_put_source_shrank_between_attempts(self):
        self.changed_between_attempts("put", self.replace_with_smaller)

    def test_get_source_shrank_between_attempts(self):
        """The leftover local part (100+ MiB) is longer than the new remote file (50 MiB)."""
        self.changed_between_attempts("get", self.replace_with_smaller)

    def test_source_changing_during_put(self):
        src = self.lp("moving.bin")
        write_big(src, 64 * MiB)
        p = self.start("put", src, self.rr("moving.bin"))
        try:
            wait_until(lambda: part_size(self.rshare) > 0 or p.poll() is not None, 30, 0.001)
            with open(src, "ab") as f:
                f.write(b"more")
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if p.returncode == EXIT_OK:  # (it may have finished first)
            self.assertEqual(os.path.getsize(os.path.join(self.rshare, "moving.bin")), 64 * MiB)
        else:
            self.assertEqual(p.returncode, EXIT_CHANGED, err)
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "moving.bin")))


class ClientSurvivesServerLoss(unittest.TestCase):
    """`cskit put` whose server resets the connection mid-upload exits 3, never dies of SIGPIPE."""

    def resetting_server(self, sock, identity):
        try:
            self._resetting_server(sock, identity)
        except (OSError, EOFError, ValueError, KeyError):
            pass  # the client gave up first: the test sees its exit code

    def _resetting_server(self, sock, identity):
        raw, _ = sock.accept()
        with raw:
            conn, _ = wire.fake_server_login(raw, identity, TOKEN)
            while True:
                h, _ = wire.read_frame(conn, 20)
                if h["type"] == "put":
                    conn.sendall(wire.encode({"type": "put.ready", "id": h["id"], "offset": 0}))
                    break
                conn.sendall(wire.encode({"type": "error", "id": h.get("id"), "code": "not_found", "message": "no"}))
            conn.settimeout(20)
            got = 0
            while got < 2 * MiB:
                chunk = conn.recv(MiB)
                if not chunk:
                    return
                got += len(chunk)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def test_server_resets_during_put(self):
        tmp = tempfile.mkdtemp(prefix="cskit-reset-")
        self.addCleanup(shutil.rmtree, tmp, True)
        src = os.path.join(tmp, "up.bin")
        write_big(src, 32 * MiB)
        env = dict(os.environ, CSKIT_TOKEN=TOKEN)
        identity = tlswire.Identity()
        self.addCleanup(identity.cleanup)
        for attempt in range(16):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            sock.settimeout(20)
            th = threading.Thread(target=lambda: self.resetting_server(sock, identity), daemon=True)
            th.start()
            try:
                r = subprocess.run([BIN, "put", "--fingerprint", identity.fingerprint, src,
                                    f"127.0.0.1:{sock.getsockname()[1]}:up.bin"], env=env,
                                   capture_output=True, text=True, timeout=60)
            finally:
                th.join(timeout=20)
                sock.close()
            if r.returncode < 0:
                self.fail(f"attempt {attempt + 1}: `cskit put` died of signal {-r.returncode} "
                          f"({signal.Signals(-r.returncode).name}) when the server reset the connection")
            self.assertEqual(r.returncode, EXIT_CONNECT, r.stderr)
            self.assertIn("lost", r.stderr)


class PartTakeover(FilesTestCase):
    """A part held by an upload whose peer went away without closing (a crashed or cut-off client)
    does not send the re-run back to the start: the server asks that peer, closes it when it stays
    silent, and the re-run resumes the part. A part whose target another upload committed meanwhile
    is removed when its holder ends, not kept for ever."""

    SIZE = 16 * MiB
    SENT = 4 * MiB

    def hold_part(self, data):
        """A raw client that starts a resumable upload of the test's `target`, sends SENT bytes of
        it, and then goes quiet (it neither reads nor sends)."""
        c = cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN, fingerprint=self.srv.fingerprint)
        rid = c.next_id()
        c.send({"type": "put", "id": rid, "path": f"{self.rdir}/target", "size": len(data), "resume": True})
        h, _ = c.recv()
        self.assertEqual((h["type"], h["offset"]), ("put.ready", 0), h)
        c.send({"type": "put.data", "id": rid, "offset": 0}, data[:self.SENT])
        for _ in range(200):  # until the server has written it all (bounded: 10 s)
            parts = part_files(self.rshare)
            if parts and os.path.getsize(parts[0]) == self.SENT:
                break
            time.sleep(0.05)
        self.assertEqual([os.path.getsize(p) for p in part_files(self.rshare)], [self.SENT])
        return c

    def test_a_rerun_takes_over_the_part_of_a_silent_upload(self):
        data = random_bytes(self.SIZE)
        write_file(self.lp("target"), data)
        holder = self.hold_part(data)
        try:
            j = self.json_ok("put", self.lp("target"), self.rr())
            self.assertEqual(j["resumed_bytes"], self.SENT)
            self.assertEqual(read_file(os.path.join(self.rshare, "target")), data)
            self.assert_no_parts(self.rshare)
            # The silent holder's connection was closed by the server.
            with self.assertRaises((OSError, ssl.SSLError, cskit_client.ProtocolError, cskit_client.RemoteError)):
                for _ in range(10):
                    holder.recv()
        finally:
            holder._abort(drain=False)

    def test_a_live_upload_keeps_its_part_until_a_commit_supersedes_it(self):
        data, newer = random_bytes(self.SIZE), random_bytes(self.SIZE)
        write_file(self.lp("target"), newer)
        holder = self.hold_part(data)
        stop = threading.Event()

        def keep_alive():  # a live but slow peer: a frame every 100 ms
            while not stop.wait(0.1):
                try:
                    holder.send({"type": "ping", "id": holder.next_id()})
                except OSError:
                    return

        t = threading.Thread(target=keep_alive, daemon=True)
        t.start()
        try:
            started = time.monotonic()
            j = self.json_ok("put", self.lp("target"), self.rr())
            self.assertEqual(j["resumed_bytes"], 0)  # not the live upload's part
            self.assertLess(time.monotonic() - started, 3.0, "waited as long as for a silent peer")
            self.assertEqual(read_file(os.path.join(self.rshare, "target")), newer)
            self.assertEqual(len(part_files(self.rshare)), 1)  # still the live upload's
        finally:
            stop.set()
            t.join(timeout=5)
            holder._abort(drain=False)  # cut off, no put.abort: its part would normally be kept
        for _ in range(100):  # bounded: 5 s
            if not part_files(self.rshare):
                break
            time.sleep(0.05)
        self.assert_no_parts(self.rshare)  # superseded by the commit: removed, not kept for ever
        self.assertEqual(read_file(os.path.join(self.rshare, "target")), newer)


# ---------------------------------------------------------------- 8. disk full, quota, size limit

def try_tmpfs(path, size="8m"):
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                       capture_output=True, timeout=20)
    return r.returncode == 0


class OnSmallFs(unittest.TestCase):
    """A small file system of its own, mounted at self.mnt by mount() (skipped where it cannot be)."""
    why_skipped = "needs root and a mount"

    def mount(self):
        raise NotImplementedError

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cskit-fs-")
        self.mnt = os.path.join(self.tmp, "mnt")
        os.makedirs(self.mnt)
        if not self.mount():
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.skipTest(self.why_skipped)

    def tearDown(self):
        subprocess.run(["umount", "-l", self.mnt], capture_output=True, timeout=20)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def free(self):
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize


class OnSmallTmpfs(OnSmallFs):
    """A tmpfs of TMPFS bytes."""
    TMPFS = "8m"
    why_skipped = "needs root and tmpfs mounts"

    def mount(self):
        return try_tmpfs(self.mnt, self.TMPFS)


class DiskFull(OnSmallTmpfs):
    """A transfer of known size reserves its blocks (fallocate) before any data moves, so a full disk
    is reported at once and nothing fills the disk; a stream finds out as it writes. Either way the
    target keeps its old content, and a part that holds data is kept for a resume."""

    def test_server_disk_full(self):
        with Server(share=self.mnt) as srv:
            env = dict(srv.env, CSKIT_TOKEN=TOKEN)
            old = random_bytes(MiB)
            write_file(os.path.join(self.mnt, "target.bin"), old)
            big = os.path.join(self.tmp, "big.bin")
            write_file(big, random_bytes(20 * MiB))
            r = subprocess.run([BIN, "put", big, f"{srv.address}:target.bin"], env=env, capture_output=True,
                               text=True, timeout=120)
            self.assertEqual(r.returncode, EXIT_NO_SPACE, r.stderr)
            self.assertIn("no space", r.stderr)
            self.assertIn(str(20 * MiB) + " bytes to come", r.stderr)
            self.assertEqual(read_file(os.path.join(self.mnt, "target.bin")), old)
            self.assertEqual(part_files(self.mnt), [], "a part with nothing in it is not kept")
            with self.subTest("a stream (size unknown) finds out as it writes"):
                with open(big, "rb") as stdin:
                    r = subprocess.run([BIN, "put", "-", f"{srv.address}:target.bin"], env=env, stdin=stdin,
                                       capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, EXIT_NO_SPACE, r.stderr)
                self.assertIn("no space", r.stderr)
                self.assertEqual(read_file(os.path.join(self.mnt, "target.bin")), old)
                self.assertEqual(part_files(self.mnt), [], "a stream cannot be resumed: its part goes")
            # The server is still fine.
            r = subprocess.run([BIN, "stat", f"{srv.address}:target.bin"], env=env, capture_output=True, timeout=30)
            self.assertEqual(r.returncode, EXIT_OK)

    def test_local_disk_full(self):
        with Server() as srv:
            env = dict(srv.env, CSKIT_TOKEN=TOKEN)
            write_file(os.path.join(srv.share, "big.bin"), random_bytes(20 * MiB))
            old = random_bytes(MiB)
            write_file(os.path.join(self.mnt, "big.bin"), old)
            r = subprocess.run([BIN, "get", f"{srv.address}:big.bin", self.mnt], env=env, capture_output=True,
                               text=True, timeout=120)
            self.assertEqual(r.returncode, EXIT_NO_SPACE, r.stderr)
            self.assertIn("no space", r.stderr)
            self.assertEqual(read_file(os.path.join(self.mnt, "big.bin")), old)
            self.assertEqual(part_files(self.mnt), [], "a part with nothing in it is not kept")


def try_ext4(image, path, size_mb):
    """Mounts a new ext4 of size_mb MiB (a loop device over `image`) at `path`."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        return False
    with open(image, "wb") as f:
        f.truncate(size_mb * MiB)
    if subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True, timeout=60).returncode != 0:
        return False
    return subprocess.run(["mount", "-o", "loop", image, path], capture_output=True, timeout=30).returncode == 0


class OnSmallExt4(OnSmallFs):
    """A new ext4 of EXT4_MB MiB, on a loop device."""
    EXT4_MB = 64
    why_skipped = "needs root, mkfs.ext4 and a loop device"

    def mount(self):
        return try_ext4(os.path.join(self.tmp, "img"), self.mnt, self.EXT4_MB)


class WithoutProc(unittest.TestCase):
    """Where /proc is not mounted (a minimal container or chroot), an unnamed file cannot be linked
    into place, which goes through /proc/self/fd: files that come whole then use named part files,
    on both sides, and everything arrives as usual. Server and client run in a mount namespace of
    their own with an empty tmpfs over /proc (in a user namespace too when not run as root)."""

    def setUp(self):
        if os.environ.get("CSKIT_SANITIZED"):
            # AddressSanitizer reads /proc/self/maps (its stack bounds) and LeakSanitizer
            # /proc/PID/task: without /proc they report false errors. The release build runs this.
            self.skipTest("the sanitizer build needs /proc")
        if not shutil.which("unshare"):
            self.skipTest("needs unshare(1)")
        self.tmp = tempfile.mkdtemp(prefix="cskit-noproc-")
        unshare = "unshare -m --propagation private" + ("" if os.geteuid() == 0 else " -r")
        self.wrapper = os.path.join(self.tmp, "cskit-without-proc")
        with open(self.wrapper, "w") as f:
            f.write("#!/bin/sh\n"
                    f"exec {unshare} sh -c "
                    "'mount -t tmpfs none /proc && exec \"$0\" \"$@\"' " + shlex.quote(BIN) + ' "$@"\n')
        os.chmod(self.wrapper, 0o755)
        probe = subprocess.run(unshare.split() + ["sh", "-c", "mount -t tmpfs none /proc && test ! -e /proc/self/fd"],
                               capture_output=True, timeout=30)
        if probe.returncode != 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.skipTest("cannot mount over /proc in a new mount namespace: " + probe.stderr.decode(errors="replace"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_whole_files_use_named_parts(self):
        import harness
        real = harness.BIN
        harness.BIN = self.wrapper  # the server, too, runs without /proc
        try:
            srv = Server()
        finally:
            harness.BIN = real
        with srv:
            env = dict(srv.env, CSKIT_TOKEN=TOKEN)
            tree = os.path.join(srv.share, "t")
            content = {f"f{i:02d}": random_bytes(100 * i + 1) for i in range(12)}
            content["big"] = random_bytes(300000)  # streamed, for comparison
            for name, data in content.items():
                write_file(os.path.join(tree, "sub", name), data)
            local = os.path.join(self.tmp, "local")
            os.makedirs(local)
            os.makedirs(os.path.join(srv.share, "back"))
            for rnd in range(2):  # the second time every file is replaced
                r = subprocess.run([self.wrapper, "get", "-r", "-q", f"{srv.address}:t", local], env=env,
                                   capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, EXIT_OK, r.stderr)
                for name, data in content.items():
                    self.assertEqual(read_file(os.path.join(local, "t", "sub", name)), data, name)
                r = subprocess.run([self.wrapper, "put", "-r", "-q", os.path.join(local, "t"), f"{srv.address}:back"],
                                   env=env, capture_output=True, text=True, timeout=120)
                self.assertEqual(r.returncode, EXIT_OK, r.stderr)
                for name, data in content.items():
                    self.assertEqual(read_file(os.path.join(srv.share, "back", "t", "sub", name)), data, name)
                self.assertEqual(part_files(local), [])
                self.assertEqual(part_files(srv.share), [])
                content = {name: random_bytes(len(data)) for name, data in content.items()}
                for name, data in content.items():
                    write_file(os.path.join(tree, "sub", name), data)


class DiskFullExt4(OnSmallExt4):
    """On ext4 a refused fallocate keeps what it reserved before it ran out (tmpfs undoes it): a
    transfer refused for space must give that back, or the refusal itself would fill the disk."""

    def refused(self, args, env):
        before = self.free()
        r = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, EXIT_NO_SPACE, r.stderr)
        self.assertIn("no space", r.stderr)
        self.assertEqual(part_files(self.mnt), [])
        self.assertGreaterEqual(self.free(), before - 64 * 1024, "space reserved for the refused file was kept")

    def test_put_refused_gives_the_space_back(self):
        src = os.path.join(self.tmp, "big.bin")
        write_big(src, 100 * MiB)
        with Server(share=self.mnt) as srv:
            self.refused(["put", src, f"{srv.address}:big.bin"], dict(srv.env, CSKIT_TOKEN=TOKEN))

    def test_get_refused_gives_the_space_back(self):
        with Server() as srv:
            write_big(os.path.join(srv.share, "big.bin"), 100 * MiB)
            self.refused(["get", f"{srv.address}:big.bin", self.mnt], dict(srv.env, CSKIT_TOKEN=TOKEN))


class DiskFullOnResume(OnSmallExt4):
    """An interrupted transfer resumed onto a disk that has filled up meanwhile: refused at once, the
    part keeps what it had; once space is freed, the same command finishes the file. On ext4, where
    the space of a file is reserved before its data moves, and given back when the transfer stops."""
    EXT4_MB = 176
    SIZE = 128 * MiB

    def fill(self, leave):
        """Fills the file system up to `leave` bytes free."""
        filler = os.path.join(self.mnt, "filler")
        write_big(filler, self.free() - leave)
        return filler

    def resume_onto_full_disk(self, srv, args, watch_dir, final, src, victim):
        env = dict(srv.env, CSKIT_TOKEN=TOKEN)
        p = subprocess.Popen([BIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and part_size(watch_dir) < 16 * MiB:
            time.sleep(0.001)
        if victim == "client":
            p.kill()
        else:
            srv.restart(signal.SIGKILL)
        p.communicate(timeout=60)
        self.assertEqual(p.returncode, -signal.SIGKILL if victim == "client" else EXIT_CONNECT,
                         "the transfer ended before it could be interrupted")
        # The server closes the upload (giving back the blocks it reserved past the data) when it sees
        # the connection go; a client that loses its server does the same with its own part.
        self.assertTrue(wait_until(lambda: not server_holds_a_part(srv.proc.pid), 20))
        kept = part_size(watch_dir)
        self.assertGreaterEqual(kept, 16 * MiB)
        self.assertGreaterEqual(self.SIZE - kept, 4 * MiB, "interrupted too late to leave anything to resume")
        filler = self.fill((self.SIZE - kept) // 2)  # room for half of what is still to come
        free = self.free()
        r = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, EXIT_NO_SPACE, r.stderr)
        self.assertIn("no space", r.stderr)
        self.assertFalse(os.path.exists(final))
        self.assertEqual(part_size(watch_dir), kept, "the part keeps what it had")
        # ext4 keeps what it could reserve before it ran out: the refusal must give it back.
        self.assertGreaterEqual(self.free(), free - 64 * 1024, "the refused reservation still holds space")
        os.unlink(filler)
        r = subprocess.run([BIN, *args], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, EXIT_OK, r.stderr)
        self.assertEqual(json.loads(r.stdout)["resumed_bytes"], kept)
        self.assertEqual(sha256_file(final), sha256_file(src))
        self.assertEqual(part_files(self.mnt), [])

    def test_put_resumed_onto_a_full_disk(self):
        with Server(share=self.mnt) as srv:
            src = os.path.join(self.tmp, "src.bin")
            write_big(src, self.SIZE)
            self.resume_onto_full_disk(srv, ["put", "--json", src, f"{srv.address}:dst.bin"], self.mnt,
                                       os.path.join(self.mnt, "dst.bin"), src, "client")

    def test_get_resumed_onto_a_full_disk(self):
        with Server() as srv:
            src = os.path.join(srv.share, "src.bin")
            write_big(src, self.SIZE)
            self.resume_onto_full_disk(srv, ["get", "--json", f"{srv.address}:src.bin", os.path.join(self.mnt, "dst.bin")],
                                       self.mnt, os.path.join(self.mnt, "dst.bin"), src, "server")


class DirectoryAppearsBeforeCommit(FilesTestCase):
    """A directory is made under the target's name while an upload runs: the commit refuses it, the
    directory keeps its content, no part is left. Without a quota the rename itself refuses (the
    server does not look first); with one (next class), the server looks, for the old file's size."""

    def upload_then_mkdir(self, *flags):
        target = os.path.join(self.rshare, "target")
        p = subprocess.Popen([BIN, "put", *flags, "-", self.rr("target")], env=self.env(), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            p.stdin.write(random_bytes(MiB))
            p.stdin.flush()
            self.assertTrue(wait_until(lambda: part_files(self.rshare) != [], 20), "the upload never started")
            os.mkdir(target)
            write_file(os.path.join(target, "inside"), b"keep me")
            _, err = p.communicate(timeout=60)  # closes stdin: the end of the stream
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        self.assertEqual(p.returncode, EXIT_EXISTS, err)
        self.assertEqual(read_file(os.path.join(target, "inside")), b"keep me")
        self.assert_no_parts(self.rshare)
        return err.decode()

    def test_directory_in_the_way(self):
        self.assertIn("is a directory", self.upload_then_mkdir())

    def test_directory_in_the_way_no_clobber(self):
        self.assertIn("is a directory", self.upload_then_mkdir("-n"))


class DirectoryAppearsBeforeCommitWithQuota(DirectoryAppearsBeforeCommit):
    config_text = '[files]\nquota = "1G"\n'


class QuotaAndLimits(FilesTestCase):
    config_text = '[files]\nquota = "10M"\nmax_file_size = "7M"\n'

    def test_quota(self):
        write_file(self.lp("six"), random_bytes(6 * MiB))
        self.ok("put", self.lp("six"), self.rr("a"))
        with self.subTest("a file with a known size over the quota"):
            r = self.cli("put", "-W", "10", self.lp("six"), self.rr("b"))
            self.assertEqual(r.returncode, EXIT_QUOTA, r.stderr)
            self.assertIn("quota", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "b")))
        with self.subTest("a stream, refused once it passes the quota"):
            r = self.cli("put", "-W", "10", "-", self.rr("c"), input=random_bytes(6 * MiB), binary=True)
            self.assertEqual(r.returncode, EXIT_QUOTA, r.stderr)
            self.assertIn(b"quota", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "c")))
        with self.subTest("removing frees the space again"):
            self.ok("rm", self.rr("a"))
            self.ok("put", self.lp("six"), self.rr("b"))
            self.assertEqual(read_file(os.path.join(self.rshare, "b")), read_file(self.lp("six")))
            self.ok("rm", self.rr("b"))

    def test_quota_with_small_files(self):
        """Small files are sent whole and committed from unnamed files: replacing one counts only
        the difference, and one refused for its name is told so, even when the quota is full."""
        write_file(self.lp("small"), random_bytes(200 * 1024))
        for _ in range(30):  # 30 x 200 KiB: past the 10 MiB quota, were each counted anew
            self.ok("put", self.lp("small"), self.rr("s"))
        write_file(self.lp("six"), random_bytes(6 * MiB))
        self.ok("put", self.lp("six"), self.rr("six"))
        write_file(self.lp("three"), random_bytes(3 * MiB + 700 * 1024))
        self.ok("put", self.lp("three"), self.rr("three"))  # 10,140 of 10,240 KiB in use
        os.makedirs(os.path.join(self.rshare, "d", "small"))  # in the way of the tree's d/small
        write_file(self.lp("d", "small"), random_bytes(200 * 1024))
        r = self.cli("put", "-r", self.lp("d"), self.rr())
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.assertIn("/d/small' is a directory", r.stderr)
        r = self.cli("put", "-n", self.lp("small"), self.rr("s"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.assertIn("/s' already exists", r.stderr)
        r = self.cli("put", self.lp("small"), self.rr("new"))
        self.assertEqual(r.returncode, EXIT_QUOTA, r.stderr)
        for name in ("s", "six", "three"):
            self.ok("rm", self.rr(name))

    def test_max_file_size(self):
        write_file(self.lp("eight"), random_bytes(8 * MiB))
        with self.subTest("a file with a known size over the limit"):
            r = self.cli("put", "-W", "10", self.lp("eight"), self.rr())
            self.assertEqual(r.returncode, EXIT_REMOTE, r.stderr)
            self.assertIn("accepts files up to 7340032", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "eight")))
        with self.subTest("a stream, refused once it passes the limit"):
            r = self.cli("put", "-W", "10", "-", self.rr("stream"), input=random_bytes(8 * MiB), binary=True)
            self.assertEqual(r.returncode, EXIT_REMOTE, r.stderr)
            self.assertIn(b"larger than this server accepts (7340032 bytes)", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.rshare, "stream")))
        write_file(self.lp("small"), random_bytes(MiB))
        self.ok("put", self.lp("small"), self.rr())
        self.ok("rm", self.rr("small"))

    def test_too_large_carries_the_limit(self):
        """Every `too_large` carries the `limit` it went over, as the error table says."""
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                         fingerprint=self.srv.fingerprint) as c:
            with self.assertRaises(cskit_client.RemoteError) as cm:
                c.request("put", path=f"{self.rdir}/big", size=8 * MiB)
            self.assertEqual((cm.exception.code, cm.exception.header.get("limit")), ("too_large", 7 * MiB))
            rid = c.next_id()
            c.send({"type": "put", "id": rid, "path": f"{self.rdir}/stream"})  # no size: a stream
            self.assertEqual(c.recv()[0]["type"], "put.ready")
            chunk = bytes(MiB)
            for _ in range(8):
                c.send({"type": "put.data", "id": rid}, chunk)
            h, _ = c.recv()
            self.assertEqual((h["type"], h.get("id"), h.get("code"), h.get("limit")), ("error", rid, "too_large", 7 * MiB))
            c.send({"type": "put.end", "id": rid, "xxh3": "0" * 32})  # not answered: the upload failed
            self.assertEqual(c.request("fs.stat", path=self.rdir)[0]["type"], "fs.stat.reply")
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "stream")))


class UploadRefusals(FilesTestCase):
    """What docs/protocol.md promises when an upload is not what it declared: `integrity` for a size
    or digest that differs (the part removed, the message naming what differs), `bad_request` for a
    missing digest, and a `put.abort` after the end is ignored: no part outlives its upload."""

    def connect(self):
        return cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                           fingerprint=self.srv.fingerprint)

    def start(self, c, name, size, **extra):
        rid = c.next_id()
        c.send({"type": "put", "id": rid, "path": f"{self.rdir}/{name}", "size": size, **extra})
        h, _ = c.recv()
        self.assertEqual((h["type"], h.get("offset")), ("put.ready", 0), h)
        return rid

    def xxh3(self, data):
        """The server's XXH3-128 of data (as a `get` header gives it), on a connection of its own."""
        write_file(os.path.join(self.rshare, "seed"), data)
        try:
            with self.connect() as c:
                rid = c.next_id()
                c.send({"type": "get", "id": rid, "path": f"{self.rdir}/seed"})
                for _ in range(100):  # get (inline), or get.ready, get.data... get.end
                    h, _ = c.recv()
                    if h.get("id") == rid and "xxh3" in h:
                        return h["xxh3"]
                self.fail("no digest in the server's answer to get")
        finally:
            os.unlink(os.path.join(self.rshare, "seed"))

    def refused(self, c, rid, code):
        h, _ = c.recv()
        self.assertEqual((h["type"], h.get("id"), h.get("code")), ("error", rid, code), h)
        # A put.abort with discard afterwards is ignored (no reply), and the connection goes on.
        c.send({"type": "put.abort", "id": rid, "discard": True})
        self.assertEqual(c.request("fs.stat", path=self.rdir)[0]["type"], "fs.stat.reply")
        self.assertEqual(part_files(self.srv.share), [])
        return h["message"]

    def test_fewer_bytes_than_declared(self):
        data = random_bytes(300000)
        digest = self.xxh3(data)
        with self.connect() as c:
            rid = self.start(c, "short", 400000)
            c.send({"type": "put.data", "id": rid, "offset": 0}, data)
            c.send({"type": "put.end", "id": rid, "xxh3": digest})
            message = self.refused(c, rid, "integrity")
        self.assertIn("got 300000 of its declared 400000 bytes", message)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "short")))

    def test_more_bytes_than_declared(self):
        with self.connect() as c:
            rid = self.start(c, "long", 1000)
            c.send({"type": "put.data", "id": rid, "offset": 0}, bytes(1500))
            message = self.refused(c, rid, "integrity")
            c.send({"type": "put.end", "id": rid, "xxh3": "0" * 32})  # not answered
            self.assertEqual(c.request("fs.stat", path=self.rdir)[0]["type"], "fs.stat.reply")
        self.assertIn("more data than its declared size of 1000 bytes", message)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "long")))

    def test_sha256_asked_but_not_sent(self):
        data = random_bytes(5000)
        digest = self.xxh3(data)
        with self.connect() as c:
            rid = self.start(c, "nosha", len(data), verify="sha256")
            c.send({"type": "put.data", "id": rid, "offset": 0}, data)
            c.send({"type": "put.end", "id": rid, "xxh3": digest})
            message = self.refused(c, rid, "bad_request")
        self.assertIn("'sha256' (the upload asked for verify=sha256)", message)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "nosha")))

    def test_a_digest_that_differs_is_named_with_both_values(self):
        data = random_bytes(5000)
        digest = self.xxh3(data)
        wrong = "00" * 32
        with self.connect() as c:
            rid = self.start(c, "badsha", len(data), verify="sha256")
            c.send({"type": "put.data", "id": rid, "offset": 0}, data)
            c.send({"type": "put.end", "id": rid, "xxh3": digest, "sha256": wrong})
            message = self.refused(c, rid, "integrity")
            self.assertIn(f"sha256: sent {wrong}, received {hashlib.sha256(data).hexdigest()}", message)
            rid = self.start(c, "badxxh3", len(data))
            c.send({"type": "put.data", "id": rid, "offset": 0}, data)
            c.send({"type": "put.end", "id": rid, "xxh3": "0" * 32})
            message = self.refused(c, rid, "integrity")
            self.assertIn(f"xxh3: sent {'0' * 32}, received {digest}", message)
            rid = self.start(c, "noxxh3", len(data))
            c.send({"type": "put.data", "id": rid, "offset": 0}, data)
            c.send({"type": "put.end", "id": rid})
            self.assertIn("must carry the content's 'xxh3'", self.refused(c, rid, "bad_request"))
        for name in ("badsha", "badxxh3", "noxxh3"):
            self.assertFalse(os.path.exists(os.path.join(self.rshare, name)))

    def test_abort_keeps_or_discards_the_part(self):
        """put.abort keeps the part for a resume, or removes it with discard."""
        with self.connect() as c:
            rid = self.start(c, "kept", 100000)
            c.send({"type": "put.data", "id": rid, "offset": 0}, bytes(50000))
            c.send({"type": "put.abort", "id": rid, "discard": False})
            self.assertEqual(c.request("fs.stat", path=self.rdir)[0]["type"], "fs.stat.reply")
            self.assertEqual(len(part_files(self.srv.share)), 1)  # kept for a resume
            rid = self.start(c, "kept", 100000, resume=False)
            c.send({"type": "put.abort", "id": rid, "discard": True})
            self.assertEqual(c.request("fs.stat", path=self.rdir)[0]["type"], "fs.stat.reply")
            self.assertEqual(part_files(self.srv.share), [])


# ---------------------------------------------------------------- 9. concurrent writers

class Concurrency(FilesTestCase):
    def race(self, size, n=6):
        inputs = []
        for i in range(n):
            data = random_bytes(size)
            write_file(self.lp(f"in{size}-{i}"), data)
            inputs.append(data)
        procs = [subprocess.Popen([BIN, "put", self.lp(f"in{size}-{i}"), self.rr(f"same{size}")], env=self.env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(n)]
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            results.append((p.returncode, err))
        self.assertEqual([rc for rc, _ in results], [EXIT_OK] * n, results)
        final = read_file(os.path.join(self.rshare, f"same{size}"))
        self.assertIn(final, inputs, "the final file is not exactly one of the inputs")
        self.assert_no_parts(self.rshare)

    def test_six_writers_same_name_streamed(self):
        for _ in range(2):
            self.race(6 * MiB)

    def test_six_writers_same_name_inline(self):
        for _ in range(2):
            self.race(100000)

    def test_many_raw_writers_same_name(self):
        """8 connections x 1000 inline puts of different content to one name. A put that opens the
        well-known part file just before another upload renames it into place must not lock, truncate
        and rewrite the committed file (it then failed with "committing: no such file or directory")."""
        size, n, per = 100000, 8, 1000
        with Server(config_text="[files]\nfsync = false\n") as srv:
            inputs = [random_bytes(size) for _ in range(n)]
            digests = []
            with cskit_client.Client.connect("127.0.0.1", srv.port, "admin", TOKEN, fingerprint=srv.fingerprint) as c:
                for i, d in enumerate(inputs):
                    write_file(os.path.join(srv.share, f"seed{i}"), d)
                    digests.append(c.request("get", path=f"seed{i}")[0]["xxh3"])
            errors = []

            def writer(i):
                try:
                    with cskit_client.Client.connect("127.0.0.1", srv.port, "admin", TOKEN, timeout=30, fingerprint=srv.fingerprint) as c:
                        for k in range(per):
                            try:
                                h, _ = c.request("put", inputs[i], path="same", inline=True, size=size,
                                                 xxh3=digests[i])
                                if h["type"] != "put.done":
                                    errors.append((i, k, h["type"]))
                            except cskit_client.RemoteError as e:
                                errors.append((i, k, e.code, e.message))
                except (OSError, cskit_client.ProtocolError) as e:
                    errors.append((i, "connection", repr(e)))

            watch = TransferWatch(srv.share, os.path.join(srv.share, "same"), size)
            watch.start()
            threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            watch.finish()
            self.assertFalse(any(t.is_alive() for t in threads), "writers still running after 120 s")
            self.assertEqual(errors, [], f"{len(errors)} of {n * per} puts failed")
            self.assertIn(read_file(os.path.join(srv.share, "same")), inputs)
            self.assertEqual(watch.partial_finals, [], "a partial file appeared under the final name")
            self.assertEqual(part_files(srv.share), [])

    def test_no_clobber_checked_again_at_commit(self):
        """A target that appears while a no-clobber upload is under way is kept: the commit (a rename
        that refuses to replace) fails with `exists`, and the upload's part file is removed."""
        size = 100000
        data, theirs = random_bytes(size), random_bytes(size)
        with Server() as srv:
            with cskit_client.Client.connect("127.0.0.1", srv.port, "admin", TOKEN, fingerprint=srv.fingerprint) as c:
                write_file(os.path.join(srv.share, "seed"), data)
                digest = c.request("get", path="seed")[0]["xxh3"]
                rid = c.next_id()
                c.send({"type": "put", "id": rid, "path": "late", "size": size, "no_clobber": True})
                h, _ = c.recv()
                self.assertEqual((h["type"], h["id"], h["offset"]), ("put.ready", rid, 0))
                self.assertEqual(len(part_files(srv.share)), 1)
                write_file(os.path.join(srv.share, "late"), theirs)  # someone else's, meanwhile
                c.send({"type": "put.data", "id": rid, "offset": 0}, data)
                c.send({"type": "put.end", "id": rid, "xxh3": digest})
                h, _ = c.recv()
                self.assertEqual((h["type"], h.get("id"), h.get("code")), ("error", rid, "exists"), h)
                self.assertEqual(read_file(os.path.join(srv.share, "late")), theirs)
                self.assertEqual(part_files(srv.share), [])
                # The connection goes on working.
                self.assertEqual(c.request("put", data, path="late2", inline=True, size=size,
                                           xxh3=digest)[0]["type"], "put.done")
                self.assertEqual(read_file(os.path.join(srv.share, "late2")), data)


# ---------------------------------------------------------------- 10. permissions

READER_TOKEN = "reader-token-0123456789abcdef"
NOBODY_TOKEN = "nobody-token-0123456789abcdef"
WRITER_TOKEN = "writer-token-0123456789abcdef"
DROPBOX_TOKEN = "dropbox-token-0123456789abcdef"


class Permissions(FilesTestCase):
    config_text = f"""
[[users]]
name = "writer"
token = "{WRITER_TOKEN}"
permissions = ["files-read", "files-write"]

[[users]]
name = "reader"
token = "{READER_TOKEN}"
permissions = ["files-read"]

[[users]]
name = "nobody"
token = "{NOBODY_TOKEN}"
permissions = ["chat"]

[[users]]
name = "dropbox"
token = "{DROPBOX_TOKEN}"
permissions = ["files-write"]
"""

    def test_write_only_user_gets_no_delta(self):
        """Delta transfer reads the target's old content: a user who may only write is never offered
        it, and cannot copy from it (else put.copy and a digest in an error would read the file)."""
        secret = random_bytes(2 * MiB)
        write_file(os.path.join(self.rshare, "secret.bin"), secret)
        s, _ = wire.login(self.srv.port, DROPBOX_TOKEN, user="dropbox")
        try:
            s.sendall(wire.encode({"type": "put", "id": 1, "path": f"{self.rdir}/secret.bin", "size": 1,
                                   "delta": True}))
            ready, _ = wire.read_frame(s)
            self.assertEqual(ready["type"], "put.ready", ready)
            self.assertNotIn("basis", ready)
            for frame, body in (({"type": "put.copy", "id": 1, "from": 0, "size": 1}, b""),
                                ({"type": "put.chunks", "id": 1}, struct.pack(">I", 0))):
                s.sendall(wire.encode(frame, body))
                err, _ = wire.read_frame(s)
                self.assertEqual((err["type"], err["id"], err["code"]), ("error", 1, "permission_denied"), err)
            s.sendall(wire.encode({"type": "put.abort", "id": 1, "discard": True}))
            # delta on a put without a size is ignored (a stream has nothing to be compared with).
            s.sendall(wire.encode({"type": "put", "id": 2, "path": f"{self.rdir}/stream.bin", "delta": True}))
            ready, _ = wire.read_frame(s)
            self.assertEqual(ready["type"], "put.ready", ready)
            self.assertNotIn("basis", ready)
            s.sendall(wire.encode({"type": "put.abort", "id": 2, "discard": True}))
        finally:
            s.close()
        self.assertEqual(read_file(os.path.join(self.rshare, "secret.bin")), secret)
        # (-a and -c need a listing, which needs files-read: such a user puts files whole.)

    def test_read_only_user(self):
        write_file(os.path.join(self.rshare, "f.txt"), b"readable\n")
        write_file(os.path.join(self.rshare, "d", "inner"), b"inner\n")
        write_file(self.lp("up.txt"), b"upload\n")
        write_file(self.lp("tree", "x"), b"x")
        before = snapshot(self.srv.share)
        ro = dict(user="reader", token=READER_TOKEN)
        for args in (("put", self.lp("up.txt"), self.rr()), ("put", self.lp("up.txt"), self.rr("f.txt")),
                     ("put", "-r", self.lp("tree"), self.rr()), ("mkdir", self.rr("newdir")),
                     ("mkdir", "-p", self.rr("a/b")), ("rm", self.rr("f.txt")), ("rm", "-r", self.rr("d")),
                     ("mv", self.rr("f.txt"), self.rr("g.txt"))):
            with self.subTest(cmd=" ".join(args[:2])):
                r = self.cli(*args, **ro)
                self.assertEqual(r.returncode, EXIT_PERMISSION, r.stderr)
        with self.subTest(cmd="put - (stdin)"):
            r = self.cli("put", "-W", "10", "-", self.rr("stdin"), input=b"x", binary=True, **ro)
            self.assertEqual(r.returncode, EXIT_PERMISSION, r.stderr)
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "reader", READER_TOKEN, fingerprint=self.srv.fingerprint) as c:
            for typ, fields in [("fs.setattr", {"path": f"{self.rdir}/f.txt", "mode": 0o777}),
                                ("fs.symlink", {"path": f"{self.rdir}/l", "target": "f.txt"}),
                                ("put", {"path": f"{self.rdir}/raw", "size": 1}),
                                ("put.data", {}), ("put.end", {}), ("put.abort", {})]:
                with self.subTest(raw=typ):
                    with self.assertRaises(cskit_client.RemoteError) as cm:
                        c.request(typ, **fields)
                    self.assertEqual(cm.exception.code, "permission_denied")
        self.assertEqual(snapshot(self.srv.share), before)
        # Reading works.
        self.ok("get", self.rr("f.txt"), self.lp("got.txt"), **ro)
        self.assertEqual(read_file(self.lp("got.txt")), b"readable\n")
        self.ok("get", "-r", self.rr("d"), self.lp("gotd"), **ro)
        self.assertEqual(read_file(self.lp("gotd", "inner")), b"inner\n")
        self.ok("ls", "-R", self.rr(), **ro)
        self.ok("stat", self.rr("f.txt"), **ro)
        # And a writer can do what the reader could not.
        self.ok("put", self.lp("up.txt"), self.rr(), user="writer", token=WRITER_TOKEN)

    def test_user_without_file_permissions(self):
        write_file(os.path.join(self.rshare, "f.txt"), b"secret\n")
        no = dict(user="nobody", token=NOBODY_TOKEN)
        for args in (("get", self.rr("f.txt"), self.lp("x")), ("get", self.rr("f.txt"), "-"),
                     ("ls", self.rr()), ("stat", self.rr("f.txt")), ("get", "-r", self.rr(), self.lp("y"))):
            with self.subTest(cmd=args[0]):
                r = self.cli(*args, **no)
                self.assertEqual(r.returncode, EXIT_PERMISSION, r.stderr)
                self.assertNotIn("secret", r.stdout)
        self.assertFalse(os.path.exists(self.lp("x")))
        self.assertFalse(os.path.exists(os.path.join(self.lp("y"), "f.txt")))


# ---------------------------------------------------------------- 11. progress

def run_on_pty(env, *args, timeout=60):
    """Runs `cskit ARGS` with stdout and stderr on a terminal; returns (exit status, output)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([BIN, *args], env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = read_pty(master)
            if chunk is None:
                break
            out += chunk
            if not chunk and p.poll() is not None:
                break
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    return p.returncode, out.decode(errors="replace")


class Sync(FilesTestCase):
    """-a (rsync's quick check and destination rule), --exclude/--include and --dry-run, both ways."""

    def make_tree(self, root):
        for i in range(20):
            write_file(os.path.join(root, f"d{i % 4}", f"f{i}.txt"), b"content %d\n" % i * (i + 1))
        write_file(os.path.join(root, "build", "out.o"), b"object")
        write_file(os.path.join(root, "keep.log"), b"kept")
        write_file(os.path.join(root, "noise.log"), b"left out")
        write_file(os.path.join(root, "d0", "deep", "x.o"), b"object too")

    def test_put_again_sends_only_what_changed(self):
        src = self.lp("src")
        self.make_tree(src)
        first = self.json_ok("put", "-a", src, self.rr("backup"))
        self.assertEqual(first["files"], 24)
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "backup", "src")))
        again = self.json_ok("put", "-a", src, self.rr("backup"))
        # The same command means the same place (backup/src), and nothing is sent.
        self.assertEqual((again["files"], again["bytes"], again["unchanged"]), (0, 0, 24))
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "backup", "src", "src")))
        # A changed file goes, and one whose time alone changed (same size).
        write_file(os.path.join(src, "d1", "f1.txt"), b"changed, and longer than before")
        os.utime(os.path.join(src, "d2", "f2.txt"), ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
        third = self.json_ok("put", "-a", src, self.rr("backup"))
        self.assertEqual((third["files"], third["unchanged"]), (2, 22))
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "backup", "src")))
        self.assertEqual(os.stat(os.path.join(self.rshare, "backup", "src", "d2", "f2.txt")).st_mtime_ns,
                         1_500_000_000_000_000_000)
        # New permission bits alone (chmod keeps the time): sent again, with them.
        os.chmod(os.path.join(src, "d3", "f3.txt"), 0o750)
        fourth = self.json_ok("put", "-a", src, self.rr("backup"))
        self.assertEqual((fourth["files"], fourth["unchanged"]), (1, 23))
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.rshare, "backup", "src", "d3", "f3.txt")).st_mode),
                         0o750)
        # SRC/ puts the contents, as rsync does; a destination that is a file is refused once.
        self.json_ok("put", "-a", src + "/", self.rr("flat"))
        self.assertEqual(snapshot(src), snapshot(os.path.join(self.rshare, "flat")))
        write_file(os.path.join(self.rshare, "plain"), b"a file")
        r = self.cli("put", "-a", src, self.rr("plain"))
        self.assertEqual(r.returncode, EXIT_EXISTS, r.stderr)
        self.assertIn("is not a directory", r.stderr)
        self.assertEqual(read_file(os.path.join(self.rshare, "plain")), b"a file")

    def test_put_again_keeps_directory_times(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", src, self.rr("backup"))
        there = os.path.join(self.rshare, "backup", "src")

        def dir_times(root):
            return {d: (os.stat(os.path.join(root, d)).st_mtime_ns, stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode))
                    for d in ("", "d0", "d1", "d2", "d3", "build", "d0/deep")}
        self.assertEqual(dir_times(there), dir_times(src))
        # A file changes in d1 (d1's time is set again after it lands), d2 gets new bits, and
        # a no-op run after that touches nothing.
        write_file(os.path.join(src, "d1", "f1.txt"), b"changed")
        os.utime(os.path.join(src, "d1"), ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        os.chmod(os.path.join(src, "d2"), 0o750)
        self.json_ok("put", "-a", src, self.rr("backup"))
        self.assertEqual(dir_times(there), dir_times(src))
        again = self.json_ok("put", "-a", src, self.rr("backup"))
        self.assertEqual((again["files"], again["dirs"]), (0, 0))
        self.assertEqual(dir_times(there), dir_times(src))

    def test_get_again_sends_only_what_changed(self):
        remote = os.path.join(self.rshare, "tree")
        self.make_tree(remote)
        first = self.json_ok("get", "-a", self.rr("tree"), self.lp("copy"))
        self.assertEqual(first["files"], 24)
        self.assertEqual(snapshot(remote), snapshot(self.lp("copy", "tree")))  # into copy/, made for it
        again = self.json_ok("get", "-a", self.rr("tree"), self.lp("copy"))
        self.assertEqual((again["files"], again["bytes"], again["unchanged"]), (0, 0, 24))
        self.assertFalse(os.path.exists(self.lp("copy", "tree", "tree")))
        write_file(os.path.join(remote, "d3", "f3.txt"), b"new content on the server")
        third = self.json_ok("get", "-a", self.rr("tree"), self.lp("copy"))
        self.assertEqual((third["files"], third["unchanged"]), (1, 23))
        self.assertEqual(snapshot(remote), snapshot(self.lp("copy", "tree")))
        self.json_ok("get", "-a", self.rr("tree") + "/", self.lp("flat"))
        self.assertEqual(snapshot(remote), snapshot(self.lp("flat")))

    def test_exclude_and_include_both_ways(self):
        src = self.lp("src")
        self.make_tree(src)
        rules = ["--include", "keep.log", "--exclude", "*.log", "--exclude", "build/", "--exclude", "*.o"]
        up = self.json_ok("put", "-r", *rules, src, self.rr("up"))
        self.assertEqual(up["excluded"], 3)  # noise.log, build/ (once), d0/deep/x.o
        there = snapshot(os.path.join(self.rshare, "up"))
        self.assertIn("keep.log", there)
        for gone in ("noise.log", "build", "build/out.o", "d0/deep/x.o"):
            self.assertNotIn(gone, there)
        self.assertIn("d0/deep", there)  # the directory stays, without what was left out
        down = self.json_ok("get", "-r", *rules, self.r(f"{self.rdir}/up"), self.lp("down"))
        self.assertEqual(down["excluded"], 0)  # nothing left to exclude
        self.assertEqual(snapshot(self.lp("down")), there)
        # From the server's full tree, the same rules leave the same things out.
        full = os.path.join(self.rshare, "full")
        self.make_tree(full)
        down = self.json_ok("get", "-r", *rules, self.rr("full"), self.lp("down2"))
        self.assertEqual(down["excluded"], 3)
        self.assertEqual(snapshot(self.lp("down2")), there)
        # Anchored: /build leaves the top one out, not a deeper one of that name.
        write_file(os.path.join(full, "d1", "build", "kept.txt"), b"deeper")
        self.json_ok("get", "-r", "--exclude", "/build", self.rr("full"), self.lp("down3"))
        self.assertFalse(os.path.exists(self.lp("down3", "build")))
        self.assertTrue(os.path.exists(self.lp("down3", "d1", "build", "kept.txt")))

    def test_dry_run_changes_nothing(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", src, self.rr("b"))
        write_file(os.path.join(src, "d1", "new.txt"), b"new")
        before_remote = snapshot(self.rshare)
        r = self.ok("put", "-a", "--dry-run", src, self.rr("b"))
        self.assertEqual(snapshot(self.rshare), before_remote)
        self.assertIn(f"send   {self.rdir}/b/src/d1/new.txt  (3 B)", r.stdout)
        self.assertIn("dry run: 1 file (3 B) would be sent, 24 unchanged", r.stdout)
        j = self.json_ok("put", "-a", "--dry-run", src, self.rr("b"))
        self.assertEqual(j["planned"], [{"action": "send", "path": f"{self.rdir}/b/src/d1/new.txt", "size": 3}])
        # get: nothing made locally, not even the destination.
        r = self.ok("get", "-a", "--dry-run", self.rr("b"), self.lp("nowhere"))
        self.assertFalse(os.path.exists(self.lp("nowhere")))
        self.assertIn("mkdir  b/src/d0", r.stdout)
        self.assertIn("dry run: 24 files", r.stdout)

    def test_delete_both_ways(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", src, self.rr("m"))
        mirror = os.path.join(self.rshare, "m", "src")
        shutil.rmtree(os.path.join(src, "d1"))
        os.remove(os.path.join(src, "noise.log"))
        write_file(os.path.join(mirror, "extra.keep"), b"protected by --exclude")
        write_file(os.path.join(self.rshare, "m", "beside.txt"), b"outside the tree: never touched")
        before = snapshot(self.rshare)
        r = self.ok("put", "-a", "--delete", "--exclude", "*.keep", "--dry-run", src, self.rr("m"))
        self.assertEqual(snapshot(self.rshare), before)
        self.assertIn(f"delete {self.rdir}/m/src/d1\n", r.stdout)
        self.assertIn(f"delete {self.rdir}/m/src/noise.log\n", r.stdout)
        self.assertNotIn("extra.keep", r.stdout)
        j = self.json_ok("put", "-a", "--delete", "--exclude", "*.keep", src, self.rr("m"))
        self.assertEqual(j["deleted"], 7)  # d1, its 5 files, noise.log
        there = snapshot(mirror)
        self.assertEqual({k: v for k, v in there.items() if k != "extra.keep"}, snapshot(src))
        self.assertIn("extra.keep", there)
        self.assertTrue(os.path.exists(os.path.join(self.rshare, "m", "beside.txt")))
        # get: the local copy follows the server's tree the same way.
        self.json_ok("get", "-a", self.rr("m/src"), self.lp("back"))
        os.remove(os.path.join(mirror, "keep.log"))
        write_file(self.lp("back", "src", "local-only", "f"), b"x")
        write_file(self.lp("back", "beside.txt"), b"outside the tree")
        r = self.ok("get", "-a", "--delete", "--dry-run", self.rr("m/src"), self.lp("back"))
        self.assertIn("delete src/keep.log\n", r.stdout)
        self.assertIn("delete src/local-only\n", r.stdout)
        self.assertTrue(os.path.exists(self.lp("back", "src", "local-only", "f")))
        j = self.json_ok("get", "-a", "--delete", self.rr("m/src"), self.lp("back"))
        self.assertEqual(j["deleted"], 3)  # keep.log, local-only and its file
        self.assertEqual(snapshot(self.lp("back", "src")), snapshot(mirror))
        self.assertTrue(os.path.exists(self.lp("back", "beside.txt")))

    def test_delete_keeps_excluded_directories_and_other_sources(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", "--exclude", "build/", src, self.rr("m"))
        mirror = os.path.join(self.rshare, "m", "src")
        write_file(os.path.join(mirror, "build", "server-only.o"), b"made on the server")
        os.remove(os.path.join(src, "keep.log"))
        j = self.json_ok("put", "-a", "--delete", "--exclude", "build/", src, self.rr("m"))
        self.assertEqual(j["deleted"], 1)  # keep.log; build/ and what it holds are protected
        self.assertTrue(os.path.exists(os.path.join(mirror, "build", "server-only.o")))
        # get: an excluded local directory is not entered either.
        self.json_ok("get", "-a", self.rr("m/src"), self.lp("back"))
        write_file(self.lp("back", "src", "build", "local-only.o"), b"made here")
        j = self.json_ok("get", "-a", "--delete", "--exclude", "build/", self.rr("m/src"), self.lp("back"))
        self.assertTrue(os.path.exists(self.lp("back", "src", "build", "local-only.o")))
        # Two sources into one destination: the contents of one (b/) and the tree
        # of the other (a) both belong there; neither deletes the other.
        write_file(os.path.join(self.rshare, "two", "a", "x"), b"a's")
        write_file(os.path.join(self.rshare, "two", "b", "y"), b"b's")
        write_file(os.path.join(self.rshare, "two", "f"), b"a file source")
        for _ in range(2):
            j = self.json_ok("get", "-a", "--delete", self.rr("two/a"), self.rr("two/b") + "/", self.rr("two/f"),
                             self.lp("merged"))
            self.assertEqual(j["deleted"], 0, j)
        self.assertEqual(sorted(os.listdir(self.lp("merged"))), ["a", "f", "y"])
        write_file(self.lp("merged", "stray"), b"not from any source")
        j = self.json_ok("get", "-a", "--delete", self.rr("two/a"), self.rr("two/b") + "/", self.rr("two/f"),
                         self.lp("merged"))
        self.assertEqual(j["deleted"], 1)
        self.assertEqual(sorted(os.listdir(self.lp("merged"))), ["a", "f", "y"])

    def test_delete_never_after_errors(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", src, self.rr("m"))
        os.remove(os.path.join(src, "keep.log"))
        # A name no server takes (a control character): an error for that
        # entry, so the source was not sent in full and nothing is deleted.
        write_file(os.path.join(src, "bad\x01name"), b"x")
        r = self.cli("put", "-a", "--delete", src, self.rr("m"), "--json")
        self.assertNotEqual(r.returncode, EXIT_OK)
        j = json.loads(r.stdout)
        self.assertEqual(j["deleted"], 0)
        self.assertIn("control characters", j["errors"][0]["message"])
        self.assertTrue(os.path.exists(os.path.join(self.rshare, "m", "src", "keep.log")))
        os.remove(os.path.join(src, "bad\x01name"))
        self.assertEqual(self.json_ok("put", "-a", "--delete", src, self.rr("m"))["deleted"], 1)

    def test_checksum_compares_content_both_ways(self):
        src = self.lp("src")
        self.make_tree(src)
        self.json_ok("put", "-a", src, self.rr("c"))
        copy = os.path.join(self.rshare, "c", "src")
        # Same size, same time, other bytes: the quick check is fooled, -c is not.
        victim = os.path.join(src, "d1", "f5.txt")
        st = os.stat(victim)
        write_file(victim, bytes(b ^ 1 for b in read_file(victim)))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(self.json_ok("put", "-a", src, self.rr("c"))["files"], 0)
        j = self.json_ok("put", "-a", "-c", src, self.rr("c"))
        self.assertEqual((j["files"], j["unchanged"]), (1, 23))
        self.assertEqual(snapshot(copy), snapshot(src))
        # A new time alone: nothing sent, the time follows (-a keeps times).
        os.utime(os.path.join(src, "d2", "f2.txt"), ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        j = self.json_ok("put", "-a", "-c", src, self.rr("c"))
        self.assertEqual((j["files"], j["unchanged"]), (0, 24))
        self.assertEqual(os.stat(os.path.join(copy, "d2", "f2.txt")).st_mtime_ns, 1_600_000_000_000_000_000)
        # get: the same, from the server's side.
        self.json_ok("get", "-a", self.rr("c/src"), self.lp("back"))
        theirs = os.path.join(copy, "d3", "f7.txt")
        st = os.stat(theirs)
        write_file(theirs, bytes(b ^ 2 for b in read_file(theirs)))
        os.utime(theirs, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(self.json_ok("get", "-a", self.rr("c/src"), self.lp("back"))["files"], 0)
        j = self.json_ok("get", "-a", "--checksum", self.rr("c/src"), self.lp("back"))
        self.assertEqual((j["files"], j["unchanged"]), (1, 23))
        self.assertEqual(snapshot(self.lp("back", "src")), snapshot(copy))
        os.utime(os.path.join(copy, "keep.log"), ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        j = self.json_ok("get", "-a", "-c", self.rr("c/src"), self.lp("back"))
        self.assertEqual((j["files"], j["unchanged"]), (0, 24))
        self.assertEqual(os.stat(self.lp("back", "src", "keep.log")).st_mtime_ns, 1_700_000_000_000_000_000)
        # One file, without -a: -c alone skips it when the content is the same.
        j = self.json_ok("put", "-c", os.path.join(src, "keep.log"), self.rr("c/src/keep.log"))
        self.assertEqual((j["files"], j["unchanged"]), (0, 1))

    def test_list_digests_on_the_wire(self):
        w = os.path.join(self.rshare, "w")
        write_file(os.path.join(w, "a.bin"), os.urandom(200000))  # one get.file frame, with its xxh3
        write_file(os.path.join(w, "sub", "same.bin"), read_file(os.path.join(w, "a.bin")))
        write_file(os.path.join(w, "empty"), b"")
        os.symlink("a.bin", os.path.join(w, "link"))
        os.mkfifo(os.path.join(w, "fifo"))  # never opened for a digest (it would block)
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                         fingerprint=self.srv.fingerprint) as c:
            c.send({"type": "fs.list", "id": 7, "path": f"{self.rdir}/w", "recursive": True, "digests": True})
            entries, frames = {}, 0
            while True:
                h, body = c.recv()
                self.assertEqual(h["id"], 7, h)
                frames += 1
                if h["type"] == "fs.list.progress":
                    continue
                self.assertEqual(h["type"], "fs.list.reply", h)
                for e in json.loads(body):
                    entries[e["name"]] = e
                if h["done"]:
                    break
            # The digest is the one a download reports for the same bytes.
            want = c.request("get", path=f"{self.rdir}/w/a.bin")[0]["xxh3"]
            self.assertRegex(entries["a.bin"]["xxh3"], r"^[0-9a-f]{32}$")
            self.assertEqual(entries["a.bin"]["xxh3"], want)
            self.assertEqual(entries["sub/same.bin"]["xxh3"], want)
            self.assertEqual(entries["empty"]["xxh3"], c.request("get", path=f"{self.rdir}/w/empty")[0]["xxh3"])
            for name in ("link", "fifo", "sub"):
                self.assertNotIn("xxh3", entries[name])
            # Requests behind it wait for its answer: order is kept.
            c.send({"type": "fs.list", "id": 8, "path": f"{self.rdir}/w", "recursive": True, "digests": True})
            c.send({"type": "fs.stat", "id": 9, "path": f"{self.rdir}/w/a.bin"})
            order = []
            while 9 not in order:
                h, _ = c.recv()
                if h["type"] != "fs.list.progress":
                    order.append(h["id"])
            self.assertEqual(order, [8, 9])
            # Without `digests`, as before: no digest, no waiting.
            h, body = c.request("fs.list", path=f"{self.rdir}/w", recursive=False)
            self.assertTrue(all("xxh3" not in e for e in json.loads(body)))

    def test_bwlimit_paces_both_ways(self):
        data = os.urandom(400 * 1024)
        write_file(self.lp("f"), data)
        # 400 KiB at 100 KiB/s: about 4 s each way (a tenth of a second may
        # go at once); a lower bound only, which no slow machine can break.
        for args, dest in ((["put", self.lp("f"), self.rr("f")], os.path.join(self.rshare, "f")),
                           (["get", self.rr("f"), self.lp("back")], self.lp("back"))):
            start = time.monotonic()
            j = self.json_ok(args[0], "--bwlimit", "100K", *args[1:])
            took = time.monotonic() - start
            self.assertGreater(took, 3.0, j)
            self.assertLess(j["bytes_per_second"], 110 * 1024, j)
            self.assertEqual(read_file(dest), data)
        for bad in ("fast", "0.5K", "10T", "-1", ""):
            r = self.cli("put", "--bwlimit", bad, self.lp("f"), self.rr("g"))
            self.assertEqual(r.returncode, EXIT_USAGE, (bad, r.stderr))
            self.assertIn("--bwlimit", r.stderr)
        for good in ("1M", "2048", "1.5m", "640KiB", "100MB", "0"):
            self.json_ok("put", "--bwlimit", good, self.lp("f"), self.rr("g"))

    def test_bad_filter_use_is_a_usage_error(self):
        write_file(self.lp("f"), b"x")
        for args in (["--exclude", "a[b", "-r"], ["--exclude", "", "-r"], ["--exclude", "*.o"]):
            r = self.cli("put", *args, self.lp("f"), self.rr())
            self.assertEqual(r.returncode, EXIT_USAGE, r.stderr)
            self.assertIn("--exclude", r.stderr)


class SlowReaders(FilesTestCase):
    """A download read slowly (--bwlimit) outlasts the server's idle deadline: a client
    that takes the server's bytes is not idle."""
    server_args = ("--idle-timeout", "2")

    def test_slow_download_is_not_idle(self):
        data = os.urandom(600 * 1024)
        write_file(os.path.join(self.rshare, "slow.bin"), data)
        start = time.monotonic()
        self.json_ok("get", "--bwlimit", "100K", self.rr("slow.bin"), self.lp("slow.bin"))
        self.assertGreater(time.monotonic() - start, 4.0)  # twice the idle deadline, at least
        self.assertEqual(read_file(self.lp("slow.bin")), data)

    def test_idle_client_closed_at_the_idle_deadline(self):
        # Sooner than the handshake deadline (10 s): the watchdog, armed for
        # that one during the login, is re-armed for the idle deadline.
        with cskit_client.Client.connect("127.0.0.1", self.srv.port, "admin", TOKEN,
                                         fingerprint=self.srv.fingerprint) as c:
            start = time.monotonic()
            h, _ = c.recv()  # nothing comes until the server gives up on us
            self.assertEqual((h["type"], h.get("code")), ("error", "idle_timeout"), h)
            self.assertLess(time.monotonic() - start, 6.0)


class Progress(FilesTestCase):
    def run_on_pty(self, *args, timeout=60):
        return run_on_pty(self.env(), *args, timeout=timeout)

    def test_progress_on_a_terminal_only(self):
        write_big(self.lp("p.bin"), 64 * MiB)
        rc, out = self.run_on_pty("put", self.lp("p.bin"), self.rr())
        self.assertEqual(rc, EXIT_OK, out)
        # The live line names the file; a summary stays when it ends, as scp leaves one.
        self.assertRegex(out, r"p\.bin  +\d+%\s+[\d.]+ \w*B / 64\.0 MiB  [\d.]+ \w*B/s  ETA ")
        self.assertRegex(out, r"\r\x1b\[Kp\.bin  100%  64\.0 MiB  [\d.]+ \w*B/s  \d\d:\d\d\r\n$")
        rc, out = self.run_on_pty("get", self.rr("p.bin"), self.lp("back.bin"))
        self.assertEqual(rc, EXIT_OK, out)
        self.assertRegex(out, r"\r\x1b\[Kback\.bin  100%  64\.0 MiB  [\d.]+ \w*B/s  \d\d:\d\d\r\n$")
        # Several files: how many, and the directories made.
        for i in range(3):
            write_file(self.lp("tree", f"f{i}"), b"x" * 1000)
        rc, out = self.run_on_pty("put", "-r", self.lp("tree"), self.rr("tree"))
        self.assertEqual(rc, EXIT_OK, out)
        self.assertRegex(out, r"3 files  100%  2\.9 KiB  [\d.]+ \w*B/s  \d\d:\d\d  1 dir\r\n$")
        # -q and --json: no progress, even on a terminal.
        rc, out = self.run_on_pty("put", "-q", self.lp("p.bin"), self.rr("q.bin"))
        self.assertEqual((rc, out), (EXIT_OK, ""))
        rc, out = self.run_on_pty("put", "--json", self.lp("p.bin"), self.rr("j.bin"))
        self.assertEqual(rc, EXIT_OK)
        self.assertNotIn("%", out)
        self.assertEqual(json.loads(out)["files"], 1)
        # Pipes: nothing but the result.
        r = self.ok("put", self.lp("p.bin"), self.rr("pipe.bin"))
        self.assertEqual((r.stdout, r.stderr), ("", ""))
        r = self.ok("get", self.rr("pipe.bin"), self.lp("pipe.bin"))
        self.assertEqual((r.stdout, r.stderr), ("", ""))
        r = self.ok("put", "--json", self.lp("p.bin"), self.rr("pipe2.bin"))
        self.assertEqual(r.stderr, "")
        self.assertEqual(len(r.stdout.splitlines()), 1)
        self.assertEqual(json.loads(r.stdout)["bytes"], 64 * MiB)


class PackedListing(FilesTestCase):
    """fs.list with "packed": decoded here from docs/protocol.md alone, it says what the JSON form says."""

    @staticmethod
    def unpack(body):
        def varint(at):
            v, shift = 0, 0
            while True:
                b = body[at]
                at += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    return v, at
        entries, name, mode, mtime, at = [], b"", None, 0, 0
        while at < len(body):
            flags = body[at]
            at += 1
            shared, at = varint(at)
            n, at = varint(at)
            name = name[:shared] + body[at:at + n]
            at += n
            size, at = varint(at)
            if not flags & 4:
                mode, at = varint(at)
            zz, at = varint(at)
            mtime = (mtime + ((zz >> 1) ^ -(zz & 1))) % (1 << 64)
            e = {"name": name.decode(), "type": ["file", "dir", "symlink", "other"][flags & 3], "size": size,
                 "mode": mode, "mtime_ns": mtime - (1 << 64) if mtime >= 1 << 63 else mtime}
            if flags & 8:
                e["xxh3"] = body[at:at + 16].hex()
                at += 16
            if flags & 16:
                n, at = varint(at)
                e["target"] = body[at:at + n].decode()
                at += n
            entries.append(e)
        return entries

    def listing(self, s, rid, **extra):
        s.sendall(wire.encode({"type": "fs.list", "id": rid, "path": self.rdir, "recursive": True, **extra}))
        frames = []
        for _ in range(1000):
            h, body = wire.read_frame(s, 30)
            if h["type"] == "fs.list.progress":
                continue
            self.assertEqual(h["type"], "fs.list.reply", h)
            frames.append((h, body))
            if h["done"]:
                return frames
        self.fail("the listing did not end")

    def test_packed_listing_says_what_json_says(self):
        for i in range(2500):  # two frames' worth
            write_file(os.path.join(self.rshare, f"d{i % 3}", f"文件{i:05d}"), b"x" * (i % 7))
        os.symlink("d0", os.path.join(self.rshare, "link"))
        os.utime(os.path.join(self.rshare, "d1"), ns=(1, -1_000_000_000))  # before the epoch
        os.chmod(os.path.join(self.rshare, "d2", "文件00002"), 0o600)
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            plain = [e for h, body in self.listing(s, 1) for e in json.loads(body)]
            packed_frames = self.listing(s, 2, packed=True)
            with_digests = self.listing(s, 3, packed=True, digests=True)
        finally:
            s.close()
        self.assertGreater(len(packed_frames), 1)
        packed = []
        for h, body in packed_frames:
            self.assertTrue(h["packed"])
            entries = self.unpack(body)
            self.assertEqual(len(entries), h["count"])
            packed += entries
        self.assertEqual(packed, plain)
        self.assertLess(sum(len(b) for _, b in packed_frames) * 4,
                        sum(len(json.dumps(e, separators=(",", ":"))) for e in plain))
        digested = [e for h, body in with_digests for e in self.unpack(body)]
        self.assertEqual(len(digested), len(plain))
        for e in digested:
            self.assertEqual("xxh3" in e, e["type"] == "file", e)
        # d0/文件00000 is empty: docs/protocol.md gives the XXH3-128 of no bytes.
        self.assertEqual(next(e for e in digested if e["name"] == "d0/文件00000")["xxh3"],
                         "99aa06d3014798d86001c324468d497f")



class AuditTrail(unittest.TestCase):
    """One record per put, get, rm, mv and mkdir: user, peer, path, bytes, result.
    On stderr as a log line, or, when stderr is the journal, as journal fields."""

    def run_cli(self, srv, *args):
        env = dict(srv.env, CSKIT_TOKEN=srv.token or TOKEN)
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=60)

    def operations(self, srv, local):
        """Runs one of each file operation (and some that fail); the server's records follow."""
        with open(os.path.join(local, "a.txt"), "wb") as f:
            f.write(b"hello")
        a = srv.address
        self.assertEqual(self.run_cli(srv, "put", os.path.join(local, "a.txt"), f"{a}:a.txt").returncode, 0)
        self.assertEqual(self.run_cli(srv, "get", f"{a}:a.txt", os.path.join(local, "b.txt")).returncode, 0)
        self.assertEqual(self.run_cli(srv, "mkdir", f"{a}:d").returncode, 0)
        self.assertEqual(self.run_cli(srv, "mv", f"{a}:a.txt", "d/a.txt").returncode, 0)
        self.assertEqual(self.run_cli(srv, "rm", f"{a}:d").returncode, 17)  # not empty
        self.assertEqual(self.run_cli(srv, "rm", "-r", f"{a}:d").returncode, 0)
        self.assertEqual(self.run_cli(srv, "mkdir", f"{a}:../up").returncode, 7)  # refused by the server

    def test_records_on_stderr(self):
        local = tempfile.mkdtemp(prefix="cskit-audit-")
        self.addCleanup(shutil.rmtree, local, ignore_errors=True)
        with Server() as srv:
            self.operations(srv, local)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and 'path="../up"' not in srv.stderr():
                time.sleep(0.05)
            lines = [line[line.index("files op="):] for line in srv.stderr().splitlines() if "files op=" in line]
        peer = r"peer=127\.0\.0\.1:\d+"
        expected = [
            rf'^files op=put user=admin {peer} path="a\.txt" bytes=5 result=ok$',
            rf'^files op=get user=admin {peer} path="a\.txt" bytes=5 result=ok$',
            rf'^files op=mkdir user=admin {peer} path="d" bytes=0 result=ok$',
            rf'^files op=mv user=admin {peer} path="a\.txt" to="d/a\.txt" bytes=5 result=ok$',
            rf'^files op=rm user=admin {peer} path="d" bytes=0 result=not_empty message=".*not empty.*"$',
            rf'^files op=rm user=admin {peer} path="d" bytes=5 result=ok$',
            rf'^files op=mkdir user=admin {peer} path="\.\./up" bytes=0 result=bad_path message=".+"$',
        ]
        self.assertEqual(len(lines), len(expected), "\n".join(lines))
        for line, pattern in zip(lines, expected):
            self.assertRegex(line, pattern)

    def start_under_fake_journal(self):
        """A server whose stderr is a journal stream (as systemd sets it up) and whose journal
        socket is ours; returns (process, port, temporary directory, journal socket, stderr path)."""
        tmp = tempfile.mkdtemp(prefix="cskit-journal-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(journal.close)
        journal.bind(os.path.join(tmp, "journal.socket"))
        journal.settimeout(10)
        os.makedirs(os.path.join(tmp, "local"))
        # As systemd does: stderr is a stream the journal reads, and
        # JOURNAL_STREAM names its device and inode.
        err_path = os.path.join(tmp, "stderr")
        err = open(err_path, "wb")
        self.addCleanup(err.close)
        st = os.fstat(err.fileno())
        env = dict(os.environ, HOME=tmp, CSKIT_TOKEN=TOKEN, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
                   CSKIT_JOURNAL_SOCKET=os.path.join(tmp, "journal.socket"))
        proc = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--root", os.path.join(tmp, "share"),
                                 "--state-dir", os.path.join(tmp, "state")], stdout=subprocess.PIPE, stderr=err,
                                env=env)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.wait, 30)
        self.addCleanup(proc.terminate)
        port = None
        for _ in range(50):
            line = proc.stdout.readline().decode()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        self.assertIsNotNone(port)
        return proc, port, tmp, journal, err_path

    def test_records_go_to_the_journal_with_fields_under_systemd(self):
        proc, port, tmp, journal, err_path = self.start_under_fake_journal()
        local = os.path.join(tmp, "local")
        with open(os.path.join(local, "x.bin"), "wb") as f:
            f.write(b"z" * 1000)
        cenv = dict(os.environ, HOME=tmp, CSKIT_TOKEN=TOKEN)
        r = subprocess.run([BIN, "put", "--accept-new", os.path.join(local, "x.bin"), f"127.0.0.1:{port}:x.bin"],
                           capture_output=True, text=True, env=cenv, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        entry = journal.recv(65536).decode()
        fields = dict(line.split("=", 1) for line in entry.splitlines())
        self.assertEqual(fields["CSKIT_OP"], "put")
        self.assertEqual(fields["CSKIT_USER"], "admin")
        self.assertEqual(fields["CSKIT_PATH"], "x.bin")
        self.assertEqual(fields["CSKIT_BYTES"], "1000")
        self.assertEqual(fields["CSKIT_RESULT"], "ok")
        self.assertEqual(fields["SYSLOG_IDENTIFIER"], "cskit")
        self.assertEqual(fields["PRIORITY"], "6")
        self.assertRegex(fields["CSKIT_PEER"], r"^127\.0\.0\.1:\d+$")
        self.assertTrue(fields["MESSAGE"].startswith("files op=put user=admin"), fields["MESSAGE"])
        with open(err_path, encoding="utf-8", errors="replace") as f:
            self.assertNotIn("files op=", f.read())  # in the journal, not twice

    def test_a_journal_that_stops_reading_never_stalls_the_server(self):
        # journald busy: its socket's queue fills. A record that does not fit
        # goes to stderr at once; the event loop never waits for the journal.
        proc, port, tmp, journal, err_path = self.start_under_fake_journal()
        sock, _ = wire.login(port, TOKEN)
        started = time.monotonic()
        count = 1500
        for i in range(count):
            sock.sendall(wire.encode({"type": "fs.mkdir", "id": i, "path": f"d{i}"}))
            reply, _ = wire.read_frame(sock, 10)
            self.assertEqual(reply["type"], "fs.ok", reply)
        elapsed = time.monotonic() - started
        sock.close()
        self.assertLess(elapsed, 60)  # blocking for journald would take one second per record past the queue
        queued = 0
        journal.settimeout(0.5)
        try:
            while queued <= count:
                journal.recv(65536)
                queued += 1
        except (socket.timeout, TimeoutError):
            pass
        with open(err_path, encoding="utf-8", errors="replace") as f:
            fallback = f.read().count("files op=mkdir")
        self.assertGreater(queued, 0)
        self.assertGreater(fallback, 0)
        self.assertEqual(queued + fallback, count)  # none lost


class GraceOnShutdown(unittest.TestCase):
    """SIGTERM lets transfers in flight finish within --grace; one cut at its end is told
    that it can be resumed, and is."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cskit-grace-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.share = os.path.join(self.tmp, "share")
        self.state = os.path.join(self.tmp, "state")
        self.local = os.path.join(self.tmp, "local")
        os.makedirs(self.share)
        os.makedirs(self.local)
    def make_file(self, mib):
        self.content = os.urandom(mib << 20)
        write_file(os.path.join(self.share, "big"), self.content)

    def slow_get(self, srv, rate):
        env = dict(srv.env, CSKIT_TOKEN=srv.token or TOKEN)
        return subprocess.Popen([BIN, "get", "--bwlimit", rate, f"{srv.address}:big", os.path.join(self.local, "big")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_for_part(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            parts = [n for n in os.listdir(self.local) if n.startswith(PART_PREFIX)]
            if parts and os.path.getsize(os.path.join(self.local, parts[0])) > 0:
                return
            time.sleep(0.02)
        self.fail("the download did not start")

    def test_a_download_finishes_within_the_grace(self):
        # Larger than what the server's queue (16 MiB with kernel TLS) and
        # the sockets' buffers hold, so that it is still being sent at SIGTERM.
        self.make_file(64)
        srv = Server("--grace", "30", share=self.share, state_dir=self.state)
        try:
            client = self.slow_get(srv, "24M")  # about 3 s
            self.wait_for_part()
            stopped_at = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            out, err = client.communicate(timeout=60)
            self.assertEqual(client.returncode, 0, err)
            self.assertEqual(read_file(os.path.join(self.local, "big")), self.content)
            self.assertEqual(srv.proc.wait(timeout=30), 0)
            self.assertGreater(time.monotonic() - stopped_at, 0.5)  # it waited for the download
            self.assertIn("its transfers have 30000 ms to finish", srv.stderr())
        finally:
            srv.cleanup()

    def test_a_download_cut_at_the_end_of_the_grace_can_be_resumed(self):
        # Larger than what the server's queue and the sockets' buffers hold:
        # at 1 MiB/s, most of it is still on the server when the grace ends.
        self.make_file(48)
        srv = Server("--grace", "1", share=self.share, state_dir=self.state)
        try:
            client = self.slow_get(srv, "1M")
            self.wait_for_part()
            srv.proc.send_signal(signal.SIGTERM)
            out, err = client.communicate(timeout=60)
            self.assertNotEqual(client.returncode, 0)
            self.assertIn("run the same command again to resume it", err)
            self.assertEqual(srv.proc.wait(timeout=30), 0)
            self.assertIn('op=get user=admin', srv.stderr())
            self.assertIn('result=interrupted', srv.stderr())
        finally:
            srv.cleanup()
        self.assertFalse(os.path.exists(os.path.join(self.local, "big")))
        parts = [n for n in os.listdir(self.local) if n.startswith(PART_PREFIX)]
        self.assertEqual(len(parts), 1, os.listdir(self.local))
        kept = os.path.getsize(os.path.join(self.local, parts[0]))
        self.assertGreater(kept, 0)
        # The same command again, once the server is back: it resumes.
        srv = Server(share=self.share, state_dir=self.state)
        try:
            env = dict(srv.env, CSKIT_TOKEN=srv.token or TOKEN)
            r = subprocess.run([BIN, "get", "--json", f"{srv.address}:big", os.path.join(self.local, "big")],
                               capture_output=True, text=True, env=env, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertGreater(json.loads(r.stdout)["resumed_bytes"], 0)
            self.assertEqual(read_file(os.path.join(self.local, "big")), self.content)
        finally:
            srv.stop()
            srv.cleanup()


if __name__ == "__main__":
    unittest.main()
