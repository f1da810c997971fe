// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The libbpf side of tools/bench_ringbuf.py: libbpf's own C loops over the maps
 * pybpf benchmarks, so both read and write the same rings of the same object.
 * Built at benchmark time against Debian's libbpf-dev (-lbpf) into a shared
 * library that the benchmark calls once per measurement through ctypes (one
 * call per million records: its cost does not show). Never committed built.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <bpf/libbpf.h>

/* CPU time of this thread, like the Python side's time.thread_time(): other
 * processes on a loaded machine do not count.
 */
static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A trivial callback, as in the Python runs: count the record. */
static int count_record(void *ctx, void *data, size_t size)
{
	(void)data;
	(void)size;
	(*(long *)ctx)++;
	return 0;
}

/* Consumes every committed record of the RINGBUF map `map_fd` with
 * ring_buffer__consume(); returns the number of records (or -errno) and the
 * time the consume took in *ns (the mapping is set up before the clock starts).
 */
long bench_consume(int map_fd, long long *ns)
{
	struct ring_buffer *rb;
	long records = 0;
	long long t0;
	int err;

	rb = ring_buffer__new(map_fd, count_record, &records, NULL);
	if (!rb)
		return -errno;
	t0 = now_ns();
	err = ring_buffer__consume(rb);
	*ns = now_ns() - t0;
	ring_buffer__free(rb);
	return err < 0 ? err : records;
}

/* Writes `count` samples of `size` bytes into the USER_RINGBUF map `map_fd`,
 * each with user_ring_buffer__reserve(), a memcpy and user_ring_buffer__submit();
 * returns how many fit (or -errno) and the time in *ns.
 */
long bench_produce(int map_fd, long count, int size, long long *ns)
{
	struct user_ring_buffer *urb;
	unsigned char payload[256];
	long i;
	long long t0;

	if (size < 0 || size > (int)sizeof(payload))
		return -EINVAL;
	memset(payload, 0x5a, sizeof(payload));
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
