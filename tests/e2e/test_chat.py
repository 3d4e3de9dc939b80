"""Chat end to end: several `cskit chat` clients in scriptable mode (stdin a
pipe, --json events), raw sockets, and one interactive client under tmux."""
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import unittest

from harness import BIN, Server, read_pty
import tlswire
import wire

CHAT_CONF = """
[chat]
history = 5
max_message = 200
rate = 5
burst = 5
max_queue = 262144
"""


class Client:
    """`cskit chat --json` with a pipe for stdin; events are read by a thread."""

    def __init__(self, server, nick, *args):
        self.events = queue.Queue()
        self.proc = subprocess.Popen([BIN, "chat", server.address, "--nick", nick, "--json", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(server.env, CSKIT_TOKEN=server.token), text=True, bufsize=1)
        self.stderr = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.err_reader.start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"type": "unparsed", "line": line})
        self.events.put(None)

    def say(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, predicate, timeout=10):
        """Returns the first event matching predicate; events before it are returned too."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if e is None:
                break
            seen.append(e)
            if predicate(e):
                return e, seen
        status = self.proc.poll()
        ended = f"the client exited with status {status}" if status is not None else "the client still runs"
        raise AssertionError(f"no matching event in {timeout} s; saw {seen}; {ended}; stderr: {''.join(self.stderr)!r}")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def message(text=None, sender=None, **extra):
    def match(e):
        if e.get("type") != "chat.message":
            return False
        if text is not None and e.get("text") != text:
            return False
        if sender is not None and e.get("from") != sender:
            return False
        return all(e.get(k) == v for k, v in extra.items())
    return match


def event(kind, nick=None):
    return lambda e: e.get("type") == "chat.event" and e.get("event") == kind and (nick is None or e.get("nick") == nick)


def note(pattern):
    return lambda e: e.get("type") == "note" and re.search(pattern, e.get("text", ""))


def kill_clients(clients):
    """Ends the `cskit chat` clients a test left running."""
    for c in clients:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


class ChatTest(unittest.TestCase):
    def setUp(self):
        self.server = Server(config_text=CHAT_CONF)
        self.clients = []

    def tearDown(self):
        kill_clients(self.clients)
        self.server.stop()
        self.server.cleanup()

    def client(self, nick, *args):
        c = Client(self.server, nick, *args)
        self.clients.append(c)
        c.wait_for(lambda e: e.get("type") == "chat.joined", timeout=30)  # generous: a busy machine, under ASan
        return c

    def test_join_notices_broadcast_order_utf8(self):
        alice = self.client("alice")
        alice.wait_for(event("join", "alice"))
        bob = self.client("bob")
        alice.wait_for(event("join", "bob"))
        texts = [f"message {i} 文件传输 🎉" for i in range(5)]
        for t in texts:
            alice.say(t)
        for who in (alice, bob):
            got = []
            for t in texts:
                e, _ = who.wait_for(message(t, "alice"))
                got.append(e)
            self.assertEqual([e["text"] for e in got], texts)
            self.assertEqual(sorted(e["ts"] for e in got), [e["ts"] for e in got])
            self.assertTrue(all(e["room"] == "#lobby" and not e.get("history") for e in got))

    def test_history_count_order_and_timestamps(self):
        alice = self.client("alice")
        sent = []
        for i in range(8):
            alice.say(f"h{i}")
            e, _ = alice.wait_for(message(f"h{i}"))
            sent.append(e)
            time.sleep(0.25)  # within the rate limit
        carol = self.client("carol")
        history = []
        while len(history) < 5:
            e, _ = carol.wait_for(message(history=True))
            history.append(e)
        self.assertEqual([e["text"] for e in history], ["h3", "h4", "h5", "h6", "h7"])  # the last 5, in order
        self.assertEqual([e["ts"] for e in history], [e["ts"] for e in sent[3:]])  # original timestamps
        carol.wait_for(event("join", "carol"))

    def test_nick_collision_is_refused_with_a_suggestion(self):
        self.client("dave")
        p = subprocess.run([BIN, "chat", self.server.address, "--nick", "Dave"], input="", capture_output=True,
                           text=True, env=dict(self.server.env, CSKIT_TOKEN=self.server.token), timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nickname 'Dave' is taken; try 'Dave2'", p.stderr)

    def test_private_messages_reach_only_their_target(self):
        alice, bob, eve = self.client("alice"), self.client("bob"), self.client("eve")
        alice.say("/msg bob the secret")
        e, _ = bob.wait_for(message("the secret", "alice", private=True))
        self.assertEqual(e["to"], "bob")
        alice.wait_for(message("the secret", "alice", private=True))  # the sender's copy
        alice.say("public after")
        _, seen = eve.wait_for(message("public after"))
        self.assertFalse([x for x in seen if x.get("text") == "the secret"], "eve saw the private message")
        alice.say("/msg nobody hello")
        alice.wait_for(note("no one is called 'nobody'"))

    def test_topic(self):
        alice, bob = self.client("alice"), self.client("bob")
        alice.say("/topic release on Friday")
        e, _ = bob.wait_for(event("topic", "alice"))
        self.assertEqual(e["topic"], "release on Friday")
        carol = self.client("carol")
        carol.say("/topic")
        carol.wait_for(note("topic of #lobby: release on Friday"))

    def test_piped_lines_are_paced_to_the_rate_limit(self):
        """Piped lines beyond the rate limit (5 a second, burst 5) wait their turn instead of being
        dropped; a line the server refuses for good makes the exit status non-zero."""
        alice = self.client("alice")
        start = time.monotonic()
        for i in range(12):
            alice.say(f"flood {i}")
        for i in range(12):
            alice.wait_for(message(f"flood {i}", "alice"))
        self.assertGreater(time.monotonic() - start, 1.0)  # 7 beyond the burst, at 5 a second
        alice.say("x" * 201)
        alice.wait_for(note(r"message is 201 bytes; the limit is 200"))
        alice.say("y" * 200)  # exactly at the limit: accepted, not truncated
        e, _ = alice.wait_for(message("y" * 200))
        self.assertEqual(len(e["text"]), 200)
        self.assertEqual(alice.close(), 7)
        alice.err_reader.join(timeout=5)
        self.assertIn("the server refused 1 line", "".join(alice.stderr))

    def test_piped_session_shows_every_own_line(self):
        """A whole script piped in and stdin closed at once: every line comes back before the client quits."""
        lines = "".join(f"line {i}\n" for i in range(8))
        r = subprocess.run([BIN, "chat", self.server.address, "--nick", "scripted", "--json"], input=lines,
                           capture_output=True, text=True, timeout=60,
                           env=dict(self.server.env, CSKIT_TOKEN=self.server.token))
        self.assertEqual(r.returncode, 0, r.stderr)
        said = [json.loads(l).get("text") for l in r.stdout.splitlines()
                if json.loads(l).get("type") == "chat.message" and json.loads(l).get("from") == "scripted"]
        self.assertEqual(said, [f"line {i}" for i in range(8)])

    def test_abrupt_disconnect_gives_a_quit_notice(self):
        alice, bob = self.client("alice"), self.client("bob")
        bob.proc.kill()
        e, _ = alice.wait_for(event("quit", "bob"))
        # A killed process's socket ends with FIN, or with RST when data it had not read was
        # still queued (a notice that arrived just before the kill): both are an abrupt quit.
        self.assertIn(e["reason"], ("peer closed", "Connection reset by peer"))
        carol = self.client("carol")
        carol.say("/quit see you")
        e, _ = alice.wait_for(event("quit", "carol"))
        self.assertEqual(e["reason"], "see you")

    def test_escape_sequences_arrive_neutralised(self):
        alice = self.client("alice")
        env = dict(self.server.env, CSKIT_TOKEN=self.server.token)
        watcher = subprocess.Popen([BIN, "chat", self.server.address, "--nick", "watch"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(1)
        alice.say("\x1b]0;pwned\x07 \x1b[2J red\x1b[31m bidi\u202e end")
        alice.wait_for(message(sender="alice"))
        time.sleep(0.5)
        out, _ = watcher.communicate(input=b"", timeout=20)
        self.assertNotIn(b"\x1b", out, "no escape byte reaches the terminal")
        self.assertNotIn(b"\x07", out)
        self.assertIn(b"^[]0;pwned^G ^[[2J red^[[31m bidi<U+202E> end", out)

    def test_invalid_utf8_is_refused(self):
        s, _ = wire.login(self.server.port, self.server.token)
        s.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": "raw"}))
        self.assertEqual(wire.read_frame(s)[0]["type"], "chat.welcome")
        s.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
        self.assertEqual(wire.read_frame(s)[0]["type"], "chat.joined")
        s.sendall(wire.encode({"type": "chat.say", "id": 3, "room": "lobby"}, b"bad \xff\xfe"))
        while True:
            h, _ = wire.read_frame(s)
            if h.get("id") == 3:
                break
        self.assertEqual((h["type"], h["code"]), ("error", "bad_request"))
        self.assertIn("not valid UTF-8", h["message"])
        s.close()

    def test_over_long_message_and_topic_carry_the_limit(self):
        """`too_large` carries `limit` (docs/protocol.md's error table); a topic that is not a string
        is a bad request, not `too_large`."""
        s, _ = wire.login(self.server.port, self.server.token)
        s.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": "limits"}))
        s.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
        s.sendall(wire.encode({"type": "chat.say", "id": 3, "room": "lobby"}, b"x" * 201))
        s.sendall(wire.encode({"type": "chat.topic", "id": 4, "room": "lobby", "topic": "t" * 201}))
        s.sendall(wire.encode({"type": "chat.topic", "id": 5, "room": "lobby", "topic": 7}))
        got = {}
        for _ in range(50):
            h, _ = wire.read_frame(s)
            if h.get("id") in (3, 4, 5):
                got[h["id"]] = h
            if len(got) == 3:
                break
        self.assertEqual([(got[i]["code"], got[i].get("limit")) for i in (3, 4)], [("too_large", 200)] * 2)
        self.assertEqual(got[5]["code"], "bad_request")
        s.close()

IDENTITY_TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdefgh",
                   "mallory": "mallory-token-0123456789abcd"}
INVISIBLE = "lrm\u200e rlm\u200f alm\u061c zwnj\u200c zwj\u200d ls\u2028 ps\u2029 tag\U000e0041 bom\ufeff end"
INVISIBLE_SHOWN = ("lrm<U+200E> rlm<U+200F> alm<U+061C> zwnj<U+200C> zwj<U+200D> ls<U+2028> ps<U+2029> "
                   "tag<U+E0041> bom<U+FEFF> end")


class IdentityTest(unittest.TestCase):
    """Nicknames are tied to accounts: an account's name is its own, names that look like an
    account's or like a nickname in use by another account are refused, /who says which account
    each nickname belongs to; invisible and direction-changing characters are shown, not obeyed."""

    @classmethod
    def setUpClass(cls):
        users = "".join(f'[[users]]\nname = "{n}"\ntoken = "{t}"\npermissions = ["chat"]\n\n'
                        for n, t in IDENTITY_TOKENS.items())
        cls.server = Server(config_text=CHAT_CONF + "\n" + users)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def hello(self, account, nick):
        """A raw connection of `account` introducing itself as `nick`: (socket, answer)."""
        s, _ = wire.login(self.server.port, IDENTITY_TOKENS[account], user=account)
        s.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": nick}))
        for _ in range(20):
            h, _ = wire.read_frame(s)
            if h.get("id") == 1:
                return s, h
        self.fail("no answer to chat.hello")

    def refused(self, account, nick, why):
        s, h = self.hello(account, nick)
        s.close()
        self.assertEqual((h["type"], h.get("code")), ("error", "conflict"), (account, nick, h))
        self.assertIn(why, h["message"])
        self.assertNotEqual(h["suggestion"].lower(), nick.lower())
        return h

    def test_names_belong_to_their_accounts(self):
        self.refused("bob", "alice", "reserved for the account 'alice'")  # before alice is even here
        for lookalike in ("aIice", "a1ice", "ALICE", "ALlCE", "Alice"):
            with self.subTest(nick=lookalike):
                self.refused("bob", lookalike, "alice")
        self.refused("bob", "rnallory", "looks like 'mallory', an account's name")
        held = []
        try:
            s, h = self.hello("alice", "alice")  # her own name
            held.append(s)
            self.assertEqual((h["type"], h["account"]), ("chat.welcome", "alice"))
            s, h = self.hello("alice", "aIice")  # a second session of hers, a name like her own
            held.append(s)
            self.assertEqual(h["type"], "chat.welcome", h)
            s, h = self.hello("bob", "bobby")
            held.append(s)
            self.assertEqual(h["type"], "chat.welcome", h)
            self.refused("mallory", "b0bby", "looks like 'bobby', which is in use")
            self.refused("mallory", "BOBBY", "is taken")
            for s in held:
                s.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "ids"}))
            for s in held:  # every join answered (they may be on different event loops) before asking who
                for _ in range(50):
                    h, _ = wire.read_frame(s)
                    if h.get("id") == 2:
                        break
                self.assertEqual(h.get("id"), 2, h)
            s = held[-1]
            s.sendall(wire.encode({"type": "chat.who", "id": 3, "room": "ids"}))
            for _ in range(50):
                h, _ = wire.read_frame(s)
                if h.get("id") == 3:
                    break
            self.assertEqual(h["accounts"], {"alice": "alice", "aIice": "alice", "bobby": "bob"})
            # The terminal client shows it.
            env = dict(self.server.env, CSKIT_USER="mallory", CSKIT_TOKEN=IDENTITY_TOKENS["mallory"])
            p = subprocess.run([BIN, "chat", self.server.address, "--nick", "eve", "--room", "ids"],
                               input="/who\n", capture_output=True, text=True, env=env, timeout=30)
            self.assertIn("aIice (account alice), alice (account alice), bobby (account bob), eve (account mallory)",
                          p.stdout, p.stderr)
        finally:
            for s in held:
                s.close()

    def test_the_login_names_the_default_nickname(self):
        """Without --nick the client chats under its account's name; if another session of the
        account holds it, under the server's suggestion, and says so."""
        env = dict(self.server.env, CSKIT_USER="bob", CSKIT_TOKEN=IDENTITY_TOKENS["bob"])

        def said(p):
            for line in p.stdout.splitlines():
                e = json.loads(line)
                if e.get("type") == "chat.message" and e.get("text") == "who am i" and not e.get("history"):
                    return e["from"]
            self.fail(f"no own message in {p.stdout!r}; stderr {p.stderr!r}")

        cmd = [BIN, "chat", self.server.address, "--room", "defaults", "--json"]
        p = subprocess.run(cmd, input="who am i\n", capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(said(p), "bob")
        for _ in range(100):  # the first session's quit may still be under way
            s, h = self.hello("bob", "bob")
            if h["type"] == "chat.welcome":
                break
            s.close()
            time.sleep(0.05)
        self.assertEqual(h["type"], "chat.welcome", h)
        try:
            p = subprocess.run(cmd, input="who am i\n", capture_output=True, text=True, env=env, timeout=30)
            self.assertEqual(said(p), "bob2")
            self.assertIn("nickname bob is taken; you are bob2", p.stdout)
        finally:
            s.close()

    def say_invisible(self):
        s, h = self.hello("alice", "speaker")
        s.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
        s.sendall(wire.encode({"type": "chat.say", "id": 3, "room": "lobby"}, INVISIBLE.encode()))
        return s

    def test_invisible_characters_on_a_pipe(self):
        env = dict(self.server.env, CSKIT_USER="bob", CSKIT_TOKEN=IDENTITY_TOKENS["bob"])
        watcher = subprocess.Popen([BIN, "chat", self.server.address, "--nick", "pipewatch"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(1)
        s = self.say_invisible()
        time.sleep(1)
        out, _ = watcher.communicate(input=b"", timeout=20)
        s.close()
        self.assertIn(INVISIBLE_SHOWN.encode(), out)
        for raw in ("\u200e", "\u200f", "\u061c", "\u200c", "\u200d", "\u2028", "\u2029", "\U000e0041", "\ufeff"):
            self.assertNotIn(raw.encode(), out)

    def test_invisible_characters_on_a_terminal(self):
        import pty
        env = dict(self.server.env, CSKIT_USER="bob", CSKIT_TOKEN=IDENTITY_TOKENS["bob"], TERM="xterm")
        master, slave = pty.openpty()
        p = subprocess.Popen([BIN, "chat", self.server.address, "--nick", "ttywatch"], stdin=slave, stdout=slave,
                             stderr=slave, env=env, close_fds=True)
        os.close(slave)
        out = b""
        s = None
        try:
            deadline = time.monotonic() + 20
            while b"connected as" not in out and time.monotonic() < deadline:
                out += self.read_some(master)
            s = self.say_invisible()
            while INVISIBLE_SHOWN.encode() not in out and time.monotonic() < deadline:
                out += self.read_some(master)
            os.write(master, b"/quit\r")
            p.wait(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            os.close(master)
            if s:
                s.close()
        self.assertIn(INVISIBLE_SHOWN.encode(), out)
        for raw in ("\u200e", "\u200f", "\u061c", "\u200c", "\u200d", "\u2028", "\u2029", "\U000e0041", "\ufeff"):
            self.assertNotIn(raw.encode(), out)

    @staticmethod
    def read_some(fd):
        return read_pty(fd) or b""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Lobby:
    """Raw-protocol clients in room lobby of SERVER; closes them on exit."""

    def __init__(self, server):
        self.server = server
        self.socks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in self.socks:
            s.close()

    def join(self, nick):
        s, _ = wire.login(self.server.port, self.server.token)
        self.socks.append(s)
        s.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": nick}))
        s.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
        while wire.read_frame(s)[0].get("id") != 2:
            pass
        return s


class OrderAcrossLoopsTest(unittest.TestCase):
    def test_every_receiver_sees_one_order(self):
        """Two senders on different event loops say messages at the same
        time; receivers on both loops must all see the same interleaving
        (the order the hub accepted them in), each sender's own in order.
        80 receivers per loop: a flush round spans two slices
        (net::flush_queue::slice, 64) while messages keep arriving."""
        conf = "[server]\nthreads = 2\n[chat]\nrate = 0\nhistory = 0\nmax_message = 100\n"
        with Server(config_text=conf) as server, Lobby(server) as lobby:
            join = lobby.join
            # Connections are spread over the loops in turn: consecutive ones
            # land on different loops.
            senders = [join("s0"), join("s1")]
            receivers = [join(f"r{i}") for i in range(160)]
            per_sender = 300
            batches = []
            for k, s in enumerate(senders):
                batches.append(b"".join(wire.encode({"type": "chat.say", "id": 10 + i, "room": "lobby"},
                                                    f"s{k}-{i}".encode()) for i in range(per_sender)))
            go = threading.Event()

            def fire(s, batch):
                go.wait(10)
                s.sendall(batch)

            def drain(s):  # the senders' replies and copies, so they never stall
                s.settimeout(0.5)
                try:
                    while s.recv(1 << 20):
                        pass
                except OSError:
                    pass

            threads = [threading.Thread(target=fire, args=(s, b)) for s, b in zip(senders, batches)]
            threads += [threading.Thread(target=drain, args=(s,), daemon=True) for s in senders]
            for t in threads:
                t.start()
            go.set()
            seen = []
            for r in receivers:
                texts = []
                deadline = time.monotonic() + 30
                while len(texts) < 2 * per_sender and time.monotonic() < deadline:
                    h, body = wire.read_frame(r, 30)
                    if h.get("type") == "chat.message":
                        texts.append(body.decode())
                seen.append(texts)
            self.assertEqual(len(seen[0]), 2 * per_sender)
            for k in range(2):
                mine = [t for t in seen[0] if t.startswith(f"s{k}-")]
                self.assertEqual(mine, [f"s{k}-{i}" for i in range(per_sender)])
            for i, texts in enumerate(seen[1:], 1):
                self.assertEqual(texts, seen[0], f"receiver r{i} saw another order than r0")


class LargeRoomTest(unittest.TestCase):
    def test_every_message_reaches_a_large_room_at_once(self):
        """One loop, 150 receivers: a broadcast is written over three
        slices of a flush round (net::flush_queue::slice, 64). Each message
        is sent on its own, after the previous one has reached everyone, so
        no later message can push a stalled round along: each must reach
        all receivers by itself."""
        conf = "[server]\nthreads = 1\n[chat]\nrate = 0\nhistory = 0\n"
        with Server(config_text=conf) as server, Lobby(server) as lobby:
            join = lobby.join
            sender = join("sender")
            receivers = [join(f"r{i}") for i in range(150)]
            for n in range(3):
                sender.sendall(wire.encode({"type": "chat.say", "id": 10 + n, "room": "lobby"}, f"m{n}".encode()))
                for i, r in enumerate(receivers):
                    deadline = time.monotonic() + 10
                    while True:
                        self.assertLess(time.monotonic(), deadline, f"r{i} never got m{n}")
                        h, body = wire.read_frame(r, 10)
                        if h.get("type") == "chat.message":
                            self.assertEqual(body.decode(), f"m{n}", f"r{i}")
                            break


class DisabledChatTest(unittest.TestCase):
    def test_chat_can_be_switched_off(self):
        with Server(config_text="[chat]\nenabled = false\n") as srv:
            p = subprocess.run([BIN, "chat", srv.address, "--nick", "x"], input="", capture_output=True, text=True,
                               env=dict(srv.env, CSKIT_TOKEN=srv.token), timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("chat is disabled on this server", p.stderr)
            info = json.loads(srv.cli("info", srv.address, "--json").stdout)
            self.assertEqual(info["services"], ["core", "files"])


class LivenessTest(unittest.TestCase):
    def test_a_silent_peer_is_pinged_then_dropped(self):
        server = Server(config_text="[chat]\nping_interval = 1\nping_timeout = 3\n")
        try:
            watcher = Client(server, "watcher")
            watcher.wait_for(lambda e: e.get("type") == "chat.joined")
            # A half-open peer: it logs in, joins, then never sends anything.
            mute, _ = wire.login(server.port, server.token)
            mute.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": "mute"}))
            mute.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
            t0 = time.monotonic()
            e, _ = watcher.wait_for(event("quit", "mute"), timeout=15)
            self.assertEqual(e["reason"], "ping timeout")
            self.assertGreater(time.monotonic() - t0, 2)
            pinged = False
            mute.settimeout(1)
            try:
                while True:
                    h, _ = wire.read_frame(mute, 1)
                    pinged |= h.get("type") == "ping"
            except Exception:
                pass
            self.assertTrue(pinged, "the server pinged before giving up")
            # The watcher itself answers pings (its client does), so it stays.
            watcher.say("still here")
            watcher.wait_for(message("still here", "watcher"))
            watcher.close()
            mute.close()
        finally:
            server.stop()
            server.cleanup()

    def test_the_client_reconnects_and_rejoins(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        first = Server(config_text=CHAT_CONF, listen=f"127.0.0.1:{port}")
        alice = None
        try:
            alice = Client(first, "alice", "--room", "ops")
            alice.wait_for(lambda e: e.get("type") == "chat.joined")
            first.stop()
            alice.wait_for(note(r"connection lost .*reconnecting in 0\.5 s"))
            # The same server restarted: same state directory, so the same key.
            second = Server(config_text=CHAT_CONF, listen=f"127.0.0.1:{port}", token=first.token,
                            state_dir=first.state)
            try:
                e, _ = alice.wait_for(lambda e: e.get("type") == "chat.joined", timeout=30)
                self.assertEqual(e["room"], "#ops")
                bob = Client(second, "bob", "--room", "ops")
                bob.wait_for(lambda e: e.get("type") == "chat.joined")
                alice.say("back again")
                bob.wait_for(message("back again", "alice"))
                bob.close()
            finally:
                second.stop()
                second.cleanup()
        finally:
            if alice and alice.proc.poll() is None:
                alice.proc.kill()
                alice.proc.wait()
            first.stop()
            first.cleanup()


class SlowReaderTest(unittest.TestCase):
    def test_a_reader_that_never_reads_is_dropped_and_others_stay_fast(self):
        conf = "[chat]\nmax_message = 4000\nrate = 200\nburst = 200\nmax_queue = 1048576\nhistory = 0\n"
        # Under AddressSanitizer freed memory is held in a quarantine (256 MB by
        # default), which would hide whether the server frees what it queued.
        asan = os.environ.get("ASAN_OPTIONS", "")
        server = Server(config_text=conf, env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=4"})
        clients = []
        try:
            # A raw client joins, then never reads its socket again.
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so it sticks
            raw.connect(("127.0.0.1", server.port))
            raw.settimeout(10)
            slow = tlswire.client_context().wrap_socket(raw)
            hello, _ = wire.read_frame(slow)
            slow.sendall(wire.auth_frame(slow, server.token))
            self.assertEqual(wire.read_frame(slow)[0]["type"], "welcome")
            slow.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": "sloth"}))
            slow.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))

            def client(nick):
                c = Client(server, nick)
                clients.append(c)
                c.wait_for(lambda e: e.get("type") == "chat.joined")
                return c

            bob = client("bob")
            # The sender is a raw connection that drains everything it is sent.
            sender, hello = wire.connect(server.port)
            sender.sendall(wire.auth_frame(sender, server.token))
            self.assertEqual(wire.read_frame(sender)[0]["type"], "welcome")
            sender.sendall(wire.encode({"type": "chat.hello", "id": 1, "nick": "sender"}))
            sender.sendall(wire.encode({"type": "chat.join", "id": 2, "room": "lobby"}))
            stop = threading.Event()

            def drain():
                sender.settimeout(0.2)
                while not stop.is_set():
                    try:
                        if not sender.recv(1 << 20):
                            return
                    except socket.timeout:
                        continue
                    except OSError:
                        return

            drainer = threading.Thread(target=drain, daemon=True)
            drainer.start()
            rss_before = rss_kib(server.proc.pid)
            payload = b"z" * 3990
            latencies, seen_all = [], []
            n = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for _ in range(50):
                    sender.sendall(wire.encode({"type": "chat.say", "id": 100 + n, "room": "lobby"},
                                               str(n).encode() + b" " + payload))
                    n += 1
                t0 = time.monotonic()
                _, seen = bob.wait_for(message(f"{n - 1} {payload.decode()}"), timeout=20)
                latencies.append(time.monotonic() - t0)
                seen_all += [x for x in seen if x.get("type") != "chat.message"]
                if any(x.get("type") == "chat.event" and x.get("nick") == "sloth" for x in seen_all):
                    break
                time.sleep(0.25)  # stay under the sender's rate limit (200/s)
            stop.set()
            sender.close()
            quits = [x for x in seen_all if x.get("type") == "chat.event" and x.get("event") == "quit"]
            self.assertEqual([(q["nick"], q["reason"]) for q in quits], [("sloth", "too slow: chat send queue full")])
            self.assertLess(max(latencies), 3.0, f"others kept being served promptly: {latencies}")
            self.assertLess(rss_kib(server.proc.pid) - rss_before, 32 * 1024, "server memory stayed bounded")
            self.assertIn("sloth", " ".join(q["nick"] for q in quits))
            self.assertRegex(server.stderr(), r"chat: 127\.0\.0\.1:\d+ is not reading \(over 1048576 bytes queued\)")
            slow.close()
        finally:
            for c in clients:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()
            server.stop()
            server.cleanup()


class InteractiveChatTest(unittest.TestCase):
    """The terminal client under tmux: a message arrives while a line is half
    typed; the line stays intact and is sent correctly afterwards."""

    def test_half_typed_line_survives_an_incoming_message(self):
        self.assertTrue(shutil.which("tmux"), "tmux is installed by scripts/install-deps.sh")
        server = Server(config_text=CHAT_CONF)
        session = f"cskit-e2e-{os.getpid()}"
        sock = os.path.join(server.dir, "tmux.sock")
        tmux = ["tmux", "-S", sock]
        env = dict(server.env, CSKIT_TOKEN=server.token, TERM="xterm-256color")
        try:
            subprocess.run(tmux + ["new-session", "-d", "-s", session, "-x", "120", "-y", "30",
                                   f"{BIN} chat {server.address} --nick typer"], check=True, env=env)

            def screen():
                return subprocess.run(tmux + ["capture-pane", "-p", "-t", session], capture_output=True,
                                      text=True, env=env).stdout

            def wait_screen(pattern, timeout=10):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    s = screen()
                    if re.search(pattern, s):
                        return s
                    time.sleep(0.1)
                self.fail(f"no {pattern!r} on screen:\n{screen()}")

            wait_screen(r"connected as typer")
            wait_screen(r"\[#lobby\] >\s*$")  # the status: where a typed line goes
            subprocess.run(tmux + ["send-keys", "-t", session, "-l", "half typed 文件"], check=True, env=env)
            wait_screen(r"\[#lobby\] > half typed 文件")
            # Ctrl-C with a typed line keeps it (a second one would quit).
            subprocess.run(tmux + ["send-keys", "-t", session, "C-c"], check=True, env=env)
            wait_screen(r"Ctrl-C again quits; your line is kept")
            wait_screen(r"\[#lobby\] > half typed 文件\s*$")
            other = Client(server, "other")
            other.wait_for(lambda e: e.get("type") == "chat.joined")
            other.say("interrupting message")
            # The message, then the input line redrawn intact below it (the
            # client writes the two one after the other: wait for both).
            s = wait_screen(r"<other> interrupting message[^\n]*\n(\s*\n)*\[#lobby\] > half typed 文件\s*$")
            lines = [l for l in s.splitlines() if l.strip()]
            self.assertEqual(lines[-1].rstrip(), "[#lobby] > half typed 文件", s)  # the input line is intact, last
            subprocess.run(tmux + ["send-keys", "-t", session, "-l", " done"], check=True, env=env)
            subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
            e, _ = other.wait_for(message("half typed 文件 done", "typer"))
            # irssi's habits: /j, /q (a private conversation), /names, /whois, /away.
            for keys, shown in (("/j #side", r"\[#side\] >\s*$"), ("/q other", r"\[-> other\] >\s*$")):
                subprocess.run(tmux + ["send-keys", "-t", session, "-l", keys], check=True, env=env)
                subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
                wait_screen(shown)
            subprocess.run(tmux + ["send-keys", "-t", session, "-l", "just for you"], check=True, env=env)
            subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
            other.wait_for(message("just for you", "typer", private=True))
            for keys, shown in (("/names #lobby", r"#lobby: other \(account admin\), typer"),
                                ("/whois other", r"other is account admin, idle \d+ s, in #lobby"),
                                ("/away lunch", r"you are marked as away"),
                                ("/msg #lobby to the room", r"#lobby <typer> to the room")):
                subprocess.run(tmux + ["send-keys", "-t", session, "-l", keys], check=True, env=env)
                subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
                wait_screen(shown)
            subprocess.run(tmux + ["send-keys", "-t", session, "-l", "/quit bye"], check=True, env=env)
            subprocess.run(tmux + ["send-keys", "-t", session, "Enter"], check=True, env=env)
            e, _ = other.wait_for(event("quit", "typer"))
            self.assertEqual(e["reason"], "bye")
            other.close()
        finally:
            subprocess.run(tmux + ["kill-server"], capture_output=True, env=env)
            server.stop()
            server.cleanup()


if __name__ == "__main__":
    unittest.main()
