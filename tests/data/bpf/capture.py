"""Capture raw bpftrace output of the bpf backend on this host's kernel (run as root).

    .venv/bin/python tests/data/bpf/capture.py tracepoint > tests/data/bpf/loopback-<release>.txt
    .venv/bin/python tests/data/bpf/capture.py fields > tests/data/bpf/fields-<release>.txt

Builds the tracepoint-mode program for a few loopback functions, runs it with the
backend's own session, sends ping, ping -6, one UDP datagram and one TCP connection
over loopback, and writes every raw line bpftrace printed for the `lo` device
(the `LTB1` protocol), unchanged. The header lines start with `#`. `fields` adds the
custom fields of FIELDS to __dev_queue_xmit (typed from this kernel's BTF).
"""
import os
import platform
import socket
import subprocess
import sys
import threading
import time

from legacytrace import backends
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest

PROBES = [Probe("__netif_receive_skb_core", 1), Probe("__dev_queue_xmit", 1),
          Probe("kfree_skb_reason", 1, egress=True), Probe("consume_skb", 1)]
FIELDS = {"dev": "skb.dev.name", "ifindex": "skb.dev.ifindex", "mark": "skb.mark",
          "gso": "skb_shinfo(skb).gso_size", "family": "sk.__sk_common.skc_family",
          "tstamp": "skb.tstamp"}


def traffic():
    time.sleep(0.5)
    subprocess.call(["ping", "-c", "1", "127.0.0.1"], stdout=subprocess.DEVNULL)
    subprocess.call(["ping", "-6", "-c", "1", "::1"], stdout=subprocess.DEVNULL)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"legacytrace", ("127.0.0.1", 9999))
    udp.close()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    conn.recv(100)
    for sock in (conn, client, server):
        sock.close()
    time.sleep(0.5)


def main():
    host = HostFacts(release=platform.release(), root=True, tracefs="/sys/kernel/tracing",
                     kprobe_events=False, btf="/sys/kernel/btf/vmlinux", bpftrace="v0.17.0",
                     tracepoints=["net:netif_receive_skb", "net:net_dev_queue",
                                  "skb:kfree_skb", "skb:consume_skb"])
    backend = backends.get("bpf")
    probes = PROBES
    if sys.argv[1:] == ["fields"]:
        probes = [Probe(p.name, p.skb_pos, egress=p.egress,
                        fields=FIELDS if p.name == "__dev_queue_xmit" else None) for p in PROBES]
    program = backend.build(TraceRequest(probes, FlowFilter(), host,
                                         run_id="lt{}".format(os.getpid())))
    print("# kernel {}, bpftrace 0.17, tracepoint mode; {}".format(
        platform.release(), " ".join(sys.argv)))
    worker = threading.Thread(target=traffic)
    with backend.run(program) as session:
        worker.start()
        end = time.time() + 4
        for line in session.lines():
            if "\tlo\t" in line:
                print(line)
            if time.time() > end:
                break
    worker.join()


if __name__ == "__main__":
    main()
