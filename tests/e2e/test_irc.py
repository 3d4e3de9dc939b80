"""The IRC front end end to end: raw IRC over TLS and cleartext (every
command and capability the front end offers), a `cskit chat` client in the
same rooms, and real clients: irssi under tmux, WeeChat headless and a bot
written with python3-irc."""
import base64
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import types
import unittest

from harness import BIN, Server
from test_chat import Client, event, kill_clients, message

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab",
          "carol": "carol-token-0123456789", "dave": "dave-token-0123456789a"}

CONF = """
[server]
frame_timeout = 3

[chat]
history = 5
rate = 5
burst = 5

[irc]
listen = "127.0.0.1:0"
motd = "Welcome to the test server\\nBe nice"

""" + "".join(f"""
[[users]]
name = "{name}"
token = "{token}"
permissions = [{'"files-read"' if name == "dave" else '"chat"'}]
""" for name, token in TOKENS.items())


def irc_port(server):
    for line in server.banner:
        m = re.search(r"^irc: 127\.0\.0\.1:(\d+) \((TLS|cleartext)\)", line)
        if m:
            return int(m.group(1)), m.group(2) == "TLS"
    raise AssertionError(f"no irc line in the banner: {server.banner}")


class Irc:
    """A raw IRC connection; lines are read with a deadline."""

    def __init__(self, port, tls=True, timeout=10):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the key itself is pinned in test_tls; here the IRC layer is tested
            raw = ctx.wrap_socket(raw)
        self.sock = raw
        self.buf = b""
        self.lines = []

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n" if isinstance(line, str) else line)

    def read_line(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            if not chunk:
                return ""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        text = line.rstrip(b"\r").decode()
        self.lines.append(text)
        return text

    def expect(self, pattern, timeout=10):
        """The first line matching `pattern` (a regex); the lines before it are kept in self.seen."""
        deadline = time.monotonic() + timeout
        self.seen = []
        while True:
            line = self.read_line(deadline)
            if line is None or line == "":
                raise AssertionError(f"no line matching {pattern!r} ({'closed' if line == '' else 'timeout'}); "
                                     f"saw {self.seen}")
            self.seen.append(line)
            if line.startswith("PING "):
                self.send("PONG " + line[5:])
            if re.search(pattern, line):
                return line

    def quiet(self, pattern, wait=0.5):
        """Asserts that no line matching `pattern` arrives within `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            line = self.read_line(deadline)
            if line is None or line == "":
                return
            assert not re.search(pattern, line), f"unexpected line {line!r}"

    def closed(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(deadline)
            if line == "":
                return True
            if line is None:
                return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def sasl_plain(user, token):
    return base64.b64encode(f"\0{user}\0{token}".encode()).decode()


class IrcTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(config_text=CONF, token=None)
        cls.port, cls.tls = irc_port(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def setUp(self):
        self.open = []

    def tearDown(self):
        for c in self.open:
            if isinstance(c, Irc):
                c.close()
        kill_clients([c for c in self.open if not isinstance(c, Irc)])

    def connect(self, tls=True):
        c = Irc(self.port, tls=tls and self.tls)
        self.open.append(c)
        return c

    def login(self, user, nick=None, caps=("sasl",)):
        """Registers with CAP LS 302 and SASL PLAIN; returns the connection after RPL_ENDOFMOTD."""
        c = self.connect()
        nick = nick or user
        c.send("CAP LS 302")
        c.send(f"NICK {nick}")
        c.send(f"USER {user} 0 * :{user.title()}")
        c.expect(r" CAP \* LS :.*sasl=PLAIN")
        c.send("CAP REQ :" + " ".join(caps))
        c.expect(r" CAP \S+ ACK")
        c.send("AUTHENTICATE PLAIN")
        c.expect(r"^AUTHENTICATE \+$")
        c.send("AUTHENTICATE " + sasl_plain(user, TOKENS[user]))
        c.expect(r" 903 ")
        c.send("CAP END")
        c.expect(r" 376 | 422 ")
        return c

    def chat_client(self, user, nick=None, *args):
        srv = types.SimpleNamespace(address=self.server.address, env=self.server.env, token=TOKENS[user])
        c = Client(srv, nick or user, "--user", user, *args)
        self.open.append(c)
        c.wait_for(lambda e: e.get("type") == "chat.joined", timeout=30)
        return c

    # ------------------------------------------------------------ registration

    def test_registration_tells_the_truth(self):
        c = self.login("alice")
        welcome = [l for l in c.lines if re.search(r" 00[1-5] ", l)]
        self.assertRegex(welcome[0], r" 001 alice :Welcome to the cskit IRC network, alice")
        isupport = " ".join(l for l in welcome if " 005 " in l)
        for token in ("CASEMAPPING=ascii", "CHANTYPES=#", "NICKLEN=32", "CHATHISTORY=1000", "UTF8ONLY",
                      "NETWORK=cskit", "CHANNELLEN=65"):
            self.assertIn(token, isupport)
        self.assertTrue(any(" 251 " in l for l in c.lines), c.lines)
        motd = [l for l in c.lines if " 372 " in l]
        self.assertEqual([m.split(":", 2)[2] for m in motd], ["- Welcome to the test server", "- Be nice"])

    def test_a_login_is_required(self):
        c = self.connect()
        c.send("NICK nobody")
        c.send("USER nobody 0 * :No One")
        c.expect(r"^ERROR :Closing link: log in first: SASL PLAIN")
        self.assertTrue(c.closed())

    def test_wrong_token_fails_sasl_and_pass(self):
        c = self.connect()
        c.send("CAP REQ :sasl")
        c.expect("ACK")
        c.send("AUTHENTICATE PLAIN")
        c.expect(r"^AUTHENTICATE \+")
        c.send("AUTHENTICATE " + sasl_plain("alice", "not-the-token-at-all"))
        c.expect(r" 904 .*unknown user or wrong token")
        p = self.connect()
        p.send("PASS alice:wrong-token-xxxxxxxx")
        p.send("NICK alice")
        p.send("USER alice 0 * :A")
        p.expect(r"^ERROR :Closing link: authentication failed")

    def test_pass_for_old_clients_and_permission(self):
        c = self.connect()
        c.send(f"PASS bob:{TOKENS['bob']}")
        c.send("NICK bob")
        c.send("USER bob 0 * :Bob")
        c.expect(r" 001 bob ")
        d = self.connect()
        d.send(f"PASS dave:{TOKENS['dave']}")
        d.send("NICK dave")
        d.send("USER dave 0 * :Dave")
        d.expect(r"^ERROR :Closing link: the account 'dave' has no chat permission")

    def test_nicknames_belong_to_accounts(self):
        a = self.connect()
        a.send(f"PASS carol:{TOKENS['carol']}")
        a.send("NICK alice")  # alice's account name
        a.send("USER carol 0 * :Carol")
        a.expect(r" 433 alice alice :nickname 'alice' is reserved for the account 'alice'")
        a.send("NICK carol_irc")
        a.expect(r" 001 carol_irc ")
        a.send("NICK aIice")
        a.expect(r" 433 carol_irc aIice :nickname 'aIice' looks like 'alice'")
        a.send("NICK bad!nick")
        a.expect(r" 432 carol_irc bad!nick ")

    # ------------------------------------------------------------ with cskit chat

    def test_irc_and_cskit_share_rooms_and_private_messages(self):
        cskit = self.chat_client("bob", "bob", "--room", "#lobby")
        irc = self.login("alice", caps=("sasl", "server-time", "account-tag"))
        irc.send("JOIN #lobby")
        joined = irc.expect(r" JOIN #lobby$")
        self.assertRegex(joined, r"^@time=\S+;account=alice :alice!alice@\S+ JOIN #lobby$")
        names = irc.expect(r" 353 ")
        self.assertRegex(names, r" 353 alice = #lobby :(alice bob|bob alice)$")
        cskit.wait_for(event("join", "alice"))
        irc.send("PRIVMSG #lobby :hello from irc, é")
        cskit.wait_for(message("hello from irc, é", "alice", room="#lobby"))
        irc.send("PRIVMSG #lobby :\x01ACTION waves\x01")
        cskit.wait_for(message("waves", "alice", action=True))
        cskit.say("hello from cskit")
        line = irc.expect(r"PRIVMSG #lobby :hello from cskit")
        self.assertRegex(line, r"^@time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z;account=bob :bob!bob@\S+ PRIVMSG")
        cskit.say("/msg alice psst")
        irc.expect(r":bob!bob@\S+ PRIVMSG alice :psst$")
        irc.send("PRIVMSG bob :back at you")
        cskit.wait_for(message("back at you", "alice", private=True))
        irc.send("QUIT :bye now")
        cskit.wait_for(lambda e: e.get("event") == "quit" and e.get("nick") == "alice" and e.get("reason") == "bye now")

    def test_history_on_join_and_chathistory(self):
        cskit = self.chat_client("bob", "bob", "--room", "#hist")
        for i in range(8):
            cskit.say(f"old {i}")
            cskit.wait_for(message(f"old {i}", "bob"))
            time.sleep(0.25)  # within the rate limit (5 a second)
        # A client without draft/chathistory gets the join replay (the last 5), in a batch.
        a = self.login("alice", caps=("sasl", "batch", "server-time"))
        a.send("JOIN #hist")
        a.expect(r"BATCH \+(\S+) chathistory #hist")
        replay = []
        while True:
            line = a.expect(r"PRIVMSG #hist|BATCH -")
            if "BATCH -" in line:
                break
            self.assertRegex(line, r"^@batch=\S+;time=\S+ :bob!")
            replay.append(line.rsplit(":", 1)[1])
        self.assertEqual(replay, [f"old {i}" for i in range(3, 8)])
        # One that has it fetches history itself: no replay, and CHATHISTORY answers.
        c = self.login("carol", caps=("sasl", "batch", "server-time", "message-tags", "draft/chathistory"))
        c.send("JOIN #hist")
        c.expect(r" 366 ")
        c.quiet(r"PRIVMSG", 0.3)
        c.send("CHATHISTORY LATEST #hist * 3")
        got = self.history_batch(c)
        self.assertEqual([t for _, t in got], ["old 5", "old 6", "old 7"])
        msgid = {t: m for m, t in got}
        c.send(f"CHATHISTORY BEFORE #hist msgid={msgid['old 5']} 2")
        self.assertEqual([t for _, t in self.history_batch(c)], ["old 3", "old 4"])
        c.send(f"CHATHISTORY AFTER #hist msgid={msgid['old 5']} 10")
        self.assertEqual([t for _, t in self.history_batch(c)], ["old 6", "old 7"])
        c.send(f"CHATHISTORY AROUND #hist msgid={msgid['old 6']} 3")
        self.assertEqual([t for _, t in self.history_batch(c)], ["old 5", "old 6", "old 7"])
        c.send(f"CHATHISTORY BETWEEN #hist msgid={msgid['old 7']} msgid={msgid['old 5']} 10")
        self.assertEqual([t for _, t in self.history_batch(c)], ["old 6"])
        c.send("CHATHISTORY LATEST #hist timestamp=2000-01-01T00:00:00.000Z 2")
        self.assertEqual([t for _, t in self.history_batch(c)], ["old 6", "old 7"])
        c.send("CHATHISTORY LATEST #elsewhere * 3")
        c.expect(r"FAIL CHATHISTORY INVALID_TARGET LATEST #elsewhere")
        c.send("CHATHISTORY SIDEWAYS #hist * 3")
        c.expect(r"FAIL CHATHISTORY INVALID_PARAMS SIDEWAYS")
        c.send("CHATHISTORY BEFORE #hist msgid=xyz 3")
        c.expect(r"FAIL CHATHISTORY INVALID_PARAMS BEFORE")

    def history_batch(self, c):
        c.expect(r"BATCH \+\S+ chathistory")
        out = []
        while True:
            line = c.expect(r"PRIVMSG|BATCH -")
            if "BATCH -" in line:
                return out
            out.append((re.search(r"msgid=(\d+)", line).group(1), line.rsplit(":", 1)[1]))

    def test_private_history_is_kept_per_pair_of_accounts(self):
        a = self.login("alice", caps=("sasl", "batch", "draft/chathistory"))
        b = self.login("bob", nick="bobby", caps=("sasl",))
        a.send("PRIVMSG bobby :one to bob")
        b.expect("PRIVMSG bobby :one to bob")
        b.send("PRIVMSG alice :one to alice")
        a.expect("PRIVMSG alice :one to alice")
        a.send("CHATHISTORY LATEST bob * 10")  # the account's name works when the nickname differs
        a.expect(r"BATCH \+\S+ chathistory bob")
        a.expect(r"PRIVMSG bobby :one to bob")
        a.expect(r"PRIVMSG alice :one to alice")
        a.expect(r"BATCH -")

    # ------------------------------------------------------------ capabilities

    def test_echo_message_and_message_tags(self):
        a = self.login("alice", caps=("sasl", "echo-message", "message-tags"))
        b = self.login("bob", caps=("sasl",))
        for c in (a, b):
            c.send("JOIN #caps")
            c.expect(r" 366 ")
        a.send("PRIVMSG #caps :with echo")
        echo = a.expect(r"PRIVMSG #caps :with echo")
        self.assertRegex(echo, r"^@msgid=\d+ :alice!")
        plain = b.expect(r"PRIVMSG #caps :with echo")
        self.assertTrue(plain.startswith(":alice!"), plain)  # no tags without the capabilities
        b.send("PRIVMSG #caps :without echo")
        a.expect("PRIVMSG #caps :without echo")
        b.quiet("without echo")
        a.send("CAP REQ :-echo-message")
        a.expect("ACK :-echo-message")
        a.send("CAP LIST")
        caps = a.expect(r" CAP alice LIST ")
        self.assertNotIn("echo-message", caps)
        a.send("PRIVMSG #caps :echo off")
        b.expect("echo off")
        a.quiet("echo off")
        a.send("CAP REQ :no-such-cap")
        a.expect(r"NAK :no-such-cap")

    def test_away_notify_and_away_replies(self):
        a = self.login("alice", caps=("sasl", "away-notify"))
        b = self.login("bob", caps=("sasl",))
        for c in (a, b):
            c.send("JOIN #away")
            c.expect(r" 366 ")
        b.send("AWAY :lunch")
        b.expect(r" 306 bob ")
        a.expect(r":bob!\S+ AWAY :lunch$")
        a.send("WHOIS bob")
        a.expect(r" 301 alice bob :lunch")
        a.expect(r" 330 alice bob bob :is logged in as")
        a.send("WHO #away")
        who = a.expect(r" 352 alice #away bob ")
        self.assertIn(" G ", who)
        b.send("AWAY")
        b.expect(r" 305 bob ")
        a.expect(r":bob!\S+ AWAY$")

    # ------------------------------------------------------------ commands

    def test_channel_commands(self):
        a = self.login("alice")
        b = self.login("bob")
        a.send("JOIN #Room1,#room2")
        a.expect(r"JOIN #room1")
        a.expect(r"JOIN #room2")
        b.send("JOIN #room1")
        b.expect(r" 366 bob #room1 ")
        a.expect(r":bob!\S+ JOIN #room1")
        a.send("TOPIC #room1 :release on Friday")
        b.expect(r":alice!\S+ TOPIC #room1 :release on Friday")
        b.send("TOPIC #room1")
        b.expect(r" 332 bob #room1 :release on Friday")
        b.expect(r" 333 bob #room1 alice :?\d+")
        b.send("NAMES #room1")
        b.expect(r" 353 bob = #room1 :alice bob")
        b.expect(r" 366 bob #room1 ")
        b.send("LIST")
        b.expect(r" 322 bob #room1 2 :release on Friday")
        b.expect(r" 323 ")
        b.send("MODE #room1")
        b.expect(r" 324 bob #room1 :?\+n")
        b.send("MODE #room1 +o bob")
        b.expect(r" 482 bob #room1 ")
        b.send("MODE bob +i")
        b.expect(r":bob MODE bob :?\+i")
        b.send("PRIVMSG #room2 :not a member")
        b.expect(r" 404 bob #room2 ")
        b.send("PRIVMSG nobody :hello")
        b.expect(r" 401 bob nobody ")
        b.send("JOIN #bad*room")
        b.expect(r" 479 bob #bad\*room ")
        b.send("NICK alice")
        b.expect(r" 433 bob alice ")
        b.send("NICK bob2")
        a.expect(r":bob!\S+ NICK :?bob2$")
        b.send("PART #room1 :see you")
        a.expect(r":bob2!\S+ PART #room1 :see you")
        b.send("PING :abc")
        b.expect(r"PONG \S+ :?abc")
        b.send("MOTD")
        b.expect(r" 376 ")
        b.send("LUSERS")
        b.expect(r" 255 ")
        b.send("USERHOST alice")
        b.expect(r" 302 bob2 :alice=\+alice@")
        b.send("ISON alice nobody")
        b.expect(r" 303 bob2 :alice$")
        b.send("FROB")
        b.expect(r" 421 bob2 FROB ")
        b.send("USER again 0 * :x")
        b.expect(r" 462 ")

    def test_own_lines_keep_their_order(self):
        """PART and JOIN in one write (irssi's /cycle), NICK then JOIN: the client sees its own
        lines in the order it sent the commands."""
        a = self.login("alice")
        a.send("JOIN #cycle")
        a.expect(r" 366 ")
        a.send(b"PART #cycle :cycling\r\nJOIN #cycle\r\n")
        a.expect(r":alice!\S+ PART #cycle")
        a.expect(r":alice!\S+ JOIN #cycle")
        a.expect(r" 366 alice #cycle ")
        a.send(b"NICK alice_\r\nJOIN #after\r\nTOPIC #after\r\n")
        a.expect(r":alice!\S+ NICK :alice_")
        a.expect(r":alice_!\S+ JOIN #after")
        a.expect(r" 331 alice_ #after ")

    def test_quit_comes_after_the_replies_before_it(self):
        a = self.login("alice")
        a.send(b"PRIVMSG nosuch :x\r\nJOIN #q\r\nQUIT :bye\r\n")
        a.expect(r" 401 alice nosuch ")
        a.expect(r":alice!\S+ JOIN #q")
        a.expect(r" 366 alice #q ")
        a.expect(r"^ERROR :Closing link: quit")
        self.assertTrue(a.closed())

    def test_a_client_that_asks_without_reading_is_closed(self):
        """LIST costs a few bytes to ask and more to answer: a client that asks a hundred thousand
        times without reading is closed once 4 MiB of replies wait, and others do not notice."""
        a = self.login("alice")
        b = self.login("bob")
        b.send("JOIN #calm")
        b.expect(r" 366 ")
        a.sock.sendall(b"LIST\r\n" * 100000)
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            line = a.read_line(deadline)
            if line in (None, ""):
                break
            last = line
        self.assertRegex(last, r"^ERROR :Closing link: too many requests")
        b.send("PING :calm")
        b.expect(r"PONG \S+ :calm")

    def test_long_messages_tags_and_odd_requests(self):
        a = self.login("alice", caps=("sasl", "message-tags", "echo-message", "batch", "draft/chathistory"))
        cskit = self.chat_client("bob", "bob", "--room", "#long")
        a.send("JOIN #long")
        a.expect(r" 366 ")
        cskit.say("é" * 600 + " second line")
        lines = [a.expect(r"PRIVMSG #long :")]
        while "second line" not in lines[-1]:
            lines.append(a.expect(r"PRIVMSG #long :"))
        self.assertGreater(len(lines), 1)
        for line in lines:
            self.assertLessEqual(len(line.partition(" ")[2].encode()) + 2, 512, line)  # without the tags
        self.assertEqual(sum("msgid=" in line for line in lines), 1, lines)  # one message id, on the first line
        a.send("PRIVMSG alice :note to self")  # without echo-message it is still delivered once
        a.expect(r"PRIVMSG alice :note to self")
        a.send("@+typing=active TAGMSG #long")
        a.send("CHATHISTORY BEFORE #long msgid=99999999999999999999999 10")
        a.expect(r"FAIL CHATHISTORY INVALID_PARAMS BEFORE")
        a.send("NICK NickServ")
        a.expect(r" 433 alice NickServ :nickname 'NickServ' is reserved for the server's services")
        a.send("PING :alive")
        a.expect(r"PONG \S+ :alive")
        self.assertFalse(any(" 421 " in l for l in a.lines), a.lines)

    def test_away_and_moves_are_rate_limited_and_invisible_users_hidden(self):
        a = self.login("alice")
        b = self.login("bob")
        a.send("".join("AWAY :x\r\nAWAY\r\n" for _ in range(10)).encode())
        a.expect(r" 263 alice AWAY :slow down")
        a.send("MODE alice +i")
        a.expect(r":alice MODE alice :\+i")
        b.send("WHO alice")
        end = b.expect(r" 315 ")
        self.assertFalse(any(" 352 " in l for l in b.seen), b.seen)  # shares no room with alice
        self.assertIn("alice", end)
        b.send("JOIN #seen")
        b.expect(r" 366 ")
        a.send("JOIN #seen")
        a.expect(r" 366 ")
        b.send("WHO alice")
        b.expect(r" 352 bob \* alice ")

    def test_sasl_chunks(self):
        c = self.connect()
        c.send("CAP REQ :sasl")
        c.expect("ACK")
        c.send("AUTHENTICATE *")
        c.expect(r" 906 ")
        c.send("AUTHENTICATE PLAIN")
        c.expect(r"^AUTHENTICATE \+")
        c.send("AUTHENTICATE " + "A" * 404)
        c.expect(r" 905 ")
        # A chunk of exactly 400 bytes means more follows: nothing is answered until "+".
        c.send("AUTHENTICATE PLAIN")
        c.expect(r"^AUTHENTICATE \+")
        c.send("AUTHENTICATE " + "QUFB" * 100)  # "AAA" * 100: no NUL, so not PLAIN
        c.quiet(r" 90\d ", 0.3)
        c.send("AUTHENTICATE +")
        c.expect(r" 904 .*malformed PLAIN message")
        c.send("AUTHENTICATE PLAIN")
        c.expect(r"^AUTHENTICATE \+")
        c.send("AUTHENTICATE " + base64.b64encode(f"carol\0carol\0{TOKENS['carol']}".encode()).decode())
        c.expect(r" 903 ")

    # ------------------------------------------------------------ bad input

    def test_bad_input_gets_clear_replies(self):
        a = self.login("alice")
        a.send("PRIVMSG alice :" + "x" * 600)
        a.expect(r" 417 alice :Input line was too long")
        a.send(b"PING :bare-lf\n")  # LF alone ends a line too
        a.expect(r"PONG \S+ :?bare-lf")
        a.send(b"PRIVMSG alice :\xff\xfe bad\r\n")
        a.expect(r"FAIL PRIVMSG INVALID_UTF8 ")
        a.send("@" + "a=b;" * 2000 + " PING :x")
        a.expect(r" 417 ")
        a.send("PING :still-here")
        a.expect(r"PONG \S+ :?still-here")
        # An unfinished line is closed at the frame deadline (3 s here).
        b = self.login("bob")
        b.send(b"PRIVMSG alice :no end")
        b.expect(r"^ERROR :Closing link:", timeout=15)
        self.assertTrue(b.closed())

    def test_flooding_is_answered_and_nobody_else_slowed(self):
        a = self.login("alice")
        b = self.login("bob")
        c = self.login("carol")
        for x in (a, b, c):
            x.send("JOIN #flood")
            x.expect(r" 366 ")
        a.send("".join(f"PRIVMSG #flood :flood {i}\r\n" for i in range(40)).encode())
        a.expect(r" 263 alice PRIVMSG :slow down")
        start = time.monotonic()
        b.send("PRIVMSG #flood :meanwhile")
        c.expect(r"PRIVMSG #flood :meanwhile", timeout=5)
        self.assertLess(time.monotonic() - start, 2.0)
        got = [l for l in c.seen if "flood " in l]
        self.assertLessEqual(len(got), 6)  # the burst (5), and at most one more from refill

    def test_cleartext_is_refused_off_loopback(self):
        r = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--plaintext", "--irc-listen", "0.0.0.0:0",
                            "--state-dir", tempfile.mkdtemp(prefix="cskit-irc-")],
                           capture_output=True, text=True, timeout=30, env=dict(os.environ, CSKIT_TOKEN="x" * 20))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cleartext is allowed on loopback only", r.stderr)


class HistoryLastsTest(unittest.TestCase):
    """History is kept in SQLite in the state directory: it survives a restart
    and feeds both the cskit join replay and CHATHISTORY."""

    def test_history_survives_a_restart(self):
        with Server(config_text=CONF, token=None) as server:
            port, _ = irc_port(server)
            t = IrcTest()
            t.server, t.port, t.tls, t.open = server, port, True, []
            try:
                a = t.login("alice", caps=("sasl", "batch", "server-time", "message-tags", "draft/chathistory"))
                b = t.login("bob")
                for c in (a, b):
                    c.send("JOIN #kept")
                    c.expect(r" 366 ")
                for i in range(3):
                    a.send(f"PRIVMSG #kept :kept {i}")
                    b.expect(f"PRIVMSG #kept :kept {i}")
                a.send("PRIVMSG bob :private and kept")
                b.expect("private and kept")
                a.send("CHATHISTORY LATEST #kept * 10")
                before = [text for _, text in t.history_batch(a)]
            finally:
                t.tearDown()
            server.restart(sig=signal.SIGTERM)
            self.assertTrue(os.path.exists(os.path.join(server.state, "chat-history.sqlite3")))
            port, _ = irc_port(server)
            t.port, t.open = port, []
            try:
                cskit = t.chat_client("carol", "carol", "--room", "#kept")
                replay = []
                for i in range(3):
                    e, _ = cskit.wait_for(message(f"kept {i}", "alice"))
                    self.assertTrue(e.get("history"), e)
                    replay.append(e["text"])
                a = t.login("alice", caps=("sasl", "batch", "server-time", "message-tags", "draft/chathistory"))
                a.send("JOIN #kept")
                a.expect(r" 366 ")
                a.send("CHATHISTORY LATEST #kept * 10")
                self.assertEqual([text for _, text in t.history_batch(a)], before)
                a.send("CHATHISTORY LATEST bob * 10")
                a.expect(r"BATCH \+\S+ chathistory bob")
                a.expect(r"PRIVMSG bob :private and kept")
            finally:
                t.tearDown()

    def test_a_damaged_database_stops_the_server_with_a_clear_error(self):
        state = tempfile.mkdtemp(prefix="cskit-irc-")
        try:
            with open(os.path.join(state, "chat-history.sqlite3"), "wb") as f:
                f.write(b"not a database" * 1000)
            r = subprocess.run([BIN, "serve", "--listen", "127.0.0.1:0", "--state-dir", state],
                               capture_output=True, text=True, timeout=30, env=dict(os.environ, CSKIT_TOKEN="x" * 20))
            self.assertEqual(r.returncode, 1, r.stderr)  # as any other error in the set-up
            self.assertIn("chat-history.sqlite3", r.stderr)
            self.assertRegex(r.stderr, r"not a database|damaged")
        finally:
            shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------- real clients

def tmux(*args, check=True):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check, timeout=20)


class RealClientsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server(config_text=CONF, token=None)
        cls.port, _ = irc_port(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.server.cleanup()

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="cskit-irc-")
        self.clients = []

    def tearDown(self):
        kill_clients(self.clients)
        shutil.rmtree(self.dir, ignore_errors=True)

    def chat_client(self, user, room):
        srv = types.SimpleNamespace(address=self.server.address, env=self.server.env, token=TOKENS[user])
        c = Client(srv, user, "--user", user, "--room", room)
        self.clients.append(c)
        c.wait_for(lambda e: e.get("type") == "chat.joined", timeout=30)
        return c

    def wait_pane(self, session, pattern, timeout=20):
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = tmux("capture-pane", "-p", "-t", session, "-S", "-200").stdout
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not on irssi's screen:\n{text}")

    def test_irssi(self):
        self.assertTrue(shutil.which("irssi") and shutil.which("tmux"), "scripts/install-deps.sh installs irssi and tmux")
        bob = self.chat_client("bob", "#irssi")
        bob.say("said before irssi came")
        bob.wait_for(message("said before irssi came", "bob"))
        home = os.path.join(self.dir, "irssi")
        os.makedirs(home)
        with open(os.path.join(home, "config"), "w") as f:
            f.write(f"""
servers = ( {{ address = "127.0.0.1"; chatnet = "cskit"; port = "{self.port}"; use_tls = "yes";
               tls_verify = "no"; autoconnect = "yes"; }} );
chatnets = {{ cskit = {{ type = "IRC"; sasl_mechanism = "PLAIN"; sasl_username = "alice";
                       sasl_password = "{TOKENS['alice']}"; }}; }};
channels = ( {{ name = "#irssi"; chatnet = "cskit"; autojoin = "yes"; }} );
settings = {{ core = {{ real_name = "Alice"; user_name = "alice"; nick = "alice"; }};
              "fe-common/core" = {{ autocreate_windows = "no"; }}; }};
""")
        session = f"cskit-irssi-{os.getpid()}"
        tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", f"irssi --home={home}")
        try:
            self.wait_pane(session, r"said before irssi came")  # history on join
            bob.wait_for(event("join", "alice"))
            tmux("send-keys", "-t", session, "hello from irssi", "Enter")
            bob.wait_for(message("hello from irssi", "alice", room="#irssi"))
            bob.say("hello irssi, from cskit")
            self.wait_pane(session, r"hello irssi, from cskit")
            tmux("send-keys", "-t", session, "/quit leaving now", "Enter")
            bob.wait_for(lambda e: e.get("event") == "quit" and e.get("nick") == "alice")
        finally:
            tmux("kill-session", "-t", session, check=False)

    def test_weechat_headless(self):
        self.assertTrue(shutil.which("weechat-headless"), "scripts/install-deps.sh installs weechat-headless")
        carol = self.chat_client("carol", "#weechat")
        home = os.path.join(self.dir, "weechat")
        cmds = ";".join([
            f"/server add cskit 127.0.0.1/{self.port} -ssl -ssl_verify=off -sasl_mechanism=plain "  # WeeChat 3.8 spells TLS "ssl"
            f"-sasl_username=bob -sasl_password={TOKENS['bob']} -nicks=bob -autojoin=#weechat",
            "/set logger.file.flush_delay 0",
            "/connect cskit",
            "/wait 3 /msg -server cskit #weechat hello from weechat",
        ])
        proc = subprocess.Popen(["weechat-headless", "--dir", home, "--run-command", cmds],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            carol.wait_for(event("join", "bob"), timeout=30)
            carol.wait_for(message("hello from weechat", "bob", room="#weechat"), timeout=30)
            carol.say("hello weechat")
            log = os.path.join(home, "logs", "irc.cskit.#weechat.weechatlog")
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline:
                if os.path.exists(log):
                    with open(log, errors="replace") as f:
                        text = f.read()
                    if "hello weechat" in text:
                        break
                time.sleep(0.2)
            self.assertIn("hello weechat", text)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def test_python_irc_bot(self):
        carol = self.chat_client("carol", "#bots")
        bot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "irc_bot.py")
        proc = subprocess.Popen(["/usr/bin/python3", bot, "127.0.0.1", str(self.port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, BOT_USER="bob", BOT_TOKEN=TOKENS["bob"], BOT_ROOM="#bots"))
        try:
            carol.wait_for(event("join", "bob"), timeout=30)
            carol.say("!echo ping pong")
            carol.wait_for(message("echo: ping pong", "bob", room="#bots"), timeout=20)
        finally:
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()


if __name__ == "__main__":
    unittest.main()
