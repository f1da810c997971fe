// SPDX-License-Identifier: GPL-2.0
/* One map of each common kind, and a program that writes known values into them. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct val {			/* 16 bytes */
	__u64 a;
	__u32 b;
	char tag[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, __u32);
	__type(value, struct val);
} hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} lru SEC(".maps");

static __always_inline int put_hash(__u32 key)
{
	struct val val = { .a = key * 10, .b = key, .tag = "t" };

	return bpf_map_update_elem(&hash, &key, &val, BPF_ANY);
}

/* hash[i] = {i*10, i, "t"} for i in 1..3; array[2] = 222; percpu[1] += 5 on the
 * CPU it runs on. Returns 0 (or -1 if a map update failed).
 */
SEC("syscall")
int fill(void *ctx)
{
	__u32 key;
	__u64 *cnt;
	__u64 v = 222;
	int err = 0;

	/* unrolled by hand: clang's loop here trips the verifier's loop checks */
	err |= put_hash(1);
	err |= put_hash(2);
	err |= put_hash(3);

	key = 2;
	err |= bpf_map_update_elem(&array, &key, &v, BPF_ANY);

	key = 1;
	cnt = bpf_map_lookup_elem(&percpu, &key);
	if (cnt)
		*cnt += 5;

	return err ? -1 : 0;
}
