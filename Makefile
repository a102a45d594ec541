# anyhub — the two commands: `make demo` and `make test`. Both set up what
# they need (scripts/setup.sh installs Debian packages and cargo-nextest).
SHELL := /bin/bash
CARGO ?= cargo
TARGET := target/debug

.PHONY: all setup build test unit interop lint demo fuzz clean

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

# Runs each fuzz target for FUZZ_SECONDS (default 60) with cargo-fuzz.
FUZZ_SECONDS ?= 60
fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean

# SA replication: fleets of 3 and 16 sync node processes on loopback QUIC
# (docs/sa-sync.md). Takes the machine lock itself.
.PHONY: bench-sync
bench-sync:
	flock /tmp/anyhub-heavy.lock $(CARGO) build --release -p anyhub-sa-sync --bins
	flock /tmp/anyhub-heavy.lock target/release/bench-sync $(SYNC_NODES)
