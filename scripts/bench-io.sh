#!/usr/bin/env bash
# I/O-layer measurements behind docs/tun.md (needs root; holds the machine
# lock itself, so do not wrap it in flock):
#   scripts/bench-io.sh tun [seconds]   TUN implementations: tun-tap 0.1.4, plain, passthrough, offload
#   scripts/bench-io.sh udp [seconds]   UDP send/receive modes over a veth
#   scripts/bench-io.sh forward [secs]  dp-forward (AES-256-GCM test transform) with each
#                                       I/O feature switched off in turn, 1 and 4 streams
#   scripts/bench-io.sh capture DIR     kernel super-packets for the unit-test fixtures
# Namespaces are named per run (pid) and removed on exit.
set -euo pipefail
what=${1:?tun|udp|capture}; arg=${2:-}
LOCK=${ANYHUB_LOCK:-/tmp/anyhub-heavy.lock}
cd "$(dirname "$0")/.."
flock "$LOCK" cargo build -q --release -p anyhub-dataplane --examples --bin dp-forward
EX=target/release/examples
A=bia$$; B=bib$$; pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; sleep 0.2
            ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; }
trap cleanup EXIT
fresh() {
  cleanup; pids=()
  ip netns add "$A"; ip netns add "$B"
  ip -n "$A" link set lo up; ip -n "$B" link set lo up
}
iperf() { # ns-a ns-b target secs par -> Mbit/s, retransmits
  ip netns exec "$2" iperf3 -s -B "$3" -1 -D; sleep 0.3
  ip netns exec "$1" iperf3 -c "$3" -t "$4" -P "$5" -J | python3 -c 'import json,sys; d=json.load(sys.stdin)["end"]; print(round(d["sum_received"]["bits_per_second"]/1e6,1), d["sum_sent"].get("retransmits",0))'
}
exec 9>"$LOCK"; flock 9
case "$what" in
tun)
  secs=${arg:-5}
  printf '%-12s %8s %12s %8s\n' mode streams Mbit/s retr
  for mode in tuntap plain passthrough offload; do
    for par in 1 4; do
      fresh
      ip netns exec "$A" $EX/tun-bench --mode $mode --ns-b "$B" 2>/dev/null & pids+=($!)
      sleep 0.5
      read -r mbps retr < <(iperf "$A" "$B" 10.60.0.2 "$secs" $par)
      printf '%-12s %8s %12s %8s\n' $mode $par "$mbps" "$retr"
    done
  done ;;
udp)
  secs=${arg:-3}
  printf '%-10s %-8s %12s %12s %10s %10s\n' send recv-gro datagrams/s Mbit/s sendcalls recvcalls
  for mode in plain mmsg gso; do
    for gro in off on; do
      fresh
      ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
      ip -n "$A" addr add 198.51.100.2/24 dev "va$$"; ip -n "$A" link set "va$$" up
      ip -n "$B" addr add 198.51.100.1/24 dev "vb$$"; ip -n "$B" link set "vb$$" up
      ip netns exec "$B" $EX/udp-bench recv --bind 198.51.100.1:4600 --gro $gro --secs $((secs + 1)) > /tmp/udp-bench-$$ & rp=$!; pids+=($rp)
      sleep 0.3
      ip netns exec "$A" $EX/udp-bench send --to 198.51.100.1:4600 --mode $mode --secs "$secs" > /tmp/udp-bench-send-$$
      wait $rp || true
      read -r dps mbps rcalls < /tmp/udp-bench-$$
      read -r _ _ scalls < /tmp/udp-bench-send-$$
      printf '%-10s %-8s %12s %12s %10s %10s\n' $mode $gro "$dps" "$mbps" "$scalls" "$rcalls"
      rm -f /tmp/udp-bench-$$ /tmp/udp-bench-send-$$
    done
  done ;;
forward)
  secs=${arg:-4}
  K1=$(head -c 36 /dev/urandom | od -An -tx1 | tr -d ' \n'); K2=$(head -c 36 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%-44s %8s %12s %8s\n' configuration streams Mbit/s retr
  while read -r label opts; do
    for par in 1 4; do
      fresh
      ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
      ip -n "$A" addr add 198.51.100.2/24 dev "va$$"; ip -n "$A" link set "va$$" up
      ip -n "$B" addr add 198.51.100.1/24 dev "vb$$"; ip -n "$B" link set "vb$$" up
      ip netns exec "$A" target/release/dp-forward --tun dpf0 --addr 10.40.0.1/24 --local 198.51.100.2:4500 \
        --peer 198.51.100.1:4500 --key-out "$K1" --key-in "$K2" --id-out 1 --id-in 2 $opts 2>/dev/null & pids+=($!)
      ip netns exec "$B" target/release/dp-forward --tun dpf0 --addr 10.40.0.2/24 --local 198.51.100.1:4500 \
        --peer 198.51.100.2:4500 --key-out "$K2" --key-in "$K1" --id-out 2 --id-in 1 $opts 2>/dev/null & pids+=($!)
      sleep 0.5; ip netns exec "$A" ping -c1 -W2 10.40.0.2 >/dev/null
      read -r mbps retr < <(iperf "$A" "$B" 10.40.0.2 "$secs" $par)
      printf '%-44s %8s %12s %8s\n' "$label" $par "$mbps" "$retr"
    done
  done <<'CONFIGS'
plain-tun,sendto,no-gro,1q     --tun-mode plain --udp plain --udp-gro off --queues 1 --spin 0
plain-tun,sendmmsg,no-gro,1q   --tun-mode plain --udp mmsg --udp-gro off --queues 1 --spin 0
offload-tun,sendmmsg,no-gro,1q --tun-mode offload --udp mmsg --udp-gro off --queues 1 --spin 0
offload-tun,udp-gso,no-gro,1q  --tun-mode offload --udp gso --udp-gro off --queues 1 --spin 0
offload-tun,udp-gso,udp-gro,1q --tun-mode offload --udp gso --udp-gro on --queues 1 --spin 0
offload-tun,udp-gso,udp-gro,2q --tun-mode offload --udp gso --udp-gro on --queues 2 --spin 0
offload-tun,udp-gso,udp-gro,2q,spin20 --tun-mode offload --udp gso --udp-gro on --queues 2 --spin 20
CONFIGS
  ;;
capture)
  dir=${arg:?capture DIR}; mkdir -p "$dir"; fresh
  ip netns exec "$A" $EX/tun-bench --mode offload --ns-b "$B" --capture "$dir" & pids+=($!)
  sleep 0.5
  ip netns exec "$B" iperf3 -s -B 10.60.0.2 -1 -D; sleep 0.3
  ip netns exec "$A" iperf3 -c 10.60.0.2 -t 1 >/dev/null
  ip netns exec "$B" iperf3 -s -B fd00:60::2 -1 -D; sleep 0.3
  ip netns exec "$A" iperf3 -c fd00:60::2 -t 1 >/dev/null
  # UDP GSO through the TUN (USO): one sendmsg of 5000 bytes cut at 1000.
  for dst in 10.60.0.2 fd00:60::2; do
    ip netns exec "$A" python3 -c '
import socket, sys; d=sys.argv[1]; s=socket.socket(socket.AF_INET6 if ":" in d else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1000); s.sendto(bytes(range(256))*19+bytes(136), (d, 9))' $dst
  done
  sleep 0.3; ls -l "$dir" ;;
*) echo "usage: $0 tun|udp|forward|capture" >&2; exit 2 ;;
esac
