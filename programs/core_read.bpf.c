// SPDX-License-Identifier: GPL-2.0
/* CO-RE: read the current task's fields through relocations, libbpf style.
 *
 * One getpid tracepoint filtered on target_tgid stores what it read in .bss:
 * pid, tgid, parent's tgid, uid, comm (BPF_CORE_READ, field offsets on ALU
 * and on LDX through a BTF pointer), two bitfields (BPF_CORE_READ_BITFIELD_PROBED:
 * byte offset, byte size, lshift, rshift, signed), field/type/enum existence,
 * enum values, type size, type ids and type matches.  Flavored types
 * (name___flavor) that do not exist in the kernel give 0 for the exists kinds;
 * reads of them sit behind an exists check, so their poisoned instructions are
 * dead code.  A .text subprogram carries relocations too (patched in each copy).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

/* flavors: the essential name is task_struct, but the field is not in the kernel */
struct task_struct___nope {
	int no_such_field;
} __attribute__((preserve_access_index));

/* a subset of the kernel's task_struct with the same member types: matches */
struct task_struct___sub {
	pid_t pid;
	pid_t tgid;
} __attribute__((preserve_access_index));

/* same names, a wrong member type: exists, but does not match */
struct task_struct___mismatch {
	pid_t pid;
	long tgid;
} __attribute__((preserve_access_index));

struct no_such_type___x {
	int a;
};

enum bpf_map_type___new {
	BPF_MAP_TYPE_RINGBUF___new = 1,		/* the kernel's value is used, not this one */
	BPF_MAP_TYPE_NO_SUCH___new = 2,
};

/* .bss: what the program read */
__u32 runs;
__s32 pid, tgid, ppid, tgid_sub;
__u32 uid;
char comm[16];
__u64 reset_on_fork, child_subreaper;
__u32 btf_pid;				/* LDX through bpf_get_current_task_btf() */
__u32 has_real_parent, has_no_such_field, nope_read;
__u32 has_task_struct, has_no_such_type, matches_sub, matches_mismatch, matches_task;
__u64 task_size, cred_size;
__u64 task_type_id, task_local_id;
__u64 ringbuf_value, ringbuf_value_flavored, hash_value;
__u32 has_ringbuf, has_no_such_enumval, no_such_enumval_value;
__u32 pid_offset, pid_size, pid_signed, comm_size, comm2_offset, uid_signed;

/* a subprogram with its own relocations: copied (already patched) into the program */
static __noinline int parent_tgid(struct task_struct *t)
{
	return BPF_CORE_READ(t, real_parent, tgid);
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int core_getpid(void *ctx)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	struct task_struct *bt;
	struct signal_struct *sig;

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	runs++;

	pid = BPF_CORE_READ(t, pid);
	tgid = BPF_CORE_READ(t, tgid);
	ppid = parent_tgid(t);
	tgid_sub = BPF_CORE_READ((struct task_struct___sub *)t, tgid);
	uid = BPF_CORE_READ(t, cred, uid.val);
	BPF_CORE_READ_STR_INTO(&comm, t, comm);

	/* bitfields: unsigned int sched_reset_on_fork:1 and signal->is_child_subreaper:1 */
	reset_on_fork = BPF_CORE_READ_BITFIELD_PROBED(t, sched_reset_on_fork);
	sig = BPF_CORE_READ(t, signal);
	child_subreaper = BPF_CORE_READ_BITFIELD_PROBED(sig, is_child_subreaper);

	/* a trusted BTF pointer: direct loads, relocated in LDX's offset */
	bt = bpf_get_current_task_btf();
	btf_pid = bt->pid;

	/* field existence; the read of a field that does not exist is dead code */
	has_real_parent = bpf_core_field_exists(t->real_parent);
	has_no_such_field = bpf_core_field_exists(((struct task_struct___nope *)t)->no_such_field);
	if (bpf_core_field_exists(((struct task_struct___nope *)t)->no_such_field))
		nope_read = BPF_CORE_READ((struct task_struct___nope *)t, no_such_field);
	else
		nope_read = 7;

	/* types */
	has_task_struct = bpf_core_type_exists(struct task_struct);
	has_no_such_type = bpf_core_type_exists(struct no_such_type___x);
	matches_task = bpf_core_type_matches(struct task_struct);
	matches_sub = bpf_core_type_matches(struct task_struct___sub);
	matches_mismatch = bpf_core_type_matches(struct task_struct___mismatch);
	task_size = bpf_core_type_size(struct task_struct);
	cred_size = bpf_core_type_size(struct cred);
	task_type_id = bpf_core_type_id_kernel(struct task_struct);
	task_local_id = bpf_core_type_id_local(struct task_struct);

	/* enums: values are the kernel's, looked up by (essential) enumerator name */
	ringbuf_value = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_RINGBUF);
	ringbuf_value_flavored = bpf_core_enum_value(enum bpf_map_type___new, BPF_MAP_TYPE_RINGBUF___new);
	hash_value = bpf_core_enum_value(enum bpf_map_type, BPF_MAP_TYPE_HASH);
	has_ringbuf = bpf_core_enum_value_exists(enum bpf_map_type___new, BPF_MAP_TYPE_RINGBUF___new);
	has_no_such_enumval = bpf_core_enum_value_exists(enum bpf_map_type___new, BPF_MAP_TYPE_NO_SUCH___new);
	if (bpf_core_enum_value_exists(enum bpf_map_type___new, BPF_MAP_TYPE_NO_SUCH___new))
		no_such_enumval_value = bpf_core_enum_value(enum bpf_map_type___new, BPF_MAP_TYPE_NO_SUCH___new);
	else
		no_such_enumval_value = 99;

	/* field facts */
	pid_offset = bpf_core_field_offset(t->pid);
	pid_size = bpf_core_field_size(t->pid);
	pid_signed = __builtin_preserve_field_info(t->pid, BPF_FIELD_SIGNED);
	uid_signed = __builtin_preserve_field_info(t->cred->uid.val, BPF_FIELD_SIGNED);
	comm_size = bpf_core_field_size(t->comm);
	comm2_offset = bpf_core_field_offset(t->comm[2]);
	return 0;
}

/* not attached by the tests: the same subprogram in a second program (a second copy to patch) */
SEC("raw_tp/sys_enter")
int core_sys_enter(void *ctx)
{
	struct task_struct *t = (void *)bpf_get_current_task();

	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	return parent_tgid(t) + BPF_CORE_READ(t, tgid);
}
