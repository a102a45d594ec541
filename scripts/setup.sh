#!/usr/bin/env bash
# Installs what building and testing anyhub needs, on Debian, when missing.
# Idempotent and quiet when everything is there. Called by `make`.
set -euo pipefail

# Debian packages: the build (cmake/clang/libclang for BoringSSL via boring-sys,
# protoc for prost/tonic), the lab (iproute2, nftables, conntrack for the NAT
# lab's remap, iperf3, tcpdump) and strongSwan as the interop peer (charon +
# swanctl + the kernel-libipsec plugin from libcharon-extra-plugins, openssl
# from the standard plugins, aesni from the extra ones, pki for certificates).
pkgs=(cmake clang libclang-dev protobuf-compiler pkg-config iproute2 nftables conntrack iperf3 tcpdump
      charon-systemd strongswan-swanctl strongswan-pki libcharon-extra-plugins
      libstrongswan-standard-plugins libstrongswan-extra-plugins)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Rust toolchain pieces.
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
if ! command -v cargo-nextest >/dev/null; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
