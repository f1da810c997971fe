// SPDX-License-Identifier: GPL-2.0
/* Ring buffer benchmark fixture (tools/bench_ringbuf.py): `produce` fills the
 * kernel -> user ring `rb` with fixed-size records, `drain` empties the
 * user -> kernel ring `urb`. Both are SEC("syscall") programs run with
 * BPF_PROG_TEST_RUN, so the BPF side stays out of the consumer's and the
 * producer's timing. Every consumer (pybpf, libbpf's C loop, Python over libbpf)
 * reads the same maps of the same object.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define RING_SIZE	(64 << 20)	/* 64 MiB each: 2M records of 24 bytes */
#define MAX_COUNT	(1 << 22)	/* produce: records per call */
#define EINVAL		22

/* One record: 24 bytes of payload, 32 in the ring with its header. */
struct bench_event {
	__u64 seq;
	__u32 cpu;
	__u32 flags;
	__u64 value;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RING_SIZE);
} rb SEC(".maps") __attribute__((btf_decl_tag("pybpf:record=struct bench_event")));

struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, RING_SIZE);
} urb SEC(".maps");

/* .bss */
__u64 produced;			/* records submitted by produce, over all calls */
__u64 reserve_failures;		/* produce calls stopped by a full ring */
__u64 drained;			/* samples seen by drain, over all calls */
struct bench_event *unused_event __attribute__((unused));	/* keeps the type in BTF */

struct produce_args {		/* 16 bytes */
	__u32 count;		/* records to write, at most MAX_COUNT */
	__u32 start_seq;	/* seq of the first record */
	__u64 flags;		/* submit flags: BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP */
};

struct produce_ctx {
	__u64 start_seq;
	__u64 flags;
	__u32 cpu;
	int submitted;
};

static long produce_one(__u32 i, void *data)
{
	struct produce_ctx *c = data;
	struct bench_event *e;

	e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&reserve_failures, 1);
		return 1;		/* full: stop the loop */
	}
	e->seq = c->start_seq + i;
	e->cpu = c->cpu;
	e->flags = 0;
	e->value = i * 3;
	bpf_ringbuf_submit(e, c->flags);
	c->submitted++;
	return 0;
}

/* Returns the number of records submitted, or -EINVAL for a count out of range. */
SEC("syscall")
int produce(struct produce_args *args)
{
	struct produce_ctx c = {
		.start_seq = args->start_seq,
		.flags = args->flags,
		.cpu = bpf_get_smp_processor_id(),
	};
	__u64 nr = args->count;

	if (nr > MAX_COUNT)
		return -EINVAL;
	/* bpf_loop compares all 64 bits of nr_loops (see ringbuf_test.bpf.c) */
	nr &= 0xffffffff;
	barrier_var(nr);
	bpf_loop(nr, produce_one, &c, 0);
	produced += c.submitted;
	return c.submitted;
}

static long drain_one(struct bpf_dynptr *dynptr, void *data)
{
	return 0;
}

/* Drains up to 128K samples (the kernel's limit per call); returns how many, or
 * a negative errno.
 */
SEC("syscall")
int drain(void *args)
{
	long ret = bpf_user_ringbuf_drain(&urb, drain_one, NULL, 0);

	if (ret > 0)
		drained += ret;
	return (int)ret;
}
