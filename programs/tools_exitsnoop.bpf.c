// SPDX-License-Identifier: GPL-2.0
/* An exitsnoop-style tool (a stand-in for bcc's libbpf-tools/exitsnoop, with a
 * syscount-style counter beside it): each exit of a process whose parent is
 * targ_ppid, with its exit code, age and parent read through CO-RE from
 * task_struct, sent through a ring buffer (tp_btf/sched_process_exit); the
 * system calls of those processes counted by number in a per-CPU hash
 * (raw_tp/sys_enter); and a task iterator (iter/task) listing them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_COMM_LEN 16

const volatile pid_t targ_ppid = 0;	/* only children of this process (0: all) */

struct event {
	__u64 age_ns;
	pid_t pid;
	pid_t tid;
	pid_t ppid;
	int exit_code;		/* as wait() reports it: code << 8 | signal */
	__u32 sig;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));
/* the record type in the object's BTF for user space (a ring buffer has no value type) */
const struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);		/* syscall number */
	__type(value, __u64);
} syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);		/* exits sent */
} sent SEC(".maps");

static __always_inline bool child_of_target(struct task_struct *task)
{
	return !targ_ppid || BPF_CORE_READ(task, real_parent, tgid) == targ_ppid;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *task)
{
	__u32 zero = 0;
	struct event *e;
	__u64 *n;

	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))	/* a thread, not the process */
		return 0;
	if (!child_of_target(task))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->age_ns = bpf_ktime_get_ns() - BPF_CORE_READ(task, start_time);
	e->pid = BPF_CORE_READ(task, tgid);
	e->tid = BPF_CORE_READ(task, pid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->exit_code = BPF_CORE_READ(task, exit_code);
	e->sig = e->exit_code & 0x7f;
	BPF_CORE_READ_STR_INTO(&e->comm, task, comm);
	bpf_ringbuf_submit(e, 0);
	n = bpf_map_lookup_elem(&sent, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(sys_enter_raw, struct pt_regs *regs, long id)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 nr = id;
	__u64 one = 1, *v;

	if (!targ_ppid || !child_of_target(task))
		return 0;
	v = bpf_map_lookup_elem(&syscalls, &nr);
	if (v)
		*v += 1;
	else
		bpf_map_update_elem(&syscalls, &nr, &one, BPF_NOEXIST);
	return 0;
}

SEC("iter/task")
int list_children(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;

	if (!task || task->pid != task->tgid || !child_of_target(task))
		return 0;
	BPF_SEQ_PRINTF(seq, "%d %s\n", task->tgid, task->comm);
	return 0;
}
