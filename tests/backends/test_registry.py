"""The registry of backends (backends/__init__.py): names, preference orders, loading."""
import pytest

from conftest import recorded as facts
from legacytrace import backends, select
from legacytrace.backends.base import Availability, Backend
from legacytrace.errors import BackendUnavailable



def test_backend_checks_come_from_the_backends():
    found = select.backend_checks()
    assert list(found) == backends.names()
    assert all(callable(check) for check in found.values())


def test_backend_that_cannot_load_is_unavailable(monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "bpf", backends.Entry(
        "legacytrace.backends.nosuchmodule:Nope", backends.REGISTRY["bpf"].rank))
    found = select.backend_checks()
    verdict = found["bpf"](facts("fc-6.18"))
    assert verdict == Availability(False, verdict.reason)
    assert "not part of this build" in verdict.reason
    assert found["ftrace"] is not None


def test_each_kind_of_kernel_has_an_order_of_every_backend():
    for kind in (backends.OLD, backends.BTF, backends.NO_BTF):
        assert sorted(backends.preferred(kind)) == sorted(backends.names())
    assert backends.preferred(backends.OLD) == ["stap", "ftrace", "bpf"]
    assert backends.preferred(backends.BTF) == ["bpf", "ftrace", "stap"]
    assert backends.preferred(backends.NO_BTF) == ["stap", "bpf", "ftrace"]


def test_the_preference_texts_name_the_backends_in_the_registrys_order():
    for name in ("el7-3.10", "deb10-4.19", "fc-6.18"):
        order, why = select.preference(facts(name))
        named = [n for n in order if {"stap": "SystemTap"}.get(n, n) in why]
        places = [why.index({"stap": "SystemTap"}.get(n, n)) for n in named]
        assert places == sorted(places) and named[0] == order[0]


def test_an_unknown_backend_is_named_with_the_choices():
    with pytest.raises(BackendUnavailable, match="unknown backend 'dtrace': choose one of stap, "
                                                  "ftrace, bpf"):
        backends.get("dtrace")


def test_every_backend_declares_the_whole_contract():
    for name in backends.names():
        backend = backends.get(name)
        assert backend.name == name and backend.summary and "text" in backend.formats
        for method in ("check", "mode", "build", "program", "ready", "run", "parse",
                       "parse_lines", "export", "leftovers", "cleanup"):
            assert callable(getattr(backend, method))
        assert type(backend).program is not Backend.program
