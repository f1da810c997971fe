// SPDX-License-Identifier: GPL-2.0
/* USDT probes read through libbpf's usdt.bpf.h: each hit of a probe sends one event to
 * the ring buffer with what bpf_usdt_arg_cnt(), bpf_usdt_arg() (every argument, with its
 * return code) and bpf_usdt_cookie() say, and the string that argument str_arg points to
 * (bpf_probe_read_user_str).
 *
 * SEC("usdt") names no probe: attach it with prog.attach_usdt(binary, provider, name).
 * SEC("usdt/pybpf_cli:tick") names the probe but no binary: the CLI's --pid PID gives
 * the binary (/proc/PID/exe) and the process.
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_ARGS 12
#define STR_LEN 32

/* which argument is a pointer to a C string (-1: none) */
const volatile int str_arg = -1;

struct usdt_event {
	__u32 pid;
	__s32 arg_cnt;
	__u64 cookie;
	__s64 args[MAX_ARGS];
	__s32 rets[MAX_ARGS];
	__s32 str_ret;
	char str[STR_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct usdt_event")));

struct usdt_event *unused_event __attribute__((unused));	/* keeps the type in BTF */

__u64 hits;

static __always_inline int record(struct pt_regs *ctx)
{
	struct usdt_event *e;
	long v;
	int i;

	__sync_fetch_and_add(&hits, 1);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->arg_cnt = bpf_usdt_arg_cnt(ctx);
	e->cookie = bpf_usdt_cookie(ctx);
	for (i = 0; i < MAX_ARGS; i++) {
		e->rets[i] = bpf_usdt_arg(ctx, i, &v);
		e->args[i] = v;
	}
	e->str_ret = -1;
	e->str[0] = 0;
	if (str_arg >= 0 && str_arg < MAX_ARGS && bpf_usdt_arg(ctx, str_arg, &v) == 0)
		e->str_ret = bpf_probe_read_user_str(e->str, sizeof(e->str), (void *)v);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("usdt")
int on_probe(struct pt_regs *ctx)
{
	return record(ctx);
}

SEC("usdt/pybpf_cli:tick")
int BPF_USDT(on_tick, long n, long neg)
{
	struct usdt_event *e;

	__sync_fetch_and_add(&hits, 1);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->arg_cnt = bpf_usdt_arg_cnt(ctx);
	e->cookie = bpf_usdt_cookie(ctx);
	e->args[0] = n;
	e->args[1] = neg;
	e->str_ret = -1;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
