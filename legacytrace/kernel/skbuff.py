"""The sk_buff at kernel functions: where its data points on entry, and where it is freed.

DATA_AT: where `skb->data` points when a function is entered (include/linux/skbuff.h's
headers are offsets from `head`; `data` moves as layers push and pull their headers):
  l3  the IP header: after eth_type_trans() on receive, after the IP header is pushed
      on transmit;
  l2  the link-layer header (Ethernet, loopback included);
  l4  the transport header: ip_local_deliver_finish() (ip6_input_finish()) pulled the
      IP header.
A function missing here (kfree_skb, netif_receive_skb, ...) sees packets at any layer.
The names were read in net/ipv4 and net/ipv6 of 3.10 to 6.x (docs/kernel-facts.md,
"Functions and argument positions").

RECEIVE and TRANSMIT: which end of a packet is this host's at a function, for finding
the socket a packet belongs to by its addresses (legacytrace.owners): on the receive
path its destination, on the transmit path its source. A function in neither (a drop,
forwarding) may see either.
"""
#: The l4 functions: (IP version, IP protocols) of the packets they take, () for any. The
#: socket-level ones (tcp_v4_do_rcv, udp_queue_rcv_skb, ...) take the socket the packet is
#: delivered to with it; TCP and UDP pull their header later, in tcp_rcv_established() and
#: udp_queue_rcv_one_skb() (__udp_queue_rcv_skb() before 4.19).
TRANSPORT = {
    "tcp_v4_rcv": (4, (6,)), "udp_rcv": (4, (17,)), "icmp_rcv": (4, (1,)),
    "ip_protocol_deliver_rcu": (4, ()),
    "tcp_v6_rcv": (6, (6,)), "udpv6_rcv": (6, (17,)), "icmpv6_rcv": (6, (58,)),
    "tcp_v4_do_rcv": (4, (6,)), "udp_queue_rcv_skb": (4, (17,)),
    "tcp_v6_do_rcv": (6, (6,)), "udpv6_queue_rcv_skb": (6, (17,)),
}

#: function -> "l3", "l2" or "l4": where skb->data points at its entry.
DATA_AT = {
    "ip_rcv": "l3", "ip_rcv_finish": "l3", "ip_local_deliver": "l3",
    "ip_local_deliver_finish": "l3", "ip_forward": "l3", "ip_forward_finish": "l3",
    "ip_local_out": "l3", "ip_local_out_sk": "l3", "__ip_local_out": "l3", "ip_output": "l3",
    "ip_finish_output": "l3", "ip_finish_output2": "l3", "ip_mc_output": "l3",
    "ipv6_rcv": "l3", "ip6_rcv_finish": "l3", "ip6_input": "l3", "ip6_forward": "l3",
    "ip6_output": "l3", "ip6_finish_output": "l3", "ip6_finish_output2": "l3",
    "dev_queue_xmit": "l2", "__dev_queue_xmit": "l2", "dev_hard_start_xmit": "l2",
}
DATA_AT.update((function, "l4") for function in TRANSPORT)

#: Receive path: the device layer up to the socket (and the tracepoints of it).
RECEIVE = frozenset([
    "__netif_receive_skb", "__netif_receive_skb_core", "__netif_receive_skb_one_core",
    "netif_receive_skb", "netif_rx", "napi_gro_receive",
    "ip_rcv", "ip_rcv_core", "ip_rcv_finish", "ip_local_deliver", "ip_local_deliver_finish",
    "ipv6_rcv", "ip6_rcv_core", "ip6_rcv_finish", "ip6_input", "ip6_input_finish",
    "net:netif_receive_skb", "net:netif_receive_skb_entry", "net:netif_rx_entry",
    "net:netif_rx", "net:napi_gro_receive_entry"] + list(TRANSPORT))
#: Transmit path: a local socket down to the device (and the tracepoints of it).
TRANSMIT = frozenset([
    "ip_queue_xmit", "ip_local_out", "ip_local_out_sk", "__ip_local_out", "ip_output",
    "ip_finish_output", "ip_finish_output2", "ip_mc_output", "ip6_xmit", "ip6_local_out",
    "ip6_local_out_sk", "ip6_output", "ip6_finish_output", "ip6_finish_output2",
    "dev_queue_xmit", "__dev_queue_xmit", "dev_hard_start_xmit", "xmit_one",
    "net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit"])

#: Functions that free an sk_buff (legacytrace.kernel.tracepoints.FREEING: the tracepoints).
#: After them its address can be reused by another packet, so a packet's journey always
#: ends there, whatever the manifest marks as egress. kfree_skb wraps kfree_skb_reason from
#: 5.17 (commit c504e5c2f964), which wraps sk_skb_reason_drop from 6.11; consume_skb frees
#: a packet that was delivered.
FREE_FUNCTIONS = frozenset(("kfree_skb", "kfree_skb_reason", "sk_skb_reason_drop",
                            "__kfree_skb", "consume_skb"))
