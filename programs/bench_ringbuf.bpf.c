// SPDX-License-Identifier: GPL-2.0
/* Ring buffer benchmark fixture (tools/bench_ringbuf.py): `produce` fills the
 * kernel -> user ring `rb` with fixed-size records, `drain` empties the
 * user -> kernel ring `urb`. Both are SEC("syscall") programs run with
 * BPF_PROG_TEST_RUN, so the BPF side stays out of the consumer's and the
 * producer's timing. Every consumer (pybpf, libbpf's C loop, Python over libbpf)
 * reads the same maps of the same object.
 *
 * `hold` serves the tests (tests/test_ringbuf_batch.py): it keeps a record
 * reserved (BUSY) at the head of `rb`, commits records after it, and waits
 * until user space sets `release` before committing the first.
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
__u32 release;			/* hold: set by user space to let the BUSY record go */
__u32 holding;			/* hold: 1 while its first record is reserved, not committed */
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

/* ---- hold ------------------------------------------------------------- */

struct hold_args {		/* 16 bytes */
	__u64 start_seq;	/* seq of the held record; the 3 after it follow */
	__u64 max_ns;		/* give up waiting for `release` after this long */
};

static long hold_wait(__u32 i, void *data)
{
	__u64 *deadline = data;

	return *(volatile __u32 *)&release || bpf_ktime_get_ns() > *deadline;
}

static __always_inline int commit_one(__u64 seq)
{
	struct bench_event *e = bpf_ringbuf_reserve(&rb, sizeof(*e), 0);

	if (!e)
		return 1;
	e->seq = seq;
	e->cpu = 0;
	e->flags = 0;
	e->value = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Returns 0 once the held record is committed (1 if `release` came in time,
 * see `holding`), or -1 when the ring is full.
 */
SEC("syscall")
int hold(struct hold_args *args)
{
	struct bench_event *held;
	__u64 deadline = bpf_ktime_get_ns() + args->max_ns;
	__u64 seq = args->start_seq;
	int i, failed = 0;

	held = bpf_ringbuf_reserve(&rb, sizeof(*held), 0);
	if (!held)
		return -1;
	held->seq = seq;
	held->cpu = 0;
	held->flags = 1;
	held->value = 0;
	failed |= commit_one(seq + 1);
	failed |= commit_one(seq + 2);
	failed |= commit_one(seq + 3);
	holding = 1;
	/* bpf_loop runs at most 8M iterations a call: call it again until released */
	for (i = 0; i < 16 && !*(volatile __u32 *)&release && bpf_ktime_get_ns() <= deadline; i++)
		bpf_loop(1 << 23, hold_wait, &deadline, 0);
	i = *(volatile __u32 *)&release;
	holding = 0;
	bpf_ringbuf_submit(held, 0);
	return failed ? -1 : i;
}
