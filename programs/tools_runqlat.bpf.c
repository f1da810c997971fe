// SPDX-License-Identifier: GPL-2.0
/* A runqlat-style tool (a stand-in for bcc's libbpf-tools/runqlat): the time a
 * task waits on a run queue between its wake-up and the switch to it, as a
 * log2 histogram in microseconds per process.  tp_btf programs on
 * sched_wakeup, sched_wakeup_new and sched_switch with raw_tp twins, the
 * task's state read through CO-RE with the pre-5.14 field name as a flavor
 * (task_struct___o::state), pid/tgid read from task_struct.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "tools_common.h"

char LICENSE[] SEC("license") = "GPL";

#define TASK_RUNNING 0

const volatile pid_t targ_tgid = 0;	/* 0: every process */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);		/* thread id */
	__type(value, __u64);		/* wake-up time */
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);		/* tgid */
	__type(value, struct hist);
} hists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);		/* [0] wake-ups seen (tp_btf), [1] by the raw_tp twin */
} wakeups SEC(".maps");

static struct hist zero_hist;

struct task_struct___o {
	volatile long int state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t)
{
	struct task_struct___o *old = (void *)t;

	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ(old, state);
}

static __always_inline bool traced(struct task_struct *t)
{
	return !targ_tgid || BPF_CORE_READ(t, tgid) == targ_tgid;
}

static __always_inline void bump(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&wakeups, &which);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline int enqueue(struct task_struct *t)
{
	__u32 pid = BPF_CORE_READ(t, pid);
	__u64 ts;

	if (!pid || !traced(t))
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &pid, &ts, BPF_ANY);
	bump(0);
	return 0;
}

static __always_inline int switched(struct task_struct *prev, struct task_struct *next)
{
	struct hist *h;
	__u64 *tsp, delta;
	__u32 pid, tgid;

	if (task_state(prev) == TASK_RUNNING)	/* preempted: back on the queue now */
		enqueue(prev);
	pid = BPF_CORE_READ(next, pid);
	tsp = bpf_map_lookup_elem(&start, &pid);
	if (!tsp)
		return 0;
	delta = (bpf_ktime_get_ns() - *tsp) / 1000;
	tgid = BPF_CORE_READ(next, tgid);
	h = bpf_map_lookup_elem(&hists, &tgid);
	if (!h) {
		bpf_map_update_elem(&hists, &tgid, &zero_hist, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &tgid);
		if (!h)
			goto out;
	}
	hist_add(h, delta);
out:
	bpf_map_delete_elem(&start, &pid);
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	return enqueue(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new, struct task_struct *p)
{
	return enqueue(p);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return switched(prev, next);
}

/* the raw tracepoint twin: counts wake-ups only, so both sets can run at once */
SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_raw, struct task_struct *p)
{
	if (traced(p))
		bump(1);
	return 0;
}
