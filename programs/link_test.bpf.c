// SPDX-License-Identifier: GPL-2.0
/* Linking corner cases: a static subprogram called several times and from a
 * nested subprogram (appended once), static globals (relocated through the
 * section symbol, the offset in the instruction's imm) and a program that is
 * not loaded automatically (SEC("?syscall")).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct link_args {		/* 16 bytes */
	__u32 a;		/* in */
	__u32 b;		/* in */
	__u64 out;		/* out: a*a + b*b + bias*bias */
};

/* .data: static, so clang relocates them against the .data section symbol */
static volatile __u32 bias = 5;
static volatile __u32 runs = 100;

/* .bss, static */
static volatile __u64 last_out;

static __noinline __u32 sq(__u32 x)
{
	return x * x;
}

/* Nested: calls sq twice more. */
static __noinline __u32 sum_sq(__u32 a, __u32 b)
{
	return sq(a) + sq(b);
}

/* out = a*a + b*b + bias*bias; returns the number of runs so far, counting from 101. */
SEC("syscall")
int link_main(struct link_args *args)
{
	__u64 out = sum_sq(args->a, args->b) + sq(bias);

	args->out = out;
	last_out = out;
	runs++;
	return runs;
}

/* Not loaded unless asked for (the leading '?'). Returns 4. */
SEC("?syscall")
int not_autoloaded(void *ctx)
{
	return sq(2);
}
