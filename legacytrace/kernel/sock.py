"""struct sock at kernel functions: the IP protocol of a socket-level function's socket.

struct sock_common holds the addresses and ports but not the protocol (that is in struct
sock's sk_protocol, whose place changed in 5.6). The socket-level functions of
net/ipv4 and net/ipv6 are named after their protocol: tcp_sendmsg, tcp_v6_connect,
udp_sendmsg, udpv6_sendmsg (docs/kernel-facts.md, "Functions and argument positions").
"""

#: Function name prefix -> IP protocol of the sockets the function takes.
PROTOCOL_PREFIXES = (("tcp", 6), ("udp", 17))


def protocol(function):
    """The IP protocol of the sockets `function` takes, or None when its name does not say."""
    for prefix, number in PROTOCOL_PREFIXES:
        if function.startswith(prefix):
            return number
    return None
