// SPDX-License-Identifier: GPL-2.0
/* XDP programs for tests/test_attach_xdp.py, in the style of the eunomia tutorial's
 * xdp lesson: parse Ethernet, then IPv4 or IPv6, then UDP, with every access
 * checked against data_end.
 *
 * xdp_count_drop counts packets per L4 protocol (IPv4 protocol / IPv6 next header;
 * slot NON_IP for ARP and the like) and drops UDP to drop_port; xdp_pass_count is
 * the program update() swaps in: it counts and passes everything.  Both count the
 * UDP datagrams to watch_port, each in its own slot of port_packets, so a stream
 * sent across a swap shows whether any packet ran neither program.
 */
/* No CO-RE: the packet headers are UAPI layouts. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define NON_IP		256

char LICENSE[] SEC("license") = "GPL";

/* .rodata, set before loading: UDP destination ports in host order (0: none) */
const volatile __u16 drop_port = 0;
const volatile __u16 watch_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NON_IP + 1);
	__type(key, __u32);
	__type(value, __u64);
} proto_packets SEC(".maps");

/* [0]: watch_port datagrams seen by xdp_count_drop, [1]: by xdp_pass_count,
 * [2]: datagrams xdp_count_drop dropped */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} port_packets SEC(".maps");

static __always_inline void count(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The L4 protocol of the frame in [data, data_end) (NON_IP if it is not IP) and its
 * UDP header if it is UDP with the whole header in the frame. */
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

SEC("xdp")
int xdp_count_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct udphdr *udp;
	__u32 proto = parse(data, data_end, &udp);

	count(&proto_packets, proto);
	if (udp) {
		if (watch_port && udp->dest == bpf_htons(watch_port))
			count(&port_packets, 0);
		if (drop_port && udp->dest == bpf_htons(drop_port)) {
			count(&port_packets, 2);
			return XDP_DROP;
		}
	}
	return XDP_PASS;
}

SEC("xdp")
int xdp_pass_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct udphdr *udp;

	parse(data, data_end, &udp);
	if (udp && watch_port && udp->dest == bpf_htons(watch_port))
		count(&port_packets, 1);
	return XDP_PASS;
}
