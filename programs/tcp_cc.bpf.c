// SPDX-License-Identifier: GPL-2.0
/* A BPF TCP congestion control of pybpf's own (struct tcp_congestion_ops), for
 * tests/test_struct_ops.py: Reno-like slow start and congestion avoidance, with
 * a counter per callback in .bss.
 *   pybpf_cc      in .struct_ops       (registered with BPF_MAP_UPDATE_ELEM)
 *   pybpf_cc_link in .struct_ops.link  (registered through a BPF link), twice:
 *                 cc_link and cc_link_v2, the same algorithm name, so that a
 *                 link can swap one map for the other (BPF_LINK_UPDATE); v2
 *                 counts its cong_avoid calls in cong_avoid_v2_calls.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 init_calls;
__u64 ssthresh_calls;
__u64 cong_avoid_calls;
__u64 cong_avoid_v2_calls;
__u64 undo_calls;

static __always_inline void reno(struct sock *sk, __u32 acked)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	if (tp->snd_cwnd < tp->snd_ssthresh) {
		tp->snd_cwnd += acked;          /* slow start */
	} else if (++tp->snd_cwnd_cnt >= tp->snd_cwnd) {
		tp->snd_cwnd_cnt = 0;           /* + 1 per window acked */
		tp->snd_cwnd++;
	}
	if (tp->snd_cwnd > tp->snd_cwnd_clamp)
		tp->snd_cwnd = tp->snd_cwnd_clamp;
}

SEC("struct_ops/pybpf_init")
void BPF_PROG(pybpf_init, struct sock *sk)
{
	__sync_fetch_and_add(&init_calls, 1);
}

SEC("struct_ops/pybpf_ssthresh")
__u32 BPF_PROG(pybpf_ssthresh, struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u32 half = tp->snd_cwnd >> 1;

	__sync_fetch_and_add(&ssthresh_calls, 1);
	return half > 2 ? half : 2;
}

SEC("struct_ops/pybpf_cong_avoid")
void BPF_PROG(pybpf_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	__sync_fetch_and_add(&cong_avoid_calls, 1);
	reno(sk, acked);
}

SEC("struct_ops/pybpf_cong_avoid_v2")
void BPF_PROG(pybpf_cong_avoid_v2, struct sock *sk, __u32 ack, __u32 acked)
{
	__sync_fetch_and_add(&cong_avoid_v2_calls, 1);
	reno(sk, acked);
}

SEC("struct_ops/pybpf_undo_cwnd")
__u32 BPF_PROG(pybpf_undo_cwnd, struct sock *sk)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	__sync_fetch_and_add(&undo_calls, 1);
	return tp->snd_cwnd;
}

SEC(".struct_ops")
struct tcp_congestion_ops cc_plain = {
	.init = (void *)pybpf_init,
	.ssthresh = (void *)pybpf_ssthresh,
	.cong_avoid = (void *)pybpf_cong_avoid,
	.undo_cwnd = (void *)pybpf_undo_cwnd,
	.name = "pybpf_cc",
};

SEC(".struct_ops.link")
struct tcp_congestion_ops cc_link = {
	.init = (void *)pybpf_init,
	.ssthresh = (void *)pybpf_ssthresh,
	.cong_avoid = (void *)pybpf_cong_avoid,
	.undo_cwnd = (void *)pybpf_undo_cwnd,
	.name = "pybpf_cc_link",
};

SEC(".struct_ops.link")
struct tcp_congestion_ops cc_link_v2 = {
	.init = (void *)pybpf_init,
	.ssthresh = (void *)pybpf_ssthresh,
	.cong_avoid = (void *)pybpf_cong_avoid_v2,
	.undo_cwnd = (void *)pybpf_undo_cwnd,
	.name = "pybpf_cc_link",
};
