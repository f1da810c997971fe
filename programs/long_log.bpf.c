// SPDX-License-Identifier: GPL-2.0
/* A small program the verifier walks for a long time: a bounded loop of 20000
 * iterations, each a new state (i grows), then a load through a scalar, which is
 * refused.  Its log at level 1 holds every instruction processed (~140k, some 20 MB), more
 * than 16 MiB: tests check that pybpf cuts the log at 16 MiB (libbpf's limit),
 * says so, keeps the log's end (the reason), and stays within bounded memory.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("socket")
int long_log(struct __sk_buff *skb)
{
	__u32 sum = 0;

#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < 20000; i++)
		sum += bpf_get_prandom_u32() & i;
	return *(volatile int *)(long)sum;	/* refused: R0 invalid mem access 'scalar' */
}
