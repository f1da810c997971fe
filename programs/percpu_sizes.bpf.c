// SPDX-License-Identifier: GPL-2.0
/* Per-CPU maps whose value size is not a multiple of 8 (4 and 12 bytes): user
 * space sees each CPU's value in an 8-byte aligned slot (the kernel's
 * round_up(value_size, 8) per CPU).  `swap` reads every CPU's value of key 0
 * with bpf_map_lookup_percpu_elem into .bss (seen_*[cpu]) and replaces it by
 * its bitwise complement, so tests check both directions.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_CPUS 64

struct triple {			/* 12 bytes */
	__u32 a, b, c;
};

#define PERCPU_MAP(name, kind, vtype)			\
	struct {					\
		__uint(type, kind);			\
		__uint(max_entries, 4);			\
		__type(key, __u32);			\
		__type(value, vtype);			\
	} name SEC(".maps")

PERCPU_MAP(array4, BPF_MAP_TYPE_PERCPU_ARRAY, __u32);
PERCPU_MAP(hash4, BPF_MAP_TYPE_PERCPU_HASH, __u32);
PERCPU_MAP(array12, BPF_MAP_TYPE_PERCPU_ARRAY, struct triple);
PERCPU_MAP(hash12, BPF_MAP_TYPE_PERCPU_HASH, struct triple);

__u32 seen_array4[MAX_CPUS];
__u32 seen_hash4[MAX_CPUS];
struct triple seen_array12[MAX_CPUS];
struct triple seen_hash12[MAX_CPUS];
__u32 cpus_seen;

static __always_inline void flip3(struct triple *dst, struct triple *v)
{
	dst->a = v->a;
	dst->b = v->b;
	dst->c = v->c;
	v->a = ~v->a;
	v->b = ~v->b;
	v->c = ~v->c;
}

SEC("syscall")
int swap(void *ctx)
{
	__u32 key = 0, cpu, n = 0;

	for (cpu = 0; cpu < MAX_CPUS; cpu++) {
		__u32 *a4 = bpf_map_lookup_percpu_elem(&array4, &key, cpu);
		__u32 *h4 = bpf_map_lookup_percpu_elem(&hash4, &key, cpu);
		struct triple *a12 = bpf_map_lookup_percpu_elem(&array12, &key, cpu);
		struct triple *h12 = bpf_map_lookup_percpu_elem(&hash12, &key, cpu);

		if (!a4 || !h4 || !a12 || !h12)
			break;		/* past the last possible CPU (or key 0 missing) */
		seen_array4[cpu] = *a4;
		*a4 = ~*a4;
		seen_hash4[cpu] = *h4;
		*h4 = ~*h4;
		flip3(&seen_array12[cpu], a12);
		flip3(&seen_hash12[cpu], h12);
		n++;
	}
	cpus_seen = n;
	return 0;
}
