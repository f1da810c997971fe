// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The libbpf side of tools/bench_ringbuf.py: libbpf's own C loops over the maps
 * pybpf benchmarks, so both read and write the same rings of the same object.
 * Built at benchmark time against Debian's libbpf-dev (-lbpf) into a shared
 * library that the benchmark calls once per measurement through ctypes (one
 * call per million records: its cost does not show). Never committed built.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <bpf/libbpf.h>

/* Wall time, as the Python rows (time.perf_counter) and the anchors use. */
static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

struct tally {
	long records;
	uint64_t sum;
};

/* The task of every consumer row: sum the low 32 bits of each record's first
 * u64 (struct bench_event.seq), so that every record is read. */
static int sum_record(void *ctx, void *data, size_t size)
{
	struct tally *t = ctx;
	uint64_t first;

	(void)size;
	memcpy(&first, data, sizeof(first));
	t->sum += (uint32_t)first;
	t->records++;
	return 0;
}

/* Consumes every committed record of the RINGBUF map `map_fd` with
 * ring_buffer__consume(), as libbpf's documentation shows it; returns the
 * number of records (or -errno), their sum in *sum and the time the consume
 * took in *ns (ring_buffer__new, which maps the ring, is before the clock,
 * as the Python consumers are set up before theirs).
 */
long bench_consume(int map_fd, long long *ns, unsigned long long *sum)
{
	struct ring_buffer *rb;
	struct tally t = {0, 0};
	long long t0;
	int err;

	rb = ring_buffer__new(map_fd, sum_record, &t, NULL);
	if (!rb)
		return -errno;
	t0 = now_ns();
	err = ring_buffer__consume(rb);
	*ns = now_ns() - t0;
	ring_buffer__free(rb);
	*sum = t.sum;
	return err < 0 ? err : t.records;
}

/* Writes `count` samples, each the `size` bytes at `payload`, into the
 * USER_RINGBUF map `map_fd`, each with user_ring_buffer__reserve(), a memcpy
 * and user_ring_buffer__submit(); returns how many fit (or -errno) and the
 * time in *ns (user_ring_buffer__new before the clock).
 */
long bench_produce(int map_fd, long count, const void *payload, int size, long long *ns)
{
	struct user_ring_buffer *urb;
	long i;
	long long t0;

	if (size < 0)
		return -EINVAL;
	urb = user_ring_buffer__new(map_fd, NULL);
	if (!urb)
		return -errno;
	t0 = now_ns();
	for (i = 0; i < count; i++) {
		void *sample = user_ring_buffer__reserve(urb, size);

		if (!sample)
			break;
		memcpy(sample, payload, size);
		user_ring_buffer__submit(urb, sample);
	}
	*ns = now_ns() - t0;
	user_ring_buffer__free(urb);
	return i;
}
