#!/usr/bin/env bash
# What `make bench-dataplane` needs beyond scripts/setup.sh: wireguard-tools
# (Debian) and boringtun-cli (crates.io) for the boringtun peer.
# Idempotent. `cargo install` compiles, so it takes the machine lock.
set -euo pipefail
LOCK=${ANYHUB_LOCK:-/tmp/anyhub-heavy.lock}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v wg >/dev/null; then
  echo "setup-bench: installing wireguard-tools"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wireguard-tools >/dev/null
fi
if ! command -v boringtun-cli >/dev/null && [ ! -x "$HOME/.cargo/bin/boringtun-cli" ]; then
  echo "setup-bench: installing boringtun-cli (cargo install, under the machine lock)"
  flock "$LOCK" cargo install --locked boringtun-cli >/dev/null
fi
