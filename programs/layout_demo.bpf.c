// SPDX-License-Identifier: GPL-2.0
/* A struct to look at: holes, bitfields, a nested struct, tail padding.
 * pybpf.display draws its layout (tests/test_display.py checks the picture in
 * headless Chromium); `fill` (a syscall program, run with test_run) stores one
 * value of it and bumps a log2 histogram, so a notebook has something to show.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct point {
	__u8 tag;		/* 0, then a 1-byte hole */
	__u16 x;		/* 2 */
	__u32 y;		/* 4 */
};

struct layout_demo {
	__u8 kind;		/* 0, then a 3-byte hole */
	__u32 pid;		/* 4 */
	__u16 flags:3;		/* bits 64..66 */
	__u16 level:5;		/* bits 67..71 */
	__u16 urgent:1;		/* bit 72, then a hole to 16 */
	__u64 ts;		/* 16 */
	struct point where;	/* 24 */
	char comm[5];		/* 32, then 3 bytes of tail padding */
};

struct hist {
	__u32 slots[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct layout_demo);
} demos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hist);
} hist SEC(".maps");

struct fill_args {
	__u32 index;
	__u32 value;		/* goes into slot log2(value) */
};

static __always_inline __u32 log2u(__u32 v)
{
	__u32 r = 0;

	for (int i = 0; i < 32 && v > 1; i++) {
		v >>= 1;
		r++;
	}
	return r;
}

SEC("syscall")
int fill(struct fill_args *args)
{
	__u32 index = args->index, zero = 0, slot;
	struct layout_demo *d = bpf_map_lookup_elem(&demos, &index);
	struct hist *h = bpf_map_lookup_elem(&hist, &zero);

	if (d) {
		d->kind = 7;
		d->pid = bpf_get_current_pid_tgid() >> 32;
		d->flags = 5;
		d->level = 17;
		d->urgent = 1;
		d->ts = bpf_ktime_get_ns();
		d->where.tag = 1;
		d->where.x = 10;
		d->where.y = 20;
		__builtin_memcpy(d->comm, "demo", 5);
	}
	if (h) {
		slot = log2u(args->value);
		if (slot < 16)
			__sync_fetch_and_add(&h->slots[slot], 1);
	}
	return 0;
}
