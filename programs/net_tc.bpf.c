// SPDX-License-Identifier: GPL-2.0
/* tc (SCHED_CLS, direct-action) programs for tests/test_attach_tc.py, in the style of
 * the eunomia tutorial's tc and tcx lessons.  Return codes are TC actions.
 *
 * tc_ingress / tc_egress count packets per L4 protocol, each in its own half of
 * proto_packets, and the UDP datagrams to watch_port; tc_ingress also drops
 * (TC_ACT_SHOT) UDP to drop_port, which works only with direct-action.
 * tc_rewrite sets the IPv4 TOS of UDP to rewrite_port to new_tos and the first two
 * payload bytes to "RW", fixing the IP and UDP checksums (the receiver drops the
 * datagram if either is wrong).  tc_pass counts watch_port and passes: the program
 * update() swaps in.
 */
/* No CO-RE: the packet headers and __sk_buff are UAPI layouts. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define ETH_HLEN	14
#define NON_IP		256
#define DIRECTION_SLOTS	(NON_IP + 1)

/* pkt_cls.h (macros, so not in vmlinux.h) */
#define TC_ACT_OK	0
#define TC_ACT_SHOT	2

/* offsets in an IPv4 frame with a 20-byte IP header */
#define IP_TOS_OFF	(ETH_HLEN + 1)
#define IP_CSUM_OFF	(ETH_HLEN + 10)
#define UDP_CSUM_OFF	(ETH_HLEN + 20 + 6)
#define PAYLOAD_OFF	(ETH_HLEN + 20 + 8)

char LICENSE[] SEC("license") = "GPL";

/* .rodata, set before loading: UDP destination ports in host order (0: none) */
const volatile __u16 watch_port = 0;
const volatile __u16 drop_port = 0;
const volatile __u16 rewrite_port = 0;
const volatile __u8 new_tos = 0;

/* [proto]: ingress, [DIRECTION_SLOTS + proto]: egress */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * DIRECTION_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} proto_packets SEC(".maps");

/* watch_port datagrams: [0] tc_ingress, [1] tc_egress, [2] tc_pass;
 * [3] datagrams tc_ingress dropped, [4] datagrams tc_rewrite rewrote */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 5);
	__type(key, __u32);
	__type(value, __u64);
} port_packets SEC(".maps");

static __always_inline void count(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* As in net_xdp.bpf.c: the L4 protocol (NON_IP if not IP) and the UDP header. */
static __always_inline __u32 parse(void *data, void *data_end, struct udphdr **udp)
{
	struct ethhdr *eth = data;
	void *l4;
	__u32 proto;

	*udp = 0;
	if ((void *)(eth + 1) > data_end)
		return NON_IP;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return NON_IP;
		proto = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return NON_IP;
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
	} else {
		return NON_IP;
	}
	if (proto == IPPROTO_UDP && l4 + sizeof(struct udphdr) <= data_end)
		*udp = l4;
	return proto;
}

static __always_inline int count_direction(struct __sk_buff *skb, __u32 base, __u32 watch_slot)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct udphdr *udp;
	__u32 proto = parse(data, data_end, &udp);

	count(&proto_packets, base + proto);
	if (udp && watch_port && udp->dest == bpf_htons(watch_port))
		count(&port_packets, watch_slot);
	if (udp && base == 0 && drop_port && udp->dest == bpf_htons(drop_port)) {
		count(&port_packets, 3);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

SEC("tc/ingress")
int tc_ingress(struct __sk_buff *skb)
{
	return count_direction(skb, 0, 0);
}

SEC("tc/egress")
int tc_egress(struct __sk_buff *skb)
{
	return count_direction(skb, DIRECTION_SLOTS, 1);
}

SEC("tc")
int tc_rewrite(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 tos = new_tos;
	__u16 old_tos, old_payload, new_payload;
	__u8 *payload = (void *)(udp + 1);

	if (payload + 2 > (__u8 *)data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    !rewrite_port || udp->dest != bpf_htons(rewrite_port))
		return TC_ACT_OK;
	old_tos = ip->tos;
	old_payload = *(__u16 *)payload;
	new_payload = bpf_htons(('R' << 8) | 'W');

	/* The IP header checksum covers the 16-bit word (version/ihl, tos): the TOS is
	 * its low byte, so the word changes by htons(new) - htons(old) (as the kernel's
	 * samples/bpf/tcbpf1_kern.c does). */
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, bpf_htons(old_tos), bpf_htons(tos), 2);
	bpf_skb_store_bytes(skb, IP_TOS_OFF, &tos, 1, 0);
	/* The UDP checksum covers the payload: the first payload word sits at an even
	 * offset from the UDP header.  A UDP/IPv4 checksum of 0 means "none" and stays
	 * 0 (BPF_F_MARK_MANGLED_0); under CHECKSUM_PARTIAL the helper leaves the field
	 * to the device. */
	bpf_l4_csum_replace(skb, UDP_CSUM_OFF, old_payload, new_payload, BPF_F_MARK_MANGLED_0 | 2);
	bpf_skb_store_bytes(skb, PAYLOAD_OFF, &new_payload, 2, 0);
	count(&port_packets, 4);
	return TC_ACT_OK;
}

SEC("tc")
int tc_pass(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct udphdr *udp;

	parse(data, data_end, &udp);
	if (udp && watch_port && udp->dest == bpf_htons(watch_port))
		count(&port_packets, 2);
	return TC_ACT_OK;
}
