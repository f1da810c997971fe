// SPDX-License-Identifier: GPL-2.0
/* Attachable programs of several types: a tracepoint and a raw tracepoint that
 * count syscalls (optionally for one process), an XDP program and a socket
 * filter for BPF_PROG_TEST_RUN.
 */
/* No CO-RE here: pybpf applies CO-RE relocations from issue 4 on; ctx structs are UAPI anyway. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* .rodata: count only this process (tgid); 0 counts every process. */
const volatile __u32 target_tgid = 0;

/* .bss */
__u64 getpid_calls;
__u64 sys_enter_calls;

static __always_inline int is_target(void)
{
	return target_tgid == 0 || (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
	if (is_target())
		__sync_fetch_and_add(&getpid_calls, 1);
	return 0;
}

SEC("raw_tp/sys_enter")
int on_sys_enter(void *ctx)
{
	if (is_target())
		__sync_fetch_and_add(&sys_enter_calls, 1);
	return 0;
}

/* Passes every packet; increments its first byte so BPF_PROG_TEST_RUN's
 * data_out differs from data_in.
 */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *data_end = (__u8 *)(long)ctx->data_end;

	if (data + 1 <= data_end)
		data[0]++;
	return XDP_PASS;
}

/* Socket filter: keeps the whole packet (returns its length). */
SEC("socket")
int sock_all(struct __sk_buff *skb)
{
	return skb->len;
}
