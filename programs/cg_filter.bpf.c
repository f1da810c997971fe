// SPDX-License-Identifier: GPL-2.0
/* A getpid() counter with libbpf-tools' cgroup filter convention (their -c/--cgroup
 * option): a one-slot BPF_MAP_TYPE_CGROUP_ARRAY named cgroup_map that user space
 * fills with the fd of a cgroup directory after loading, and a read-only global
 * filter_cg that it sets to true before loading.  With the filter on, only calls
 * made by tasks inside that cgroup (or below it) are counted.
 *
 * Each counted call adds one to counts[tgid] and sends a record with the caller's
 * pid, its running count and its command name through the ring buffer, which
 * `python -m pybpf load` prints as it streams.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define TASK_COMM_LEN 16

/* set by the loader before load (pybpf's CLI does it for --cgroup) */
const volatile bool filter_cg = false;

/* slot 0: the cgroup to count, filled by the loader after load */
struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cgroup_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);	/* tgid */
	__type(value, __u64);	/* getpid() calls */
} counts SEC(".maps");

struct event {
	__u32 pid;
	__u32 count;
	char comm[TASK_COMM_LEN];
};

/* keeps struct event in the object's BTF for user space (the libbpf-bootstrap way) */
struct event *unused_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
	/* bpf_current_task_under_cgroup() is 1 inside the cgroup, 0 outside, and a
	 * negative error while slot 0 is empty: only a 1 lets the call through */
	if (filter_cg && bpf_current_task_under_cgroup(&cgroup_map, 0) != 1)
		return 0;

	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 one = 1, *n = bpf_map_lookup_elem(&counts, &tgid);
	__u64 now;

	if (n) {
		now = __sync_add_and_fetch(n, 1);
	} else {
		bpf_map_update_elem(&counts, &tgid, &one, BPF_NOEXIST);
		now = 1;
	}

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = tgid;
	e->count = now;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}
