// SPDX-License-Identifier: GPL-2.0
/* An opensnoop-style tool (a stand-in for bcc's libbpf-tools/opensnoop): each
 * openat() of the traced process with its file name, flags, result, uid and
 * command name, sent through a ring buffer.  Syscall tracepoints for entry and
 * exit with the arguments staged in a hash map by thread, a raw_tp/sys_exit
 * counter of failed calls, per-CPU statistics, and the parent's tgid read
 * through CO-RE (task->real_parent->tgid).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_COMM_LEN 16
#define NAME_MAX 255

const volatile pid_t targ_tgid = 0;	/* 0: every process */
const volatile bool targ_failed = false;	/* only failed opens */

struct args_t {
	const char *fname;
	int flags;
};

struct event {
	__u64 ts;
	pid_t pid;
	pid_t ppid;
	uid_t uid;
	int ret;
	int flags;
	char comm[TASK_COMM_LEN];
	char fname[NAME_MAX];
};

enum open_stat { OPEN_ENTERED, OPEN_SENT, OPEN_DROPPED, FAILED_SYSCALLS, NR_OPEN_STATS };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, struct args_t);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));
/* the record type in the object's BTF for user space (a ring buffer has no value type) */
const struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_OPEN_STATS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);

	if (v)
		*v += 1;
}

static __always_inline bool traced(void)
{
	return !targ_tgid || (bpf_get_current_pid_tgid() >> 32) == targ_tgid;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct args_t args = {};

	if (!traced())
		return 0;
	args.fname = (const char *)ctx->args[1];
	args.flags = (int)ctx->args[2];
	bpf_map_update_elem(&start, &tid, &args, BPF_ANY);
	stat_add(OPEN_ENTERED);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct task_struct *task;
	struct args_t *ap;
	struct event *e;
	int ret;

	ap = bpf_map_lookup_elem(&start, &tid);
	if (!ap)
		return 0;
	ret = ctx->ret;
	if (targ_failed && ret >= 0)
		goto cleanup;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_add(OPEN_DROPPED);
		goto cleanup;
	}
	task = (struct task_struct *)bpf_get_current_task();
	e->ts = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ret = ret;
	e->flags = ap->flags;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_user_str(e->fname, sizeof(e->fname), ap->fname);
	bpf_ringbuf_submit(e, 0);
	stat_add(OPEN_SENT);
cleanup:
	bpf_map_delete_elem(&start, &tid);
	return 0;
}

/* every failed system call of the traced process (a syscount -x style counter) */
SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit_raw, struct pt_regs *regs, long ret)
{
	if (traced() && ret < 0)
		stat_add(FAILED_SYSCALLS);
	return 0;
}
