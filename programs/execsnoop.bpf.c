// SPDX-License-Identifier: GPL-2.0
/* An execsnoop-style tool: every execve() with its pid, parent pid, uid, return
 * value, command name after the exec, file name and first arguments, sent to
 * user space through a ring buffer.  libbpf-tools style: vmlinux.h, CO-RE
 * reads of task_struct, the event staged in a hash map between the syscall's
 * entry and exit, and the ring buffer's record type declared for user space.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_COMM_LEN 16
#define FILENAME_LEN 128
#define MAX_ARGS 4
#define ARG_LEN 32

const volatile pid_t targ_ppid = 0;	/* only children of this process (0: all) */
const volatile bool ignore_failed = false;

struct event {
	pid_t pid;
	pid_t ppid;
	uid_t uid;
	int retval;
	int args_count;
	char comm[TASK_COMM_LEN];
	char filename[FILENAME_LEN];
	char args[MAX_ARGS][ARG_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, pid_t);
	__type(value, struct event);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));

static const struct event empty_event = {};

SEC("tracepoint/syscalls/sys_enter_execve")
int enter_execve(struct syscall_trace_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	pid_t pid = id >> 32, tid = (__u32)id, ppid;
	struct task_struct *task;
	struct event *event;
	const char **argv;
	const char *argp;
	int i;

	task = (struct task_struct *)bpf_get_current_task();
	ppid = BPF_CORE_READ(task, real_parent, tgid);
	if (targ_ppid && ppid != targ_ppid)
		return 0;
	if (bpf_map_update_elem(&execs, &tid, &empty_event, BPF_NOEXIST))
		return 0;
	event = bpf_map_lookup_elem(&execs, &tid);
	if (!event)
		return 0;
	event->pid = pid;
	event->ppid = ppid;
	event->uid = (__u32)bpf_get_current_uid_gid();
	bpf_probe_read_user_str(event->filename, sizeof(event->filename), (const char *)ctx->args[0]);
	argv = (const char **)ctx->args[1];
#pragma unroll
	for (i = 0; i < MAX_ARGS; i++) {
		if (bpf_probe_read_user(&argp, sizeof(argp), &argv[i]) || !argp)
			break;
		if (bpf_probe_read_user_str(event->args[i], ARG_LEN, argp) < 0)
			break;
		event->args_count++;
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exit_execve(struct syscall_trace_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct event *event, *out;
	int ret;

	event = bpf_map_lookup_elem(&execs, &tid);
	if (!event)
		return 0;
	ret = ctx->ret;
	if (ignore_failed && ret < 0)
		goto cleanup;
	event->retval = ret;
	bpf_get_current_comm(&event->comm, sizeof(event->comm));
	out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (out) {
		__builtin_memcpy(out, event, sizeof(*out));
		bpf_ringbuf_submit(out, 0);
	}
cleanup:
	bpf_map_delete_elem(&execs, &tid);
	return 0;
}
