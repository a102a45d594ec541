#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 60) from the kept corpus,
# seeded with the datagrams of in-memory handshakes. cargo-fuzz needs
# nightly features; RUSTC_BOOTSTRAP lets the stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
seed=$(mktemp -d); trap 'rm -rf "$seed"' EXIT
ANYHUB_DUMP_CORPUS="$seed" cargo test -q -p anyhub-ike --test pair dump_seed_corpus >/dev/null
# esp_decrypt's seeds are the strongSwan ESP fixtures, kept in its corpus.
# established: an IKE pair past IKE_AUTH driven by the input (CREATE_CHILD_SA,
# INFORMATIONAL, time, loss); it builds its own SAs, so it needs no seeds.
for t in parse_message responder esp_decrypt packet_path established; do
  mkdir -p "fuzz/corpus/$t"
  case $t in esp_decrypt|established) ;; *) cp -n "$seed"/* "fuzz/corpus/$t/" 2>/dev/null || true;; esac
  echo "fuzz: $t for ${secs}s"
  (cd fuzz && cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 -timeout=10 -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|==[0-9]+==|SUMMARY|Done)" || true)
  ls "fuzz/artifacts/$t" 2>/dev/null | grep -q . && { echo "fuzz: $t found crashes in fuzz/artifacts/$t" >&2; exit 1; }
done
echo "fuzz: no crashes"
