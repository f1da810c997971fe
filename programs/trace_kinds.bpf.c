// SPDX-License-Identifier: GPL-2.0
/* Tracing attach kinds of issue 12 (tests/test_attach_perf.py, test_attach_uprobe_multi.py,
 * test_cookies.py):
 *
 * - count_samples (perf_event): a per-CPU count of the samples of a sampling perf event;
 * - profile (perf_event): a bcc-profile-style sampler: user and kernel stack ids of the
 *   sampled task in a STACK_TRACE map, and a count per (tgid, stacks) in a hash; only
 *   tasks of process profile_tgid (0: every process);
 * - count_by_cookie / count_ret_by_cookie (uprobe.multi / uretprobe.multi, no target):
 *   one count per bpf_get_attach_cookie() value (0..MAX_COOKIES-1);
 * - libc_getpid (uprobe.multi/libc.so.6:getpid): calls of libc's getpid() by process
 *   cookie_tgid, from the section's own target (Object.attach attaches it);
 * - tp_cookie (tracepoint) and uprobe_cookie (uprobe): one count per cookie, so two
 *   attachments of one program with different cookies are told apart;
 * - raw_tp_cookie (raw_tp/sys_enter): the same for raw tracepoints;
 * - on_getpid_sys / on_getpid_sys_ret (ksyscall/getpid, kretsyscall/getpid) and
 *   nanosleep_multi (kprobe.multi/do_nanosleep*): kprobes, which this test kernel lacks;
 *   "?" (not loaded by default), so Object.attach() of the rest works everywhere.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_COOKIES	16
#define MAX_STACK	127

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} samples SEC(".maps");

SEC("perf_event")
int count_samples(struct bpf_perf_event_data *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&samples, &zero);

	if (n)
		(*n)++;
	return 0;
}

const volatile __u32 profile_tgid = 0;

struct stack_key {
	__u32 tgid;
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct stack_key);
	__type(value, __u64);
} stack_counts SEC(".maps");

__u64 profile_samples;

SEC("perf_event")
int profile(struct bpf_perf_event_data *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct stack_key key = {};
	__u64 one = 1, *n;

	if (profile_tgid && tgid != profile_tgid)
		return 0;
	__sync_fetch_and_add(&profile_samples, 1);
	key.tgid = tgid;
	key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	key.kernel_stack_id = bpf_get_stackid(ctx, &stacks, 0);
	n = bpf_map_lookup_elem(&stack_counts, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&stack_counts, &key, &one, BPF_NOEXIST);
	return 0;
}

/* counts by cookie, entry and return; cookies >= MAX_COOKIES are counted in out_of_range */
__u64 entry_counts[MAX_COOKIES];
__u64 return_counts[MAX_COOKIES];
__u64 out_of_range;

static __always_inline void count(__u64 *counts, __u64 cookie)
{
	__u64 idx = cookie & (MAX_COOKIES - 1);

	/* the verifier needs the index bounded by the instruction itself */
	__asm__ volatile("" : "+r"(idx));
	if (cookie >= MAX_COOKIES)
		__sync_fetch_and_add(&out_of_range, 1);
	else
		__sync_fetch_and_add(&counts[idx], 1);
}

SEC("uprobe.multi")
int count_by_cookie(struct pt_regs *ctx)
{
	count(entry_counts, bpf_get_attach_cookie(ctx));
	return 0;
}

SEC("uretprobe.multi")
int count_ret_by_cookie(struct pt_regs *ctx)
{
	count(return_counts, bpf_get_attach_cookie(ctx));
	return 0;
}

const volatile __u32 cookie_tgid = 0;
__u64 libc_getpid_calls;

SEC("uprobe.multi/libc.so.6:getpid")
int libc_getpid(struct pt_regs *ctx)
{
	if (cookie_tgid && (bpf_get_current_pid_tgid() >> 32) != cookie_tgid)
		return 0;
	__sync_fetch_and_add(&libc_getpid_calls, 1);
	return 0;
}

/* cookies of tracepoint, uprobe and raw tracepoint attachments */
__u64 tp_counts[MAX_COOKIES];
__u64 uprobe_counts[MAX_COOKIES];
__u64 raw_tp_counts[MAX_COOKIES];

SEC("tracepoint/syscalls/sys_enter_getppid")
int tp_cookie(void *ctx)
{
	if (cookie_tgid && (bpf_get_current_pid_tgid() >> 32) != cookie_tgid)
		return 0;
	count(tp_counts, bpf_get_attach_cookie(ctx));
	return 0;
}

SEC("uprobe")
int uprobe_cookie(struct pt_regs *ctx)
{
	count(uprobe_counts, bpf_get_attach_cookie(ctx));
	return 0;
}

SEC("raw_tp/sys_enter")
int raw_tp_cookie(struct bpf_raw_tracepoint_args *ctx)
{
	/* only getppid (x86-64 syscall 110) of process cookie_tgid */
	if (ctx->args[1] != 110)
		return 0;
	if (cookie_tgid && (bpf_get_current_pid_tgid() >> 32) != cookie_tgid)
		return 0;
	count(raw_tp_counts, bpf_get_attach_cookie(ctx));
	return 0;
}

__u64 ksyscall_calls;

SEC("?ksyscall/getpid")
int on_getpid_sys(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&ksyscall_calls, 1);
	return 0;
}

SEC("?kretsyscall/getpid")
int on_getpid_sys_ret(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&ksyscall_calls, 1);
	return 0;
}

__u64 kprobe_multi_calls;

SEC("?kprobe.multi/do_nanosleep*")
int nanosleep_multi(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&kprobe_multi_calls, 1);
	return 0;
}
