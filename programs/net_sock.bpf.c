// SPDX-License-Identifier: GPL-2.0
/* Socket-level programs for the attach tests (tests/test_attach_sockets.py,
 * test_attach_netns.py, test_attach_netfilter.py), each counting what it does in `counters`:
 *
 * - socket:  a socket filter that drops UDP datagrams whose first payload byte is 0xff;
 * - sk_lookup: connections to the port in lookup_port[0] go to the listening socket in
 *   lookup_socks[0] (a SOCKMAP), whatever port that socket listens on;
 * - flow_dissector: fills bpf_flow_keys for IPv4/IPv6 with TCP/UDP ports, counting calls;
 * - sockops + sk_msg: established TCP sockets go into a SOCKHASH keyed by their 4-tuple, and
 *   each message sent on one is redirected (bpf_msg_redirect_hash) to the ingress of its peer;
 * - sk_skb/stream_verdict: counts received TCP data and drops segments starting with 0xff;
 * - netfilter: counts IPv4/IPv6 packets per hook.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define NF_ACCEPT 1
#define NFPROTO_IPV4 2
#define NFPROTO_IPV6 10
#define UDP_HLEN 8

/* indices of `counters` (tests/test_attach_*.py use the same numbers) */
enum {
	C_FILTER_SEEN = 0,
	C_FILTER_DROPPED = 1,
	C_LOOKUP_STEERED = 2,
	C_DISSECT_CALLS = 3,
	C_SOCKOPS_ADDED = 4,
	C_MSG_SEEN = 5,
	C_MSG_REDIRECTED = 6,
	C_MSG_NO_PEER = 7,
	C_SKB_SEEN = 8,
	C_SKB_DROPPED = 9,
	C_NF_IPV4 = 10,		/* + hook number (NF_INET_PRE_ROUTING 0 .. NF_INET_POST_ROUTING 4) */
	C_NF_IPV6 = 15,		/* + hook number */
	C_COUNT = 20,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void bump(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
}

/* -- socket filter ---------------------------------------------------------------------- */

/* On a UDP socket the filter sees the datagram from its UDP header on
 * (udp_queue_rcv_one_skb runs sk_filter after the IP header was pulled).
 * A socket filter returns how many bytes to keep: 0 drops. */
SEC("socket")
int drop_ff(struct __sk_buff *skb)
{
	__u8 first;

	bump(C_FILTER_SEEN);
	if (bpf_skb_load_bytes(skb, UDP_HLEN, &first, 1) == 0 && first == 0xff) {
		bump(C_FILTER_DROPPED);
		return 0;
	}
	return skb->len;
}

/* -- sk_lookup -------------------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lookup_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lookup_socks SEC(".maps");

SEC("sk_lookup")
int steer(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	__u32 *port = bpf_map_lookup_elem(&lookup_port, &zero);
	struct bpf_sock *sk;
	long err;

	if (!port || *port == 0 || ctx->protocol != IPPROTO_TCP || ctx->local_port != *port)
		return SK_PASS;
	sk = bpf_map_lookup_elem(&lookup_socks, &zero);
	if (!sk)
		return SK_PASS;
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return SK_DROP;
	bump(C_LOOKUP_STEERED);
	return SK_PASS;
}

/* -- flow dissector --------------------------------------------------------------------- */

/* A header at offset `off` of the packet: in place when the linear data holds it, else
 * copied into `buf`.  BPF_PROG_TEST_RUN runs a flow dissector on a bare buffer with no
 * skb, where bpf_skb_load_bytes fails: only direct packet access works there. */
static __always_inline void *header(struct __sk_buff *skb, __u16 off, __u32 size, void *buf)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	/* the bound lets the verifier track a variable offset into the packet (MAX_PACKET_OFF) */
	if (off <= 0xffff - size && data + off + size <= data_end)
		return data + off;
	if (bpf_skb_load_bytes(skb, off, buf, size))
		return NULL;
	return buf;
}

/* keys->nhoff and keys->n_proto come filled by the kernel (bpf_flow_dissect); the program
 * sets the rest.  BPF_OK: dissected, BPF_DROP: the packet could not be parsed. */
SEC("flow_dissector")
int dissect(struct __sk_buff *skb)
{
	struct bpf_flow_keys *keys = skb->flow_keys;
	__u16 nhoff = keys->nhoff;
	__be16 ports_buf[2], *ports;

	bump(C_DISSECT_CALLS);
	if (keys->n_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr iph_buf, *iph = header(skb, nhoff, sizeof(iph_buf), &iph_buf);

		if (!iph || iph->ihl < 5)
			return BPF_DROP;
		keys->addr_proto = ETH_P_IP;
		keys->ipv4_src = iph->saddr;
		keys->ipv4_dst = iph->daddr;
		keys->ip_proto = iph->protocol;
		keys->thoff = nhoff + iph->ihl * 4;
		if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			keys->is_frag = 1;
			if (iph->frag_off & bpf_htons(IP_OFFSET))
				return BPF_OK;		/* a later fragment has no ports */
			keys->is_first_frag = 1;
		}
	} else if (keys->n_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h_buf, *ip6h = header(skb, nhoff, sizeof(ip6h_buf), &ip6h_buf);

		if (!ip6h)
			return BPF_DROP;
		keys->addr_proto = ETH_P_IPV6;
		__builtin_memcpy(keys->ipv6_src, &ip6h->saddr, 16);
		__builtin_memcpy(keys->ipv6_dst, &ip6h->daddr, 16);
		keys->ip_proto = ip6h->nexthdr;
		keys->thoff = nhoff + sizeof(*ip6h);
		keys->flow_label = *(__be32 *)ip6h & bpf_htonl(0x000FFFFF);
	} else {
		return BPF_OK;
	}
	if (keys->ip_proto == IPPROTO_TCP || keys->ip_proto == IPPROTO_UDP) {
		ports = header(skb, keys->thoff, sizeof(ports_buf), ports_buf);
		if (!ports)
			return BPF_DROP;
		keys->sport = ports[0];
		keys->dport = ports[1];
	}
	return BPF_OK;
}

/* -- sockops + sk_msg: the sockmap redirect pattern ------------------------------------- */

/* A socket's key is its own 4-tuple; ports as bpf_sock_ops gives them (local_port in host
 * order, remote_port in network order in a u32), the local one converted to match. */
struct sock_key {
	__u32 sip;
	__u32 dip;
	__u32 sport;
	__u32 dport;
	__u32 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 64);
	__type(key, struct sock_key);
	__type(value, __u32);
} sock_hash SEC(".maps");

SEC("sockops")
int add_established(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	if (skops->family != AF_INET)
		return 1;
	key.sip = skops->local_ip4;
	key.dip = skops->remote_ip4;
	key.sport = bpf_htonl(skops->local_port);
	key.dport = skops->remote_port;
	key.family = skops->family;
	if (bpf_sock_hash_update(skops, &sock_hash, &key, BPF_NOEXIST) == 0)
		bump(C_SOCKOPS_ADDED);
	return 1;
}

/* A message sent on a socket goes to the receive queue of the socket at the other end of
 * its connection: the entry whose key is this socket's 4-tuple reversed. */
SEC("sk_msg")
int redirect_to_peer(struct sk_msg_md *msg)
{
	struct sock_key key = {};
	long verdict;

	bump(C_MSG_SEEN);
	if (msg->family != AF_INET)
		return SK_PASS;
	key.sip = msg->remote_ip4;
	key.dip = msg->local_ip4;
	key.sport = msg->remote_port;
	key.dport = bpf_htonl(msg->local_port);
	key.family = msg->family;
	verdict = bpf_msg_redirect_hash(msg, &sock_hash, &key, BPF_F_INGRESS);
	bump(verdict == SK_PASS ? C_MSG_REDIRECTED : C_MSG_NO_PEER);
	return verdict;
}

/* -- sk_skb stream verdict -------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} skb_socks SEC(".maps");

/* Data received on a socket of skb_socks: SK_PASS delivers it, SK_DROP discards it. */
SEC("sk_skb/stream_verdict")
int skb_verdict(struct __sk_buff *skb)
{
	__u8 first;

	bump(C_SKB_SEEN);
	if (bpf_skb_load_bytes(skb, 0, &first, 1) == 0 && first == 0xff) {
		bump(C_SKB_DROPPED);
		return SK_DROP;
	}
	return SK_PASS;
}

/* -- netfilter -------------------------------------------------------------------------- */

SEC("netfilter")
int nf_count(struct bpf_nf_ctx *ctx)
{
	const struct nf_hook_state *state = ctx->state;
	__u8 hook = state->hook;

	if (hook <= NF_INET_POST_ROUTING) {
		if (state->pf == NFPROTO_IPV4)
			bump(C_NF_IPV4 + hook);
		else if (state->pf == NFPROTO_IPV6)
			bump(C_NF_IPV6 + hook);
	}
	return NF_ACCEPT;
}
