"""The fast paths of ingest (bench/ingest.py) say exactly what the plain ones say.

No timing here: bench/ prints figures, tests only check that the faster code
gives the same output as the reference (the dict encoder, the keyword constructor).
"""
import inspect
import io
import json
import os

import pytest

from legacytrace import backends, cli
from legacytrace.model import CONTEXTS, FlowEvent
from legacytrace.render import JsonRenderer
from legacytrace.summary import Summary

DATA = os.path.join(os.path.dirname(__file__), "data")
CAPTURES = [
    ("bpf", "bpf/loopback-6.18.txt"),
    ("stap", "stap/explore-6.1.0-56-amd64.txt"),
    ("ftrace", "ftrace/lab-kprobes-6.1.0-56-amd64.trace_pipe"),
    ("ftrace", "ftrace/lab-tracepoints-hashptr-6.1.0-56-amd64.trace_pipe"),
    ("ftrace", "ftrace/tracepoints-6.18-lo.trace"),
]


def one_by_one(renderer, events):
    for ev in events:
        renderer.event(ev)


def as_a_batch(renderer, events):
    renderer.events(events)


WRITES = [one_by_one, as_a_batch]


def reference(ev):
    """The JSON line the schema defines: the dict, encoded compactly."""
    return json.dumps(ev.to_dict(), separators=(",", ":"), default=str)


def events_of(backend, path):
    chosen = backends.get(backend)
    with open(os.path.join(DATA, path)) as capture:
        found = [chosen.parse(line.rstrip("\n"), None) for line in capture]
    return [ev for ev in found if ev is not None]


@pytest.mark.parametrize("backend,path", CAPTURES)
def test_parsers_make_every_field_in_its_place(backend, path):
    """Parsers build events positionally (tuple.__new__): each has every field, and is
    the event the keyword constructor makes of the same values."""
    for ev in events_of(backend, path):
        assert type(ev) is FlowEvent and len(ev) == len(FlowEvent._fields)
        assert ev == FlowEvent(**dict(zip(FlowEvent._fields, ev)))
        assert ev.backend == backend and ev.kind in ("entry", "return") and ev.cpu >= 0
        assert isinstance(ev.time_ns, int) and isinstance(ev.func, str) and ev.func
        assert ev.context in CONTEXTS and isinstance(ev.fields, dict)


@pytest.mark.parametrize("backend,path", CAPTURES)
def test_json_lines_of_real_captures_are_the_dict_encoders_text(backend, path):
    events = events_of(backend, path)
    assert events
    out = io.StringIO()
    renderer = JsonRenderer(out)
    for ev in events + events:         # the second time every template comes from the memo
        renderer.event(ev)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events + events]


@pytest.mark.parametrize("write", WRITES)
def test_a_changing_field_that_is_none_is_null_after_an_int(write):
    events = [FlowEvent(backend="bpf", source="kprobe", func="ip_rcv", time_ns=1, cpu=0, pid=7,
                        skb=skb, length=length, retval=retval)
              for skb, length, retval in ((1, 2, None), (None, 2, 0), (1, None, None), (1, 2, -1))]
    out = io.StringIO()
    write(JsonRenderer(out), events)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events]


@pytest.mark.parametrize("write", WRITES)
def test_percent_signs_in_remembered_values_stay_literal(write):
    ev = FlowEvent(backend="bpf", source="kprobe", func="f%s%%d", time_ns=5, cpu=1, comm="100%",
                   fields={"x": "%d"})
    out = io.StringIO()
    write(JsonRenderer(out), [ev])
    assert out.getvalue() == reference(ev) + "\n"


@pytest.mark.parametrize("write", WRITES)
def test_a_full_memo_starts_again_and_stays_right(monkeypatch, write):
    monkeypatch.setattr(JsonRenderer, "MEMO_MAX", 3)
    events = [FlowEvent(backend="stap", source="kprobe", func="ip_rcv", time_ns=n, cpu=0,
                        pid=n % 5) for n in range(20)]
    out = io.StringIO()
    renderer = JsonRenderer(out)
    write(renderer, events)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events]
    assert len(renderer._memo) <= 3


@pytest.mark.parametrize("write", WRITES)
def test_a_value_no_template_can_take_goes_through_the_dict_encoder(write):
    # FlowEvent's constructor refuses such types: _replace (as a buggy parser) does not.
    events = [FlowEvent(backend="bpf", source="kprobe", func="ip_rcv", time_ns=1, cpu=0,
                        fields={"n": 1} if time_ns == 2 else None)._replace(time_ns=time_ns)
              for time_ns in (1, "2 (a backend bug)", 2, 3.5, True)]
    out = io.StringIO()
    write(JsonRenderer(out), events)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events]


def test_changing_fields_are_in_slot_order_before_fields():
    slots = FlowEvent._fields
    assert [n for n in slots if n in JsonRenderer.CHANGING] == list(JsonRenderer.CHANGING)
    assert all(slots.index("fields") > slots.index(n) for n in JsonRenderer.CHANGING)


def test_flow_event_takes_every_slot_by_keyword_only():
    parameters = list(inspect.signature(FlowEvent.__new__).parameters.values())[1:]
    assert [p.name for p in parameters] == list(FlowEvent._fields)
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters)
    with pytest.raises(TypeError):
        FlowEvent(no_such_field=1)
    ev = FlowEvent()
    assert (ev.kind, ev.context, ev.fields) == ("entry", "task", {})


def summary_dicts(events, max_flows):
    """The summary of `events` counted one by one (the live trace) and as one batch (parse)."""
    one_by_one, batch = Summary(max_flows=max_flows), Summary(max_flows=max_flows)
    for ev in events:
        one_by_one.add(ev)
    batch.add_all(events)
    return one_by_one.to_dict(), batch.to_dict(), one_by_one.to_text(), batch.to_text()


@pytest.mark.parametrize("backend,path", CAPTURES)
@pytest.mark.parametrize("max_flows", [1, 2, 4096])
def test_a_batch_counts_as_its_events_one_by_one(backend, path, max_flows):
    events = events_of(backend, path)
    by_event, by_batch, text_by_event, text_by_batch = summary_dicts(events, max_flows)
    assert by_batch == by_event
    assert text_by_batch == text_by_event


def test_a_capped_batch_keeps_the_flows_seen_first():
    events = [FlowEvent(func="udp_sendmsg", family=4, proto=17, saddr="10.0.0.1", daddr="10.0.0.2",
                        sport=port, dport=53, time_ns=time_ns)
              for time_ns, port in enumerate((7, 8, 7, 9, 8, 9, 10))]
    events.append(FlowEvent(func="kfree_skb", time_ns=None))
    by_event, by_batch, _, _ = summary_dicts(events, 2)
    assert by_batch == by_event
    assert [flow["sport"] for flow in by_batch["top_flows"]] == [7, 8]
    assert (by_batch["other_flow_events"], by_batch["no_flow_events"]) == (3, 1)
    assert (by_batch["first_ns"], by_batch["last_ns"]) == (0, 6)


@pytest.mark.parametrize("backend,path", CAPTURES)
def test_a_batch_renders_as_its_events_one_by_one(backend, path):
    events = events_of(backend, path)
    one_by_one, batch = io.StringIO(), io.StringIO()
    renderer = JsonRenderer(one_by_one)
    for ev in events:
        renderer.event(ev)
    JsonRenderer(batch).events(events)
    assert batch.getvalue() == one_by_one.getvalue()


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 16])
@pytest.mark.parametrize("text", ["", "a\n", "a\nbc\n\nd", "one line, no newline", "\n\n"])
def test_line_batches_are_the_lines_without_newlines(text, size):
    batches = list(cli._line_batches(io.StringIO(text), size))
    assert [line for batch in batches for line in batch] == [
        line.rstrip("\n") for line in io.StringIO(text)]


class OneByteReads(io.RawIOBase):
    """A pipe that hands over one byte per read, as a slow writer's pipe may."""

    def __init__(self, data):
        self.data = data

    def readable(self):
        return True

    def readinto(self, buffer):
        if not self.data:
            return 0
        buffer[0], self.data = self.data[0], self.data[1:]
        return 1


def test_batches_of_one_byte_reads_keep_characters_and_lines():
    text = "ping-é 1\nçà 2\nno newline at the end"
    stream = io.TextIOWrapper(io.BufferedReader(OneByteReads(text.encode("utf-8")), 1))
    lines = [line for batch in cli._line_batches(stream) for line in batch]
    assert lines == text.split("\n")


def test_parse_of_a_pipe_shows_each_line_as_it_comes():
    """`cat trace_pipe | legacytrace parse -b ftrace -`: the first event is printed before the
    pipe's writer goes on (a 64 KiB read would wait for more)."""
    import select
    import subprocess
    import sys
    with open(os.path.join(DATA, "ftrace", "lab-kprobes-6.1.0-56-amd64.trace_pipe")) as capture:
        line = next(l for l in capture if not l.startswith("#") and ": ip_rcv:" in l)
    # The installed console script, from elsewhere: in the checkout `python -m` would import
    # the source tree, where backends/ is not inside the package.
    script = os.path.join(os.path.dirname(sys.executable), "legacytrace")
    proc = subprocess.Popen([script, "parse", "-b", "ftrace", "--json", "-"], cwd="/",
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, universal_newlines=True)
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
        ready = select.select([proc.stdout], [], [], 30)[0]   # no stdin EOF yet
        assert ready, "no event printed within 30 s of its line"
        first = json.loads(proc.stdout.readline())
        assert first["func"] == "ip_rcv" and first["backend"] == "ftrace"
    finally:
        proc.stdin.close()
        proc.wait(30)
