// SPDX-License-Identifier: GPL-2.0
/* One map of every type this kernel has (the arena apart: map_arena.bpf.c), and
 * programs that use them the way real programs do: a test-run program doing lookups (LPM trie, map-in-map,
 * queue, bloom filter, per-CPU), a tail call through a prog array whose slots
 * come from `values`, a tp_btf program keeping task storage and stack traces,
 * a cgroup_skb program counting packets in cgroup storage.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define NR_getpid 39
#define STACK_DEPTH 127

const volatile __u32 target_tgid = 0;

/* -- hash and array kinds --------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} percpu_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} percpu_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32);
	__type(key, __u32);
	__type(value, __u64);
} lru SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 32);
	__type(key, __u32);
	__type(value, __u64);
} lru_percpu SEC(".maps");

/* -- LPM trie: the key starts with the prefix length ------------------------------------ */

struct ipv4_lpm_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipv4_lpm_key);
	__type(value, __u32);
} routes SEC(".maps");

/* -- queue, stack, bloom filter: no keys ------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 8);
	__type(value, __u32);
} queue SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK);
	__uint(max_entries, 8);
	__type(value, __u32);
} stack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_BLOOM_FILTER);
	__uint(max_entries, 128);
	__uint(map_extra, 3);		/* number of hash functions */
	__type(value, __u32);
} bloom SEC(".maps");

/* -- map-in-map: the inner map's template is the `values` declaration ------------------- */

struct inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
};

struct inner inner_a SEC(".maps");
struct inner inner_b SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps") = {
	.values = { [0] = &inner_a, [2] = &inner_b },
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 8);
	__type(key, __u32);
	__array(values, struct inner);
} outer_hash SEC(".maps") = {
	.values = { [1] = &inner_b },
};

/* -- prog array: tail calls; slots filled from `values` --------------------------------- */

int tail_zero(void *ctx);
int tail_two(void *ctx);

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__uint(key_size, sizeof(__u32));
	__array(values, int (void *));
} jump_table SEC(".maps") = {
	.values = { [0] = (void *)&tail_zero, [2] = (void *)&tail_two },
};

/* -- tracing maps -------------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 64);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

/* -- local storage: BTF value type, BPF_F_NO_PREALLOC, key is an fd -------------------- */

struct counter {
	__u64 calls;
	__u32 last_stack_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct counter);
} task_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_INODE_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct counter);
} inode_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct counter);
} sk_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct counter);
} cgrp_store SEC(".maps");

/* -- cgroup storage: one value per (cgroup, attach type) the program is attached to ------ */

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, __u64);
} cg_packets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE);
	__type(key, struct bpf_cgroup_storage_key);
	__type(value, __u64);
} cg_bytes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CGROUP_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} cgroups SEC(".maps");

/* -- networking maps ----------------------------------------------------------------- */

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} devmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} devmap_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct bpf_cpumap_val);
} cpumap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} xskmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sockmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} reuseport SEC(".maps");

/* the arena is in map_arena.bpf.c: some kernels refuse arena maps */

/* -- programs ------------------------------------------------------------------------ */

enum op {
	OP_LPM = 1,		/* routes[longest prefix of key], or -1 */
	OP_INNER = 2,		/* outer[key][0], or -1 if the slot is empty */
	OP_INNER_HASH = 3,	/* outer_hash[key][0], or -1 */
	OP_PUSH = 4,		/* push value on queue and stack: 0, or -1 when full */
	OP_BLOOM = 5,		/* 1 if value may be in bloom, 0 if not */
	OP_PERCPU = 6,		/* percpu_hash[key] += value, percpu_array[key] += value on this CPU */
};

static __always_inline int inner_value(void *outer_map, __u32 key)
{
	__u32 zero = 0;
	__u64 *v;
	void *inner = bpf_map_lookup_elem(outer_map, &key);

	if (!inner)
		return -1;
	v = bpf_map_lookup_elem(inner, &zero);
	return v ? (int)*v : -2;
}

/* Test-run entry: ctx = {op, key, value}; returns the op's result.  A raw_tp
 * program, not SEC("syscall"): syscall programs are sleepable, and sleepable
 * programs may not use LPM tries, bloom filters or prog arrays.
 */
SEC("raw_tp")
int run(__u64 *ctx)
{
	__u32 op = ctx[0], key = ctx[1];
	__u64 value = ctx[2];
	__u32 value32 = value;
	__u64 *cnt;

	switch (op) {
	case OP_LPM: {
		struct ipv4_lpm_key k = { .prefixlen = 32 };
		__u32 *hit;

		__builtin_memcpy(k.addr, &key, 4);
		hit = bpf_map_lookup_elem(&routes, &k);
		return hit ? *hit : -1;
	}
	case OP_INNER:
		return inner_value(&outer, key);
	case OP_INNER_HASH:
		return inner_value(&outer_hash, key);
	case OP_PUSH:
		if (bpf_map_push_elem(&queue, &value32, 0) || bpf_map_push_elem(&stack, &value32, 0))
			return -1;
		return 0;
	case OP_BLOOM:
		return bpf_map_peek_elem(&bloom, &value32) == 0;
	case OP_PERCPU:
		cnt = bpf_map_lookup_elem(&percpu_hash, &key);
		if (cnt)
			*cnt += value;
		else
			bpf_map_update_elem(&percpu_hash, &key, &value, BPF_NOEXIST);
		cnt = bpf_map_lookup_elem(&percpu_array, &key);
		if (cnt)
			*cnt += value;
		return 0;
	}
	return -100;
}

/* Tail calls: returns 100 + slot from the program in jump_table[index], or -1 if the
 * slot is empty (bpf_tail_call returns).  ctx[0] is the index.
 */
SEC("raw_tp")
int tail_caller(__u64 *ctx)
{
	bpf_tail_call(ctx, &jump_table, (__u32)ctx[0]);
	return -1;
}

SEC("raw_tp")
int tail_zero(void *ctx)
{
	return 100;
}

SEC("raw_tp")
int tail_two(void *ctx)
{
	return 102;
}

/* Per task: count getpid() calls in task storage with the kernel stack of the last one. */
SEC("tp_btf/sys_enter")
int BPF_PROG(count_in_task, struct pt_regs *regs, long id)
{
	struct counter *c;

	if (id != NR_getpid || (bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	c = bpf_task_storage_get(&task_store, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c)
		return 0;
	c->calls++;
	c->last_stack_id = bpf_get_stackid(ctx, &stacks, 0);
	return 0;
}

/* Counts packets and bytes leaving the cgroup it is attached to; lets them pass. */
SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
	__u64 *packets = bpf_get_local_storage(&cg_packets, 0);
	__u64 *bytes = bpf_get_local_storage(&cg_bytes, 0);

	__sync_fetch_and_add(packets, 1);
	*bytes += skb->len;
	return 1;
}
