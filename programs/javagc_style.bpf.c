// SPDX-License-Identifier: GPL-2.0
/* In the style of libbpf-tools' javagc (and the eunomia tutorial's lesson 15): SEC("usdt")
 * programs that name no probe (the command line gives them: load --usdt PROG=PROVIDER:NAME),
 * a GC start time per process in a hash map, and one record per GC into a perf buffer at
 * its end: duration, CPU, pid, and the probe's first argument (hotspot's gc__begin/gc__end
 * pass is_full).  Only GCs longer than min_ns are sent.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

char LICENSE[] SEC("license") = "GPL";

struct gc_event {
	__u32 cpu;
	__u32 pid;
	__u64 duration_ns;
	__s64 arg0;		/* the end probe's first argument */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, __u32);
	__type(value, __u64);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__type(key, int);
	__type(value, int);
} gc_events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct gc_event")));

struct gc_event *unused_gc_event __attribute__((unused));	/* keeps the type in BTF */

const volatile __u64 min_ns = 0;

SEC("usdt")
int gc_begin(struct pt_regs *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&starts, &pid, &now, BPF_ANY);
	return 0;
}

SEC("usdt")
int gc_end(struct pt_regs *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct gc_event e = {};
	__u64 *start;
	long arg = 0;

	start = bpf_map_lookup_elem(&starts, &pid);
	if (!start)
		return 0;
	e.duration_ns = bpf_ktime_get_ns() - *start;
	bpf_map_delete_elem(&starts, &pid);
	if (e.duration_ns <= min_ns)
		return 0;
	e.cpu = bpf_get_smp_processor_id();
	e.pid = pid;
	if (bpf_usdt_arg_cnt(ctx) > 0 && !bpf_usdt_arg(ctx, 0, &arg))
		e.arg0 = arg;
	bpf_perf_event_output(ctx, &gc_events, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}
