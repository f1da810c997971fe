// SPDX-License-Identifier: GPL-2.0
/* Kernel side of the user ring buffer tutorial (eunomia bpf-developer-tutorial 35,
 * after the kernel selftest by Meta Platforms): every kill(2) exit drains the
 * user -> kernel ring and answers each sample with a `struct event` in the
 * kernel -> user ring.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "user_ringbuf.h"

char LICENSE[] SEC("license") = "GPL";

/* The record type tags tell user space (pybpf) how to decode each ring's records;
 * other loaders ignore BTF decl tags. */
struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, 256 * 1024);
} user_ringbuf SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct user_sample")));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} kernel_ringbuf SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct event")));

/* .bss: number of user samples answered */
int read = 0;

/* Unused typed globals: BTF only describes types reachable from functions and
 * globals, and these records only appear as locals. The pointers (in .bss, after
 * `read`) keep `struct event` and `struct user_sample` in the object's BTF so tools
 * can decode ring records by name. Non-static, so -O2 cannot drop them.
 */
struct event *unused_event __attribute__((unused));
struct user_sample *unused_user_sample __attribute__((unused));

/* Called by bpf_user_ringbuf_drain once per committed user sample (static: the
 * verifier requires callbacks to have static linkage).
 */
static long do_nothing_cb(struct bpf_dynptr *dynptr, void *context)
{
	struct event *e;
	pid_t pid;

	pid = bpf_get_current_pid_tgid() >> 32;	/* tgid */

	e = bpf_ringbuf_reserve(&kernel_ringbuf, sizeof(*e), 0);
	if (!e)
		return 0;

	e->pid = pid;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));

	bpf_ringbuf_submit(e, 0);
	__sync_fetch_and_add(&read, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_kill")
int kill_exit(struct trace_event_raw_sys_exit *ctx)
{
	bpf_user_ringbuf_drain(&user_ringbuf, do_nothing_cb, NULL, 0);
	return 0;
}
