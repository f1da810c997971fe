// SPDX-License-Identifier: GPL-2.0
/* Subprograms and callbacks: a static and a global bpf-to-bpf call, a bpf_loop
 * callback and a bpf_for_each_map_elem callback, shared by two programs in the
 * same section.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} arr SEC(".maps");

struct compute_args {		/* 24 bytes; copied back to the caller after the run */
	__u32 n;		/* in: bpf_loop iterations */
	__u32 x;		/* in: argument for twice() */
	__u64 out_loop;		/* out: 0 + 1 + ... + (n-1) */
	__u64 out_each;		/* out: sum of the 4 values in arr */
};

/* Static subprogram: the verifier follows it inline with the caller's state. */
static __noinline int add3(int x)
{
	return x + 3;
}

/* Global subprogram: verified once, on its own, from its BTF signature (needs
 * func_info); the caller only knows it returns some int.
 */
__noinline int twice(int x)
{
	return x * 2;
}

struct loop_ctx {
	__u64 sum;
};

/* bpf_loop callback (static linkage, as the verifier requires for callbacks) */
static long sum_cb(__u32 i, void *data)
{
	struct loop_ctx *c = data;

	c->sum += i;
	return 0;		/* 0: continue, 1: stop */
}

/* bpf_for_each_map_elem callback */
static long each_cb(struct bpf_map *map, __u32 *key, __u64 *val, void *data)
{
	struct loop_ctx *c = data;

	c->sum += *val;
	return 0;
}

/* Returns add3(twice(x)) = 2x + 3; fills out_loop and out_each. */
SEC("syscall")
int compute(struct compute_args *args)
{
	struct loop_ctx loop = {}, each = {};
	__u64 n = args->n;

	/* bpf_loop's nr_loops is u32 but the inlined helper compares all 64 bits
	 * (loader.md): zero the upper half, then hide n behind an empty asm so the
	 * register passed is that masked value (clang would otherwise drop the mask
	 * as redundant with the u32 argument conversion).
	 */
	n &= 0xffffffff;
	barrier_var(n);
	bpf_loop(n, sum_cb, &loop, 0);
	bpf_for_each_map_elem(&arr, each_cb, &each, 0);
	args->out_loop = loop.sum;
	args->out_each = each.sum;
	return add3(twice(args->x));
}

/* Second program in the same section: shares the add3 subprogram. Returns 4. */
SEC("syscall")
int compute2(void *ctx)
{
	return add3(1);
}
