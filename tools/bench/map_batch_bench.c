// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The libbpf side of tools/bench_maps.py: libbpf's own calls over the maps pybpf
 * benchmarks (programs/pin_test.o), in tight C loops. Built at benchmark time
 * against Debian's libbpf-dev (-lbpf) into a shared library that the benchmark
 * calls once per measurement through ctypes. Never committed built.
 *
 * Every function returns the wall time (CLOCK_MONOTONIC, ns) of its loop, or a
 * negative errno, and writes how many elements it handled into *done.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <bpf/bpf.h>

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Read the whole map with bpf_map_lookup_batch, `chunk` elements per call, into
 * keys[] (key_size each) and values[] (value_stride each). A hash bucket larger
 * than the room left is refused with ENOSPC: the call is repeated with more room,
 * as the kernel documents. */
long long bench_lookup_batch(int fd, uint32_t chunk, uint32_t capacity, uint32_t key_size,
			     uint32_t value_stride, void *keys, void *values, long *done)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	uint64_t in_batch = 0, out_batch = 0;	/* the cursor: a bucket index or a key */
	int first = 1, err;
	uint32_t total = 0, count, want = chunk;
	long long start = now_ns();

	for (;;) {
		count = want;
		if (count > capacity - total)
			count = capacity - total;
		if (!count)
			break;
		err = bpf_map_lookup_batch(fd, first ? NULL : &in_batch, &out_batch,
					   (char *)keys + (size_t)total * key_size,
					   (char *)values + (size_t)total * value_stride, &count, &opts);
		if (err && errno == ENOSPC && !count) {
			want *= 2;
			continue;
		}
		total += count;
		if (err && errno == ENOENT)
			break;
		if (err)
			return -errno;
		in_batch = out_batch;
		first = 0;
		want = chunk;
	}
	*done = total;
	return now_ns() - start;
}

/* Store n elements with bpf_map_update_batch, `chunk` per call. */
long long bench_update_batch(int fd, uint32_t n, uint32_t chunk, uint32_t key_size, uint32_t value_stride,
			     const void *keys, const void *values, long *done)
{
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	uint32_t total = 0, count;
	long long start = now_ns();

	while (total < n) {
		count = n - total < chunk ? n - total : chunk;
		if (bpf_map_update_batch(fd, (const char *)keys + (size_t)total * key_size,
					 (const char *)values + (size_t)total * value_stride, &count, &opts))
			return -errno;
		total += count;
	}
	*done = total;
	return now_ns() - start;
}

/* One element at a time: bpf_map_get_next_key then bpf_map_lookup_elem, as items() does. */
long long bench_lookup_loop(int fd, uint32_t capacity, uint32_t key_size, uint32_t value_stride,
			    void *keys, void *values, long *done)
{
	uint32_t total = 0;
	char *prev = NULL;
	long long start = now_ns();

	while (total < capacity) {
		char *key = (char *)keys + (size_t)total * key_size;

		if (bpf_map_get_next_key(fd, prev, key)) {
			if (errno == ENOENT)
				break;
			return -errno;
		}
		if (bpf_map_lookup_elem(fd, key, (char *)values + (size_t)total * value_stride)) {
			if (errno == ENOENT)	/* deleted meanwhile */
				continue;
			return -errno;
		}
		prev = key;
		total++;
	}
	*done = total;
	return now_ns() - start;
}

/* One element at a time: bpf_map_update_elem. */
long long bench_update_loop(int fd, uint32_t n, uint32_t key_size, uint32_t value_stride,
			    const void *keys, const void *values, long *done)
{
	uint32_t i;
	long long start = now_ns();

	for (i = 0; i < n; i++)
		if (bpf_map_update_elem(fd, (const char *)keys + (size_t)i * key_size,
					(const char *)values + (size_t)i * value_stride, BPF_ANY))
			return -errno;
	*done = n;
	return now_ns() - start;
}
