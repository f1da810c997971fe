// SPDX-License-Identifier: GPL-2.0
/* Pinning, live kernel objects, run-time statistics and map batch operations
 * (tests/test_pinning.py, tests/test_live.py, tests/test_map_batch.py,
 * tools/bench_maps.py).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct shared_val {		/* 16 bytes */
	__u64 total;		/* sum of every write_shared() 'add' */
	__u32 writer;		/* tgid of the last writer */
	__u32 writes;
};

/* Pinned by name: every load with the same pin_root shares these two maps
 * (libbpf's LIBBPF_PIN_BY_NAME). A load that fails on the second one it
 * creates has pinned the first already, and must unpin it again. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shared_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct shared_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shared SEC(".maps");

/* A value with a bpf_spin_lock: user space reads and writes it with BPF_F_LOCK. */
struct locked_val {
	struct bpf_spin_lock lock;
	__u32 rounds;
	__u64 a;
	__u64 b;		/* always equal to a, under the lock */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct locked_val);
} locked SEC(".maps");

/* Batch operations: 131072 entries, so 100,000 keys leave hash buckets with
 * several entries (the kernel returns a bucket whole). */
#define BATCH_ENTRIES 131072

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BATCH_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} batch_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, BATCH_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} batch_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BATCH_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} batch_array SEC(".maps");

struct point {			/* 12 bytes: typed struct values in batches */
	__u32 x;
	__s32 y;
	char tag[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct point);
} batch_points SEC(".maps");

struct write_args {
	__u32 slot;
	__u32 pad;
	__u64 add;
};

/* shared[slot].total += add; records the writer's tgid. */
SEC("syscall")
int write_shared(struct write_args *args)
{
	__u32 slot = args->slot;
	struct shared_val *v;
	__u64 one = 1;

	v = bpf_map_lookup_elem(&shared, &slot);
	if (!v)
		return -1;
	__sync_fetch_and_add(&v->total, args->add);
	__sync_fetch_and_add(&v->writes, 1);
	v->writer = bpf_get_current_pid_tgid() >> 32;
	bpf_map_update_elem(&shared_seen, &slot, &one, BPF_ANY);
	return 0;
}

/* locked[key]: a += add and b += add under the value's lock. */
SEC("syscall")
int bump_locked(struct write_args *args)
{
	__u32 key = args->slot;
	struct locked_val *v;

	v = bpf_map_lookup_elem(&locked, &key);
	if (!v)
		return -1;
	bpf_spin_lock(&v->lock);
	v->a += args->add;
	v->rounds++;
	v->b += args->add;
	bpf_spin_unlock(&v->lock);
	return 0;
}

__u64 getppid_calls;

/* Counts every getppid() on the machine: with statistics on, the kernel's
 * run_cnt of this program equals the counter. */
SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__sync_fetch_and_add(&getppid_calls, 1);
	return 0;
}
