"""Which process a packet is for: the owner of its socket, as FlowEvent's owner_* fields.

A probe sees the task it ran in; in softirq context that is whoever was interrupted, and
a received packet is handled there. The packet's process is the owner of its socket:

1. The socket the event names (`sk`: a socket function's argument, else skb->sk; a
   received packet has one once its socket is looked up), mapped to the process that
   legacytrace saw use it in task context (sendmsg, connect, a transmit in a syscall):
   every task-context event with a socket teaches `socket -> (pid, comm)`.
2. Else the socket by the packet's addresses: the end that is this host's is the
   destination on the receive path and the source on the transmit path
   (legacytrace.kernel.skbuff.RECEIVE, TRANSMIT; an ICMP echo's by its type); a function
   on neither may see either, and then an owner counts only when both ends agree. First
   the sockets this trace saw with those ends (a socket of a known owner teaches its ends,
   TCP's and UDP's ports, an echo's identifier), then the sockets of this host's processes
   (SocketTable: sockets that existed before the trace, or were never used in task context
   while it ran).

Cost: a few dict lookups per event; the socket table is read again only when asked for a
socket it does not know, and at most every `interval` seconds (BENCHMARKS.md).
"""
import collections
import os
import socket
import time

import psutil

from legacytrace.kernel import skbuff
from legacytrace.model import EVENT_FIELDS, FlowEvent, fields_getter

#: TCP, UDP, ICMP, ICMPv6: the protocols whose sockets the table knows.
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
_PORTED = (TCP, UDP)
_ECHO = {ICMP: (0, 8), ICMP6: (128, 129)}
#: (protocol, ICMP type) of an echo -> the end of it that is this host's (see _sides).
_ECHO_SIDE = {(ICMP, 8): ("s",), (ICMP, 0): ("d",), (ICMP6, 128): ("s",), (ICMP6, 129): ("d",)}
#: Entries each map keeps at most before it starts again (a long trace of many sockets).
MAX_ENTRIES = 65536
#: The comm of the kernel threads that run softirqs (ksoftirqd/0, ...): their work can look
#: like task context to the bpf backend, and the sockets it touches are no process's.
_KSOFTIRQD = "ksoftirqd/"
_OWNER_PID = EVENT_FIELDS.index("owner_pid")
_new_event = tuple.__new__
_tuple_of = fields_getter("family", "proto", "saddr", "sport", "daddr", "dport", "icmp_type",
                          "icmp_id")
_flow_of = fields_getter("func", "family", "proto", "saddr", "sport", "daddr", "dport",
                         "icmp_type", "icmp_id")
#: SocketTable.find's memo: not looked up yet.
_UNKNOWN = object()


class Owner(collections.namedtuple("Owner", "pid comm cmdline")):
    """A process: its pid (thread group id) and comm, as the owner_* fields that end a
    FlowEvent (cmdline None: procinfo.CmdlineCache adds it to the events shown), so that an
    event takes its owner in one step."""

    __slots__ = ()


class Owners(object):
    """The owners of a trace's events, learnt from the events themselves and `table`.

    `table` is a SocketTable (None: a replay, whose processes are not here).
    """

    def __init__(self, table=None):
        self._table = table
        self._by_socket = {}       # sk -> Owner seen using it in task context
        self._by_ends = {}         # (family, proto, local, lport, remote, rport) -> sk
        self._ends = {}            # _flow_of(ev) -> the ends its packet may have here

    def attribute(self, events):
        """`events` (a list) with owner_pid and owner_comm set where an owner is found."""
        owner_of = self.owner
        out = []
        append = out.append
        for ev in events:
            owner = owner_of(ev)
            append(ev if owner is None else _new_event(FlowEvent, ev[:_OWNER_PID] + owner))
        return out

    def owner(self, ev):
        """The Owner of `ev`'s socket, or None when neither its socket nor its ends tell."""
        sk = ev.sk
        if sk:
            comm = ev.comm           # None where ftrace printed "<...>"
            if ev.context == "task" and ev.pid and not (comm and comm.startswith(_KSOFTIRQD)):
                self._saw_socket(sk, ev.pid, comm)
            owner = self._by_socket.get(sk)
            if owner is not None:
                self._learn_ends(ev, sk)
                return owner
        ends = self._ends_of(ev)
        if len(ends) == 1:
            return self._owner_of(ends[0])
        found = set(filter(None, map(self._owner_of, ends)))
        return found.pop() if len(found) == 1 else None

    def _ends_of(self, ev):
        """The ends `ev`'s packet may have at this host (see _sides), remembered per flow and
        function: () without an IP header."""
        key = _flow_of(ev)
        ends = self._ends.get(key)
        if ends is None:
            ends = () if ev.family is None else tuple(_ends(ev, local) for local in _sides(ev))
            _remember(self._ends, key, ends)
        return ends

    def _learn_ends(self, ev, sk):
        """Remember the ends of a packet of a socket whose owner is known, where the side that
        is this host's is known and has a port (TCP, UDP, an ICMP echo's identifier)."""
        ends = self._ends_of(ev)
        if len(ends) == 1 and ends[0][3] is not None and self._by_ends.get(ends[0]) != sk:
            _remember(self._by_ends, ends[0], sk)

    def _saw_socket(self, sk, pid, comm):
        known = self._by_socket.get(sk)
        if known is None or known.pid != pid or known.comm != comm:
            _remember(self._by_socket, sk, Owner(pid, comm, None))

    def _owner_of(self, ends):
        """The owner of the socket this trace saw with these ends, else the table's."""
        owner = self._by_socket.get(self._by_ends.get(ends))
        if owner is None and self._table is not None:
            owner = self._table.find(ends)
        return owner


class Attribution(object):
    """A callable for trace.run's `own`: a batch of events with their owners (Owners), less
    the events a procfilter.ProcessFilter (or None) does not keep."""

    def __init__(self, owners, processes=None):
        self._owners = owners
        self._keep = None if processes is None or processes.is_empty() else processes.matches

    def __call__(self, events):
        events = self._owners.attribute(events)
        if self._keep is None:
            return events
        return list(filter(self._keep, events))


def _remember(mapping, key, value):
    """mapping[key] = value, in a mapping that starts again when it holds MAX_ENTRIES."""
    if len(mapping) >= MAX_ENTRIES:
        mapping.clear()
    mapping[key] = value


def _sides(ev):
    """Which end of `ev`'s packet is this host's: ("d",) on the receive path, ("s",) on the
    transmit path, both where it can be either. An ICMP echo request is its sender's and a
    reply its receiver's wherever it is seen (the kernel answers requests: no socket of its
    destination takes one)."""
    kind = _ECHO_SIDE.get((ev.proto, ev.icmp_type))
    if kind is not None:
        return kind
    func = ev.func
    if func in skbuff.RECEIVE:
        return ("d",)
    if func in skbuff.TRANSMIT:
        return ("s",)
    return ("d", "s")


def _ends(ev, local):
    """(family, proto, local address, local port, remote address, remote port) of `ev` with
    its source (`local` "s") or destination ("d") as this host's end. An ICMP echo's port
    is its identifier (a ping socket's port), other ICMP has none."""
    family, proto, saddr, sport, daddr, dport, icmp_type, icmp_id = _tuple_of(ev)
    if proto not in _PORTED:
        sport = dport = icmp_id if icmp_type in _ECHO.get(proto, ()) else None
    if local == "s":
        return family, proto, saddr, sport, daddr, dport
    return family, proto, daddr, dport, saddr, sport


class SocketTable(object):
    """The sockets of this host's processes by their ends: TCP and UDP from psutil, ping and
    raw sockets from /proc/net/{icmp,raw}{,6} (psutil reads no others). Read again when asked
    for a socket it does not know, at most every `interval` seconds; `read()` returns the
    list of Socket (tests pass recorded ones), `comm(pid)` a process's comm."""

    def __init__(self, interval=2.0, clock=time.monotonic, read=None, comm=None):
        self._interval = interval
        self._clock = clock
        self._read = read or read_sockets
        self._comm = comm or read_comm
        self._read_at = None
        self._exact, self._bound, self._comms, self._found = {}, {}, {}, {}

    def find(self, ends):
        """The Owner of the socket with these ends, (family, proto, local, lport, remote,
        rport): a connected socket's exactly, else one bound to the local end; for ICMP a ping
        socket of the echo's identifier, else the raw socket of one process; or None. An
        answer is remembered until the next read; a socket not found reads the table again
        once it is `interval` old."""
        owner = self._found.get(ends, _UNKNOWN)
        if owner is None and self._stale():
            self.refresh()
            owner = _UNKNOWN
        if owner is _UNKNOWN:
            owner = self._lookup(ends)
            if owner is None and self._stale():
                self.refresh()
                owner = self._lookup(ends)
            _remember(self._found, ends, owner)
        return owner

    def _stale(self):
        return self._read_at is None or self._clock() - self._read_at >= self._interval

    def _lookup(self, ends):
        pids = self._pids(*ends)
        if not pids:
            return None
        pid = min(pids)          # a socket forked servers share: the lowest pid
        return Owner(pid, self._comm_of(pid), None)

    def refresh(self):
        """Read the sockets again."""
        self._read_at = self._clock()
        self._exact, self._bound, self._comms, self._found = {}, {}, {}, {}
        for found in self._read():
            for family, local in _families(found.family, found.local):
                if found.remote:
                    key = (family, found.proto, local, found.lport, found.remote, found.rport)
                    self._exact.setdefault(key, set()).add(found.pid)
                else:
                    key = (family, found.proto, found.lport)
                    self._bound.setdefault(key, []).append((local, found.pid))

    def _pids(self, family, proto, local, lport, remote, rport):
        """The pids of the socket these ends name; several only where they share it."""
        exact = self._exact.get((family, proto, local, lport, remote, rport))
        if exact:
            return exact
        pids = set(pid for address, pid in self._bound.get((family, proto, lport), ())
                   if address in (local, None))
        if pids or proto in _PORTED:
            return pids
        raw = set(pid for address, pid in self._bound.get((family, proto, None), ())
                  if address in (local, None))
        return raw if len(raw) == 1 else set()   # every raw socket gets a copy: one process

    def _comm_of(self, pid):
        comm = self._comms.get(pid)
        if comm is None:
            comm = self._comms[pid] = self._comm(pid)
        return comm


class Socket(collections.namedtuple("Socket", "family proto local lport remote rport pid")):
    """One process's socket: family 4 or 6, IP protocol, local and remote address text and
    port (remote None where not connected; a wildcard local address is None; a ping
    socket's port is its echo identifier, a raw socket's None)."""

    __slots__ = ()


def _families(family, local):
    """(family, local address) pairs a socket takes packets of: an IPv6 socket bound to the
    wildcard or to an IPv4-mapped address also takes IPv4 (v6only aside)."""
    if family == 6 and local is None:
        return ((6, None), (4, None))
    if family == 6 and local.startswith("::ffff:") and "." in local:
        return ((4, local[7:]),)
    return ((family, local),)


def read_comm(pid):
    """The comm of process `pid` (its thread group leader's, as the kernel keeps it), or None."""
    try:
        with open("/proc/{}/comm".format(pid)) as handle:
            return handle.read().rstrip("\n")
    except (IOError, OSError):
        return None


def read_sockets():
    """Every process's TCP, UDP, ping and raw socket (needs root for other users' processes)."""
    found = [_from_psutil(conn) for conn in psutil.net_connections(kind="inet")
             if conn.pid is not None]
    return [each for each in found if each is not None] + _proc_net_sockets()


_PSUTIL_PROTO = {socket.SOCK_STREAM: TCP, socket.SOCK_DGRAM: UDP}
_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}


def _from_psutil(conn):
    proto, family = _PSUTIL_PROTO.get(conn.type), _FAMILY.get(conn.family)
    if proto is None or family is None:
        return None
    local, lport = _address(conn.laddr)
    remote, rport = _address(conn.raddr)
    return Socket(family, proto, local, lport, remote, rport, conn.pid)


def _address(addr):
    """(address text or None for a wildcard or none, port or None) of a psutil address."""
    if not addr:
        return None, None
    text = addr.ip if addr.ip not in ("0.0.0.0", "::") else None
    return text, addr.port or None


#: /proc/net tables psutil does not read, with the family and protocol of their sockets.
PROC_NET = (("icmp", 4, ICMP), ("icmp6", 6, ICMP6), ("raw", 4, None), ("raw6", 6, None))


def _proc_net_sockets(root="/proc"):
    """Ping sockets (/proc/net/icmp{,6}: the port is the echo identifier) and raw sockets
    (/proc/net/raw{,6}: the "port" is the IP protocol) with the processes holding them."""
    rows = []
    for name, family, proto in PROC_NET:
        try:
            with open("{}/net/{}".format(root, name)) as handle:
                rows.extend(_proc_net_row(line, family, proto) for line in list(handle)[1:])
        except (IOError, OSError):
            continue
    rows = [row for row in rows if row is not None]
    if not rows:
        return []
    holders = _inode_pids(root, set(row[-1] for row in rows))
    return [Socket(*row[:-1], pid=pid) for row in rows for pid in holders.get(row[-1], ())]


def _proc_net_row(line, family, proto):
    """(family, proto, local, lport, None, None, inode) of one /proc/net/{icmp,raw}{,6} line
    (`sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
    inode ...`, addresses as the kernel's words in hex), or None."""
    parts = line.split()
    if len(parts) < 10 or parts[9] == "0":
        return None
    local_hex, port_hex = parts[1].split(":")
    local = _hex_address(local_hex, family)
    port = int(port_hex, 16)
    if proto is None:                          # a raw socket: its "port" is the protocol
        proto, port = port, None
    return (family, proto, local, port or None, None, None, int(parts[9]))


def _hex_address(text, family):
    """An address of /proc/net as text (None for the wildcard): 32-bit words in host
    (little-endian) order, one for IPv4, four for IPv6."""
    raw = b"".join(int(text[i:i + 8], 16).to_bytes(4, "little") for i in range(0, len(text), 8))
    if not any(bytearray(raw)):
        return None
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, raw)


def _inode_pids(root, inodes):
    """{socket inode: [pids holding it]} for `inodes`, from /proc/PID/fd's links."""
    wanted = dict(("socket:[{}]".format(inode), inode) for inode in inodes)
    found = collections.defaultdict(list)
    for pid in psutil.pids():
        folder = "{}/{}/fd".format(root, pid)
        try:
            names = os.listdir(folder)
        except (IOError, OSError):
            continue
        for name in names:
            inode = wanted.get(_readlink("{}/{}".format(folder, name)))
            if inode is not None and pid not in found[inode]:
                found[inode].append(pid)
    return found


def _readlink(path):
    try:
        return os.readlink(path)
    except (IOError, OSError):
        return None
