"""The shared model: flow keys as text, events as the JSON schema's dict."""
from legacytrace.model import FlowEvent, FlowKey


def test_flow_key_text():
    assert str(FlowKey(4, 6, "10.0.0.1", 1234, "10.0.0.2", 80)) == "tcp 10.0.0.1:1234 > 10.0.0.2:80"
    assert str(FlowKey(6, 17, "::1", 53, "::1", 5353)) == "udp [::1]:53 > [::1]:5353"
    assert str(FlowKey(4, 1, "127.0.0.1", None, "127.0.0.1", None)) == "icmp 127.0.0.1 > 127.0.0.1"
    assert str(FlowKey(4, None, "10.0.0.1", None, "10.0.0.2", None)) == "ipv4 10.0.0.1 > 10.0.0.2"
    assert str(FlowKey(4, 132, "10.0.0.1", None, "10.0.0.2", None)) == "132 10.0.0.1 > 10.0.0.2"
    assert str(FlowKey(None, None, None, None, None, None)) == "-"


def test_event_defaults_and_dict():
    ev = FlowEvent(backend="ftrace", func="ip_rcv", proto=17, family=4)
    assert (ev.kind, ev.context, ev.fields, ev.in_interrupt) == ("entry", "task", {}, False)
    data = ev.to_dict()
    assert data["proto"] == "udp" and data["cmdline"] is None
    assert list(data) == list(FlowEvent._fields)
    assert FlowEvent(context="softirq").in_interrupt


def test_event_fields_keep_their_types():
    """Integer fields take an int (not a bool, a float or text), text fields take text:
    the JSON renderer's memo relies on it (an equal value is the same JSON)."""
    import pytest
    for bad in (dict(pid=True), dict(time_ns=1.0), dict(proto="tcp"), dict(comm=3),
                dict(saddr=b"127.0.0.1")):
        with pytest.raises(TypeError) as error:
            FlowEvent(**bad)
        assert list(bad)[0] in str(error.value)
    assert FlowEvent(pid=0, comm="", skb=2 ** 64 - 1, retval=-1).pid == 0
