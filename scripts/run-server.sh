#!/usr/bin/env bash
# Used by `make run`: prepares a share with a welcome file and runs the server
# in the foreground on a loopback address. The admin token is generated once
# into ~/.local/state/cskit/admin.token (mode 0600); clients run by the same
# user on this machine find it there without any setup.
set -euo pipefail
listen=${1:-127.0.0.1:7701}
share=${2:-$PWD/.run/share}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$share"

# UDP services on loopback: NTP on its standard port 123 and echo on 7 when
# this user may bind them (root or CAP_NET_BIND_SERVICE) and they are free,
# otherwise on 12300 and 7007.
can_bind() {  # can_bind PROTO PORT
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", int(sys.argv[2])))
PY
}
ntp_port=12300
if can_bind udp 123; then ntp_port=123; fi
echo_port=7007
if can_bind udp 7 && can_bind tcp 7; then echo_port=7; fi
# IRC clients (irssi, WeeChat) into chat, over TLS, on 6697 when free.
irc_port=6697
if ! can_bind tcp 6697; then irc_port=16697; fi
irc_listen=${CSKIT_IRC_LISTEN:-127.0.0.1:$irc_port}
ntp_listen=${CSKIT_NTP_LISTEN:-127.0.0.1:$ntp_port}
echo_listen=${CSKIT_ECHO_LISTEN:-127.0.0.1:$echo_port}
if [ ! -e "$share/README.txt" ]; then
  printf 'This is the cskit share served by `make run`.\nFiles put here are visible to clients.\n' >"$share/README.txt"
fi
cat <<MSG
Starting cskit on $listen, sharing $share. In another terminal, as this user:
  $here/build/release/cskit ping $listen -c 3
  $here/build/release/cskit info $listen
  $here/build/release/cskit time $ntp_listen
  $here/build/release/cskit ping --udp $echo_listen -c 3
  $here/build/release/cskit chat $listen
IRC clients: $irc_listen over TLS, SASL PLAIN as admin with the token (docs/irc.md).
A browser: https://$listen/ (user admin, with the admin token the server prints below; the
certificate is self-signed: accept it once, or see README "The share over HTTPS").
Stop the server with Ctrl-C.

MSG
exec "$here/build/release/cskit" serve --listen "$listen" --root "$share" \
  --ntp-listen "$ntp_listen" --echo-listen "$echo_listen" --irc-listen "$irc_listen"
