"""What a trace saw, counted: printed on exit (stderr) or as the last JSON Lines object.

The orchestrator feeds it: `add(ev)` for every event shown, `lines_read` for the
event lines the mechanism delivered (before any check in user space), `filtered` for
events the user-space flow and process checks dropped, `add_lost(session.lost)` once the
session ends. A renderer that drops packets from its own view (the --flows
view evicting open packets) adds them to `evicted` in its `close()`, so the
summary is complete only after the renderers are closed.
"""
import collections

from legacytrace.model import PROTO_NAMES, FlowKey, fields_getter, flow_of as _flow_of

# Read in C (FlowEvent.key is a Python call per event).
_func_of = fields_getter("func")
_time_of = fields_getter("time_ns")
_new_tuple = tuple.__new__


class Summary(object):
    """Counters of one trace run; flows are counted for the first `max_flows` distinct ones."""

    def __init__(self, max_flows=4096):
        self.events = 0
        self.functions = collections.Counter()
        self.flows = collections.Counter()
        #: events of flows beyond `max_flows` (counted, not told apart)
        self.other_flow_events = 0
        #: events without an address tuple (a tracepoint that knows only the sk_buff)
        self.no_flow_events = 0
        self.lost = collections.Counter()
        #: event lines read from the mechanism (trace_pipe, bpftrace, staprun, a capture)
        self.lines_read = 0
        self.filtered = 0
        self.evicted = 0
        self.first_ns = None
        self.last_ns = None
        #: the flow filter as its normalised expression ("all flows" without one)
        self.filter = None
        #: the process filter in words ("pid 812 or comm nginx"), None without one
        self.processes = None
        self._max_flows = max_flows

    def add(self, ev):
        """Count one event that was shown (passed every filter): the live trace's way."""
        self.events += 1
        self.functions[ev.func] += 1
        self._count_flow(_flow_of(ev), 1)
        time_ns = ev.time_ns
        if time_ns is not None:
            self._saw_times(time_ns, time_ns)

    def add_all(self, events):
        """Count a list of events that were shown, as add() would one by one.

        The parse command reads a capture in batches: counting a batch takes one
        Counter pass per key (in C) and one flow check per distinct flow, not per event.
        """
        self.events += len(events)
        self.functions.update(map(_func_of, events))
        # A Counter keeps its keys in order of first appearance, so the first
        # `max_flows` flows are the same ones add() would keep.
        for key, count in collections.Counter(map(_flow_of, events)).items():
            self._count_flow(key, count)
        times = [time_ns for time_ns in map(_time_of, events) if time_ns is not None]
        if times:
            self._saw_times(min(times), max(times))

    def _count_flow(self, key, count):
        """Count `count` events of the flow `key` (a plain tuple in FlowKey order)."""
        if key[0] is None:               # no family: no address tuple
            self.no_flow_events += count
            return
        known = self.flows.get(key)
        if known is not None:
            self.flows[key] = known + count
        elif len(self.flows) < self._max_flows:
            self.flows[_new_tuple(FlowKey, key)] = count
        else:
            self.other_flow_events += count

    def _saw_times(self, first_ns, last_ns):
        if self.first_ns is None or first_ns < self.first_ns:
            self.first_ns = first_ns
        if self.last_ns is None or last_ns > self.last_ns:
            self.last_ns = last_ns

    def add_lost(self, lost):
        """Merge a Counter of lost events by cause (a Session's `lost`)."""
        self.lost.update(lost)

    def to_dict(self, top=10):
        """Plain data for JSON: every counter, and the `top` busiest flows."""
        return {
            "events": self.events,
            "flows": len(self.flows),
            "flows_capped": len(self.flows) >= self._max_flows,
            "other_flow_events": self.other_flow_events,
            "no_flow_events": self.no_flow_events,
            "functions": dict(self.functions),
            "top_flows": [dict(key._asdict(), proto=PROTO_NAMES.get(key.proto, key.proto), events=n)
                          for key, n in _ranked(self.flows)[:top]],
            "lost": dict(self.lost),
            "lost_total": sum(self.lost.values()),
            "filter": self.filter,
            "processes": self.processes,
            "lines_read": self.lines_read,
            "filtered": self.filtered,
            "evicted": self.evicted,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }

    def to_text(self, top=10):
        """The summary as a few lines for stderr (no final newline); the first is a sentence."""
        span = ""
        if self.first_ns is not None and self.last_ns > self.first_ns:
            seconds = (self.last_ns - self.first_ns) / 1e9
            span = " over {:.3f} s".format(seconds) if seconds >= 1 else \
                " over {:.3f} ms".format(seconds * 1e3)
        lines = ["{} in {}{} {}{}.".format(
            _plural(self.events, "event"), len(self.flows), "+" if self.other_flow_events else "",
            "flow" if len(self.flows) == 1 and not self.other_flow_events else "flows", span)]
        if self.filter:
            lines.append("filter: " + self.filter)
        if self.processes:
            lines.append("processes: " + self.processes)
        if self.functions:
            lines.append("events per function:")
            lines.extend("{:>10}  {}".format(n, func) for func, n in _ranked(self.functions))
        if self.flows:
            lines.append("busiest flows:" if len(self.flows) > top else "flows:")
            lines.extend("{:>10}  {}".format(n, key) for key, n in _ranked(self.flows)[:top])
        if self.no_flow_events:
            lines.append("{:>10}  events without an address tuple".format(self.no_flow_events))
        if self.lost:
            lines.append("lost events: {} ({})".format(sum(self.lost.values()), ", ".join(
                "{}: {}".format(cause, n) for cause, n in sorted(self.lost.items()))))
        else:
            lines.append("lost events: none")
        if self.lines_read > self.events:
            lines.append("event lines read from the tracer: {}".format(self.lines_read))
        if self.filtered:
            lines.append("filtered out in user space: {}".format(self.filtered))
        if self.evicted:
            lines.append("packets printed before their end (too many open): {}".format(self.evicted))
        return "\n".join(lines)


def _ranked(counter):
    """(key, count) pairs, most first, ties in key text order so that output is stable."""
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))


def _plural(count, noun):
    return "{} {}{}".format(count, noun, "" if count == 1 else "s")
