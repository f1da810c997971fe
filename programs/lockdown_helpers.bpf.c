// SPDX-License-Identifier: GPL-2.0
/* Helpers the kernel withholds under lockdown (kernel/trace/bpf_trace.c,
 * kernel/bpf/helpers.c):
 *
 * - bpf_probe_write_user: LOCKDOWN_BPF_WRITE_USER, refused from lockdown=integrity up;
 * - bpf_probe_read_kernel: LOCKDOWN_BPF_READ_KERNEL, refused under lockdown=confidentiality.
 *
 * Each program is alone in its section; read_kernel is marked '?' (not loaded by
 * default) so that tests load one program at a time.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* .rodata: only this process (tgid): bpf_probe_write_user writes into the
 * memory of whichever process made the call */
const volatile __u32 target_tgid = 0;

/* .bss: set from user space; 0 means "do nothing" */
__u64 user_addr;
__u64 kernel_addr;
__u64 kernel_word;

/* Writes 8 bytes at user address user_addr of process target_tgid on its getpid(). */
SEC("tracepoint/syscalls/sys_enter_getpid")
int write_user(void *ctx)
{
	__u64 value = 0x70796270665f6f6b;	/* "ko_fpbyp" */

	if (user_addr && target_tgid && (bpf_get_current_pid_tgid() >> 32) == target_tgid)
		bpf_probe_write_user((void *)user_addr, &value, sizeof(value));
	return 0;
}

/* Reads 8 bytes of kernel memory at kernel_addr on getpid(). */
SEC("?tracepoint/syscalls/sys_enter_getpid")
int read_kernel(void *ctx)
{
	if (kernel_addr)
		bpf_probe_read_kernel(&kernel_word, sizeof(kernel_word), (void *)kernel_addr);
	return 0;
}
