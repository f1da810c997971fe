// SPDX-License-Identifier: GPL-2.0
/* Maps that leave max_entries for user space to set, as libbpf-tools' profile,
 * offcputime and memleak do (bpf_map__set_max_entries() before loading), next to
 * maps whose max_entries 0 is right: a perf event array (one slot per possible
 * CPU) and task storage (the kernel requires 0).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define PERF_MAX_STACK_DEPTH 127

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__type(key, __u32);
	__uint(value_size, PERF_MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
} events SEC(".maps");

/* max_entries 0 is right for these two */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} task_seen SEC(".maps");

/* On getpid(): count the stack, send its id to the ring buffer. */
SEC("tracepoint/syscalls/sys_enter_getpid")
int on_getpid(void *ctx)
{
	__u64 one = 1, *n;
	__u32 id;
	long sid;

	sid = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (sid < 0)
		return 0;
	id = sid;
	n = bpf_map_lookup_elem(&counts, &id);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&counts, &id, &one, BPF_ANY);
	bpf_ringbuf_output(&events, &id, sizeof(id), 0);
	bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &id, sizeof(id));
	return 0;
}
