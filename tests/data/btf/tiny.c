/* Source of tiny.btf (see README.md): kernel-like types shaped as in 6.x, small enough to
 * read by eye, with every member legacytrace.offsets.WANTED asks for. */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef __u16 __be16;
typedef __u32 __be32;
typedef unsigned int sk_buff_data_t;

struct net_device {
	char name[16];
	int ifindex;
};

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	union {
		unsigned long long skc_addrpair;
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		__u32 skc_portpair;
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	unsigned char skc_reuse:4;
	unsigned char skc_reuseport:1;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	int sk_rcvbuf;
};

struct sk_buff {
	union {
		struct {
			struct sk_buff *next;
			struct sk_buff *prev;
			union {
				struct net_device *dev;
				unsigned long dev_scratch;
			};
		};
		struct sk_buff *list;
	};
	struct sock *sk;
	char cb[48];
	unsigned int len;
	unsigned int data_len;
	__u8 cloned:1, nohdr:1, fclone:2;
	union {	/* as the kernel's struct_group(headers, ...) */
		struct {
			__be16 protocol;
			__u16 transport_header;
			__u16 network_header;
			__u16 mac_header;
		};
		struct {
			__be16 protocol;
			__u16 transport_header;
			__u16 network_header;
			__u16 mac_header;
		} headers;
	};
	sk_buff_data_t tail;
	sk_buff_data_t end;
	unsigned char *head;
	const unsigned char *data;
	void (*destructor)(struct sk_buff *skb);
};

typedef struct sk_buff skb_t;
struct net;

int ip_rcv(struct sk_buff *skb, struct net_device *dev, void *pt, struct net_device *orig_dev)
{
	return skb->len + dev->ifindex + (pt != 0) + orig_dev->ifindex;
}

int ip_output(struct net *net, const struct sock *sk, const skb_t *skb)
{
	return (net != 0) + sk->sk_rcvbuf + skb->len;
}

long no_skb(int count, const char *const *names, ...)
{
	return count + (names != 0);
}

/* enum skb_drop_reason as in include/net/dropreason-core.h (6.1: the first values), and an
 * enum with a negative value (BTF's kind_flag marks signed enums from 6.0). */
enum skb_drop_reason {
	SKB_NOT_DROPPED_YET = 0,
	SKB_CONSUMED,
	SKB_DROP_REASON_NOT_SPECIFIED,
	SKB_DROP_REASON_NO_SOCKET,
};

enum signed_example { NEGATIVE = -2, POSITIVE = 7 };

void kfree_skb_reason(struct sk_buff *skb, enum skb_drop_reason reason)
{
	skb->len = reason + NEGATIVE;
}
