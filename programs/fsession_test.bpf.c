// SPDX-License-Identifier: GPL-2.0
/* fsession (libbpf's SEC("fsession/FUNC"), BPF_TRACE_FSESSION): one tracing
 * program that runs at both entry and exit of a kernel function.  Kernels whose
 * enum bpf_attach_type has no BPF_TRACE_FSESSION do not know it; kernels
 * without BPF trampolines refuse it like fentry.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

__u64 calls;

SEC("fsession/do_getpgid")
int on_getpgid(void *ctx)
{
	__sync_fetch_and_add(&calls, 1);
	return 0;
}
