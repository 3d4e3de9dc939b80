// The server's configuration file, every key with its default (or an
// example where there is none): `cskit help config`, the man page
// cskit.toml(5) and the packaged /etc/cskit/cskit.toml are made from this
// text, and a test loads it as a configuration, so that it names no key
// the server would refuse.
#include "app/docs.hpp"

namespace cskit::app {

const char* const config_reference_text = R"(# cskit serve --config FILE: TOML. Every key is optional; a key the server does not know is an
# error naming the file and the line, so that a typo never weakens security. Flags of
# `cskit serve` override the file. Sizes are bytes, or with K/M/G/T. Times are seconds.

[server]
listen = "127.0.0.1:7701"       # ADDR:PORT; "0.0.0.0:7701" or "[::]:7701" for every address
root = ""                       # the share (default: <state_dir>/share)
state_dir = ""                  # admin token, TLS key, chat history (default ~/.local/state/cskit)
name = ""                       # shown to clients (default: the host name)
threads = 0                     # event loops (0: one per core)
max_connections = 10000         # connections served at once
max_unauthenticated = 4096      # connections still in the TLS handshake or the login
max_unauthenticated_per_address = 128
idle_timeout = 300              # a session without a frame for this long is closed
handshake_timeout = 10          # the TLS handshake and the login, together
frame_timeout = 30              # to finish a frame once it has started
grace = 5                       # sessions get this long to finish on SIGTERM or SIGINT
log_level = "info"              # trace, debug, info, warn, error, critical, off
users_file = ""                 # accounts of `cskit user` (default: users.toml beside this file)

[tls]
# cert = "/etc/letsencrypt/live/files.example.org/fullchain.pem"   # default: a key and a
# key = "/etc/letsencrypt/live/files.example.org/privkey.pem"      # self-signed certificate in state_dir
kernel_tls = "auto"             # "auto" (when the kernel offers it), "on", "off"
plaintext = false               # true: no TLS at all (benchmarks on loopback only)

[files]
max_file_size = "0"             # larger uploads are refused (0: no limit)
quota = "0"                     # total size of the share's files (0: none)
fsync = true                    # flush each file before it is renamed into place

[chat]
enabled = true                  # false: chat requests are refused
default_room = "lobby"
history = 50                    # messages replayed on join
max_message = 2000              # bytes of UTF-8 per message
rate = 5                        # messages per second per client...
burst = 10                      # ...with this burst
max_queue = 1048576             # bytes queued to one client before it is disconnected
max_rooms = 1000
ping_interval = 30              # seconds of silence before the server pings
ping_timeout = 90               # seconds of silence before it disconnects
history_store = "sqlite"        # <state_dir>/chat-history.sqlite3, kept across restarts; "memory"
history_path = ""               # another file for it
history_keep = 10000            # messages kept per room and per pair of accounts
history_days = 0                # and none older than this (0: no age limit)

[irc]
listen = ""                     # e.g. "127.0.0.1:6697": IRC clients join the same chat (off: empty)
tls = true                      # the server's key; cleartext only on loopback...
plaintext_remote = false        # ...unless this is true
network = "cskit"
motd = ""                       # the message of the day
history_max = 1000              # messages one CHATHISTORY request returns at most

[exec]
enabled = false                 # remote execution is off unless this is true
allow_shell = false             # let clients use --shell 'command line'
shell = "/bin/sh"
programs = []                   # allow-list: names (searched in path) or absolute paths; empty: any
path = "/usr/local/bin:/usr/bin:/bin"
cwd = ""                        # default working directory (empty: the account's home, else /)
env_allow = ["LANG", "LC_*", "TZ", "TERM", "COLUMNS", "LINES"]
max_wall_time = 0               # caps --timeout (0: no limit)
cpu_seconds = 0                 # RLIMIT_CPU (0: none)
memory_bytes = 0                # RLIMIT_AS (0: none)
max_processes = 0               # RLIMIT_NPROC of the account (0: none)
max_concurrent = 64             # commands running at once, in total
max_concurrent_per_user = 16
run_as = ""                     # when the server runs as root: the account for commands (default nobody)

[echo]
listen = ""                     # RFC 862 echo on UDP and TCP, e.g. "127.0.0.1:7" (off: empty)
rate = 1000                     # datagrams per second per source (0: no limit)
burst = 2000
byte_rate = 8388608             # bytes per second per source (0: no limit)
byte_burst = 8388608            # at least 65507 when byte_rate is set
max_datagram = 65507            # larger datagrams are dropped, never echoed cut
max_tcp_connections = 64

[time]
listen = ""                     # SNTPv4 on UDP, e.g. "127.0.0.1:123" (off: empty)
stratum = 10                    # 1-15; 10: a local clock, as chrony's "local stratum 10"
reference_id = "127.127.1.1"    # an IPv4 address, or 1-4 letters ("GPS") for stratum 1
root_delay = 0.0
root_dispersion = 0.001
rate = 16                       # requests per second per source (0: no limit)
burst = 64
kiss_of_death = true            # answer rate-limited sources with a KoD RATE (once a second)

[web]
enabled = true                  # HTTPS on the same port (ALPN http/1.1): the web page at /, the share under /files/ for curl, wget

# Users. Without any, the server has one, admin, with files-read, files-write and chat, and a
# token generated in <state_dir>/admin.token (0600). Permissions: files-read, files-write,
# exec, chat. A token is at least 16 characters: openssl rand -hex 32. An entry named admin
# without a token keeps the generated one. `cskit user` adds users to users_file instead.
# SIGHUP (systemctl reload) re-reads users and limits; sessions that lost their account,
# token or a permission are closed.
[[users]]
name = "alice"
token = "a-long-random-secret-at-least-16-chars"
permissions = ["files-read", "files-write", "chat"]
)";

}  // namespace cskit::app
