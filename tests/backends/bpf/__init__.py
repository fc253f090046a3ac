"""Tests of the bpf backend, and the recorded hosts they build for."""
import os

from conftest import DATA as ALL_DATA

DATA = os.path.join(ALL_DATA, "bpf")
TRACEPOINTS = ["net:netif_receive_skb", "net:net_dev_queue", "skb:kfree_skb", "skb:consume_skb"]
#: Recorded facts: the 6.1 lab guest (kprobes) and this development machine (none).
LAB_61 = dict(release="6.1.0-56-amd64", root=True, tracefs="/sys/kernel/tracing",
              kprobe_events=True, kprobe_pmu=True, btf="/sys/kernel/btf/vmlinux",
              bpftrace="0.17.0", bpftrace_loads=True, tracepoints=TRACEPOINTS)
DEV_618 = dict(LAB_61, release="6.18.44-fc-v669", kprobe_events=False, kprobe_pmu=False)
