// SPDX-License-Identifier: GPL-2.0
/* Perf buffer test fixture: `output` writes one numbered sample into the
 * PERF_EVENT_ARRAY `events` with bpf_perf_event_output(BPF_F_CURRENT_CPU). It is
 * a raw tracepoint program run with BPF_PROG_TEST_RUN (BPF_F_TEST_RUN_ON_CPU
 * picks the CPU, hence the per-CPU ring); its context is the run's u64 args:
 *   args[0] = seq, args[1] = size (8 .. MAX_SIZE - 1).
 * Returns 0, or bpf_perf_event_output's error.
 *
 * Sample format (size bytes): u32 seq, u32 cpu, then buf[8 .. size) as the test
 * left it in the global `buf`.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_SIZE	1024
#define EINVAL		22

/* max_entries 0: the loader sizes it to the number of possible CPUs, as libbpf does */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events SEC(".maps");

/* .bss */
__u8 buf[MAX_SIZE];		/* the sample: bytes 8.. written by tests, 0..8 by output */
__u64 output_failures;		/* bpf_perf_event_output errors (no buffer, ring full) */
__u64 outputs;			/* samples written */

SEC("raw_tp")
int output(__u64 *ctx)
{
	__u32 seq = ctx[0], size = ctx[1];
	__u32 cpu = bpf_get_smp_processor_id();
	long err;

	if (size >= MAX_SIZE || size < 8)
		return -EINVAL;
	__builtin_memcpy(buf, &seq, 4);
	__builtin_memcpy(buf + 4, &cpu, 4);
	err = bpf_perf_event_output(ctx, &events, BPF_F_CURRENT_CPU, buf,
				    size & (MAX_SIZE - 1));	/* bounds it for the verifier */
	if (err)
		output_failures++;
	else
		outputs++;
	return err;
}
