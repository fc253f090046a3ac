"""The static tracepoints: one name for every backend, and a tracepoint mode that follows
the manifest (its functions, their `tracepoint:` keys, --regex)."""
import json
import types

import pytest
from click.testing import CliRunner

from legacytrace import backends, manifest
from legacytrace.backends.ftrace.parse import LineParser
from legacytrace.cli import cli
from legacytrace.errors import LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel import symbols, tracepoints
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest

#: This development machine's kernel, without kprobes, as recorded.
FC_618 = "hosts/fc-6.18.json"


def no_kprobes_host(datadir):
    return HostFacts.from_dict(json.loads((datadir / FC_618).read_text()))


def lines(path):
    return [line.rstrip("\n") for line in path.open() if not line.startswith("#")]


def test_ftrace_and_bpf_name_a_tracepoints_events_alike(datadir):
    """Real captures of both backends on this machine's 6.18 (tracepoint mode)."""
    ftrace = LineParser().parse_lines(lines(datadir / "ftrace" / "tracepoints-6.18-lo.trace"))
    bpf = [backends.get("bpf").parse(line) for line in lines(datadir / "bpf" / "loopback-6.18.txt")]
    ftrace_names, bpf_names = {e.func for e in ftrace}, {e.func for e in bpf}
    assert ftrace_names <= set(tracepoints.TABLE) and bpf_names <= set(tracepoints.TABLE)
    assert {"net:net_dev_queue", "net:netif_receive_skb", "skb:kfree_skb",
            "skb:consume_skb"} <= ftrace_names & bpf_names


def test_every_event_name_belongs_to_one_system():
    assert len(tracepoints.BY_EVENT) == len(tracepoints.TABLE)
    assert all(tp.system in ("net", "skb") and tp.name == tp.system + ":" + tp.event
               for tp in tracepoints.TABLE.values())


MANIFEST = """\
functions:
  - name: my_xmit
    skb_pos: 1
    tracepoint: {}
  - {{name: tcp_sendmsg, sk_pos: 1}}
"""


def test_a_manifest_entry_names_its_tracepoint():
    loaded = manifest.parse(MANIFEST.format("'net:net_dev_start_xmit'"), "m.yaml")
    assert loaded.functions[0].tracepoint == "net:net_dev_start_xmit"
    assert manifest.names(loaded.functions[0]) == ["my_xmit", "net:net_dev_start_xmit"]
    assert manifest.names(loaded.functions[1]) == ["tcp_sendmsg"]


@pytest.mark.parametrize("name", [
    "net:no_such_event", "net_dev_queue", "net:net_dev_queue; rm -rf /", "../../enable",
    "net:net_dev_queue\n", "NET:NET_DEV_QUEUE", "[net, net_dev_queue]", "42"])
def test_a_tracepoint_legacytrace_does_not_read_is_a_usage_error(name):
    with pytest.raises(UsageError, match="is not one legacytrace reads packets from"):
        manifest.parse(MANIFEST.format(json.dumps(name)), "m.yaml")


def build(backend, host, probes, flow=None):
    request = TraceRequest(probes, flow or FlowFilter(), host, run_id="lt1", manifest="m.yaml")
    return backends.get(backend).build(request)


def test_ftrace_tracepoint_mode_traces_the_manifests_functions(datadir):
    host = no_kprobes_host(datadir)
    program = build("ftrace", host, [Probe("my_xmit", 1, tracepoint="net:net_dev_start_xmit"),
                                     Probe("sk_skb_reason_drop", 2, 1),
                                     Probe("tcp_sendmsg", sk_pos=1)])
    assert program.part.events == [("net", "net_dev_start_xmit", None),
                                      ("skb", "kfree_skb", None)]
    assert program.warnings == [
        "tcp_sendmsg: skipped, no tracepoint fires in it and this kernel has no kprobes"]


@pytest.mark.parametrize("backend", ["ftrace", "bpf"])
def test_a_manifest_without_a_tracepoint_is_an_error_without_kprobes(datadir, backend):
    with pytest.raises(LegacytraceError, match=r"m.yaml: the {} backend can trace none of its "
                       r"functions \(tcp_sendmsg\) on kernel 6.18".format(backend)):
        build(backend, no_kprobes_host(datadir), [Probe("tcp_sendmsg", sk_pos=1)])


@pytest.mark.parametrize("args, expected", [
    ([], ["net:netif_receive_skb", "net:net_dev_queue", "skb:kfree_skb"]),
    (["-r", "net_dev_queue"], ["net:net_dev_queue"]),       # a tracepoint's name
    (["-r", "reason_drop"], ["skb:kfree_skb"]),             # a function's name
    (["-m", "drops"], ["skb:kfree_skb"]),
])
def test_generate_for_a_kernel_without_kprobes_follows_manifest_and_regex(datadir, args, expected):
    result = CliRunner().invoke(cli, ["generate", "-b", "ftrace", "--host-facts",
                                      str(datadir / FC_618)] + args)
    assert result.exit_code == 0, result.output
    traced = [line.split()[0] for line in result.output.splitlines()
              if not line.startswith(("#", "legacytrace:"))]
    assert traced == expected


def test_generate_a_manifest_no_tracepoint_fires_in_is_one_line(datadir):
    result = CliRunner().invoke(cli, ["generate", "-b", "ftrace", "--host-facts",
                                      str(datadir / FC_618), "-m", "http1"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        "Error: http1: the ftrace backend can trace none of its functions (tcp_sendmsg)")


# --- a flow filter needs a tuple, which ftrace's tracepoint events do not have -------------

@pytest.fixture
def no_kprobes_trace(datadir, monkeypatch):
    """`legacytrace trace` on the recorded no-kprobes host, with or without bpftrace."""
    def trace(*args, bpftrace=True):
        host = no_kprobes_host(datadir)
        if not bpftrace:
            host = HostFacts(**dict(host.to_dict(), bpftrace=None, bpftrace_loads=None))
        monkeypatch.setattr("legacytrace.cli._probe_mounted", lambda backend: host)
        return CliRunner().invoke(cli, ["trace", "-T", "1"] + list(args))
    return trace


def test_ftrace_refuses_a_flow_filter_in_tracepoint_mode_before_tracing(no_kprobes_trace):
    result = no_kprobes_trace("-b", "ftrace", "icmp")
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: backend ftrace cannot run this trace here: this kernel has no "
                           "kprobes") and "(icmp)" in last and "no flow filter" in last
    assert "tracing with" not in result.output


def test_auto_does_not_fall_back_to_a_mode_that_cannot_answer(no_kprobes_trace):
    """Without bpftrace, auto would pick ftrace: its tracepoint mode cannot filter flows, and
    stap cannot run without kprobes, so nothing can answer the request."""
    result = no_kprobes_trace("icmp", bpftrace=False)
    assert result.exit_code == 1, result.output
    assert "legacytrace: ftrace cannot run this trace here: this kernel has no kprobes" \
        in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: no backend can run here: bpf: bpftrace not installed")
    assert "ftrace: this kernel has no kprobes" in last and "tracing with" not in result.output


# --- the preamble: the pick and the skipped functions in one short line each, more with -v --

def test_auto_says_its_pick_and_the_skipped_functions_briefly(datadir):
    args = ["generate", "--host-facts", str(datadir / FC_618)]
    brief = CliRunner().invoke(cli, args).output.splitlines()
    assert brief[0] == ("legacytrace: using bpf in tracepoint mode (-v or `legacytrace doctor` "
                        "says why)")
    assert brief[1].startswith("legacytrace: warning: skipped, no tracepoint fires in it and "
                               "this kernel has no kprobes: ")
    assert brief[1].endswith(" of the 22 functions (-v names them)")
    verbose = CliRunner().invoke(cli, args + ["-v"]).output.splitlines()
    assert verbose[0].startswith("legacytrace: using bpf: kernel with BTF: bpf first")
    assert "ip_local_deliver, ip_local_deliver_finish, tcp_v4_rcv" in verbose[1]


def test_a_warning_about_a_few_functions_names_them(datadir):
    result = CliRunner().invoke(cli, ["generate", "-b", "bpf", "--host-facts",
                                      str(datadir / FC_618), "-r", "^(tcp_v4_rcv|__dev_)"])
    assert result.output.splitlines()[0] == ("legacytrace: warning: skipped, no tracepoint "
                                             "fires in it and this kernel has no kprobes: "
                                             "tcp_v4_rcv")


def test_list_functions_without_kprobes_lists_what_tracepoint_mode_traces(datadir, monkeypatch):
    with open(str(datadir / "hosts" / "kallsyms-6.18-excerpt.txt")) as handle:
        names = symbols.parse_kallsyms(l for l in handle if not l.startswith("#"))
    monkeypatch.setattr("legacytrace.cli.hostmod.probe_host",
                        lambda try_bpftrace: no_kprobes_host(datadir))
    monkeypatch.setattr("legacytrace.cli._kernel_functions",
                        lambda facts: types.SimpleNamespace(names=lambda: names))
    result = CliRunner().invoke(cli, ["list-functions"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "legacytrace: this kernel has no kprobes: only the functions a static tracepoint fires "
        "in can be traced, at that tracepoint", "__dev_queue_xmit"]
