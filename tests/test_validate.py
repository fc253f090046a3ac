"""The one validator (legacytrace.validate): each rule, as every backend and the manifest
loader apply it."""
import ipaddress

import pytest

from legacytrace import validate
from legacytrace.errors import UsageError
from legacytrace import filterexpr as fx
from legacytrace.flowfilter import FlowFilter
from legacytrace.kernel.host import HostFacts
from legacytrace.model import Probe, TraceRequest


def request(probes=(), run_id="lt1", release="6.1.0-56-amd64", flow=None):
    return TraceRequest(list(probes), flow or FlowFilter(), HostFacts(release=release),
                        run_id=run_id)


@pytest.mark.parametrize("value", [True, False, 0, 7, -1, 1.0, "1", [1]])
def test_an_argument_position_is_an_int_from_1_to_6(value):
    with pytest.raises(UsageError, match="skb_pos must be"):
        validate.position(value, "skb_pos", "here")


def test_positions_of_a_probe():
    assert validate.positions(1, 2, "here") == (1, 2)
    assert validate.positions(None, None, "here", required=False) == (None, None)
    with pytest.raises(UsageError, match="give skb_pos"):
        validate.positions(None, None, "here")
    with pytest.raises(UsageError, match="skb_pos and sk_pos are both 2"):
        validate.positions(2, 2, "here")


@pytest.mark.parametrize("probe, words", [
    (Probe("ip_rcv; reboot", 1), "is not a kernel function name"),
    (Probe("ip_rcv", 1, fields={"len": "skb->len"}), "field len has path 'skb->len'"),
    (Probe("ip_rcv", 1, fields={"Len": "skb.len"}), "field name 'Len' must be"),
    (Probe("tcp_connect", None, 1, fields={"len": "skb.len"}), "field len reads skb"),
    (Probe("ip_rcv", 1, args={"reason": 1}), "args: reason is at position 1"),
    (Probe("ip_rcv", 1, args={"rsn": 2}), "unknown argument 'rsn'"),
    (Probe("tcp_sendmsg", None, 1, peek={"arg": "msg", "bytes": 8}), "peek reads msg but"),
    (Probe("tcp_sendmsg", None, 1, args={"msg": 2}, peek={"arg": "msg", "bytes": 129}),
     "peek bytes must be an integer from 1 to 128"),
    (Probe("ip_rcv", 1, caller="yes"), "caller must be true or false"),
    (Probe("ip_rcv", 1, kind="exit"), "kind must be entry or return"),
    (Probe("ip_rcv", 1, tracepoint="net:x/../enable"), "is not one legacytrace reads"),
])
def test_a_probe_is_checked_whole(probe, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(")):
        validate.probe(probe)


def test_a_sock_field_may_come_through_the_packet():
    probe = Probe("ip_rcv", 1, fields={"state": "sk.__sk_common.skc_state"})
    assert validate.probe(probe) is probe


@pytest.mark.parametrize("run_id", ["", None, "LT1", "lt1;x", "a" * 33, 7])
def test_a_run_id_is_one_rule_for_every_backend(run_id):
    with pytest.raises(UsageError, match="invalid run id"):
        validate.request(request(run_id=run_id))


@pytest.mark.parametrize("size", [63, 1048577, True, 4096.0, "4096", None])
def test_a_buffer_size_is_an_int_within_bounds(size):
    request_ = request()
    request_.buffer_kb = size
    with pytest.raises(UsageError, match="--buffer-size"):
        validate.request(request_)


@pytest.mark.parametrize("release", ["3.10 */ evil", "6.1\n", "x" * 101])
def test_a_release_that_could_leave_a_comment_is_refused(release):
    with pytest.raises(UsageError, match="is not a release name"):
        validate.release(release)


@pytest.mark.parametrize("node", [
    fx.Proto(None, 256), fx.Proto(None, True), fx.Proto(5, 6), fx.Family(10),
    fx.Net(fx.SRC, "10.0.0.1/32"), fx.Net("both ways", ipaddress.ip_network("10.0.0.0/8")),
    fx.Port(fx.DST, 80, 79, None), fx.Port(fx.DST, 80, 80, 47), fx.Port(fx.SRC, -1, 2, 6),
    fx.And((fx.Family(4),)), fx.Not("tcp"), "tcp port 80; rm -rf /",
])
def test_a_filter_expression_made_by_hand_is_checked(node):
    flow = FlowFilter()
    flow.expr = node
    with pytest.raises(UsageError, match="filter expression"):
        validate.request(request(flow=flow))


def test_a_parsed_expression_and_no_filter_pass():
    assert validate.request(request(flow=FlowFilter.parse(expression="tcp port 80 or not "
                                                          "net 10.0.0.0/8 and ip6")))
    assert validate.request(request(flow=FlowFilter()))
