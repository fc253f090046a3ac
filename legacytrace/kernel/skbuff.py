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
"""
#: The l4 functions: (IP version, IP protocols) of the packets they take, () for any.
TRANSPORT = {
    "tcp_v4_rcv": (4, (6,)), "udp_rcv": (4, (17,)), "icmp_rcv": (4, (1,)),
    "ip_protocol_deliver_rcu": (4, ()),
    "tcp_v6_rcv": (6, (6,)), "udpv6_rcv": (6, (17,)), "icmpv6_rcv": (6, (58,)),
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

#: Functions that free an sk_buff (legacytrace.kernel.tracepoints.FREEING: the tracepoints).
#: After them its address can be reused by another packet, so a packet's journey always
#: ends there, whatever the manifest marks as egress. kfree_skb wraps kfree_skb_reason from
#: 5.17 (commit c504e5c2f964), which wraps sk_skb_reason_drop from 6.11; consume_skb frees
#: a packet that was delivered.
FREE_FUNCTIONS = frozenset(("kfree_skb", "kfree_skb_reason", "sk_skb_reason_drop",
                            "__kfree_skb", "consume_skb"))
