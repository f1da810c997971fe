// SPDX-License-Identifier: GPL-2.0
/* CO-RE relocations that cannot be satisfied, on a reachable path.
 *
 * Every program but 'guarded' is in a '?' section (not loaded unless asked
 * for): loading one poisons the relocated instruction, the verifier rejects the
 * call to the unknown function 0xbad2310, and pybpf names the relocation.
 * 'guarded' has the same poisoned read behind bpf_core_field_exists(): dead
 * code, so it loads.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* the kernel's task_struct has no such field */
struct task_struct___gone {
	int gone_field;
} __attribute__((preserve_access_index));

/* no type with this essential name in the kernel */
struct no_such_struct {
	int a;
	int b;
} __attribute__((preserve_access_index));

/* pid is a 4-byte signed int in the kernel: a 2-byte load cannot be resized */
struct task_struct___short {
	short pid;
} __attribute__((preserve_access_index));

enum bpf_map_type___gone {
	BPF_MAP_TYPE_GONE___gone = 1,
};

__u64 out;

/* the failed relocation is on a path the verifier knows is dead */
SEC("raw_tp/sys_enter")
int guarded(void *ctx)
{
	struct task_struct___gone *t = (void *)bpf_get_current_task();

	if (bpf_core_field_exists(t->gone_field))
		out = BPF_CORE_READ(t, gone_field);
	return 0;
}

/* byte_off on an ALU mov (BPF_CORE_READ): no field */
SEC("?raw_tp/sys_enter")
int missing_field(void *ctx)
{
	struct task_struct___gone *t = (void *)bpf_get_current_task();

	out = BPF_CORE_READ(t, gone_field);
	return 0;
}

/* byte_off on an LDX through a BTF pointer: no type */
SEC("?raw_tp/sys_enter")
int missing_type(void *ctx)
{
	struct no_such_struct *s = (void *)bpf_get_current_task_btf();

	out = s->b;
	return 0;
}

/* enumval_value on an ld_imm64: no enumerator */
SEC("?raw_tp/sys_enter")
int missing_enumval(void *ctx)
{
	out = bpf_core_enum_value(enum bpf_map_type___gone, BPF_MAP_TYPE_GONE___gone);
	return 0;
}

/* byte_off on an LDX whose size would have to change for a signed field */
SEC("?raw_tp/sys_enter")
int wrong_size(void *ctx)
{
	struct task_struct___short *t = (void *)bpf_get_current_task_btf();

	out = t->pid;
	return 0;
}
