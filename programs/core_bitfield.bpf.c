// SPDX-License-Identifier: GPL-2.0
/* CO-RE bitfields at container edges: BPF_CORE_READ_BITFIELD of fields that end
 * exactly where a 4- or 8-byte load ends, and of one that straddles a 4-byte
 * boundary.  Tests relocate this object against hand-built target BTF
 * (target_btf=) that puts the fields there; the local layouts below differ on
 * purpose, so only the relocated values read the right bits.
 *
 * Each struct is the value of a one-element array map of exactly its size: a
 * load wider than libbpf's (an 8-byte load of a 4-byte value) is refused by the
 * verifier.  `read_bits` stores what it read in .bss.  Against a kernel without
 * these types (the running one) it returns 2 before any read: the poisoned reads
 * are dead code, so the object loads anywhere.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* target: top = bits 28..31 of a 4-byte struct (unsigned int) */
struct edge4 {
	unsigned int top:4;
	unsigned int lo:28;
} __attribute__((preserve_access_index));

/* target: top = bits 28..31 of a 4-byte struct (int: sign-extended) */
struct sedge4 {
	int top:4;
	int lo:28;
} __attribute__((preserve_access_index));

/* target: top = bits 60..63 of an 8-byte struct (unsigned long long) */
struct edge8 {
	unsigned long long top:4;
	unsigned long long lo:60;
} __attribute__((preserve_access_index));

/* target: b = bits 30..33 of an 8-byte struct (unsigned int): needs an 8-byte load */
struct straddle {
	unsigned int b:4;
	unsigned int a;
} __attribute__((preserve_access_index));

#define VALUE_MAP(name, vtype)				\
	struct {					\
		__uint(type, BPF_MAP_TYPE_ARRAY);	\
		__uint(max_entries, 1);			\
		__type(key, __u32);			\
		__type(value, vtype);			\
	} name SEC(".maps")

VALUE_MAP(edge4_map, struct edge4);
VALUE_MAP(sedge4_map, struct sedge4);
VALUE_MAP(edge8_map, struct edge8);
VALUE_MAP(straddle_map, struct straddle);

__u64 edge4_top;
__s64 sedge4_top;
__u64 edge8_top;
__u64 straddle_b;
__u32 runs;

SEC("syscall")
int read_bits(void *ctx)
{
	__u32 key = 0;
	struct edge4 *e4 = bpf_map_lookup_elem(&edge4_map, &key);
	struct sedge4 *s4 = bpf_map_lookup_elem(&sedge4_map, &key);
	struct edge8 *e8 = bpf_map_lookup_elem(&edge8_map, &key);
	struct straddle *st = bpf_map_lookup_elem(&straddle_map, &key);

	if (!e4 || !s4 || !e8 || !st)
		return 1;
	if (!bpf_core_type_exists(struct edge4) || !bpf_core_type_exists(struct sedge4) ||
	    !bpf_core_type_exists(struct edge8) || !bpf_core_type_exists(struct straddle))
		return 2;
	edge4_top = BPF_CORE_READ_BITFIELD(e4, top);
	sedge4_top = BPF_CORE_READ_BITFIELD(s4, top);
	edge8_top = BPF_CORE_READ_BITFIELD(e8, top);
	straddle_b = BPF_CORE_READ_BITFIELD(st, b);
	runs++;
	return 0;
}
