"""Whether a host can run the ftrace backend (backends/ftrace/check.py)."""
import pytest

from . import build, el7_backend, el7_host
from legacytrace.backends.ftrace import FtraceBackend
from legacytrace.errors import LegacytraceError
from legacytrace.kernel import offsets
from legacytrace.kernel.host import HostFacts


def test_no_layout_is_a_clear_error_naming_stap():
    backend = FtraceBackend(layout_for=lambda host: offsets.find_layout(
        "4.19.0-99-unknown", btf_path=None, vmlinux_paths=[], table="builds: []"))
    host = el7_host(release="4.19.0-99-unknown")
    with pytest.raises(LegacytraceError) as err:
        build(host=host, backend=backend)
    assert "stap" in str(err.value)
    assert not backend.check(host).available and "stap" in backend.check(host).reason


def test_check_modes():
    backend = el7_backend()
    assert backend.check(el7_host()).available
    assert "table el7" in backend.check(el7_host()).reason
    assert not backend.check(el7_host(root=False)).available
    tp = HostFacts(release="6.18.44", root=True, tracefs="/sys/kernel/tracing",
                   tracepoints=["net:netif_receive_skb"])
    answer = backend.check(tp)
    assert answer.available and "tracepoint mode" in answer.reason
    assert not backend.check(HostFacts(release="6.18.44", root=True, tracefs="/x")).available
