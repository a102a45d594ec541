# anyhub — the two commands: `make demo` and `make test`. Both set up what
# they need (scripts/setup.sh installs Debian packages and cargo-nextest).
SHELL := /bin/bash
CARGO ?= cargo
TARGET := target/debug

.PHONY: all setup build test unit interop lint demo fuzz bench-ike clean bench-dataplane

all: build

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace --bins

# Unit and in-memory protocol tests, then the strongSwan interop suite.
test: build
	$(CARGO) nextest run --workspace --no-fail-fast
	@$(MAKE) --no-print-directory interop

unit: setup
	$(CARGO) nextest run --workspace

# Real strongSwan peers in network namespaces (needs root). Without root
# the suite says so loudly and is skipped.
interop: build
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "######################################################################"; \
	  echo "## interop SKIPPED: network namespaces need root (run: sudo make interop)"; \
	  echo "######################################################################"; \
	else \
	  $(TARGET)/interop run; \
	fi

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# A strongSwan site builds a tunnel to anyhubd; both sides show what they see.
demo: build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo needs root (network namespaces): sudo make demo"; exit 1; fi
	$(TARGET)/interop demo

# Throughput between two namespaces over a veth, in one run: anyhub
# (dp-forward, the I/O layer with an AES-GCM test transform), strongSwan
# (kernel-libipsec), a strongSwan site to the real anyhubd ([dataplane]),
# boringtun, the bare veth; iperf3 with 1 and 4 streams.
# Builds and runs under the machine lock (do not wrap make in flock).
# BENCH_SECONDS per iperf3 run (default 5). See docs/benchmarks.md.
LOCK ?= /tmp/anyhub-heavy.lock
BENCH_SECONDS ?= 5
bench-dataplane: setup
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench-dataplane needs root (network namespaces)"; exit 1; fi
	@scripts/setup-bench.sh
	flock $(LOCK) $(CARGO) build --release -p anyhub-dataplane --bin dp-forward -p anyhub-control --bins -p anyhub-interop-tests --bin interop
	flock $(LOCK) target/release/interop bench-dataplane --seconds $(BENCH_SECONDS)

# Runs each fuzz target for FUZZ_SECONDS (default 60) with cargo-fuzz.
FUZZ_SECONDS ?= 60
fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

# IKE handshakes/s, setup latency and responder CPU per handshake against
# anyhubd and strongSwan in one run, beside the crypto-bound limit; a table,
# then one JSON line (docs/benchmarks.md). Needs root (namespaces). On a
# shared machine hold the lock: flock /tmp/anyhub-heavy.lock make bench-ike
BENCH_IKE_ARGS ?=
bench-ike: setup
	$(CARGO) build --release -p anyhub-control -p anyhub-interop-tests --bins
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench-ike needs root (network namespaces): sudo make bench-ike"; exit 1; fi
	target/release/interop bench-ike $(BENCH_IKE_ARGS)

clean:
	$(CARGO) clean

# SA replication: fleets of 3 and 16 sync node processes (full mesh) on
# loopback QUIC (docs/sa-sync.md); about 3 minutes. SYNC_NODES="3 16 64r"
# adds 64 nodes in fan-out mode (4 relays): on this 2-core machine that run
# is CPU-bound and does not always finish (docs/sa-sync.md). Nr: relays.
# Takes the machine lock itself.
SYNC_NODES ?= 3 16
.PHONY: bench-sync
bench-sync: setup
	flock /tmp/anyhub-heavy.lock $(CARGO) build --release -p anyhub-sa-sync --bins
	flock /tmp/anyhub-heavy.lock target/release/bench-sync $(SYNC_NODES)
