"""The owner of each packet (legacytrace.owners) and the process filter (legacytrace.procfilter)
on real captures: bpftrace lines of UDP, TCP and ping over loopback with the sockets of the
processes that made them (tests/data/bpf/README.md, owners-6.18), and /proc/net's ping and
raw socket tables (tests/data/owners/README.md).
"""
import json
import os

import pytest

from legacytrace import backends, owners
from legacytrace.model import EVENT_FIELDS
from legacytrace.procfilter import ProcessFilter

DATA = os.path.join(os.path.dirname(__file__), "data")


def capture():
    """(events, record) of owners-6.18: the parsed lines and the JSON of its processes."""
    with open(os.path.join(DATA, "bpf", "owners-6.18.txt")) as lines:
        events = backends.get("bpf").parse_lines(
            [line.rstrip("\n") for line in lines if not line.startswith("#")])
    with open(os.path.join(DATA, "bpf", "owners-6.18.json")) as record:
        return events, json.load(record)


class Clock(object):
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def recorded_table(record, reads, clock=None):
    """A SocketTable over the capture's recorded sockets; `reads` counts its reads."""
    comms = dict((each["pid"], each["comm"]) for each in record["workloads"].values())

    def read():
        reads.append(1)
        return [owners.Socket(*each) for each in record["sockets"]]
    return owners.SocketTable(clock=clock or Clock(), read=read, comm=comms.get)


def pid_of(record, name):
    return record["workloads"][name]["pid"]


def attributed(table=True):
    events, record = capture()
    reads = []
    found = owners.Owners(recorded_table(record, reads) if table else None)
    return found.attribute(events), record, reads


def transmit(ev):
    return ev.func == "net:net_dev_queue"


def test_every_udp_and_tcp_event_is_owned_by_the_process_of_its_local_port():
    events, record, _ = attributed()
    ports = dict((lport, pid) for _, _, _, lport, _, _, pid in record["sockets"])
    client = pid_of(record, "udp_client")
    ports.update((ev.sport, client) for ev in events if ev.proto == 17 and ev.pid == client
                 and ev.context == "task")
    ported = [ev for ev in events if ev.proto in (6, 17)]
    assert len(ported) == 24
    for ev in ported:
        local = ev.sport if transmit(ev) else ev.dport
        assert ev.owner_pid == ports[local], ev
        assert ev.owner_comm == "python", ev


def test_received_packets_name_the_server_not_the_interrupted_task():
    events, record, _ = attributed()
    server = pid_of(record, "udp_server")
    received = [ev for ev in events if ev.dport == record["ports"]["udp"] and not transmit(ev)]
    assert len(received) == 2
    assert all(ev.context == "softirq" and ev.pid != server for ev in received)
    assert all(ev.owner_pid == server for ev in received)


def test_a_softirq_transmit_of_tcp_carries_its_sockets_owner():
    events, record, _ = attributed()
    server, client = pid_of(record, "tcp_server"), pid_of(record, "tcp_client")
    (client_port,) = [each[3] for each in record["sockets"] if each[6] == client]
    softirq = [ev for ev in events if ev.proto == 6 and transmit(ev) and ev.context == "softirq"]
    assert softirq and set(ev.sport for ev in softirq) == {record["ports"]["tcp"], client_port}
    for ev in softirq:
        assert ev.owner_pid == (server if ev.sport == record["ports"]["tcp"] else client)


def test_every_echo_of_ping_is_pings_kernel_replies_too():
    events, record, _ = attributed()
    echoes = [ev for ev in events if ev.proto == 1]
    assert len(echoes) == 12
    assert [ev.context for ev in echoes].count("task") == 2
    assert all((ev.owner_pid, ev.owner_comm) == (pid_of(record, "ping"), "ping")
               for ev in echoes)


def test_the_table_is_read_once_for_the_whole_capture():
    _, _, reads = attributed()
    assert len(reads) == 1


def test_an_unknown_socket_reads_the_table_again_only_after_the_interval():
    events, record = capture()
    clock, reads = Clock(), []
    table = recorded_table(record, reads, clock)
    unknown = (4, 17, "127.0.0.1", 9, None, None)
    assert table.find(unknown) is None and len(reads) == 1
    clock.now += 1.0
    assert table.find(unknown) is None and len(reads) == 1
    clock.now += 1.5
    assert table.find(unknown) is None and len(reads) == 2


def test_without_the_table_only_what_the_trace_saw_names_an_owner():
    events, record, reads = attributed(table=False)
    assert not reads
    udp_received = [ev for ev in events if ev.dport == record["ports"]["udp"]
                    and not transmit(ev)]
    assert udp_received and all(ev.owner_pid is None for ev in udp_received)
    sent = [ev for ev in events if ev.context == "task"]
    assert sent and all(ev.owner_pid == ev.pid for ev in sent)


@pytest.mark.parametrize("name", ["udp_server", "tcp_server", "ping"])
def test_the_pid_filter_keeps_what_the_process_sends_and_receives(name):
    events, record, _ = attributed()
    pid = pid_of(record, name)
    kept = list(filter(ProcessFilter([pid]).matches, events))
    assert kept == [ev for ev in events if ev.owner_pid == pid]
    assert any(ev.context == "softirq" for ev in kept)
    assert all(ev.pid == pid for ev in kept if ev.context == "task")


def test_the_comm_filter_keeps_pings_echoes():
    events, _, _ = attributed()
    kept = owners.Attribution(owners.Owners(), ProcessFilter(comms=["ping"]))(events)
    assert len(kept) == 12 and all(ev.proto == 1 for ev in kept)


def proc_net(name):
    with open(os.path.join(DATA, "owners", name)) as table:
        return list(table)[1:]


def test_ping_sockets_of_proc_net_icmp():
    rows = [owners._proc_net_row(line, 4, owners.ICMP) for line in proc_net("icmp.txt")]
    assert [row[:6] for row in rows] == [(4, 1, None, 0x5F16, None, None),
                                         (4, 1, "127.0.0.1", 0x5F17, None, None)]
    assert all(row[6] > 0 for row in rows)
    (row6,) = [owners._proc_net_row(line, 6, owners.ICMP6) for line in proc_net("icmp6.txt")]
    assert row6[:6] == (6, 58, "::1", 0x5F18, None, None)


def test_raw_sockets_of_proc_net_raw_name_their_protocol():
    (row,) = [owners._proc_net_row(line, 4, None) for line in proc_net("raw.txt")]
    (row6,) = [owners._proc_net_row(line, 6, None) for line in proc_net("raw6.txt")]
    assert row[:6] == (4, 1, None, None, None, None)
    assert row6[:6] == (6, 58, None, None, None, None)


def test_one_raw_socket_owns_the_icmp_it_is_given_but_not_when_two_processes_hold_one():
    def table(pids):
        return owners.SocketTable(read=lambda: [owners.Socket(4, 1, None, None, None, None, pid)
                                                for pid in pids], comm=lambda pid: "ping")
    assert table([435]).find((4, 1, "127.0.0.1", 435, "127.0.0.1", 435)) == (435, "ping", None)
    assert table([435, 442]).find((4, 1, "127.0.0.1", 435, "127.0.0.1", 435)) is None


def test_the_owner_fields_end_an_event_so_that_an_owner_is_added_in_one_step():
    assert EVENT_FIELDS[-3:] == tuple("owner_" + name for name in owners.Owner._fields)
