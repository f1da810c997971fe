// SPDX-License-Identifier: GPL-2.0
/* Ring buffer test fixture: `produce` writes numbered records into the kernel ->
 * user ring `rb`; `drain` consumes the user -> kernel ring `urb` and can echo each
 * sample back into `rb`. Both are SEC("syscall") programs driven by
 * BPF_PROG_TEST_RUN with a context struct; results also land in .bss globals.
 *
 * Record format written by `produce` (size bytes in total):
 *   size >= 4: u32 seq (little-endian) at offset 0, then fill[0 .. size-4) at offset 4
 *   size 1..3: the low `size` bytes of seq; size 0: an empty record
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#define FILL_SIZE	4096
#define MAX_RECORD	(4 + FILL_SIZE)	/* largest record produce/echo handle */
#define MAX_COUNT	(1 << 20)	/* produce: records per call */
#define SEEN_SLOTS	256
#define EINVAL		22

/* 4 pages each: small on purpose, so tests wrap around many times. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16384);
} rb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_USER_RINGBUF);
	__uint(max_entries, 16384);
} urb SEC(".maps");

/* .bss. Non-static globals are never dropped by clang, so all stay visible. */
__u8 fill[FILL_SIZE];		/* payload source for produce, written by tests */
__u64 produced;			/* records submitted by produce, over all calls */
__u64 discarded;		/* records discarded by produce (discard_every) */
__u64 reserve_failures;		/* produce calls stopped by a failed reserve */
__s64 last_drain_ret;		/* bpf_user_ringbuf_drain's return, last drain call */
__u64 drained_count;		/* user samples seen by drain_cb, over all calls */
__u64 drained_bytes;		/* sum of their sizes */
__u32 last_size;		/* size of the last sample */
__u32 seen[SEEN_SLOTS];		/* sample n (0-based) -> first min(size, 4) bytes, LE */
__u64 echo_failures;		/* echo requested but not done (too big / rb full) */
__u8 echo_buf[MAX_RECORD];	/* scratch for echo (a drain never runs concurrently) */

/* ---- produce ---------------------------------------------------------- */

struct produce_args {		/* 24 bytes */
	__u32 count;		/* records to write, at most MAX_COUNT */
	__u32 size;		/* bytes per record, 0 .. MAX_RECORD */
	__u32 discard_every;	/* discard record i when (i+1) % discard_every == 0; 0 = never */
	__u32 start_seq;	/* seq of the first record */
	__u64 flags;		/* submit/discard flags: BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP */
};

struct produce_ctx {
	__u32 size;
	__u32 discard_every;
	__u32 start_seq;
	__u64 flags;
	int submitted;
};

static long produce_one(__u32 i, void *data)
{
	struct produce_ctx *c = data;
	struct bpf_dynptr ptr;
	__u32 size = c->size;
	__u32 seq = c->start_seq + i;

	if (size > MAX_RECORD)		/* checked by produce; bounds size for the verifier */
		return 1;
	if (bpf_ringbuf_reserve_dynptr(&rb, size, 0, &ptr)) {
		bpf_ringbuf_discard_dynptr(&ptr, 0);	/* required even when reserve failed */
		__sync_fetch_and_add(&reserve_failures, 1);
		return 1;			/* stop the loop */
	}
	if (size >= 4) {
		bpf_dynptr_write(&ptr, 0, &seq, 4, 0);
		bpf_dynptr_write(&ptr, 4, fill, size - 4, 0);
	} else {
		bpf_dynptr_write(&ptr, 0, &seq, size, 0);
	}
	if (c->discard_every && (i + 1) % c->discard_every == 0) {
		bpf_ringbuf_discard_dynptr(&ptr, c->flags);
		__sync_fetch_and_add(&discarded, 1);
	} else {
		bpf_ringbuf_submit_dynptr(&ptr, c->flags);
		__sync_fetch_and_add(&produced, 1);
		c->submitted++;
	}
	return 0;
}

/* Returns the number of records submitted, or -EINVAL for count/size out of range. */
SEC("syscall")
int produce(struct produce_args *args)
{
	struct produce_ctx c = {
		.size = args->size,
		.discard_every = args->discard_every,
		.start_seq = args->start_seq,
		.flags = args->flags,
	};
	__u64 nr = args->count;

	if (nr > MAX_COUNT || c.size > MAX_RECORD)
		return -EINVAL;
	/* bpf_loop's nr_loops is u32 but the inlined helper compares all 64 bits
	 * (loader.md): zero the upper half, then hide nr behind an empty asm so the
	 * register passed is that masked value (clang would otherwise drop the mask
	 * as redundant with the u32 argument conversion).
	 */
	nr &= 0xffffffff;
	barrier_var(nr);
	bpf_loop(nr, produce_one, &c, 0);
	return c.submitted;
}

/* ---- drain ------------------------------------------------------------ */

struct drain_args {		/* 16 bytes (4 bytes tail padding) */
	__u64 flags;		/* bpf_user_ringbuf_drain flags: BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP */
	__u32 echo;		/* non-zero: copy each sample into rb as one record */
};

struct drain_ctx {
	__u32 echo;
};

/* Size of a dynptr with helpers only. bpf_dynptr_size() is a kfunc (6.4+); this
 * keeps the object free of kfunc calls. Binary lifting on "a 1-byte read at
 * offset k succeeds iff k < size"; user ring samples are below 16 MiB (2^24).
 * Few live variables on purpose: the verifier cannot spill a dynptr pointer to
 * the stack and read it back ("R3 type=scalar expected=fp, dynptr_ptr").
 */
static __u32 dynptr_size(struct bpf_dynptr *p)
{
	__u32 lo = 0, step;	/* lo <= size < lo + 2 * step */
	__u8 byte;

	/* Branch-free: a read that fails (negative return) adds 0, one that
	 * succeeds adds step. With an if, lo stays a constant on every path
	 * and newer verifiers (6.18 builds) walk all 2^24 of them, stopping
	 * at 1M insns (E2BIG); here it is one path of unknown scalars. The
	 * empty asm keeps clang from turning the mask back into a branch.
	 */
	for (step = 1 << 23; step; step >>= 1) {
		__u64 ok = (__u64)bpf_dynptr_read(&byte, 1, p, lo + step - 1, 0) >> 63;

		barrier_var(ok);
		lo += step & (__u32)(ok - 1);
	}
	return lo;
}

/* Called by bpf_user_ringbuf_drain once per committed sample (static: callbacks
 * need static linkage).
 */
static long drain_cb(struct bpf_dynptr *dynptr, void *data)
{
	struct drain_ctx *c = data;
	__u32 n = drained_count % SEEN_SLOTS;
	__u32 first = 0;
	__u32 size;

	/* Round trip through the global: the verifier then sees an unknown size
	 * instead of tracing it back through all 2^24 paths of the search.
	 */
	last_size = dynptr_size(dynptr);
	size = *(volatile __u32 *)&last_size;

	bpf_dynptr_read(&first, size < 4 ? size : 4, dynptr, 0, 0);
	seen[n] = first;
	drained_count++;
	drained_bytes += size;

	if (c->echo) {
		if (size > MAX_RECORD ||
		    bpf_dynptr_read(echo_buf, size, dynptr, 0, 0) ||
		    bpf_ringbuf_output(&rb, echo_buf, size, 0))
			echo_failures++;
	}
	return 0;
}

/* Returns bpf_user_ringbuf_drain's result: samples drained, or a negative errno. */
SEC("syscall")
int drain(struct drain_args *args)
{
	struct drain_ctx c = { .echo = args->echo };
	long ret;

	ret = bpf_user_ringbuf_drain(&urb, drain_cb, &c, args->flags);
	last_drain_ret = ret;
	return (int)ret;
}
