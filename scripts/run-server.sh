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
if [ ! -e "$share/README.txt" ]; then
  printf 'This is the cskit share served by `make run`.\nFiles put here are visible to clients.\n' >"$share/README.txt"
fi
cat <<MSG
Starting cskit on $listen, sharing $share. In another terminal, as this user:
  $here/build/release/cskit ping $listen -c 3
  $here/build/release/cskit info $listen
Stop the server with Ctrl-C.

MSG
exec "$here/build/release/cskit" serve --listen "$listen" --root "$share"
