// SPDX-License-Identifier: GPL-2.0
/* .kconfig externs: libbpf's virtual LINUX_* values and CONFIG_* options of the
 * running kernel, typed by the extern's declaration (bool, tristate, char, int,
 * char array for strings). The loader puts them in a read-only "<obj>.kconfig"
 * map; kconfig_read() copies them to .bss for the test to compare with uname
 * and /proc/config.gz.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

/* virtual externs filled in by the loader */
extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;
extern bool LINUX_HAS_BPF_COOKIE __kconfig;
extern int LINUX_PYBPF_UNKNOWN __kconfig __weak;	/* unknown LINUX_ extern, weak: 0 */

/* CONFIG_* options, typed as the program wants them */
extern bool CONFIG_BPF_SYSCALL __kconfig;			/* y -> true */
extern int CONFIG_HZ __kconfig;				/* 250 -> 250 */
extern enum libbpf_tristate CONFIG_BPF_JIT __kconfig;	/* y -> TRI_YES */
extern char CONFIG_BPF_JIT_CHAR __kconfig __weak;		/* missing: 0 */
extern char CONFIG_LOCALVERSION[24] __kconfig __weak;	/* string, quotes stripped */
extern bool CONFIG_KPROBES __kconfig __weak;		/* "is not set": weak -> false */
extern unsigned long long CONFIG_PYBPF_NOPE __kconfig __weak;	/* missing weak: 0 */

struct kconfig_out {
	__u32 kernel_version;
	__u32 has_syscall_wrapper;
	__u32 has_bpf_cookie;
	__u32 unknown_linux;
	__u32 bpf_syscall;
	__s32 hz;
	__u32 bpf_jit;
	__u32 bpf_jit_char;
	__u32 kprobes;
	__u32 pad;
	__u64 nope;
	char localversion[24];
};

struct kconfig_out out;

SEC("syscall")
int kconfig_read(void *ctx)
{
	out.kernel_version = LINUX_KERNEL_VERSION;
	out.has_syscall_wrapper = LINUX_HAS_SYSCALL_WRAPPER;
	out.has_bpf_cookie = LINUX_HAS_BPF_COOKIE;
	out.unknown_linux = LINUX_PYBPF_UNKNOWN;
	out.bpf_syscall = CONFIG_BPF_SYSCALL;
	out.hz = CONFIG_HZ;
	out.bpf_jit = CONFIG_BPF_JIT;
	out.bpf_jit_char = CONFIG_BPF_JIT_CHAR;
	out.kprobes = CONFIG_KPROBES;
	out.nope = CONFIG_PYBPF_NOPE;
	__builtin_memcpy(out.localversion, CONFIG_LOCALVERSION, sizeof(out.localversion));
	/* CONFIG_HZ read through a subprogram-free branch: the verifier sees a read-only value */
	return CONFIG_BPF_SYSCALL ? CONFIG_HZ : -1;
}
