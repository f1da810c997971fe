// SPDX-License-Identifier: GPL-2.0
/* A profiler in the style of the eunomia tutorial's profile lesson, our own: a
 * perf_event program run by a sampling perf event on each CPU sends one record per
 * sample (pid, cpu, comm, the sizes of the user and kernel stacks it captured) to a
 * ring buffer.  `python -m pybpf load programs/profile_rb.o --sample-freq 99`
 * attaches it on every CPU and prints the records.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_STACK_DEPTH 32

struct profile_sample {
	__u32 pid;
	__u32 cpu;
	char comm[16];
	__s32 ustack_bytes;
	__s32 kstack_bytes;
};

/* keeps struct profile_sample in the object's BTF, for the ring's record type */
struct profile_sample *unused_sample __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} samples SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct profile_sample")));

/* only this process's samples when set (0: every process) */
const volatile __u32 target_tgid = 0;

SEC("perf_event")
int on_sample(struct bpf_perf_event_data *ctx)
{
	__u64 stack[MAX_STACK_DEPTH];
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct profile_sample *s;

	if (target_tgid && tgid != target_tgid)
		return 0;
	s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (!s)
		return 0;
	s->pid = tgid;
	s->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->ustack_bytes = bpf_get_stack(ctx, stack, sizeof(stack), BPF_F_USER_STACK);
	s->kstack_bytes = bpf_get_stack(ctx, stack, sizeof(stack), 0);
	bpf_ringbuf_submit(s, 0);
	return 0;
}
