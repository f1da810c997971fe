// SPDX-License-Identifier: GPL-2.0
/* One program per cgroup attach type, in the style of the cgroup-using
 * libbpf-tools and selftests: packet counters (cgroup_skb), a socket type
 * refused at creation (sock_create), a TCP event counter (sockops), connect()
 * refused or redirected (connect4/6), bind() ports rewritten (bind4/6), UDP
 * destinations rewritten (sendmsg4/6), UDP sources rewritten on receive
 * (recvmsg4/6), IP_TTL overridden (getsockopt/setsockopt), a sysctl read
 * refused (sysctl), a device node refused (dev), a port refused after bind
 * (post_bind4), released sockets counted (sock_release), ports rewritten in
 * getsockname/getpeername answers and AF_UNIX connects refused, plus three programs that
 * log the order they ran in (multi-program attach), and an XDP and a tc counter
 * for the CLI's --iface.
 *
 * Every knob is a .bss/.data global, so a test sets it from user space on the
 * loaded object; 0 means "off".  Ports are host order, IPv4 addresses and the
 * 32-bit words of IPv6 addresses are in network order, as in struct
 * bpf_sock_addr.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* include/uapi/linux/bpf.h (anonymous enums, not in vmlinux.h) */
#define DEVCG_ACC_MKNOD 1
#define DEVCG_ACC_READ 2
#define DEVCG_ACC_WRITE 4
#define SOL_IP 0
#define IP_TTL 2
#define IPPROTO_UDP 17

/* -- cgroup_skb: counters, and a UDP port dropped on ingress ------------------------------ */

__u64 ingress_packets;
__u64 ingress_bytes;
__u64 egress_packets;
__u64 egress_bytes;
__u32 ingress_drop_port;       /* UDP/IPv4 datagrams to this port are dropped */
__u64 ingress_dropped;

SEC("cgroup_skb/ingress")
int skb_ingress(struct __sk_buff *skb)
{
	struct iphdr iph;
	struct udphdr udph;

	__sync_fetch_and_add(&ingress_packets, 1);
	__sync_fetch_and_add(&ingress_bytes, skb->len);
	if (!ingress_drop_port || skb->protocol != bpf_htons(0x0800))
		return 1;
	/* cgroup_skb data starts at the network header */
	if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) || iph.protocol != IPPROTO_UDP)
		return 1;
	if (bpf_skb_load_bytes(skb, iph.ihl * 4, &udph, sizeof(udph)))
		return 1;
	if (udph.dest == bpf_htons(ingress_drop_port)) {
		__sync_fetch_and_add(&ingress_dropped, 1);
		return 0;
	}
	return 1;
}

SEC("cgroup_skb/egress")
int skb_egress(struct __sk_buff *skb)
{
	__sync_fetch_and_add(&egress_packets, 1);
	__sync_fetch_and_add(&egress_bytes, skb->len);
	return 1;
}

/* -- sock_create: refuse one socket type; count the others --------------------------------- */

__u32 deny_sock_type;          /* SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_RAW 3 */
__u64 sock_denied;
__u64 sock_allowed;

SEC("cgroup/sock_create")
int sock_create_deny(struct bpf_sock *ctx)
{
	if (deny_sock_type && ctx->type == deny_sock_type) {
		__sync_fetch_and_add(&sock_denied, 1);
		return 0;
	}
	return 1;
}

SEC("cgroup/sock_create")
int sock_create_count(struct bpf_sock *ctx)
{
	__sync_fetch_and_add(&sock_allowed, 1);
	return 1;
}

/* -- multi-program order: each appends its number to order_log ----------------------------- */

__u32 order_n;
__u32 order_log[8];

static __always_inline int log_order(__u32 who)
{
	/* one process in the test cgroup: the programs of one hook run one after another */
	__u32 i = order_n;

	order_n = i + 1;
	if (i < 8)
		order_log[i] = who;
	return 1;
}

SEC("cgroup/sock_create")
int order_first(struct bpf_sock *ctx)
{
	return log_order(1);
}

SEC("cgroup/sock_create")
int order_second(struct bpf_sock *ctx)
{
	return log_order(2);
}

SEC("cgroup/sock_create")
int order_third(struct bpf_sock *ctx)
{
	return log_order(3);
}

/* -- sockops: count each TCP event ---------------------------------------------------------- */

__u64 sockops_ops[16];         /* by op: 3 TCP_CONNECT_CB, 4 ACTIVE_ESTABLISHED_CB... */

SEC("sockops")
int sockops_count(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;

	if (op < 16)
		__sync_fetch_and_add(&sockops_ops[op], 1);
	return 1;
}

/* -- connect4/6: refuse one port, redirect another ------------------------------------------ */

__u32 connect_deny_port;
__u32 connect_from_port;       /* connect() to this port goes to connect_to_* instead */
__u32 connect_to_port;
__u32 connect_to_ip4;          /* 0: keep the address */
__u32 connect_to_ip6[4];       /* all 0: keep the address */
__u64 connect_denied;
__u64 connect_redirected;

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	if (connect_deny_port && ctx->user_port == bpf_htons(connect_deny_port)) {
		__sync_fetch_and_add(&connect_denied, 1);
		return 0;
	}
	if (connect_from_port && ctx->user_port == bpf_htons(connect_from_port)) {
		if (connect_to_ip4)
			ctx->user_ip4 = connect_to_ip4;
		ctx->user_port = bpf_htons(connect_to_port);
		__sync_fetch_and_add(&connect_redirected, 1);
	}
	return 1;
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	if (connect_deny_port && ctx->user_port == bpf_htons(connect_deny_port)) {
		__sync_fetch_and_add(&connect_denied, 1);
		return 0;
	}
	if (connect_from_port && ctx->user_port == bpf_htons(connect_from_port)) {
		if (connect_to_ip6[0] | connect_to_ip6[1] | connect_to_ip6[2] | connect_to_ip6[3]) {
			ctx->user_ip6[0] = connect_to_ip6[0];
			ctx->user_ip6[1] = connect_to_ip6[1];
			ctx->user_ip6[2] = connect_to_ip6[2];
			ctx->user_ip6[3] = connect_to_ip6[3];
		}
		ctx->user_port = bpf_htons(connect_to_port);
		__sync_fetch_and_add(&connect_redirected, 1);
	}
	return 1;
}

/* -- bind4/6: rewrite the port --------------------------------------------------------------- */

__u32 bind_from_port;
__u32 bind_to_port;
__u64 bind_rewritten;

static __always_inline int rewrite_bind(struct bpf_sock_addr *ctx)
{
	if (bind_from_port && ctx->user_port == bpf_htons(bind_from_port)) {
		ctx->user_port = bpf_htons(bind_to_port);
		__sync_fetch_and_add(&bind_rewritten, 1);
	}
	return 1;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	return rewrite_bind(ctx);
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	return rewrite_bind(ctx);
}

/* -- sendmsg4/6: rewrite a UDP destination --------------------------------------------------- */

__u32 send_from_port;          /* datagrams to this port go to send_to_* instead */
__u32 send_to_port;
__u32 send_to_ip4;
__u32 send_to_ip6[4];
__u64 send_rewritten;

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	if (send_from_port && ctx->user_port == bpf_htons(send_from_port)) {
		ctx->user_ip4 = send_to_ip4;
		ctx->user_port = bpf_htons(send_to_port);
		__sync_fetch_and_add(&send_rewritten, 1);
	}
	return 1;
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	if (send_from_port && ctx->user_port == bpf_htons(send_from_port)) {
		ctx->user_ip6[0] = send_to_ip6[0];
		ctx->user_ip6[1] = send_to_ip6[1];
		ctx->user_ip6[2] = send_to_ip6[2];
		ctx->user_ip6[3] = send_to_ip6[3];
		ctx->user_port = bpf_htons(send_to_port);
		__sync_fetch_and_add(&send_rewritten, 1);
	}
	return 1;
}

/* -- recvmsg4/6: rewrite the source a UDP receiver sees -------------------------------------- */

__u32 recv_from_port;          /* datagrams from this source port appear to come from recv_as_* */
__u32 recv_as_port;
__u32 recv_as_ip4;
__u32 recv_as_ip6[4];
__u64 recv_rewritten;

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	if (recv_from_port && ctx->user_port == bpf_htons(recv_from_port)) {
		ctx->user_ip4 = recv_as_ip4;
		ctx->user_port = bpf_htons(recv_as_port);
		__sync_fetch_and_add(&recv_rewritten, 1);
	}
	return 1;      /* recvmsg programs must return 1 */
}

SEC("cgroup/recvmsg6")
int recvmsg6(struct bpf_sock_addr *ctx)
{
	if (recv_from_port && ctx->user_port == bpf_htons(recv_from_port)) {
		ctx->user_ip6[0] = recv_as_ip6[0];
		ctx->user_ip6[1] = recv_as_ip6[1];
		ctx->user_ip6[2] = recv_as_ip6[2];
		ctx->user_ip6[3] = recv_as_ip6[3];
		ctx->user_port = bpf_htons(recv_as_port);
		__sync_fetch_and_add(&recv_rewritten, 1);
	}
	return 1;
}

/* -- getsockopt/setsockopt: IP_TTL overridden ------------------------------------------------- */

__u32 getsockopt_ttl;          /* getsockopt(IP_TTL) reports this */
__u32 setsockopt_ttl;          /* setsockopt(IP_TTL, x) sets this instead of x */
__u64 sockopt_overridden;

SEC("cgroup/getsockopt")
int getsockopt_override(struct bpf_sockopt *ctx)
{
	int *val = ctx->optval;

	if (!getsockopt_ttl || ctx->level != SOL_IP || ctx->optname != IP_TTL)
		return 1;
	if ((void *)(val + 1) > ctx->optval_end)
		return 1;
	*val = getsockopt_ttl;
	ctx->optlen = sizeof(*val);
	/* two 4-byte stores: the verifier refuses the 8-byte one clang would merge them into */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	__sync_fetch_and_add(&sockopt_overridden, 1);
	return 1;
}

SEC("cgroup/setsockopt")
int setsockopt_override(struct bpf_sockopt *ctx)
{
	int *val = ctx->optval;

	if (!setsockopt_ttl || ctx->level != SOL_IP || ctx->optname != IP_TTL)
		return 1;
	if ((void *)(val + 1) > ctx->optval_end)
		return 1;
	*val = setsockopt_ttl;     /* the kernel goes on with the rewritten value */
	__sync_fetch_and_add(&sockopt_overridden, 1);
	return 1;
}

/* -- sysctl: refuse reading one sysctl --------------------------------------------------------- */

char deny_sysctl[32] = "kernel/ostype";
__u32 sysctl_deny_on;
__u64 sysctl_denied;

SEC("cgroup/sysctl")
int sysctl_deny(struct bpf_sysctl *ctx)
{
	char name[32] = {};
	int i;

	if (!sysctl_deny_on || ctx->write)
		return 1;
	if (bpf_sysctl_get_name(ctx, name, sizeof(name), 0) < 0)
		return 1;
	for (i = 0; i < sizeof(name); i++) {
		if (name[i] != deny_sysctl[i])
			return 1;
		if (!name[i])
			break;
	}
	__sync_fetch_and_add(&sysctl_denied, 1);
	return 0;
}

/* -- dev: refuse one char device --------------------------------------------------------------- */

__u32 dev_deny_major;
__u32 dev_deny_minor;
__u32 dev_deny_on;
__u64 dev_denied;

SEC("cgroup/dev")
int dev_deny(struct bpf_cgroup_dev_ctx *ctx)
{
	__u32 access = ctx->access_type >> 16;

	if (dev_deny_on && ctx->major == dev_deny_major && ctx->minor == dev_deny_minor &&
	    (access & (DEVCG_ACC_READ | DEVCG_ACC_WRITE))) {
		__sync_fetch_and_add(&dev_denied, 1);
		return 0;
	}
	return 1;
}

/* -- the other socket hooks: post_bind4, sock_release, getsockname4/getpeername4, connect_unix -- */

__u32 post_bind_deny_port;     /* bind() to this port fails after the fact (EPERM) */
__u64 post_bind_denied;
__u64 sock_released;
__u32 sockname_from_port;      /* getsockname() of a socket bound to this port reports sockname_as_port */
__u32 sockname_as_port;
__u32 peername_from_port;      /* getpeername() of a socket connected to this port reports peername_as_port */
__u32 peername_as_port;
__u32 unix_deny_on;            /* connect() of AF_UNIX sockets refused */
__u64 unix_denied;

SEC("cgroup/post_bind4")
int post_bind4_deny(struct bpf_sock *ctx)
{
	if (post_bind_deny_port && ctx->src_port == post_bind_deny_port) {   /* src_port: host order */
		__sync_fetch_and_add(&post_bind_denied, 1);
		return 0;
	}
	return 1;
}

SEC("cgroup/sock_release")
int sock_release_count(struct bpf_sock *ctx)
{
	__sync_fetch_and_add(&sock_released, 1);
	return 1;
}

SEC("cgroup/getsockname4")
int getsockname4(struct bpf_sock_addr *ctx)
{
	if (sockname_from_port && ctx->user_port == bpf_htons(sockname_from_port))
		ctx->user_port = bpf_htons(sockname_as_port);
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	if (peername_from_port && ctx->user_port == bpf_htons(peername_from_port))
		ctx->user_port = bpf_htons(peername_as_port);
	return 1;
}

SEC("cgroup/connect_unix")
int connect_unix(struct bpf_sock_addr *ctx)
{
	if (unix_deny_on) {
		__sync_fetch_and_add(&unix_denied, 1);
		return 0;
	}
	return 1;
}

/* -- for the CLI's --iface (python -m pybpf load net_cgroup.o --iface IF --cgroup CG) ------------
 * An XDP program and a tc (tcx) ingress program that count packets; the XDP one also drops
 * UDP/IPv4 datagrams to xdp_drop_port, so a test sees it act while the CLI runs. */

#define ETH_P_IP 0x0800
#define XDP_DROP_ 1
#define XDP_PASS_ 2
#define TC_ACT_OK_ 0

__u64 xdp_packets;
__u32 xdp_drop_port;
__u64 xdp_dropped;
__u64 tc_packets;

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	struct udphdr *udph;

	__sync_fetch_and_add(&xdp_packets, 1);
	if (!xdp_drop_port || (void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS_;
	if (iph->protocol != IPPROTO_UDP || iph->ihl != 5)
		return XDP_PASS_;
	udph = (void *)(iph + 1);
	if ((void *)(udph + 1) > data_end)
		return XDP_PASS_;
	if (udph->dest == bpf_htons(xdp_drop_port)) {
		__sync_fetch_and_add(&xdp_dropped, 1);
		return XDP_DROP_;
	}
	return XDP_PASS_;
}

SEC("tc/ingress")
int tc_count(struct __sk_buff *skb)
{
	__sync_fetch_and_add(&tc_packets, 1);
	return TC_ACT_OK_;
}
