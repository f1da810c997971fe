// SPDX-License-Identifier: GPL-2.0
/* Arena test program (tests/test_arena.py): __arena globals shared with user space, a page
 * allocated with bpf_arena_alloc_pages, and an arena placed with __ulong(map_extra, ...). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

/* libbpf >= 1.4 spells these in bpf_helpers.h / bpf_arena_common.h; the system headers may be older */
#ifndef __ulong
#define __ulong(name, val) enum { ___bpf_concat(__unique_value, __COUNTER__) = val } name
#endif
#define __arena __attribute__((address_space(1)))
#define NUMA_NO_NODE (-1)

#define ARENA_PAGES 8
#define ARENA_ADDR (0x5ull << 40)	/* a 64-bit value: needs __ulong, not __uint */

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, ARENA_PAGES);	/* pages */
	__ulong(map_extra, ARENA_ADDR);		/* user-space address of the arena */
} arena SEC(".maps");

void __arena *bpf_arena_alloc_pages(void *map, void __arena *addr, __u32 page_cnt, int node_id,
				    __u64 flags) __ksym;

/* __arena globals: section .addr_space.1, copied to the end of the arena at load */
__u64 __arena counter = 7;		/* bumped by bump() */
__u64 __arena from_user;		/* written by Python, copied to seen by bump() */
__u64 __arena seen;
char __arena greeting[16] = "hello arena";
__u64 __arena *__arena page;		/* the page alloc_page() got (a user-space address) */

__u64 page_value;			/* .bss: what read_page() found in the page */

SEC("syscall")
int bump(void *ctx)
{
	counter += 1;
	seen = from_user;
	return 0;
}

SEC("syscall")
int alloc_page(void *ctx)
{
	__u64 __arena *p = bpf_arena_alloc_pages(&arena, NULL, 1, NUMA_NO_NODE, 0);

	if (!p)
		return 1;
	p[0] = 0xc0ffee;
	page = p;
	return 0;
}

SEC("syscall")
int read_page(void *ctx)
{
	__u64 __arena *p = page;

	if (!p)
		return 1;
	page_value = p[1];
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
