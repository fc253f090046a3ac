"""The bpf backend without a kernel: rendered programs, validation, the LTB1 parser, checks.

Golden programs live in tests/golden/bpf/ (tests/conftest.py says how to regenerate
them). Parser input is bpftrace output captured on a real kernel
(tests/data/bpf/README.md says how).
"""
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from conftest import golden
from legacytrace import backends, flowfilter
from legacytrace.backends.bpf import build as bpf_build
from legacytrace.backends.bpf import session as bpf_session
from legacytrace.errors import BackendUnavailable, LegacytraceError, UsageError
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "bpf")

TRACEPOINTS = ["net:netif_receive_skb", "net:net_dev_queue", "skb:kfree_skb", "skb:consume_skb"]
#: Recorded facts: the 6.1 lab guest (kprobes) and this development machine (none).
LAB_61 = dict(release="6.1.0-56-amd64", root=True, tracefs="/sys/kernel/tracing",
              kprobe_events=True, kprobe_pmu=True, btf="/sys/kernel/btf/vmlinux",
              bpftrace="0.17.0", bpftrace_loads=True, tracepoints=TRACEPOINTS)
DEV_618 = dict(LAB_61, release="6.18.44-fc-v669", kprobe_events=False, kprobe_pmu=False)

GENERIC = [Probe("ip_rcv", 1, description="IPv4 receive"),
           Probe("__netif_receive_skb_core", 1),
           Probe("ip_output", 3, 2),
           Probe("__dev_queue_xmit", 1),
           Probe("dev_queue_xmit", 1),
           Probe("kfree_skb_reason", 1, egress=True),
           Probe("tcp_v4_rcv.isra.0", 1)]


def request(facts, probes=GENERIC, flow=None, run_id="lt4242"):
    return TraceRequest(probes, flow or FlowFilter(), HostFacts(**facts), run_id=run_id)


def build(facts, **kw):
    return backends.get("bpf").build(request(facts, **kw))


@pytest.mark.parametrize("name, facts, flow", [
    ("kprobe-all.bt", LAB_61, FlowFilter()),
    ("kprobe-udp4.bt", LAB_61, FlowFilter.parse(proto="udp", saddr="127.0.0.0/8",
                                                daddr="127.0.0.1", dport="53")),
    ("tracepoint-all.bt", DEV_618, FlowFilter()),
    ("tracepoint-tcp6.bt", DEV_618, FlowFilter.parse(proto="tcp", saddr="::1",
                                                     daddr="fe80::/10", sport="80")),
])
def test_rendered_program_matches_golden(name, facts, flow):
    golden("bpf/" + name, build(facts, flow=flow).text)


def test_build_is_pure_and_repeatable():
    assert build(LAB_61).text == build(LAB_61).text


def test_kprobe_mode_reads_argument_positions_and_quotes_clone_names():
    text = build(LAB_61).text
    assert 'kprobe:"ip_output"\n{\n  $skb = (struct sk_buff *)arg2;\n  $sk = (struct sock *)arg1;' \
        in text
    assert 'kprobe:"tcp_v4_rcv.isra.0"' in text
    assert "LTB1\\tkprobe\\tip_rcv\\t" in text


def test_tracepoint_mode_skips_functions_without_a_tracepoint_and_says_so():
    program = build(DEV_618)
    assert program.mode == "tracepoint"
    assert program.part.functions == ["net:netif_receive_skb", "net:net_dev_queue",
                                         "skb:kfree_skb"]
    warnings = "\n".join(program.warnings)
    for name in ("ip_rcv", "ip_output", "tcp_v4_rcv.isra.0"):
        assert "{}: skipped, no tracepoint".format(name) in warnings
    assert "dev_queue_xmit: skipped, tracepoint net:net_dev_queue already traces " \
           "__dev_queue_xmit" in warnings
    assert "tracepoint:skb:kfree_skb" in program.text
    # The drop reason is a field of the kfree_skb tracepoint from 5.17.
    assert "reason=%d" in program.text


def test_tracepoint_mode_drops_the_reason_before_5_17():
    text = build(dict(DEV_618, release="5.15.0-91-generic")).text
    assert "caller=%s" in text and "reason=" not in text and "args->reason" not in text


def test_tracepoint_mode_skips_tracepoints_the_kernel_lacks():
    program = build(dict(DEV_618, tracepoints=["net:net_dev_queue"]))
    assert program.part.functions == ["net:net_dev_queue"]
    assert any("lacks tracepoint net:netif_receive_skb" in w for w in program.warnings)


def test_nothing_traceable_is_one_clear_error():
    with pytest.raises(LegacytraceError, match="can trace none of its functions \\(ip_rcv\\)"):
        build(DEV_618, probes=[Probe("ip_rcv", 1)])


@pytest.mark.parametrize("name", [
    'ip_rcv"; system("reboot")', "ip_rcv\n}", "ip rcv", "../ip_rcv", "ip_rcv*", "",
    "1ip_rcv", "ip_rcv.isra", "x" * 200, None, 42])
def test_invalid_function_names_are_usage_errors_never_program_text(name):
    for facts in (LAB_61, DEV_618):
        with pytest.raises(UsageError, match="is not a kernel function name"):
            build(facts, probes=[Probe(name, 1)])


@pytest.mark.parametrize("pos", [0, 7, -1, "1", 1.0, True])
def test_invalid_argument_positions_are_usage_errors(pos):
    with pytest.raises(UsageError, match="skb_pos must be (an integer )?from 1 to 6"):
        build(LAB_61, probes=[Probe("ip_rcv", pos)])


@pytest.mark.parametrize("run_id", ["lt12 3", "LT123", "lt1;x", "", None, "a" * 40])
def test_invalid_run_ids_are_usage_errors(run_id):
    with pytest.raises(UsageError, match="invalid run id"):
        build(LAB_61, run_id=run_id)


def test_a_description_cannot_leave_its_comment():
    probe = Probe("ip_rcv", 1, description='x\n} BEGIN { system("id") } //\r')
    text = build(LAB_61, probes=[probe]).text
    assert '// ip_rcv: x } BEGIN { system("id") } //' in text
    assert "\nBEGIN { system" not in text and "\r" not in text


def test_filter_values_become_numbers_read_as_little_endian_words():
    terms = bpf_build.filter_terms(FlowFilter.parse(saddr="127.0.0.0/8", daddr="10.1.2.3", dport="53"))
    assert terms["family"] == 4 and terms["proto"] is None
    assert terms["addrs"] == [{"var": "s", "mask": (0xff, 0), "value": (0x7f, 0)},
                              {"var": "d", "mask": (0xffffffff, 0), "value": (0x0302010a, 0)}]
    assert terms["ports"] == [{"var": "dport", "value": 53}]
    six = bpf_build.filter_terms(FlowFilter.parse(saddr="2001:db8::/32"))
    assert six["addrs"][0]["mask"] == (0xffffffff, 0)
    assert six["addrs"][0]["value"] == (int.from_bytes(bytes.fromhex("20010db8"), "little"), 0)
    assert bpf_build.filter_terms(FlowFilter()) is None


def test_filter_values_that_are_not_numbers_are_refused():
    flow = FlowFilter()
    flow.dport = "53 || 1"
    with pytest.raises(UsageError, match="not a number"):
        flowfilter.check_values(flow)
    flow = FlowFilter()
    flow.saddr = "127.0.0.1"
    with pytest.raises(UsageError, match="not a network"):
        flowfilter.check_values(flow)


# --- the parser, on lines captured from a real kernel ---------------------------------

def captured(name="loopback-6.18.txt"):
    with open(os.path.join(DATA, name)) as capture:
        return [line.rstrip("\n") for line in capture if not line.startswith("#")]


def events(name="loopback-6.18.txt"):
    parser = backends.get("bpf")
    return [parser.parse(line) for line in captured(name)]


def test_every_captured_line_is_an_event():
    parsed = events()
    assert parsed and all(event is not None for event in parsed)
    assert all(event.backend == "bpf" and event.source == "tracepoint" for event in parsed)
    assert all(event.dev == "lo" for event in parsed)


def test_ping_request_is_attributed_to_ping_on_transmit():
    first = events()[0]
    assert (first.func, first.context, first.comm) == ("net:net_dev_queue", "task", "ping")
    assert (first.family, first.proto, first.saddr, first.daddr) == (4, 1, "127.0.0.1", "127.0.0.1")
    assert (first.icmp_type, first.icmp_code, first.icmp_seq) == (8, 0, 1)
    # A root ping uses its pid as the ICMP identifier (iputils, raw socket).
    assert first.icmp_id == first.pid == first.tid
    assert first.length == 98 and first.sport is None and first.skb > 0xffff000000000000


def test_receive_and_reply_run_in_softirq():
    ping4 = [e for e in events() if e.family == 4 and e.proto == 1 and e.comm == "ping"]
    assert [(e.func, e.icmp_type, e.context) for e in ping4] == [
        ("net:net_dev_queue", 8, "task"), ("net:netif_receive_skb", 8, "softirq"),
        ("net:net_dev_queue", 0, "softirq"), ("skb:consume_skb", 8, "softirq"),
        ("net:netif_receive_skb", 0, "softirq"), ("skb:kfree_skb", 0, "softirq")]
    assert ping4[3].fields == {"caller": "icmp_rcv"}
    assert ping4[5].fields == {"caller": "ping_rcv", "reason": 3}
    # The same sk_buff from transmit to receive on loopback.
    assert ping4[0].skb == ping4[1].skb == ping4[3].skb


def test_ipv6_addresses_and_icmpv6_echo():
    ping6 = [e for e in events() if e.family == 6]
    assert ping6 and all((e.saddr, e.daddr, e.proto) == ("::1", "::1", 58) for e in ping6)
    assert [e.icmp_type for e in ping6[:3]] == [128, 128, 129]
    assert ping6[0].icmp_id == ping6[0].pid and ping6[0].icmp_seq == 1


def test_udp_ports_and_the_port_unreachable_it_caused():
    parsed = events()
    udp = [e for e in parsed if e.proto == 17]
    assert udp and all((e.saddr, e.daddr, e.dport) == ("127.0.0.1", "127.0.0.1", 9999)
                       for e in udp)
    assert len(set(e.sport for e in udp)) == 1
    assert udp[-1].fields["caller"] == "__udp4_lib_rcv"
    unreachable = [e for e in parsed if e.proto == 1 and e.icmp_type == 3]
    assert unreachable and all(e.icmp_code == 3 and e.icmp_id is None for e in unreachable)


def test_tcp_ports_in_both_directions():
    tcp = [e for e in events() if e.proto == 6]
    client = tcp[0].sport, tcp[0].dport
    assert all((e.sport, e.dport) in (client, client[::-1]) for e in tcp)
    assert sum((e.sport, e.dport) == client[::-1] for e in tcp) >= 2


@pytest.mark.parametrize("line", [
    "", "Attaching 10 probes...", "LTB1\tBEGIN\tlt4242", "Lost 12 events", "\n", "LTB1",
    "LT2\ttracepoint\tx" + "\t0" * 22 + "\t-\tping",
    "LTB1\tuprobe\tx" + "\t0" * 22 + "\t-\tping",
])
def test_lines_that_are_not_events(line):
    assert backends.get("bpf").parse(line) is None


def test_comm_may_hold_tabs_and_is_the_rest_of_the_line():
    line = captured()[0].rsplit("\t", 1)[0] + "\tmy\tcomm "
    assert backends.get("bpf").parse(line).comm == "my\tcomm "


def test_truncated_and_damaged_captured_lines_never_raise():
    parser = backends.get("bpf")
    for line in captured():
        for cut in range(len(line)):
            parser.parse(line[:cut])
        fields = line.split("\t")
        for i in range(1, len(fields)):
            damaged = fields[:i] + ["zz"] + fields[i + 1:]
            parser.parse("\t".join(damaged))


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises(text):
    backends.get("bpf").parse("LTB1\t" + text)
    backends.get("bpf").parse(text)


# --- checks, errors, leftovers -------------------------------------------------------

def check(**changes):
    return backends.get("bpf").check(HostFacts(**dict(DEV_618, **changes)))


def test_check_says_yes_here_in_tracepoint_mode_and_in_the_lab_with_kprobes():
    assert check().available and "tracepoint mode" in check().reason
    lab = backends.get("bpf").check(HostFacts(**LAB_61))
    assert lab.available and "kprobe mode" in lab.reason


@pytest.mark.parametrize("changes, words", [
    ({"bpftrace": None}, "bpftrace not installed"),
    ({"bpftrace": "0.14.0"}, "bpftrace 0.14.0 is too old: 0.17 or newer"),
    ({"root": False}, "needs root"),
    ({"btf": None, "kernel_build": "/usr/src/linux-headers-6.18"}, "has no BTF"),
    ({"tracepoints": ["net:napi_gro_frags_exit"]}, "none of the net/skb tracepoints"),
    ({"bpftrace_loads": False, "bpftrace_error": "ERROR: x"}, "cannot load a program here"),
])
def test_check_says_no_with_the_reason(changes, words):
    verdict = check(**changes)
    assert not verdict.available and words in verdict.reason


def read_stderr(name):
    with open(os.path.join(DATA, name)) as err:
        return err.read().splitlines()


@pytest.mark.parametrize("name, message", [
    ("stderr-nonroot.txt", "bpftrace could not run the program: bpftrace currently only "
                           "supports running as the root user.; run legacytrace as root"),
    ("stderr-bad-member.txt", "bpftrace could not run the program: Struct/union of type "
                              "'struct sk_buff' does not contain a field named 'no_such_member'"),
    ("stderr-no-tracepoint.txt", "bpftrace could not run the program: tracepoint not found: "
                                 "net:no_such_tp"),
])
def test_bpftrace_errors_are_quoted_in_one_line(name, message):
    text = bpf_session.explain(read_stderr(name), 1)
    assert text == message and "\n" not in text


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_are_the_folders_and_processes_of_dead_runs_only(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    tmp = tmp_path / "tmp"
    proc = tmp_path / "proc"
    for owner in (dead, alive):
        (tmp / "legacytrace_lt{}_abc".format(owner)).mkdir(parents=True)
    (tmp / "legacytrace_x_abc").mkdir()
    (tmp / "other").mkdir()
    for pid, argv in ((100, ["/usr/bin/bpftrace", "-B", "line",
                             str(tmp / "legacytrace_lt{}_abc".format(dead) / "trace.bt")]),
                      (101, ["/usr/bin/bpftrace", "-B", "line",
                             str(tmp / "legacytrace_lt{}_abc".format(alive) / "trace.bt")]),
                      (102, ["/usr/bin/vim", str(tmp / "legacytrace_lt{}_abc".format(dead) /
                                                 "trace.bt")])):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    found = bpf_session.find_leftovers(str(tmp), str(proc))
    assert found == [
        ("process", "bpftrace pid 100 of legacytrace_lt{}_abc".format(dead), 100),
        ("folder", str(tmp / "legacytrace_lt{}_abc".format(dead)),
         str(tmp / "legacytrace_lt{}_abc".format(dead)))]


# --- the session's process handling, with stand-ins for bpftrace -----------------------

def stand_in(tmp_path, body):
    """An executable that plays bpftrace: `body` is a shell script."""
    path = tmp_path / "bpftrace"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def session(executable, text="BEGIN {}\n", grace=1.0, timeout=10.0):
    from legacytrace.backends.base import Program
    program = Program("bpf", text, run_id="lt{}".format(os.getpid()), part=bpf_build.BpfPart([], {}))
    return bpf_session.BpftraceSession(program, executable, start_timeout=timeout, grace=grace)


def test_missing_bpftrace_is_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable, match="cannot start .*nothing/bpftrace"):
        with session(str(tmp_path / "nothing" / "bpftrace")):
            pass


def test_a_bpftrace_that_fails_is_quoted(tmp_path):
    exe = stand_in(tmp_path, "cat '{}' >&2; exit 1\n".format(
        os.path.join(DATA, "stderr-bad-member.txt")))
    with pytest.raises(BackendUnavailable, match="does not contain a field named"):
        with session(exe):
            pass


def test_events_before_begin_are_kept_lost_events_counted_and_stop_escalates(tmp_path):
    # Ignores SIGINT and SIGTERM: detach must go on to SIGKILL and still return.
    first = captured()[0]
    exe = stand_in(tmp_path, "trap '' INT TERM\necho 'Attaching 1 probes...'\n"
                             "printf '%s\\n' '{}'\necho 'LTB1\tBEGIN\tx'\necho 'Lost 7 events'\n"
                             "printf '%s\\n' '{}'\nexec sleep 60\n".format(first, first))
    with session(exe, grace=0.5) as live:
        lines = live.lines()
        assert [next(lines), next(lines)] == [first, first]
        folder = live.folder
        assert os.path.basename(folder).startswith("legacytrace_lt{}_".format(os.getpid()))
    assert live.lost == {"bpftrace perf buffer full": 7}
    assert live.proc.returncode == -9      # SIGKILL: it did not wait out the sleep
    assert not os.path.exists(folder)
    live.detach()  # idempotent


def test_a_bpftrace_that_never_attaches_times_out(tmp_path):
    exe = stand_in(tmp_path, "exec sleep 60\n")
    with pytest.raises(LegacytraceError, match="did not attach its probes within 0.5 s"):
        with session(exe, timeout=0.5, grace=0.5):
            pass


