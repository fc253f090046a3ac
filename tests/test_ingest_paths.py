"""The fast paths of ingest (bench/ingest.py) say exactly what the plain ones say.

No timing here: bench/ prints figures, tests only check that the faster code
gives the same output as the reference (the dict encoder, the keyword constructor).
"""
import inspect
import io
import json
import os

import pytest

from legacytrace import backends
from legacytrace.model import FlowEvent
from legacytrace.render import JsonRenderer

DATA = os.path.join(os.path.dirname(__file__), "data")
CAPTURES = [
    ("bpf", "bpf/loopback-6.18.txt"),
    ("stap", "stap/explore-6.1.0-56-amd64.txt"),
    ("ftrace", "ftrace/lab-kprobes-6.1.0-56-amd64.trace_pipe"),
    ("ftrace", "ftrace/lab-tracepoints-hashptr-6.1.0-56-amd64.trace_pipe"),
    ("ftrace", "ftrace/tracepoints-6.18-lo.trace"),
]


def reference(ev):
    """The JSON line the schema defines: the dict, encoded compactly."""
    return json.dumps(ev.to_dict(), separators=(",", ":"), default=str)


def events_of(backend, path):
    chosen = backends.get(backend)
    with open(os.path.join(DATA, path)) as capture:
        found = [chosen.parse(line.rstrip("\n"), None) for line in capture]
    return [ev for ev in found if ev is not None]


@pytest.mark.parametrize("backend,path", CAPTURES)
def test_json_lines_of_real_captures_are_the_dict_encoders_text(backend, path):
    events = events_of(backend, path)
    assert events
    out = io.StringIO()
    renderer = JsonRenderer(out)
    for ev in events + events:         # the second time every template comes from the memo
        renderer.event(ev)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events + events]


def test_a_value_equal_to_a_remembered_one_keeps_its_own_type():
    events = [FlowEvent(backend="bpf", source="kprobe", func="ip_rcv", time_ns=1, cpu=0, pid=pid,
                        family=4, proto=proto, saddr="127.0.0.1", daddr="127.0.0.1")
              for pid, proto in ((1, 6), (True, 6), (1.0, 6), (1, 6.0), (1, 6))]
    out = io.StringIO()
    renderer = JsonRenderer(out)
    for ev in events:
        renderer.event(ev)
    lines = out.getvalue().splitlines()
    assert lines == [reference(ev) for ev in events]
    assert '"pid":true' in lines[1] and '"pid":1.0' in lines[2]


def test_percent_signs_in_remembered_values_stay_literal():
    ev = FlowEvent(backend="bpf", source="kprobe", func="f%s%%d", time_ns=5, cpu=1, comm="100%",
                   fields={"x": "%d"})
    out = io.StringIO()
    JsonRenderer(out).event(ev)
    assert out.getvalue() == reference(ev) + "\n"


def test_a_full_memo_starts_again_and_stays_right(monkeypatch):
    monkeypatch.setattr(JsonRenderer, "MEMO_MAX", 3)
    events = [FlowEvent(backend="stap", source="kprobe", func="ip_rcv", time_ns=n, cpu=0,
                        pid=n % 5) for n in range(20)]
    out = io.StringIO()
    renderer = JsonRenderer(out)
    for ev in events:
        renderer.event(ev)
    assert out.getvalue().splitlines() == [reference(ev) for ev in events]
    assert len(renderer._memo) <= 3


def test_changing_fields_are_in_slot_order_before_fields():
    slots = FlowEvent.__slots__
    assert [n for n in slots if n in JsonRenderer.CHANGING] == list(JsonRenderer.CHANGING)
    assert all(slots.index("fields") > slots.index(n) for n in JsonRenderer.CHANGING)


def test_flow_event_takes_every_slot_by_keyword_only():
    parameters = list(inspect.signature(FlowEvent.__init__).parameters.values())[1:]
    assert [p.name for p in parameters] == list(FlowEvent.__slots__)
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters)
    with pytest.raises(TypeError):
        FlowEvent(no_such_field=1)
    ev = FlowEvent()
    assert (ev.kind, ev.context, ev.fields) == ("entry", "task", {})
