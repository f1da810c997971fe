// SPDX-License-Identifier: GPL-2.0
/* A socket filter in the style of the packet-watching socket filter lessons: user space
 * opens an AF_PACKET raw socket bound to one interface and attaches this program to it
 * (SO_ATTACH_BPF), as `python -m pybpf load sock_iface.o --iface IFACE` does.  Every
 * IPv4 frame the interface sees is described in a ring buffer record (protocol,
 * addresses, ports for UDP and TCP, length, packet type); the frame itself is not kept
 * (the program returns 0), so nothing queues on the socket.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define IP_OFFSET 0x1fff

struct event {
	__u32 ifindex;
	__u32 pkt_type;		/* PACKET_HOST 0, PACKET_OUTGOING 4, ... */
	__u32 len;		/* the frame's length */
	__u32 saddr;		/* network order */
	__u32 daddr;
	__u16 sport;		/* host order; 0 unless UDP or TCP */
	__u16 dport;
	__u8 proto;
};

struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));

SEC("socket")
int watch_frames(struct __sk_buff *skb)
{
	__u16 h_proto, frag;
	__u8 vihl;

	/* a packet socket's filter sees the frame from its Ethernet header on */
	if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) || h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1))
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ifindex = skb->ifindex;
	e->pkt_type = skb->pkt_type;
	e->len = skb->len;
	bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &e->proto, 1);
	bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, saddr), &e->saddr, 4);
	bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &e->daddr, 4);
	bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, frag_off), &frag, 2);

	/* ports only in a first (or unfragmented) UDP/TCP fragment */
	if ((e->proto == IPPROTO_UDP || e->proto == IPPROTO_TCP) && !(bpf_ntohs(frag) & IP_OFFSET)) {
		__u32 l4 = ETH_HLEN + (vihl & 0x0f) * 4;
		__u16 ports[2];

		if (!bpf_skb_load_bytes(skb, l4, ports, sizeof(ports))) {
			e->sport = bpf_ntohs(ports[0]);
			e->dport = bpf_ntohs(ports[1]);
		}
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}
