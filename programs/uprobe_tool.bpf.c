// SPDX-License-Identifier: GPL-2.0
/* A funclatency-style uprobe tool: a uprobe/uretprobe pair on a user function
 * counts its calls, sums its first argument and its return values, and puts
 * each call's latency in a log2 histogram (nanoseconds).  The function is
 * given at attach time: SEC("uprobe") names none, as in libbpf-tools, where
 * the binary and function come from the command line.
 *
 * A second pair probes libc's getpid() with libbpf's section syntax
 * uprobe/PATH:FUNC (a library name is looked up like libbpf does).
 */
/* No CO-RE: struct pt_regs is read at vmlinux.h's offsets (x86-64 UAPI layout). */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_SLOTS 32

/* only count getpid() calls of this process (0: every process) */
const volatile __u32 getpid_tgid = 0;

__u64 calls;
__s64 arg_sum;
__s64 ret_sum;
__u64 getpid_calls;
__s64 last_getpid_ret;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);		/* thread id */
	__type(value, __u64);		/* entry time, ns */
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} latency_ns SEC(".maps");

static __always_inline __u32 log2l(__u64 v)
{
	__u32 r = 0;

	while (v > 1 && r < MAX_SLOTS - 1) {
		v >>= 1;
		r++;
	}
	return r;
}

SEC("uprobe")
int BPF_KPROBE(func_entry, int arg)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();

	bpf_map_update_elem(&starts, &tid, &ts, BPF_ANY);
	__sync_fetch_and_add(&calls, 1);
	__sync_fetch_and_add(&arg_sum, arg);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(func_exit, int ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&starts, &tid);
	__u32 slot;
	__u64 *count;

	__sync_fetch_and_add(&ret_sum, ret);
	if (!start)
		return 0;
	slot = log2l(bpf_ktime_get_ns() - *start);
	bpf_map_delete_elem(&starts, &tid);
	count = bpf_map_lookup_elem(&latency_ns, &slot);
	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

static __always_inline int is_target(void)
{
	return getpid_tgid == 0 || (bpf_get_current_pid_tgid() >> 32) == getpid_tgid;
}

SEC("uprobe/libc.so.6:getpid")
int BPF_KPROBE(getpid_entry)
{
	if (is_target())
		__sync_fetch_and_add(&getpid_calls, 1);
	return 0;
}

SEC("uretprobe/libc.so.6:getpid")
int BPF_KRETPROBE(getpid_exit, int ret)
{
	if (is_target())
		last_getpid_ret = ret;
	return 0;
}
