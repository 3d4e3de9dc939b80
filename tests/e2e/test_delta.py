"""Delta transfer end to end (issue 20): `put -a`/`get -a`/`-c` send a changed large file's
differences only, both ways, and `-c` asks the server for the digests of same-size files only
(fs.digest). The real server and client, a client on the wire that breaks the rules, and a fake
server that lies.

Every wait is bounded; everything runs on 127.0.0.1 in temporary directories.
"""

import json
import os
import re
import struct
import subprocess
import time
import unittest

from harness import BIN, TOKEN
import wire
from test_files import (EXIT_OK, MiB, FakeFileServer, FilesTestCase, kill_when, part_size, random_bytes, read_file,
                        write_file)


class Delta(FilesTestCase):
    """put -a/-c sends a changed large file's differences only (content-defined chunks); the server checks
    every step a client asks of it."""

    def put_a(self, *extra):
        return self.json_ok("put", "-a", *extra, self.lp("big.bin"), self.rr())

    def assert_same(self):
        self.assertEqual(read_file(self.lp("big.bin")), read_file(os.path.join(self.rshare, "big.bin")))
        self.assert_no_parts(self.rshare)

    def test_changed_large_file_sends_about_the_change(self):
        size = 16 * MiB
        write_file(self.lp("big.bin"), random_bytes(size))
        first = self.put_a()
        self.assertEqual((first["files"], first["matched_bytes"]), (1, 0))
        self.assert_same()
        # 1 MiB appended: the old 16 MiB are copied on the server (all but
        # the last chunk, which the append lengthened: at most 256 KiB).
        with open(self.lp("big.bin"), "ab") as f:
            f.write(random_bytes(MiB))
        r = self.put_a()
        self.assertEqual((r["files"], r["bytes"]), (1, size + MiB))
        self.assertGreaterEqual(r["matched_bytes"], size - 256 * 1024)
        self.assert_same()
        # 1 MiB changed in the middle, the size unchanged.
        with open(self.lp("big.bin"), "r+b") as f:
            f.seek(8 * MiB)
            f.write(random_bytes(MiB))
        r = self.put_a()
        self.assertGreaterEqual(r["matched_bytes"], size - MiB - 2 * 256 * 1024)
        self.assert_same()
        # Bytes inserted near the start shift everything after them.
        data = read_file(self.lp("big.bin"))
        write_file(self.lp("big.bin"), data[:100000] + b"inserted" + data[100000:])
        r = self.put_a()
        self.assertGreaterEqual(r["matched_bytes"], len(data) - 2 * 256 * 1024)
        self.assert_same()
        # -c compares content, and sends differences too; --whole-file sends the file whole.
        with open(self.lp("big.bin"), "r+b") as f:
            f.write(b"new first bytes")
        r = self.json_ok("put", "-c", self.lp("big.bin"), self.rr("big.bin"))
        self.assertGreater(r["matched_bytes"], size - MiB)
        self.assert_same()
        with open(self.lp("big.bin"), "r+b") as f:
            f.write(b"and again")
        r = self.put_a("--whole-file")
        self.assertEqual((r["files"], r["matched_bytes"]), (1, 0))
        self.assert_same()
        # Nothing in common: all sent, and right.
        write_file(self.lp("big.bin"), random_bytes(2 * MiB))
        r = self.put_a()
        self.assertEqual(r["matched_bytes"], 0)
        self.assert_same()

    def test_interrupted_delta_upload_resumes(self):
        write_file(self.lp("big.bin"), random_bytes(64 * MiB))
        self.put_a()
        with open(self.lp("big.bin"), "r+b") as f:  # changes all along the file
            for at in range(0, 64 * MiB, 8 * MiB):
                f.seek(at)
                f.write(random_bytes(512 * 1024))
        p = subprocess.Popen([BIN, "put", "-a", "--bwlimit", "4M", self.lp("big.bin"), self.rr()],
                             env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_when(p, lambda: part_size(self.rshare) >= 8 * MiB)
        self.assertGreaterEqual(part_size(self.rshare), 8 * MiB, "the upload did not get far enough")
        r = self.put_a()
        self.assertGreaterEqual(r["resumed_bytes"], 8 * MiB)
        self.assertGreater(r["matched_bytes"], 16 * MiB)
        self.assert_same()

    def xxh3_hex(self, data):
        """The server's XXH3-128 of data, from the get.end of a download of it."""
        seed = os.path.join(self.rshare, "seed")
        write_file(seed, data)
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            s.sendall(wire.encode({"type": "get", "id": 1, "path": f"{self.rdir}/seed"}))
            for _ in range(100):
                h, _ = wire.read_frame(s)
                if "xxh3" in h:
                    return h["xxh3"]
            self.fail("no digest in the answer to get")
        finally:
            s.close()
            os.unlink(seed)

    def open_delta_upload(self, s, rid, name, size):
        """put with delta for `name` (which exists on the server); returns put.ready and the basis's group
        records (from the put.basis frames)."""
        s.sendall(wire.encode({"type": "put", "id": rid, "path": f"{self.rdir}/{name}", "size": size, "delta": True}))
        ready, _ = wire.read_frame(s, 20)
        self.assertEqual(ready["type"], "put.ready", ready)
        groups = b""
        for _ in range(1000):
            h, body = wire.read_frame(s, 20)
            if h.get("type") == "put.progress":
                continue
            self.assertEqual((h["type"], h["id"]), ("put.basis", rid), h)
            self.assertEqual(len(body), h["count"] * 16)
            groups += body
            if h["done"]:
                return ready, groups
        self.fail("the basis's groups did not end")

    def test_hostile_delta_requests_are_refused(self):
        old = random_bytes(2 * MiB)
        write_file(os.path.join(self.rshare, "t.bin"), old)
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            ready, body = self.open_delta_upload(s, 1, "t.bin", 3 * MiB)
            self.assertEqual(ready["basis"]["size"], 2 * MiB)
            self.assertEqual(sum(struct.unpack(">Q", body[i:i + 8])[0] for i in range(0, len(body), 16)), 2 * MiB)
            # A copy from past the old file's end.
            s.sendall(wire.encode({"type": "put.copy", "id": 1, "from": 2 * MiB - 10, "size": 11}))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["type"], err["id"], err["code"]), ("error", 1, "bad_request"), err)
            # (Upload 1 stays open, failed: it let go of its basis at once, so the next one gets one.)
            # Group numbers that repeat (a reply could be made to grow without bound), then a valid request.
            ready, body = self.open_delta_upload(s, 2, "t.bin", 3 * MiB)
            s.sendall(wire.encode({"type": "put.chunks", "id": 2}, struct.pack(">II", 0, 0)))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (2, "bad_request"), err)
            s.sendall(wire.encode({"type": "put.abort", "id": 2, "discard": True}))
            ready, body = self.open_delta_upload(s, 3, "t.bin", 3 * MiB)
            s.sendall(wire.encode({"type": "put.chunks", "id": 3}, struct.pack(">I", 0)))
            reply, records = wire.read_frame(s)
            self.assertEqual(reply["type"], "put.chunks.reply", reply)
            self.assertEqual(len(records), reply["count"] * 12)
            first_group = struct.unpack(">Q", body[:8])[0]
            self.assertEqual(sum(struct.unpack(">I", records[i:i + 4])[0] for i in range(0, len(records), 12)),
                             first_group)
            # A copy of 4 MiB + 1 (over the limit of one step).
            s.sendall(wire.encode({"type": "put.copy", "id": 3, "from": 0, "size": 4 * MiB + 1}))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (3, "bad_request"), err)
            s.sendall(wire.encode({"type": "put.abort", "id": 3, "discard": True}))
            # No basis asked for: nothing to copy from.
            s.sendall(wire.encode({"type": "put", "id": 4, "path": f"{self.rdir}/new.bin", "size": MiB}))
            ready, _ = wire.read_frame(s)
            self.assertNotIn("basis", ready)
            s.sendall(wire.encode({"type": "put.copy", "id": 4, "from": 0, "size": 10}))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (4, "bad_request"), err)
            s.sendall(wire.encode({"type": "put.abort", "id": 4, "discard": True}))
            # A copy that lies about the content: the digest refuses it, the old file stays.
            ready, body = self.open_delta_upload(s, 5, "t.bin", 2 * MiB)
            s.sendall(wire.encode({"type": "put.data", "id": 5, "offset": 0}))
            s.sendall(wire.encode({"type": "put.copy", "id": 5, "from": 0, "size": 2 * MiB}))
            s.sendall(wire.encode({"type": "put.end", "id": 5, "xxh3": "0" * 32}))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (5, "integrity"), err)
            # The connection still works, and a well-formed copy commits.
            ready, body = self.open_delta_upload(s, 6, "t.bin", 2 * MiB)
            s.sendall(wire.encode({"type": "put.data", "id": 6, "offset": 0}))
            s.sendall(wire.encode({"type": "put.copy", "id": 6, "from": MiB, "size": MiB}))
            s.sendall(wire.encode({"type": "put.copy", "id": 6, "from": 0, "size": MiB}))
            swapped = old[MiB:] + old[:MiB]
            s.sendall(wire.encode({"type": "put.end", "id": 6, "xxh3": self.xxh3_hex(swapped)}))
            done, _ = wire.read_frame(s)
            self.assertEqual(done["type"], "put.done", done)
            # The connection stays open: the replaced file is not held open by the server (its
            # blocks would stay allocated while the quota counts them free).
            fd_dir = f"/proc/{self.srv.proc.pid}/fd"
            held = [os.readlink(os.path.join(fd_dir, n)) for n in os.listdir(fd_dir)]
            self.assertFalse([h for h in held if h.startswith(self.rshare) and h.endswith("(deleted)")], held)
            s.sendall(wire.encode({"type": "put.abort", "id": 1, "discard": True}))
            s.sendall(wire.encode({"type": "ping", "id": 99}))
            pong, _ = wire.read_frame(s)
            self.assertEqual(pong["type"], "pong", pong)
        finally:
            s.close()
        self.assertEqual(read_file(os.path.join(self.rshare, "t.bin")), swapped)
        self.assert_no_parts(self.rshare)
        self.assertFalse(os.path.exists(os.path.join(self.rshare, "new.bin")))



class Digests(FilesTestCase):
    """fs.digest: the XXH3-128 of named files, in bulk (what put -c and get -c ask for the files
    whose sizes match)."""

    def test_digests_of_named_files(self):
        write_file(os.path.join(self.rshare, "a.bin"), b"hello\n")
        os.makedirs(os.path.join(self.rshare, "sub"))
        os.symlink("a.bin", os.path.join(self.rshare, "link"))
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            # 1000 long paths (more than a frame header could hold), one file named twice.
            names = ["a.bin", "sub", "missing", "link", "a.bin"] + ["x" * 200] * 995
            body = json.dumps([f"{self.rdir}/{n}" for n in names]).encode()
            s.sendall(wire.encode({"type": "fs.digest", "id": 1}, body))
            h, _ = wire.read_frame(s)
            self.assertEqual(h["type"], "fs.digest.reply", h)
            hello = "6bba86c7e069f56d5a10b435f1c8e49c"
            self.assertEqual(h["xxh3"], [hello, "", "", "", hello] + [""] * 995)
            for rid, paths, code in ((2, [f"{self.rdir}/../x"], "bad_path"), (3, [], "bad_request"),
                                     (4, ["a"] * 1001, "bad_request"), (5, [7], "bad_request"),
                                     (6, {"a": 1}, "bad_request")):
                s.sendall(wire.encode({"type": "fs.digest", "id": rid}, json.dumps(paths).encode()))
                h, _ = wire.read_frame(s)
                self.assertEqual((h["type"], h["id"], h["code"]), ("error", rid, code), h)
        finally:
            s.close()
        # -c: a file of another size is sent without being read on the server; one of the same
        # size and content is not sent.
        write_file(self.lp("a.bin"), b"hello\n")
        write_file(self.lp("b.bin"), b"other content\n")
        write_file(os.path.join(self.rshare, "b.bin"), b"old\n")
        r = self.json_ok("put", "-c", self.lp("a.bin"), self.lp("b.bin"), self.rr())
        self.assertEqual((r["files"], r["unchanged"]), (1, 1))
        self.assertEqual(read_file(os.path.join(self.rshare, "b.bin")), b"other content\n")


class DeltaGet(FilesTestCase):
    """get -a/-c rebuilds a changed large file from the local older copy and fetches only the ranges it
    lacks; the server checks every request, and the client every answer."""

    def get_a(self, *extra):
        return self.json_ok("get", "-a", *extra, self.rr("big.bin"), self.lp("big.bin"))

    def assert_same(self):
        self.assertEqual(read_file(self.lp("big.bin")), read_file(os.path.join(self.rshare, "big.bin")))
        self.assert_no_parts(self.local)

    def test_changed_large_file_fetches_about_the_change(self):
        size = 16 * MiB
        remote = os.path.join(self.rshare, "big.bin")
        write_file(remote, random_bytes(size))
        first = self.get_a()
        self.assertEqual((first["files"], first["matched_bytes"]), (1, 0))
        self.assert_same()
        with open(remote, "ab") as f:  # 1 MiB appended
            f.write(random_bytes(MiB))
        r = self.get_a()
        self.assertEqual((r["files"], r["bytes"]), (1, size + MiB))
        self.assertGreaterEqual(r["matched_bytes"], size - 256 * 1024)
        self.assert_same()
        with open(remote, "r+b") as f:  # 1 MiB changed in the middle
            f.seek(8 * MiB)
            f.write(random_bytes(MiB))
        r = self.get_a()
        self.assertGreaterEqual(r["matched_bytes"], size - MiB - 2 * 256 * 1024)
        self.assert_same()
        data = read_file(remote)  # bytes inserted near the start; then the file shortened
        write_file(remote, data[:100000] + b"inserted" + data[100000:12 * MiB])
        r = self.get_a()
        self.assertGreaterEqual(r["matched_bytes"], 12 * MiB - 2 * 256 * 1024)
        self.assert_same()
        with open(remote, "r+b") as f:  # -c too, with SHA-256 checked as well
            f.write(b"new first bytes")
        r = self.json_ok("get", "-c", "--verify", "sha256", self.rr("big.bin"), self.lp("big.bin"))
        self.assertGreater(r["matched_bytes"], 10 * MiB)
        self.assert_same()
        # The audit trail records the bytes a delta download sent, not the file's size.
        path = re.escape(f"{self.rdir}/big.bin")
        records = re.findall(rf'op=get user=admin peer=\S+ path="{path}" bytes=(\d+) result=ok', self.srv.stderr())
        self.assertTrue(records)
        self.assertLess(int(records[-1]), 2 * MiB)
        with open(remote, "r+b") as f:
            f.write(b"and again")
        r = self.get_a("--whole-file")
        self.assertEqual((r["files"], r["matched_bytes"]), (1, 0))
        self.assert_same()
        write_file(remote, random_bytes(2 * MiB))  # nothing in common: all fetched, and right
        r = self.get_a()
        self.assertEqual(r["matched_bytes"], 0)
        self.assert_same()

    def test_large_change_after_a_long_copy(self):
        """The client copies a long unchanged stretch a slice at a time and keeps reading the
        connection meanwhile: the bytes of the change after it wait in memory (16 MiB) and, past
        that, in an unnamed spill file, read back when the part reaches them. (Reading nothing while copying would stall the server, which closes a connection
        it cannot write to for 30 s.)"""
        remote = os.path.join(self.rshare, "big.bin")
        same = random_bytes(192 * MiB)
        write_file(remote, same + random_bytes(8 * MiB))
        self.get_a()
        write_file(remote, same + random_bytes(64 * MiB))
        r = self.get_a()
        self.assertGreaterEqual(r["matched_bytes"], 192 * MiB - 256 * 1024)
        self.assert_same()

    def test_a_tree_of_changed_files_both_ways(self):
        """More changed files than the client keeps requests in flight (64): every one is
        rebuilt from its old copy, whether its rebuild ends before or after its get.end."""
        tree = os.path.join(self.rshare, "tree")
        os.makedirs(tree)
        names = [f"f{i:03d}.bin" for i in range(90)]
        for n in names:
            write_file(os.path.join(tree, n), random_bytes(512 * 1024))
        self.json_ok("get", "-a", self.rr("tree"), self.lp())
        for n in names:
            with open(os.path.join(tree, n), "r+b") as f:
                f.seek(300 * 1024)
                f.write(random_bytes(1000))
        r = self.json_ok("get", "-a", self.rr("tree"), self.lp())
        self.assertEqual(r["files"], len(names))
        self.assertGreater(r["matched_bytes"], len(names) * 256 * 1024)
        for n in names:
            self.assertEqual(read_file(self.lp("tree", n)), read_file(os.path.join(tree, n)), n)
        self.assert_no_parts(self.local)
        for n in names:  # and back
            with open(self.lp("tree", n), "r+b") as f:
                f.seek(100 * 1024)
                f.write(random_bytes(1000))
        r = self.json_ok("put", "-a", self.lp("tree"), self.rr())
        self.assertEqual(r["files"], len(names))
        for n in names:
            self.assertEqual(read_file(self.lp("tree", n)), read_file(os.path.join(tree, n)), n)

    def test_interrupted_delta_download_resumes(self):
        remote = os.path.join(self.rshare, "big.bin")
        write_file(remote, random_bytes(64 * MiB))
        self.get_a()
        with open(remote, "r+b") as f:  # changes all along the file
            for at in range(0, 64 * MiB, 8 * MiB):
                f.seek(at)
                f.write(random_bytes(512 * 1024))
        p = subprocess.Popen([BIN, "get", "-a", "--bwlimit", "2M", self.rr("big.bin"), self.lp("big.bin")],
                             env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        kill_when(p, lambda: part_size(self.local) >= 8 * MiB)
        self.assertGreaterEqual(part_size(self.local), 8 * MiB, "the download did not get far enough")
        r = self.get_a()
        self.assertGreaterEqual(r["resumed_bytes"], 8 * MiB)
        # Matched chunks are copied locally, not at --bwlimit: on a loaded machine the kill can
        # come late and the part hold half the file or more, and then the rest comes whole by
        # design (download_delta.cpp, open_basis). Either way what the rule says must hold.
        if r["resumed_bytes"] < 32 * MiB:
            self.assertGreater(r["matched_bytes"], 16 * MiB)
        else:
            self.assertEqual(r["matched_bytes"], 0)
        self.assert_same()

    def open_delta_get(self, s, rid, name):
        """get with delta; returns get.begin and the group records (from the get.groups frames)."""
        s.sendall(wire.encode({"type": "get", "id": rid, "path": f"{self.rdir}/{name}", "delta": True}))
        begin, _ = wire.read_frame(s, 20)
        self.assertEqual((begin["type"], begin["delta"]["chunk_avg"]), ("get.begin", 16384), begin)
        groups = b""
        for _ in range(1000):
            h, body = wire.read_frame(s, 20)
            if h.get("type") == "get.progress":
                continue
            self.assertEqual((h["type"], h["id"]), ("get.groups", rid), h)
            self.assertEqual(len(body), h["count"] * 16)
            groups += body
            if h["done"]:
                return begin, groups
        self.fail("the file's groups did not end")

    def test_hostile_delta_get_requests_are_refused(self):
        data = random_bytes(2 * MiB)
        write_file(os.path.join(self.rshare, "t.bin"), data)
        write_file(os.path.join(self.rshare, "small.bin"), data[:1000])
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            # Overlapping ranges: refused, the download ends, the connection goes on.
            begin, groups = self.open_delta_get(s, 1, "t.bin")
            self.assertEqual(sum(struct.unpack(">Q", groups[i:i + 8])[0] for i in range(0, len(groups), 16)), 2 * MiB)
            s.sendall(wire.encode({"type": "get.ranges", "id": 1}, struct.pack(">QQQQ", 0, 10, 5, 10)))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["type"], err["id"], err["code"]), ("error", 1, "bad_request"), err)
            # Past the end; then repeated group numbers.
            self.open_delta_get(s, 2, "t.bin")
            s.sendall(wire.encode({"type": "get.ranges", "id": 2}, struct.pack(">QQ", 2 * MiB - 5, 6)))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (2, "bad_request"), err)
            self.open_delta_get(s, 3, "t.bin")
            s.sendall(wire.encode({"type": "get.chunks", "id": 3}, struct.pack(">II", 0, 0)))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (3, "bad_request"), err)
            # For a download that is over: ignored (the next frame answers the ping).
            s.sendall(wire.encode({"type": "get.ranges", "id": 3}, struct.pack(">QQ", 0, 10)))
            s.sendall(wire.encode({"type": "ping", "id": 99}))
            pong, _ = wire.read_frame(s)
            self.assertEqual(pong["type"], "pong", pong)
            # A well-formed exchange: the first group's chunks, then two ranges; get.end has the
            # digest of the whole file, as a plain get does.
            begin, groups = self.open_delta_get(s, 4, "t.bin")
            s.sendall(wire.encode({"type": "get.chunks", "id": 4}, struct.pack(">I", 0)))
            reply, records = wire.read_frame(s)
            self.assertEqual(reply["type"], "get.chunks.reply", reply)
            self.assertEqual(len(records), reply["count"] * 12)
            self.assertEqual(sum(struct.unpack(">I", records[i:i + 4])[0] for i in range(0, len(records), 12)),
                             struct.unpack(">Q", groups[:8])[0])
            s.sendall(wire.encode({"type": "get.chunks", "id": 4}, struct.pack(">I", 0)))  # twice: refused
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (4, "bad_request"), err)
            begin, groups = self.open_delta_get(s, 5, "t.bin")
            s.sendall(wire.encode({"type": "get.ranges", "id": 5}, struct.pack(">QQQQ", 0, 10, 100, 20)))
            got = b""
            for _ in range(10):
                h, body = wire.read_frame(s)
                if h["type"] != "get.data":
                    break
                got += body
            self.assertEqual((h["type"], got), ("get.end", data[0:10] + data[100:120]), h)
            self.assertEqual(h["xxh3"], self.xxh3_of(s, "t.bin"))
            # Many small ranges come in few frames; more ranges than the file has chunks (2 MiB of
            # 4 KiB at least: 513) are refused.
            self.open_delta_get(s, 7, "t.bin")
            many = [(i * 4000, 1 + i % 3) for i in range(500)]
            s.sendall(wire.encode({"type": "get.ranges", "id": 7}, b"".join(struct.pack(">QQ", o, n) for o, n in many)))
            frames, got = 0, b""
            for _ in range(600):
                h, body = wire.read_frame(s)
                if h["type"] != "get.data":
                    break
                frames += 1
                got += body
            self.assertEqual((h["type"], got), ("get.end", b"".join(data[o:o + n] for o, n in many)), h)
            self.assertEqual(frames, 1)
            self.open_delta_get(s, 8, "t.bin")
            s.sendall(wire.encode({"type": "get.ranges", "id": 8},
                                  b"".join(struct.pack(">QQ", i * 2, 1) for i in range(600))))
            err, _ = wire.read_frame(s)
            self.assertEqual((err["id"], err["code"]), (8, "bad_request"), err)
            # One description at a time per connection: a delta get ended at once (get.chunks before
            # the description is done) leaves its reading behind; the next one comes whole.
            write_file(os.path.join(self.rshare, "big.bin"), random_bytes(64 * MiB))
            s.sendall(wire.encode({"type": "get", "id": 20, "path": f"{self.rdir}/big.bin", "delta": True}) +
                      wire.encode({"type": "get.chunks", "id": 20}, struct.pack(">I", 0)) +
                      wire.encode({"type": "get", "id": 21, "path": f"{self.rdir}/big.bin", "delta": True}))
            h, _ = wire.read_frame(s)
            self.assertEqual((h["type"], h["id"]), ("get.begin", 20), h)
            self.assertIn("delta", h)
            for _ in range(100):
                h, _ = wire.read_frame(s)
                if h["type"] == "error":
                    break
            self.assertEqual((h["id"], h["code"]), (20, "bad_request"), h)
            h, _ = wire.read_frame(s)
            self.assertEqual((h["type"], h["id"]), ("get.begin", 21), h)
            self.assertNotIn("delta", h)
            for _ in range(2000):  # (256 KiB frames under TLS)
                h, _ = wire.read_frame(s, 20)
                if h["type"] != "get.data":
                    break
            self.assertEqual((h["type"], h["id"]), ("get.end", 21), h)
            # A small file comes whole (get.file), delta or not.
            s.sendall(wire.encode({"type": "get", "id": 6, "path": f"{self.rdir}/small.bin", "delta": True}))
            h, body = wire.read_frame(s)
            self.assertEqual((h["type"], body), ("get.file", data[:1000]), h)
        finally:
            s.close()

    def xxh3_of(self, s, name):
        s.sendall(wire.encode({"type": "get", "id": 50, "path": f"{self.rdir}/{name}"}))
        for _ in range(100):
            h, _ = wire.read_frame(s)
            if h["type"] == "get.end":
                return h["xxh3"]
        self.fail("no get.end")

    def test_client_checks_a_lying_delta_server(self):
        old = random_bytes(MiB)
        new = old + random_bytes(512 * 1024)
        write_file(os.path.join(self.rshare, "new.bin"), new)
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            digest = self.xxh3_of(s, "new.bin")
        finally:
            s.close()
        entry = {"name": "big.bin", "type": "file", "size": len(new), "mode": 0o644, "mtime_ns": 2 * 10 ** 18}
        asked = []

        def serve(groups, extra=b"", xxh3=digest, avg=16384, data_first=False):
            def reply(conn, rid):
                conn.sendall(wire.encode({"type": "get.begin", "id": rid, "size": len(new), "offset": 0, "mode": 0o644,
                                          "mtime_ns": entry["mtime_ns"], "delta": {"chunk_avg": avg}}))
                if data_first:  # bytes nobody asked for
                    conn.sendall(wire.encode({"type": "get.data", "id": rid}, new[:10]))
                    conn.sendall(wire.encode({"type": "get.end", "id": rid, "size": len(new), "xxh3": xxh3}))
                    return
                if groups is not None:
                    conn.sendall(wire.encode({"type": "get.groups", "id": rid, "count": len(groups) // 16,
                                              "done": True}, groups))
                for _ in range(20):
                    h, body = wire.read_frame(conn, 30)
                    if h["type"] == "get.ranges":
                        break
                asked.append(body)
                ranges = [struct.unpack(">QQ", body[i:i + 16]) for i in range(0, len(body), 16)]
                payload = b"".join(new[o:o + n] for o, n in ranges) + extra
                conn.sendall(wire.encode({"type": "get.data", "id": rid}, payload))
                conn.sendall(wire.encode({"type": "get.end", "id": rid, "size": len(new), "xxh3": xxh3}))
            return reply

        whole = struct.pack(">QQ", 0, len(new))
        too_long = struct.pack(">QQ", len(new) + 1, 1)  # groups that pass the file's end
        cases = [
            ("groups that do not add up", serve(too_long), True, whole),
            ("another chunk size", serve(None, avg=12345), True, whole),
            ("data before any range", serve(None, data_first=True), False, None),
            ("more data than asked", serve(too_long, extra=b"0123456789"), False, whole),
            ("a digest that lies", serve(too_long, xxh3="0" * 32), False, whole),
        ]
        for name, reply, ok, want_asked in cases:
            with self.subTest(name):
                write_file(self.lp("big.bin"), old)
                asked.clear()
                fake = FakeFileServer({"big.bin": entry}, [entry], {"big.bin": reply})
                try:
                    r = subprocess.run([BIN, "get", "-a", *fake.trust_args(), f"127.0.0.1:{fake.port}:big.bin",
                                        self.lp("big.bin")], capture_output=True, text=True, env=self.env(), timeout=60)
                finally:
                    fake.close()
                if want_asked is not None:
                    self.assertEqual(asked, [want_asked])
                self.assertEqual(read_file(self.lp("big.bin")), new if ok else old, r.stderr)
                self.assertEqual(r.returncode == EXIT_OK, ok, r.stderr)
                self.assert_no_parts(self.local)
                self.assertEqual(sorted(os.listdir(self.local)), ["big.bin"])

    def test_lying_delta_server_and_a_resumed_part(self):
        """A resumed delta download whose server's description is of no use asks for the rest of
        the file from where the part ends (not from the start, nor twice that far)."""
        old = random_bytes(MiB)
        new = old + random_bytes(MiB)
        write_file(os.path.join(self.rshare, "new.bin"), new)
        s, _ = wire.login(self.srv.port, TOKEN)
        try:
            digest = self.xxh3_of(s, "new.bin")
        finally:
            s.close()
        entry = {"name": "big.bin", "type": "file", "size": len(new), "mode": 0o644, "mtime_ns": 2 * 10 ** 18}
        asked, offered = [], []
        cut = 300 * 1024

        def begin(conn, rid, offset):
            conn.sendall(wire.encode({"type": "get.begin", "id": rid, "size": len(new), "offset": offset,
                                      "mode": 0o644, "mtime_ns": entry["mtime_ns"], "delta": {"chunk_avg": 16384}}))
            conn.sendall(wire.encode({"type": "get.groups", "id": rid, "count": 1, "done": True},
                                     struct.pack(">QQ", len(new) + 1, 1)))  # does not add up
            for _ in range(20):
                h, body = wire.read_frame(conn, 30)
                if h["type"] == "get.ranges":
                    asked.append(body)
                    return [struct.unpack(">QQ", body[i:i + 16]) for i in range(0, len(body), 16)]
            raise ValueError("no get.ranges")

        def cut_short(conn, rid):  # the first cut bytes, then the connection drops
            ranges = begin(conn, rid, 0)
            conn.sendall(wire.encode({"type": "get.data", "id": rid}, new[ranges[0][0]:cut]))
            time.sleep(0.2)
            conn.close()

        def resume(conn, rid):
            offset = fake.requests[-1].get("offset", 0)
            offered.append(offset)
            ranges = begin(conn, rid, offset)
            conn.sendall(wire.encode({"type": "get.data", "id": rid}, b"".join(new[o:o + n] for o, n in ranges)))
            conn.sendall(wire.encode({"type": "get.end", "id": rid, "size": len(new), "xxh3": digest}))

        write_file(self.lp("big.bin"), old)
        for reply, ok in ((cut_short, False), (resume, True)):
            fake = FakeFileServer({"big.bin": entry}, [entry], {"big.bin": reply})
            try:
                r = subprocess.run([BIN, "get", "-a", *fake.trust_args(), f"127.0.0.1:{fake.port}:big.bin",
                                    self.lp("big.bin")], capture_output=True, text=True, env=self.env(), timeout=60)
            finally:
                fake.close()
            self.assertEqual(r.returncode == EXIT_OK, ok, r.stderr)
        self.assertEqual(offered, [cut])
        self.assertEqual(asked, [struct.pack(">QQ", 0, len(new)), struct.pack(">QQ", cut, len(new) - cut)])
        self.assertEqual(read_file(self.lp("big.bin")), new)
        self.assert_no_parts(self.local)


if __name__ == "__main__":
    unittest.main()
