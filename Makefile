# cskit: the two commands a new user needs are `make run` and `make test`.
# Everything installs its own dependencies first (scripts/install-deps.sh).

CTEST_JOBS ?= 2
FUZZ_SECONDS ?= 60
RUN_LISTEN ?= 127.0.0.1:7701
RUN_SHARE ?= $(CURDIR)/.run/share
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps build build-asan run test test-release test-asan bench fuzz fuzz-smoke clean install deb

all: build

deps:
	@scripts/install-deps.sh

build: deps
	cmake --preset release >/dev/null
	cmake --build --preset release

build-asan: deps
	cmake --preset asan >/dev/null
	cmake --build --preset asan

## make run: build, then serve a ready share on 127.0.0.1 (Ctrl-C stops it).
run: build
	@scripts/run-server.sh "$(RUN_LISTEN)" "$(RUN_SHARE)"

## make install [PREFIX=/usr/local] [DESTDIR=...]: the binary, man pages,
## completions, the systemd unit and /etc/cskit/cskit.toml (docs/packaging.md).
install: build
	cmake --preset release -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build --preset release
	DESTDIR="$(DESTDIR)" cmake --install build/release

## make deb: build/deb/cskit_VERSION_ARCH.deb, for apt install ./cskit_*.deb.
deb: build
	cmake --preset release -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
	cmake --build --preset release
	cd build/release && cpack -G DEB -B $(CURDIR)/build/deb
	@ls build/deb/*.deb

## make test: every test, on the release build and again under ASan+UBSan.
test: test-release test-asan

test-release: build
	ctest --preset release -j $(CTEST_JOBS)

test-asan: build-asan
	ctest --preset asan -j $(CTEST_JOBS)

## make bench: benchmarks, compared with their peers (see docs/benchmarks.md).
bench: build
	@scripts/install-deps.sh --bench
	python3 bench/run_bench.py

## make fuzz: run each libFuzzer target for FUZZ_SECONDS (default 60):
## the frame decoder, the server session (login and every service's
## requests), the NTP parsers, the client's parsing of server answers, and
## the binary records of packed listings and delta transfer, and the HTTPS
## front end's parsing of targets, ranges, dates and credentials.
FUZZ_TARGETS = decoder session ntp client records http
fuzz: deps
	cmake --preset fuzz >/dev/null
	cmake --build --preset fuzz --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz-work/$$t; \
	  echo "== fuzz_$$t ($(FUZZ_SECONDS) s)"; \
	  build/fuzz/fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=70000 -timeout=20 -rss_limit_mb=3072 \
	    -print_final_stats=1 -artifact_prefix=build/fuzz-work/$$t- build/fuzz-work/$$t fuzz/corpus-$$t \
	    || exit 1; \
	done

## make fuzz-smoke: each target briefly, as CI does.
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=15

clean:
	rm -rf build
