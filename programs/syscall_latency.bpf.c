// SPDX-License-Identifier: GPL-2.0
/* A biolatency-style tool for system calls: the time between a syscall's entry
 * (raw_tp/sys_enter) and its exit (tp_btf/sys_exit) goes into a log2 histogram
 * per syscall number, in microseconds (or milliseconds with targ_ms), for one
 * process.  Written the libbpf-tools way: vmlinux.h, CO-RE reads of kernel
 * structures, `const volatile` parameters set before load, a hash map of
 * histograms initialised on first use.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_SLOTS 27
#define MAX_ENTRIES 10240

const volatile pid_t targ_tgid = 0;	/* 0: every process */
const volatile long targ_nr = -1;	/* -1: every system call */
const volatile bool targ_ms = false;

struct hist_key {
	__u32 nr;
};

struct hist {
	__u32 slots[MAX_SLOTS];
	__u64 total_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, __u32);		/* thread id */
	__type(value, __u64);		/* entry timestamp */
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct hist_key);
	__type(value, struct hist);
} hists SEC(".maps");

static struct hist initial_hist;

static __always_inline __u64 log2(__u32 v)
{
	__u32 shift, r;

	r = (v > 0xFFFF) << 4; v >>= r;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u64 log2l(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return log2(hi) + 32;
	return log2(v);
}

static __always_inline bool traced(long nr)
{
	if (targ_tgid && (bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return false;
	return targ_nr < 0 || nr == targ_nr;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long nr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ts;

	if (!traced(nr))
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct hist_key key = {};
	struct hist *histp;
	__u64 *tsp, slot;
	__s64 delta;
	long nr;

	/* the syscall number: orig_ax of the saved registers (CO-RE: its offset
	 * comes from the running kernel's struct pt_regs) */
	nr = BPF_CORE_READ(regs, orig_ax);
	if (!traced(nr))
		return 0;
	tsp = bpf_map_lookup_elem(&start, &tid);
	if (!tsp)
		return 0;		/* entered before we attached */
	delta = bpf_ktime_get_ns() - *tsp;
	bpf_map_delete_elem(&start, &tid);
	if (delta < 0)
		return 0;

	key.nr = nr;
	histp = bpf_map_lookup_elem(&hists, &key);
	if (!histp) {
		bpf_map_update_elem(&hists, &key, &initial_hist, BPF_NOEXIST);
		histp = bpf_map_lookup_elem(&hists, &key);
		if (!histp)
			return 0;
	}
	histp->total_ns += delta;
	delta /= targ_ms ? 1000000U : 1000U;
	slot = log2l(delta);
	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	__sync_fetch_and_add(&histp->slots[slot], 1);
	return 0;
}
