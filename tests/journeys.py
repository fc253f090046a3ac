"""A packet journey of FlowEvents for the renderer and summary tests: built here, so that
what is under test is the output, not a parser."""
from legacytrace.model import FlowEvent
from legacytrace.summary import Summary

SKB_OUT = 0xffff8dcf81335800
SKB_IN = 0xffff8dcf81336a00
SKB_TCP = 0xffff8dcf8133c100


def ev(**values):
    base = dict(backend="ftrace", source="kprobe", cpu=0, family=4, proto=1,
                saddr="10.0.2.15", daddr="10.0.2.2")
    base.update(values)
    return FlowEvent(**base)


def ping_out(t, func, **more):
    values = dict(time_ns=t, pid=4242, tid=4242, comm="ping", func=func, skb=SKB_OUT,
                  icmp_type=8, icmp_code=0, icmp_id=7, icmp_seq=1, length=84,
                  cmdline="ping -c 1 10.0.2.2")
    values.update(more)
    return ev(**values)


def ping_in(t, func, **more):
    values = dict(time_ns=t, pid=0, tid=0, comm="swapper/1", cpu=1, context="softirq",
                  func=func, skb=SKB_IN, saddr="10.0.2.2", daddr="10.0.2.15",
                  icmp_type=0, icmp_code=0, icmp_id=7, icmp_seq=1, length=84, dev="eth0")
    values.update(more)
    return ev(**values)


def tcp6(t, func, **more):
    values = dict(time_ns=t, pid=1187, tid=1190, comm="curl", func=func, skb=SKB_TCP, family=6,
                  proto=6, saddr="fd00::15", daddr="2001:db8::80", sport=41862, dport=80,
                  length=94, cmdline="curl -6 http://[2001:db8::80]/")
    values.update(more)
    return ev(**values)


def journey():
    """A ping and its reply, an IPv6 TCP connect, and the odd cases a renderer must survive."""
    return [
        ping_out(3607100000, "ip_output"),
        ping_out(3607103210, "ip_finish_output", dev="eth0"),
        tcp6(3607150000, "ip6_output", fields={"sk_state": 2}),
        ping_out(3607155500, "__dev_queue_xmit", dev="eth0"),
        ping_in(3607227000, "ip_rcv"),
        tcp6(3607230000, "ip6_finish_output", kind="return", retval=-1, source="kretprobe"),
        ping_in(3607231500, "icmp_rcv"),
        # NAT on the way in: the reply's destination changed between two functions.
        ping_in(3607233000, "ip_local_deliver", daddr="192.168.7.1"),
        ping_in(3607240250, "kfree_skb", daddr="192.168.7.1", fields={"reason": "NOT_SPECIFIED"}),
        # A tracepoint that knows only the sk_buff; a task whose process is gone;
        # a comm and a field value holding terminal escapes.
        ev(time_ns=3607300000, source="tracepoint", func="net:net_dev_queue", skb=SKB_TCP,
           family=None, proto=None, saddr=None, daddr=None, pid=1187, tid=1190, comm="curl",
           length=94, dev="eth0"),
        ping_out(3607400000, "ip_output", pid=4250, tid=4250, cmdline=None, icmp_seq=2,
                 skb=0xffff8dcf81339000),
        ev(time_ns=3607500000, func="udp_sendmsg", proto=17, sport=5353, dport=53, skb=None,
           pid=666, tid=666, comm="evil\x1b[2Jcomm", fields={"note": "a b\x07\"c\""},
           cmdline="sh -c 'printf \x1b]0;pwned\x07'", length=None, cpu=None),
    ]


def summary_of(events):
    """A Summary of `events`, counted one by one as a live trace does."""
    summary = Summary()
    for event in events:
        summary.add(event)
    return summary
