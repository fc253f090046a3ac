#!/usr/bin/env python3
"""Record raw tracer output from the lab kernel into tests/data/, for parser unit tests.

Runs as root inside the lab guest; from the host: `make lab-capture` or
`python3 tests/lab/labctl.py capture [NAME...]`. Each capture NAME writes
    tests/data/ftrace/lab-NAME-RELEASE.trace_pipe   the bytes read from trace_pipe, untouched
    tests/data/ftrace/lab-NAME-RELEASE.meta.json    kernel release, the command, probe definitions,
                                                     sk_buff offsets, the traffic's pids and argv,
                                                     and tcpdump's view of the same packets
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import labkit

CHECKOUT = Path(__file__).resolve().parents[2]
OUT_DIR = CHECKOUT / "tests" / "data" / "ftrace"
INSTANCE = "ltcap"
GROUP = "ltcap"
REPRODUCE = "python3 tests/lab/labctl.py capture {name}  (all captures: make lab-capture)"

# x86_64 argument registers in order; the sk_buff's position per function on 6.1 (docs/kernel-facts.md).
ARG_REGS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")
SKB_PROBES = (
    # (function, sk_buff argument number, also read the IP header at skb->data)
    ("ip_rcv", 1, True),
    ("ip_local_deliver", 1, True),
    ("icmp_rcv", 1, False),
    ("udp_rcv", 1, False),
    ("tcp_v4_rcv", 1, False),
    ("ip_local_out", 3, True),
    ("ip_output", 3, True),
    ("ip_finish_output2", 3, False),
    ("consume_skb", 1, False),
)
TRACEPOINTS = ("net/netif_receive_skb", "net/net_dev_queue", "skb/kfree_skb", "skb/consume_skb")


def skb_probe(func: str, argno: int, ip_header: bool, off: Dict[str, int]) -> str:
    """A `p:` definition reading sk_buff fields at BTF offsets, and IP header fields where data points at it."""
    reg = ARG_REGS[argno - 1]
    args = ["skb={}".format(reg),
            "len=+{}({}):u32".format(off["len"], reg),
            "proto=+{}({}):x16".format(off["protocol"], reg)]
    if ip_header:
        data = "+{}({})".format(off["data"], reg)
        args += ["ipproto=+9({}):u8".format(data),
                 "saddr=+12({}):x32".format(data),
                 "daddr=+16({}):x32".format(data)]
    return "p:{}/{} {} {}".format(GROUP, func, func, " ".join(args))


def kprobe_definitions(off: Dict[str, int]) -> Tuple[List[str], List[str]]:
    """Definitions for the functions this kernel has, and the names it lacks (inlined or renamed)."""
    symbols = labkit.kernel_symbols()
    present = [p for p in SKB_PROBES if p[0] in symbols]
    missing = [p[0] for p in SKB_PROBES if p[0] not in symbols]
    defs = [skb_probe(func, argno, ip, off) for func, argno, ip in present]
    if "kfree_skb_reason" in symbols:  # 5.17+; a string fetch ($comm, 4.8+) shows that format too
        defs.append("p:{}/kfree_skb_reason kfree_skb_reason skb=%di reason=%si:u32 comm=$comm".format(GROUP))
    defs.append("r:{}/ip_rcv_ret ip_rcv ret=$retval:s32".format(GROUP))
    return defs, missing


def record(name: str, out_dir: Path) -> Path:
    """Trace the standard traffic in an own instance and write the raw pipe plus its sidecar."""
    setup, settings = CAPTURES[name]
    labkit.loopback_up()
    release = labkit.kernel_release()
    with labkit.TraceSession(INSTANCE) as session:
        for key, value in settings.items():
            session.set(key, value)
        meta = setup(session)
        with labkit.Tcpdump("lo") as tcpdump:
            workloads = labkit.all_traffic()
            tcpdump.stop()
        raw = session.read_pipe(settle=2.0)
    base = "lab-{}-{}".format(name, release)
    trace = out_dir / (base + ".trace_pipe")
    trace.write_text(raw)
    meta.update({
        "capture": name,
        "kernel_release": release,
        "uname": " ".join(os.uname()),
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": REPRODUCE.format(name=name),
        "read": "instances/{}/trace_pipe, O_NONBLOCK, after the traffic".format(INSTANCE),
        "instance_settings": settings,
        "traffic": [w.as_dict() for w in workloads],
        "tcpdump": {"command": "tcpdump -i lo -n -tt -l --immediate-mode", "lines": tcpdump.text},
    })
    (out_dir / (base + ".meta.json")).write_text(json.dumps(meta, indent=1) + "\n")
    return trace


def setup_kprobes(session: labkit.TraceSession) -> Dict[str, object]:
    """Raw kprobe_events on the IPv4 path, offsets from the guest's BTF."""
    offsets = labkit.btf_offsets("sk_buff", ["len", "protocol", "data"])
    defs, missing = kprobe_definitions(offsets)
    for definition in defs:
        session.enable(session.add_kprobe(definition))
    return {"kprobe_events": defs, "not_in_kallsyms": missing,
            "sk_buff_offsets": offsets, "offsets_from": "pahole -C sk_buff /sys/kernel/btf/vmlinux"}


def setup_tracepoints(session: labkit.TraceSession) -> Dict[str, object]:
    """The static tracepoints the ftrace backend falls back to without kprobes."""
    for event in TRACEPOINTS:
        session.enable(event)
    return {"events": list(TRACEPOINTS)}


# hash-ptr 0 shows real sk_buff addresses in tracepoints, as kprobes print them (the ftrace
# backend sets it), but on Debian's 6.1.0-56 it also empties every %s field (dev=, reason:):
# both views are recorded.
BACKEND_SETTINGS = {"trace_clock": "mono", "options/hash-ptr": "0"}
CAPTURES = {
    "kprobes": (setup_kprobes, BACKEND_SETTINGS),
    "tracepoints": (setup_tracepoints, BACKEND_SETTINGS),
    "tracepoints-hashptr": (setup_tracepoints, {"trace_clock": "mono", "options/hash-ptr": "1"}),
}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="of " + ", ".join(sorted(CAPTURES)) + " (default: all)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(CAPTURES)
    if unknown:
        parser.error("unknown capture {}: choose from {}".format(", ".join(sorted(unknown)), ", ".join(CAPTURES)))
    for name in args.names or sorted(CAPTURES):
        path = record(name, args.out)
        print("captured {} ({} lines)".format(path, len(path.read_text().splitlines())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
