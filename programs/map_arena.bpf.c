// SPDX-License-Identifier: GPL-2.0
/* An arena map alone (BPF_MAP_TYPE_ARENA, 4 pages), apart from map_types.bpf.c: a
 * kernel that refuses arena maps (some builds do, with EPERM even for root) then
 * refuses only this object, not every other map type with it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARENA);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 4);		/* pages */
} arena SEC(".maps");

/* something for the loader to load beside the map; the arena itself is used from
 * Python (Map.mmap) in tests/test_map_types.py, and by programs in arena_test.bpf.c */
SEC("syscall")
int nothing(void *ctx)
{
	return 0;
}
