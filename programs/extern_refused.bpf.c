// SPDX-License-Identifier: GPL-2.0
/* Externs a kernel may refuse, each in a program that is not loaded by default
 * ("?"), next to one that loads anywhere.
 *
 * percpu_read: typed ksyms, per-CPU kernel variables from vmlinux BTF, loaded
 * with ld_imm64 BPF_PSEUDO_BTF_ID (imm = the VAR's vmlinux BTF id) and used
 * through bpf_this_cpu_ptr()/bpf_per_cpu_ptr(). The kernel turns the VAR into
 * an address through kallsyms, which has no data symbols without
 * CONFIG_KALLSYMS_ALL: such a kernel refuses the program with ENOENT ("ldimm64
 * failed to find the address for kernel symbol"); libbpf fails the same way.
 *
 * unguarded_kfunc: calls a weak kfunc no kernel has without bpf_ksym_exists().
 * The loader turns the call into an invalid helper call (libbpf's "poison"),
 * which the verifier refuses because it is reachable.
 *
 * percpu_missing: a weak typed ksym no kernel has: its address is 0, so the
 * code that would use it is dead and the verifier drops it; it loads anywhere.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* the kernel's struct rq: a typed ksym's type is checked against the kernel's by
 * kind, not by name or members (libbpf's rule), and a small struct keeps clang's
 * output reproducible (vmlinux.h's struct rq drags in forward declarations that
 * clang orders by pointer hash) */
struct pybpf_rq { int cpu; };
extern const struct pybpf_rq runqueues __ksym;
extern const int cpu_number __ksym;
extern const int pybpf_no_such_percpu __ksym __weak;
extern int bpf_pybpf_no_such_kfunc(int x) __ksym __weak;

struct percpu_out {
	__u32 cpu;			/* bpf_get_smp_processor_id() */
	__s32 this_cpu_number;		/* *bpf_this_cpu_ptr(&cpu_number) */
	__s32 cpu0_number;		/* *bpf_per_cpu_ptr(&cpu_number, 0) */
	__u32 rq_this_is_cpu_rq;	/* bpf_this_cpu_ptr(&runqueues) == bpf_per_cpu_ptr(&runqueues, cpu) */
	__s32 missing_value;		/* percpu_missing: -1 when pybpf_no_such_percpu is missing */
};

struct percpu_out percpu;

SEC("syscall")
int percpu_missing(void *ctx)
{
	percpu.missing_value = -1;
	if (&pybpf_no_such_percpu)
		percpu.missing_value = *(const int *)bpf_this_cpu_ptr(&pybpf_no_such_percpu);
	return 0;
}

SEC("?syscall")
int percpu_read(void *ctx)
{
	const int *num;
	__u32 cpu = bpf_get_smp_processor_id();

	percpu.cpu = cpu;
	num = bpf_this_cpu_ptr(&cpu_number);
	percpu.this_cpu_number = *num;
	num = bpf_per_cpu_ptr(&cpu_number, 0);
	percpu.cpu0_number = num ? *num : -1;
	percpu.rq_this_is_cpu_rq = bpf_this_cpu_ptr(&runqueues) == bpf_per_cpu_ptr(&runqueues, cpu);
	return 0;
}

SEC("?syscall")
int unguarded_kfunc(void *ctx)
{
	return bpf_pybpf_no_such_kfunc(1);
}
