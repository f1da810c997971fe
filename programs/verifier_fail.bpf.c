// SPDX-License-Identifier: GPL-2.0
/* Deliberately rejected by the verifier ("invalid access to map value"): reads
 * element 8 of a 4-element map value. Tests look for the marked source line in
 * the verifier log (it comes from BTF line_info).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32[4]);
} values SEC(".maps");

SEC("syscall")
int oob(void *ctx)
{
	__u32 key = 0, idx = 8, val;
	__u32 *v;

	v = bpf_map_lookup_elem(&values, &key);
	if (!v)
		return 0;
	/* Hide the constant from clang (it would fold or reject the access); the
	 * verifier still knows idx == 8.
	 */
	barrier_var(idx);
	val = v[idx]; /* deliberate out-of-bounds */
	return val;
}
