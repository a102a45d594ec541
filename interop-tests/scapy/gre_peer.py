#!/usr/bin/env python3
"""A GRE peer that is not ours: scapy builds every packet by hand.

It plays a customer router with one GRE tunnel (RFC 2784, optional RFC 2890
key) to the hub, and checks, run inside the site namespace:

- keepalives: it sends what a Cisco/Juniper router sends with
  `keepalive` on a GRE tunnel: an outer packet to the hub whose payload is
  a GRE-encapsulated packet *from the hub back to us* (GRE protocol 0).
  The hub must decapsulate it and send the inner packet out as it is; we
  must see it come back.
- ping: ICMP echo requests from our inner address to an address behind the
  hub, inside GRE; the echo replies must come back inside GRE, with our key.
- MSS (optional): a TCP SYN (MSS 1460) to a listening port behind the hub;
  the SYN-ACK that comes back through the tunnel carries the MSS the hub
  clamped it to (reported; the caller checks it).

Prints one JSON line with what it saw and exits 0 when every check passed,
1 when one failed, 2 on bad arguments or a scapy error.
"""

import argparse
import json
import sys
import time

from scapy.all import (  # type: ignore[import-untyped]
    GRE,
    ICMP,
    IP,
    TCP,
    AsyncSniffer,
    Raw,
    conf,
    send,
)

conf.verb = 0


def gre(key):
    # RFC 2890: the K bit and a 4-octet key; RFC 2784: no checksum.
    if key is None:
        return GRE(proto=0x0800)
    return GRE(proto=0x0800, key_present=1, key=key)


def outer(args, inner):
    return IP(src=args.local, dst=args.hub, proto=47) / gre(args.key) / inner


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--local", required=True, help="our outer address")
    p.add_argument("--hub", required=True, help="the hub's outer (anycast) address")
    p.add_argument("--key", type=int, default=None, help="RFC 2890 key")
    p.add_argument("--inner-local", required=True, help="our inner address")
    p.add_argument("--inner-remote", required=True, help="an address behind the hub")
    p.add_argument("--iface", required=True, help="the interface towards the hub")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--syn-port", type=int, default=0,
                   help="also send a TCP SYN to this port behind the hub and report the SYN-ACK's MSS")
    args = p.parse_args()

    seen = {"keepalives_back": 0, "echo_replies": 0, "synack_mss": None, "wrong_key": 0,
            "sent_keepalives": 0, "sent_echoes": 0}

    def on_packet(pkt):
        if IP not in pkt or pkt[IP].src != args.hub or pkt[IP].dst != args.local:
            return
        if GRE not in pkt:
            return
        g = pkt[GRE]
        if (args.key is None and g.key_present) or (
                args.key is not None and (not g.key_present or g.key != args.key)):
            seen["wrong_key"] += 1
            return
        inner = g.payload
        # A reflected keepalive: the inner packet we built comes back as a
        # plain GRE packet from the hub with protocol 0 (no payload).
        if g.proto == 0:
            seen["keepalives_back"] += 1
            return
        if not isinstance(inner, IP):
            return
        if ICMP in inner and inner[ICMP].type == 0 and inner.dst == args.inner_local:
            seen["echo_replies"] += 1
        elif TCP in inner and inner[TCP].flags.S and inner[TCP].flags.A:
            mss = [v for (k, v) in inner[TCP].options if k == "MSS"]
            seen["synack_mss"] = mss[0] if mss else 0

    sniffer = AsyncSniffer(iface=args.iface, filter=f"ip proto 47 and src host {args.hub}",
                           prn=on_packet, store=False)
    sniffer.start()
    time.sleep(0.5)  # the capture is open before anything is sent

    for i in range(args.count):
        # Keepalive: GRE(proto 0) from the hub to us, inside GRE to the hub.
        back = IP(src=args.hub, dst=args.local, proto=47) / gre(args.key)
        back[GRE].proto = 0
        send(IP(src=args.local, dst=args.hub, proto=47) / gre(args.key) / back)
        seen["sent_keepalives"] += 1
        echo = IP(src=args.inner_local, dst=args.inner_remote, ttl=64) / ICMP(
            type=8, id=0x4a48, seq=i) / Raw(b"anyhub-gre-%d" % i)
        send(outer(args, echo))
        seen["sent_echoes"] += 1
        time.sleep(0.2)
    if args.syn_port:
        syn = IP(src=args.inner_local, dst=args.inner_remote) / TCP(
            sport=40000, dport=args.syn_port, flags="S", seq=1000, options=[("MSS", 1460)])
        send(outer(args, syn))
    time.sleep(1.0)
    sniffer.stop()

    ok = (seen["keepalives_back"] >= args.count and seen["echo_replies"] >= args.count
          and seen["wrong_key"] == 0 and (not args.syn_port or seen["synack_mss"] is not None))
    print(json.dumps(seen))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception as e:  # a scapy or OS error: not a verdict on the hub
        print(json.dumps({"error": repr(e)}))
        sys.exit(2)
