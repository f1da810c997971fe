// SPDX-License-Identifier: GPL-2.0
/* In the style of libbpf-tools' profile: a perf_event program counting samples per
 * (pid, user stack id, kernel stack id, comm) in a hash map, with stacks in a STACK_TRACE
 * map whose depth (value_size) and size (max_entries) the object leaves for user space to
 * set (load --value-size stacks=N --max-entries stacks=N), and a USDT program on the
 * loader's own executable (SEC("usdt//proc/self/exe:...")), as profile's converter is.
 * Only process target_tgid is counted (0: every process but the idle tasks).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

char LICENSE[] SEC("license") = "GPL";

struct sample_key {
	__u32 pid;
	__s32 user_stack_id;
	__s32 kern_stack_id;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__type(key, __u32);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct sample_key);
	__type(value, __u64);
	__uint(max_entries, 4096);
} samples SEC(".maps");

const volatile __u32 target_tgid = 0;
__u64 converts;

SEC("perf_event")
int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sample_key key = {};
	__u64 one = 1, *n;

	if ((__u32)id == 0 || (target_tgid && (id >> 32) != target_tgid))
		return 0;
	key.pid = id >> 32;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.kern_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_FAST_STACK_CMP | BPF_F_REUSE_STACKID);
	key.user_stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK | BPF_F_FAST_STACK_CMP |
					    BPF_F_REUSE_STACKID);
	n = bpf_map_lookup_elem(&samples, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&samples, &key, &one, BPF_NOEXIST);
	return 0;
}

SEC("usdt//proc/self/exe:pybpf_profiler:ready")
int converter(struct pt_regs *ctx)
{
	__sync_fetch_and_add(&converts, 1);
	return 0;
}
