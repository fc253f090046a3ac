"""The filter expression's user-space check: CPU time per event.

    .venv/bin/python bench/filterexpr.py [--events 200000]

Events come from real captures (tests/data/bpf/loopback-6.18.txt and
tests/data/stap/explore-6.1.0-56-amd64.txt, parsed by their backends), repeated to
--events. For each expression `filterexpr.evaluator(expr)` runs over all of them (the
closures the live path would keep), and FlowFilter.matches() with flags like
those of the first rows as the reference of today's check. The figure is the least
CPU time of 5 runs, per event.
"""
import argparse
import itertools
import os
import time

import benchkit

CAPTURES = {"bpf": "tests/data/bpf/loopback-6.18.txt",
            "stap": "tests/data/stap/explore-6.1.0-56-amd64.txt"}
EXPRESSIONS = [
    "udp",
    "udp and dst port 9999",
    "udp and dst port 9999 and host 127.0.0.1 and not icmp and src portrange 1024-65535",
    "tcp and port 8080 and src net 127.0.0.0/8 and dst host 127.0.0.1 and not port 22",
    "port 53 or 853 or 80 or 443 or 8080",
    "not (host 10.0.0.1 or net 192.168.0.0/16) and (tcp or icmp6)",
]
FLAGS = [("--proto udp", {"proto": "udp"}),
         ("--proto udp --dport 9999", {"proto": "udp", "dport": "9999"}),
         ("--proto tcp -s 127.0.0.0/8 -d 127.0.0.1 --dport 8080",
          {"proto": "tcp", "saddr": "127.0.0.0/8", "daddr": "127.0.0.1", "dport": "8080"})]


def real_events():
    from legacytrace import backends
    events = []
    for backend, path in sorted(CAPTURES.items()):
        with open(os.path.join(benchkit.REPO, path)) as capture:
            events.extend(backends.get(backend).parse_lines(list(capture)))
    return events


def cpu_per_event(test, events, repeat=5):
    """Least CPU seconds of `repeat` runs of test over events, per event."""
    best = None
    for _ in range(repeat):
        start = time.process_time()
        for event in events:
            test(event)
        spent = time.process_time() - start
        best = spent if best is None else min(best, spent)
    return best / len(events)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200000)
    args = parser.parse_args()
    from legacytrace import filterexpr
    from legacytrace.flowfilter import FlowFilter
    base = real_events()
    events = list(itertools.islice(itertools.cycle(base), args.events))
    benchkit.header("filter expression: CPU time per event", [
        "{:,} events: {} real events of {} repeated".format(
            len(events), len(base), ", ".join(sorted(CAPTURES.values()))),
        "each row: the least CPU time (time.process_time) of 5 runs over all events",
    ])
    rows = [["check", "ns/event", "kept"]]
    for text in EXPRESSIONS:
        test = filterexpr.evaluator(filterexpr.parse(text))
        kept = sum(1 for event in base if test(event) is True)
        rows.append(["evaluator: " + text, "{:.0f}".format(cpu_per_event(test, events) * 1e9),
                     "{}/{}".format(kept, len(base))])
    for words, flags in FLAGS:
        flow = FlowFilter.parse(**flags)
        kept = sum(1 for event in base if flow.matches(event))
        rows.append(["FlowFilter.matches: " + words,
                     "{:.0f}".format(cpu_per_event(flow.matches, events) * 1e9),
                     "{}/{}".format(kept, len(base))])
    benchkit.table(rows)


if __name__ == "__main__":
    main()
