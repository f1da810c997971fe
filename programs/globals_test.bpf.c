// SPDX-License-Identifier: GPL-2.0
/* Global variables in every data section: .data, .rodata and .bss each become a
 * one-entry ARRAY map that the loader fills from the section image.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* .data */
int data_counter = 7;

struct data_struct {		/* 16 bytes */
	__u32 x;
	__u16 y;
	__u8 z[2];
	__u64 w;
};

struct data_struct data_struct = {
	.x = 1,
	.y = 2,
	.z = { 3, 4 },
	.w = 0x1122334455667788ULL,
};

/* .rodata: const volatile so clang reads them at run time instead of folding the
 * initial value in; the loader may rewrite them before load (then they are frozen).
 */
const volatile __u32 rodata_param = 42;
const volatile char rodata_name[16] = "pybpf";

/* .bss */
__u64 bss_result;
__u32 bss_seen_param;

/* Returns data_counter * 1000 + rodata_param (before the increment). */
SEC("syscall")
int read_globals(void *ctx)
{
	bss_seen_param = rodata_param;
	bss_result = data_counter * 1000 + rodata_param;
	data_counter++;
	return bss_result;
}
