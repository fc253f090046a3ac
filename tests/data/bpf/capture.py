"""Capture raw bpftrace output of the bpf backend on this host's kernel (run as root).

    .venv/bin/python tests/data/bpf/capture.py tracepoint > tests/data/bpf/loopback-<release>.txt
    .venv/bin/python tests/data/bpf/capture.py fields > tests/data/bpf/fields-<release>.txt
    .venv/bin/python tests/data/bpf/capture.py owners tests/data/bpf/owners-<release>.json \
        > tests/data/bpf/owners-<release>.txt

Builds the tracepoint-mode program for a few loopback functions, runs it with the
backend's own session, sends ping, ping -6, one UDP datagram and one TCP connection
over loopback, and writes every raw line bpftrace printed for the `lo` device
(the `LTB2` protocol), unchanged. The header lines start with `#`. `fields` adds the
custom fields of FIELDS to __dev_queue_xmit (typed from this kernel's BTF). `owners`
runs other traffic instead (owners_traffic): servers and clients in processes of their
own, and writes them and their sockets, as legacytrace.owners reads them while the TCP
connection is open, to the JSON file named.
"""
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time

from legacytrace import backends, owners
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


UDP_PORT, TCP_PORT = 47101, 47102
#: Each a process of its own (python3 -c), printing "ready" when its socket is set up.
UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", {port}))
print("ready", flush=True)
for _ in range(2):
    s.recv(100)
sys.stdin.readline()
""".format(port=UDP_PORT)
UDP_CLIENT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(2):
    s.sendto(b"legacytrace owners", ("127.0.0.1", {port}))
print("ready", flush=True)
""".format(port=UDP_PORT)
TCP_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
conn.recv(100)
conn.sendall(b"HTTP/1.1 200 OK\\r\\n\\r\\n")
conn.recv(100)
""".format(port=TCP_PORT)
TCP_CLIENT = """
import socket, sys
c = socket.create_connection(("127.0.0.1", {port}))
c.sendall(b"GET / HTTP/1.1\\r\\n\\r\\n")
c.recv(100)
print("ready", flush=True)
sys.stdin.readline()
""".format(port=TCP_PORT)


def started(name, code, workloads):
    """A python3 process running `code`, once it printed ready; recorded in `workloads`."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline().strip() == "ready", name
    workloads[name] = {"pid": proc.pid, "comm": owners.read_comm(proc.pid)}
    return proc


def owners_traffic(record):
    """UDP and TCP servers and clients in processes of their own, and a ping; `record`
    receives the processes and their sockets (taken while the TCP connection is open)."""
    workloads = {}
    udp_server = started("udp_server", UDP_SERVER, workloads)
    tcp_server = started("tcp_server", TCP_SERVER, workloads)
    time.sleep(0.5)
    started("udp_client", UDP_CLIENT, workloads).wait()
    tcp_client = started("tcp_client", TCP_CLIENT, workloads)
    pids = set(each["pid"] for each in workloads.values())
    sockets = [list(each) for each in owners.read_sockets() if each.pid in pids]
    for proc in (tcp_client, udp_server, tcp_server):
        proc.communicate("close\n")
    ping = subprocess.Popen(["ping", "-c", "2", "-i", "0.2", "127.0.0.1"],
                            stdout=subprocess.DEVNULL)
    workloads["ping"] = {"pid": ping.pid, "comm": "ping"}
    ping.wait()
    record.update(workloads=workloads, sockets=sockets,
                  ports={"udp": UDP_PORT, "tcp": TCP_PORT})
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
    record = {}
    worker = threading.Thread(target=traffic)
    if sys.argv[1] == "owners":
        worker = threading.Thread(target=owners_traffic, args=(record,))
    with backend.run(program) as session:
        worker.start()
        end = time.time() + 8
        for lines in session.batches():
            for line in lines:
                if "\tlo\t" in line:
                    print(line)
            if time.time() > end:
                break
    worker.join()
    if record:
        with open(sys.argv[2], "w") as out:
            json.dump(dict(record, release=platform.release()), out, indent=1, sort_keys=True)
            out.write("\n")


if __name__ == "__main__":
    main()
