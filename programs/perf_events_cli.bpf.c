// SPDX-License-Identifier: GPL-2.0
/* Perf buffer records for the CLI session (python -m pybpf load): one struct
 * perf_rec per getpid() and per kill() of the process target_tgid, written with
 * bpf_perf_event_output(BPF_F_CURRENT_CPU) into the PERF_EVENT_ARRAY `events`,
 * as bcc's execsnoop and many libbpf-tools emit theirs.
 *
 * seq numbers every record the program tried to send (sent or lost), so a
 * reader can tell what reached it; output_failures counts the samples the
 * kernel dropped because the CPU's ring was full (reported as PERF_RECORD_LOST).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

struct perf_rec {
	__u32 pid;
	__u32 seq;
	__u32 syscall;		/* 0: getpid, 1: kill */
	__s32 sig;		/* kill's signal */
	__s64 target;		/* kill's pid */
	char comm[16];
};

/* max_entries 0: the loader sizes it to the possible CPUs, as libbpf does */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct perf_rec")));

struct perf_rec *unused_rec __attribute__((unused));	/* keeps the type in BTF */

__u32 seq;
__u64 output_failures;

/* the tracepoint's context after its 8-byte common header: syscall nr, then args */
struct sys_enter_args {
	__u64 common;
	__s64 nr;
	__u64 args[6];
};

static __always_inline int emit(void *ctx, __u32 syscall, __s64 target, __s32 sig)
{
	struct perf_rec r = {};

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	r.pid = target_tgid;
	r.seq = seq++;		/* one thread in the tests: no race between CPUs */
	r.syscall = syscall;
	r.target = target;
	r.sig = sig;
	bpf_get_current_comm(r.comm, sizeof(r.comm));
	if (bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, &r, sizeof(r)))
		__sync_fetch_and_add(&output_failures, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(struct sys_enter_args *ctx)
{
	return emit(ctx, 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_enter_kill")
int on_kill(struct sys_enter_args *ctx)
{
	return emit(ctx, 1, (__s64)ctx->args[0], (__s32)ctx->args[1]);
}
