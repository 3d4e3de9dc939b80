#!/usr/bin/env bash
# Installs exactly what cskit needs to build, test and fuzz, from Debian 12
# packages. Idempotent: when everything is already installed it does nothing
# (no apt-get update, no network).
set -euo pipefail

packages=(
  # toolchain
  g++ cmake ninja-build make pkg-config
  lld                   # links the release binary in start-up order (src/CMakeLists.txt)
  # libraries
  libboost1.81-dev      # Asio 1.26 (C++20 coroutines), Beast
  libssl-dev            # HMAC-SHA256, RAND_bytes, CRYPTO_memcmp
  nlohmann-json3-dev    # frame headers
  libcli11-dev          # command line
  libspdlog-dev libfmt-dev
  libtomlplusplus-dev   # --config FILE
  libxxhash-dev         # XXH3-128 content digests of transferred files
  libsqlite3-dev        # chat history that survives restarts
  # tests, benchmarks, fuzzing
  libgtest-dev libgmock-dev libbenchmark-dev
  python3               # end-to-end tests and the independent client
  chrony python3-ntplib socat   # third-party NTP and echo peers (tests, benchmarks)
  tmux                  # drives the interactive chat client in a test
  systemd man-db groff-base zsh fish   # the package's tests: systemd-analyze verify/security, man -l, completions
  procps                # /bin/kill, the unit's ExecReload (systemd-analyze verify looks for it)
  irssi weechat-headless python3-irc   # real IRC clients and a bot against the IRC front end
  curl wget             # plain HTTPS clients of the share (tests)
  chromium chromium-driver python3-selenium fonts-dejavu-core   # the web page in a real browser (tests)
  openssl               # s_client / x509 / req: third-party TLS peer and certificates in tests
  iproute2              # `ip link set lo up` inside the network namespaces tests create
  e2fsprogs             # mkfs.ext4: a small file system for the disk-full tests
  clang libclang-rt-14-dev   # libFuzzer (make fuzz)
)

# `make bench` also needs the peers it compares with.
if [ "${1:-}" = "--bench" ]; then
  packages+=(openssh-server openssh-client)   # ssh / a private sshd on 127.0.0.1 (exec)
  packages+=(ngircd)                           # the IRC server chat fan-out is compared with
  packages+=(nginx wrk)                        # HTTPS: the web server and the load generator
  packages+=(iperf3 rsync)                     # file transfer: the TCP limit, and rsync's daemon
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
