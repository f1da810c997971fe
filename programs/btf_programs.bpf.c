// SPDX-License-Identifier: GPL-2.0
/* BTF-attached programs: attach_btf_id comes from the kernel's BTF.
 *
 * - tp_btf/sys_enter counts this process's getpid() calls (typed arguments);
 * - iter/task prints "pid tgid comm" per task, iter/bpf_map_elem dumps a map;
 * - fentry/fexit/fmod_ret/lsm (and sleepable variants) need BPF trampolines,
 *   which this kernel refuses: they are marked '?' (not loaded by default) and
 *   tested offline for their load attributes.
 */
/* No CO-RE: the typed pointers are read at vmlinux.h's offsets (this kernel's). */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define NR_getpid 39

const volatile __u32 target_tgid = 0;

__u64 btf_getpid_calls;
__u64 last_getpid_arg;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} squares SEC(".maps");

/* Counts getpid() calls of target_tgid; remembers the second argument: the
 * syscall number at sys_enter, the return value if retargeted to sys_exit.
 * regs is a typed kernel pointer: read directly, checked against BTF.
 */
SEC("tp_btf/sys_enter")
int BPF_PROG(count_getpid_btf, struct pt_regs *regs, long arg)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	if (regs->orig_ax != NR_getpid)
		return 0;
	last_getpid_arg = arg;
	__sync_fetch_and_add(&btf_getpid_calls, 1);
	return 0;
}

SEC("iter/task")
int dump_task(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;

	if (!task)
		return 0;
	BPF_SEQ_PRINTF(seq, "%d %d %s\n", task->pid, task->tgid, task->comm);
	return 0;
}

SEC("iter/bpf_map_elem")
int dump_squares(struct bpf_iter__bpf_map_elem *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	__u32 *key = ctx->key;
	__u64 *val = ctx->value;

	if (!key || !val)
		return 0;
	BPF_SEQ_PRINTF(seq, "%u=%llu\n", *key, *val);
	return 0;
}

/* Trampoline programs: refused by this kernel (no BPF trampolines). */

SEC("?fentry/do_unlinkat")
int BPF_PROG(on_unlink_entry, int dfd, struct filename *name)
{
	return 0;
}

SEC("?fexit/do_unlinkat")
int BPF_PROG(on_unlink_exit, int dfd, struct filename *name, long ret)
{
	return 0;
}

SEC("?fmod_ret/bpf_modify_return_test")
int BPF_PROG(modify_return, int a, int *b, int ret)
{
	return 0;
}

SEC("?lsm/file_open")
int BPF_PROG(on_file_open, struct file *file)
{
	return 0;
}

SEC("?fentry.s/do_unlinkat")
int BPF_PROG(on_unlink_sleepable, int dfd, struct filename *name)
{
	return 0;
}

/* a tracepoint the kernel does not have */
SEC("?tp_btf/no_such_tracepoint")
int BPF_PROG(missing_target)
{
	return 0;
}
