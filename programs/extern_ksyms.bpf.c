// SPDX-License-Identifier: GPL-2.0
/* .ksyms externs: an untyped kernel symbol (its kallsyms address as a
 * constant), kfunc calls (BPF_PSEUDO_KFUNC_CALL), bpf_ksym_exists() on kfuncs
 * (ld_imm64 BPF_PSEUDO_BTF_ID of the FUNC) and weak externs this kernel does not
 * have (0 addresses, bpf_ksym_exists() false, the missing kfunc's call left in
 * dead code), in ksyms_read.

 * Typed ksyms of variables are in extern_percpu.bpf.c.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* libbpf >= 1.2 has this in bpf_helpers.h; the installed 1.1 headers do not */
#ifndef bpf_ksym_exists
#define bpf_ksym_exists(sym) ({								\
	_Static_assert(!__builtin_constant_p(!!sym), #sym " should be marked as __weak");	\
	!!sym;										\
})
#endif

/* untyped ksym: an address from /proc/kallsyms */
extern const void bpf_prog_put __ksym;
/* weak ksyms this kernel does not have */
extern const int pybpf_no_such_var __ksym __weak;
extern const void pybpf_no_such_sym __ksym __weak;

/* kfuncs (vmlinux BTF FUNCs tagged bpf_kfunc). Their prototypes are checked
 * against the kernel's the way libbpf does, by kind and not by name below the
 * top: any struct stands for struct task_struct. A small one keeps the object's
 * BTF small, and its build reproducible (vmlinux.h's task_struct drags in
 * forward declarations that clang orders by pointer hash).
 */
struct task { int pid; };
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern struct task *bpf_task_from_pid(s32 pid) __ksym;
extern void bpf_task_release(struct task *p) __ksym;
extern struct task *bpf_task_acquire(struct task *p) __ksym __weak;
/* a kfunc no kernel has: weak, only called behind bpf_ksym_exists() */
extern int bpf_pybpf_no_such_kfunc(int x) __ksym __weak;

struct ksyms_args {
	__s32 pid;
};

struct ksyms_out {
	__u64 prog_put_addr;		/* untyped ksym */
	__u64 no_such_var_addr;		/* weak missing typed ksym: 0 */
	__u64 no_such_sym_addr;		/* weak missing untyped ksym: 0 */
	__u32 task_found;		/* bpf_task_from_pid(args->pid) != NULL */
	__u32 acquire_exists;		/* bpf_ksym_exists(bpf_task_acquire) */
	__u32 nope_exists;		/* bpf_ksym_exists(bpf_pybpf_no_such_kfunc) */
	__s32 nope_ret;			/* what the missing kfunc would have returned, else -1 */
};

struct ksyms_out out;

SEC("syscall")
int ksyms_read(struct ksyms_args *args)
{
	struct task *task;

	out.prog_put_addr = (__u64)&bpf_prog_put;
	out.no_such_var_addr = (__u64)&pybpf_no_such_var;
	out.no_such_sym_addr = (__u64)&pybpf_no_such_sym;

	bpf_rcu_read_lock();
	task = bpf_task_from_pid(args->pid);
	if (task) {
		out.task_found = 1;
		bpf_task_release(task);
	}
	bpf_rcu_read_unlock();

	out.acquire_exists = bpf_ksym_exists(bpf_task_acquire);
	out.nope_exists = bpf_ksym_exists(bpf_pybpf_no_such_kfunc);
	out.nope_ret = -1;
	if (bpf_ksym_exists(bpf_pybpf_no_such_kfunc))
		out.nope_ret = bpf_pybpf_no_such_kfunc(1);
	return 0;
}
