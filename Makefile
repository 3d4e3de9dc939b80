# cskit: the two commands a new user needs are `make run` and `make test`.
# Everything installs its own dependencies first (scripts/install-deps.sh).

CTEST_JOBS ?= 2
FUZZ_SECONDS ?= 60
RUN_LISTEN ?= 127.0.0.1:7701
RUN_SHARE ?= $(CURDIR)/.run/share

.PHONY: all deps build build-asan run test test-release test-asan bench fuzz fuzz-smoke clean

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

## make fuzz: run the frame-decoder fuzzer for FUZZ_SECONDS.
fuzz: deps
	cmake --preset fuzz >/dev/null
	cmake --build --preset fuzz --target fuzz_decoder
	@mkdir -p fuzz/corpus-work
	build/fuzz/fuzz/fuzz_decoder -max_total_time=$(FUZZ_SECONDS) -max_len=70000 -print_final_stats=1 \
	  fuzz/corpus-work fuzz/corpus

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=20

clean:
	rm -rf build
