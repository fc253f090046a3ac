"""The command line: usage errors are one line with exit 2, and the pure commands work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from legacytrace.kernel import symbols
from legacytrace.cli import cli

LEGACYTRACE = str(Path(sys.executable).parent / "legacytrace")


def run(*args):
    result = CliRunner().invoke(cli, list(args))
    return result


@pytest.mark.parametrize("args, message", [
    (["trace", "--proto", "tcpx"], "invalid protocol 'tcpx'"),
    (["trace", "-s", "10.0.0.256"], "invalid source address '10.0.0.256'"),
    (["trace", "-d", "10.0.0.0/33"], "invalid destination address"),
    (["trace", "--dport", "70000"], "invalid destination port '70000'"),
    (["trace", "-sp", "x"], "invalid source port 'x'"),
    (["trace", "-4", "-iv", "6"], "-4 and --ipversion 6 disagree"),
    (["trace", "--proto", "icmp", "--dport", "80"], "--sport/--dport need --proto tcp or udp"),
    (["generate", "-b", "ftrace", "-m", "no-such-manifest"], "manifest 'no-such-manifest' not found"),
    (["trace", "--json", "--flows", "udp"], "--json and --flows are alternatives"),
    (["parse", "-b", "ftrace", "/nonexistent"], "No such file or directory"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("backend, expect", [
    ("stap", 'kprobe.function("ip_rcv")'),
    ("ftrace", "ip_rcv ip_rcv skb=%di"),
    ("bpf", 'kprobe:"ip_rcv"'),
])
def test_generate_for_a_recorded_el7_host(datadir, backend, expect):
    facts = str(datadir / "hosts" / "el7-3.10.json")
    result = run("generate", "-b", backend, "--host-facts", facts, "icmp")
    assert result.exit_code == 0, result.output
    assert expect in result.output
    # EL7's ip_output(sk, skb): the variant for el7 puts the sk_buff second.
    assert "ip_output" in result.output


def test_generate_unknown_format_names_the_choices(datadir):
    facts = str(datadir / "hosts" / "el7-3.10.json")
    result = run("generate", "-b", "bpf", "--host-facts", facts, "--format", "sh")
    assert result.exit_code == 2
    assert "backend bpf has no format 'sh'" in result.output


def test_generate_rejects_a_file_that_is_not_doctor_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    result = run("generate", "-b", "ftrace", "--host-facts", str(bad))
    assert result.exit_code == 2
    assert "not the output of `legacytrace doctor --json`" in result.output


def test_parse_replays_a_capture_as_json(datadir):
    capture = str(datadir / "bpf" / "loopback-6.18.txt")
    result = run("parse", "-b", "bpf", capture, "--json", "icmp")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    events, summary = objects[:-1], objects[-1]
    assert events and all(e["proto"] == "icmp" for e in events)
    assert all(e["cmdline"] is None for e in events)
    assert summary["type"] == "summary" and summary["events"] == len(events)
    assert summary["lost_total"] == 0 and summary["filtered"] > 0
    assert summary["filter"] == "icmp"


def test_the_expression_and_the_flags_join_by_and_in_normalised_form(datadir):
    capture = str(datadir / "bpf" / "loopback-6.18.txt")
    every = run("parse", "-b", "bpf", capture, "--json")
    joined = run("parse", "-b", "bpf", capture, "--json", "-4", "icmp", "or", "udp")
    assert every.exit_code == joined.exit_code == 0, joined.output
    summary = _json_lines(joined)[-1]
    assert summary["filter"] == "ip and (icmp or udp)"
    events = _json_lines(every)[:-1]
    kept = [e for e in events if e["family"] == 4 and e["proto"] in ("icmp", "udp")]
    assert kept and summary["events"] == len(kept) and summary["filtered"] == len(events) - len(kept)


def test_flows_and_the_summary_name_the_filter(datadir):
    capture = str(datadir / "bpf" / "loopback-6.18.txt")
    result = run("parse", "-b", "bpf", capture, "--flows", "icmp", "or", "port", "53")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "# packets of: icmp or port 53" in lines and "filter: icmp or port 53" in lines


def _json_lines(result):
    """The JSON objects of a CliRunner result (whose output holds stderr too before click 8.2)."""
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_help_teaches_with_examples():
    for command in ("trace", "doctor", "generate", "parse", "list-functions", "cleanup"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_wrong_skb_pos_is_caught_by_this_hosts_btf(tmp_path):
    from conftest import require
    import os
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "this kernel has no BTF")
    manifest = tmp_path / "wrong.yaml"
    manifest.write_text("functions:\n  - {name: ip_output, skb_pos: 1}\n")
    result = run("generate", "-b", "ftrace", "-m", str(manifest))
    assert result.exit_code == 2
    assert "ip_output takes its struct sk_buff * as argument 3, not 1" in result.output


def test_list_functions_skb_from_this_hosts_btf():
    from conftest import require
    import os
    require(os.path.exists("/sys/kernel/btf/vmlinux") and os.geteuid() == 0,
            "needs BTF and root (kallsyms)")
    result = run("list-functions", "--skb", "^__dev_queue_xmit$")  # with or without kprobes
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("__dev_queue_xmit "))
    assert line.split()[:3] == ["__dev_queue_xmit", "skb_pos=1", "sk_pos=-"]


def test_a_backend_without_payload_peeking_says_so(datadir, monkeypatch):
    # The bpf backend peeks: take the feature away to see what a backend without it says.
    from legacytrace.backends import bpf
    monkeypatch.setattr(bpf.BpfBackend, "features", ())
    facts = str(datadir / "hosts" / "lab-6.1.json")
    result = run("generate", "-b", "bpf", "--host-facts", facts, "-m", "http1")
    assert result.exit_code == 0, result.output
    warning = [l for l in result.output.splitlines() if "does not read payloads" in l]
    assert warning == ["legacytrace: warning: the bpf backend does not read payloads (peek) "
                       "yet: the event comes without them: tcp_sendmsg"]


# --- parse: lines that are not events are counted, and a file of none is an error -------

def test_parse_counts_the_lines_that_are_not_events(datadir, tmp_path):
    capture = tmp_path / "capture.txt"
    capture.write_text((datadir / "ftrace" / "sh-capture-6.18.trace").read_text()
                       + "not an event\nnor this\n\n")
    result = run("parse", "-b", "ftrace", str(capture))
    assert result.exit_code == 0, result.output
    assert "warning: 2 line(s) of {} are not events of the ftrace backend: skipped".format(
        capture) in result.output
    assert "5 events" in result.output


def test_parse_of_an_empty_capture_is_no_error(tmp_path):
    capture = tmp_path / "idle.trace"
    capture.write_text("# legacytrace ftrace capture: kernel 6.18.44-fc-v669, group x\n")
    result = run("parse", "-b", "ftrace", str(capture))
    assert result.exit_code == 0 and "0 events" in result.output and "warning" not in result.output


# --- a closed output pipe (`legacytrace ... | head`) ends every command alike ---------------

def closed_after_one_line(args):
    """Run `legacytrace ARGS`, read one line of its output and close the pipe, as `| head -1`;
    returns (exit code, stderr). Python's own buffering: with PYTHONUNBUFFERED a big write
    that the closing pipe cuts short ends without an error, so nothing is left to report."""
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONUNBUFFERED")
    proc = subprocess.Popen([LEGACYTRACE] + args, stdout=subprocess.PIPE, env=env,
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return proc.wait(), err


@pytest.mark.parametrize("options", [[], ["--json"], ["--flows"]])
def test_parse_into_a_closed_pipe_ends_with_a_line_and_exit_0(datadir, tmp_path, options):
    capture = tmp_path / "big.trace"
    capture.write_text((datadir / "ftrace" / "kprobe-6.1-all-traffic.trace").read_text() * 400)
    code, err = closed_after_one_line(["parse", "-b", "ftrace", str(capture)] + options)
    assert code == 0, err
    assert err.startswith("legacytrace: the output pipe closed. ") and "Traceback" not in err


def test_a_command_whose_output_pipe_closes_says_so_and_exits_0(datadir, tmp_path):
    """generate for 300 functions writes about a megabyte, far more than a pipe holds."""
    manifest = tmp_path / "big.yaml"
    manifest.write_text("functions:\n" + "".join(
        "  - {{name: f{}, skb_pos: 1}}\n".format(i) for i in range(300)))
    code, err = closed_after_one_line(["generate", "-b", "bpf", "--host-facts",
                                       str(datadir / "hosts" / "lab-6.1.json"), "-m", str(manifest)])
    assert (code, err) == (0, "legacytrace: the output pipe closed\n")


def test_parse_with_a_pid_keeps_what_that_process_sent_and_what_came_for_it(datadir):
    """A replay learns owners from the capture's own task-context events (owners-6.18: the TCP
    server answers, so the packets that came for it after its answer name it)."""
    with open(str(datadir / "bpf" / "owners-6.18.json")) as record:
        server = json.load(record)["workloads"]["tcp_server"]["pid"]
    result = run("parse", "-b", "bpf", str(datadir / "bpf" / "owners-6.18.txt"), "--json",
                 "-p", str(server))
    assert result.exit_code == 0, result.output
    objects = _json_lines(result)
    events, summary = objects[:-1], objects[-1]
    assert events and all(e["owner_pid"] == server for e in events)
    assert [e for e in events if e["context"] == "task"] and [
        e for e in events if e["context"] == "softirq"]
    assert summary["processes"] == "pid {}".format(server) and summary["filtered"] > 0


def test_generate_puts_the_process_filter_into_the_bpftrace_predicate(datadir):
    result = run("generate", "-b", "bpf", "--host-facts", str(datadir / "hosts" / "lab-6.1.json"),
                 "-p", "812", "--comm", "nginx", "udp")
    assert result.exit_code == 0, result.output
    assert '|| pid == 812 || comm == "nginx")' in result.output


def test_the_flows_header_names_the_process_filter(datadir):
    result = run("parse", "-b", "bpf", str(datadir / "bpf" / "owners-6.18.txt"), "--flows",
                 "--comm", "ping", "icmp")
    assert result.exit_code == 0, result.output
    assert "# packets of: icmp; processes: comm ping" in result.output.splitlines()
