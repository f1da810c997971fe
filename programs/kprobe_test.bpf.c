// SPDX-License-Identifier: GPL-2.0
/* A kprobe program: loads on kernels without CONFIG_KPROBES too, but cannot be
 * attached there (the loader should report "not supported").
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("kprobe/do_nanosleep")
int on_nanosleep(void *ctx)
{
	return 0;
}
