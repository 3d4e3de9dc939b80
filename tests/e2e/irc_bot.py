"""A small bot written with python3-irc (jaraco's irc, from Debian), as
people write them: it logs in with PASS user:token over TLS, joins a room
and answers "!echo TEXT" with "echo: TEXT". Run by test_irc.py with
/usr/bin/python3. Arguments: HOST PORT; BOT_USER, BOT_TOKEN, BOT_ROOM in
the environment."""
import os
import ssl
import sys

import irc.client
import irc.connection


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    user, token, room = os.environ["BOT_USER"], os.environ["BOT_TOKEN"], os.environ["BOT_ROOM"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reactor = irc.client.IRC()  # python3-irc 8.5 (Debian 12); later versions call it Reactor
    conn = reactor.server().connect(host, port, user, password=f"{user}:{token}", username=user,
                                    connect_factory=irc.connection.Factory(wrapper=ctx.wrap_socket))

    def on_welcome(c, event):
        c.join(room)

    def on_pubmsg(c, event):
        text = event.arguments[0]
        if text.startswith("!echo "):
            c.privmsg(event.target, "echo: " + text[len("!echo "):])

    def on_error(c, event):
        print("error:", event.target, event.arguments, flush=True)
        sys.exit(1)

    conn.add_global_handler("welcome", on_welcome)
    conn.add_global_handler("pubmsg", on_pubmsg)
    conn.add_global_handler("error", on_error)
    reactor.process_forever()


if __name__ == "__main__":
    main()
