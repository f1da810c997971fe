/* Memory-ordered loads and stores for the ring buffers' shared pages.
 *
 * Ring buffer positions and record headers are shared with the kernel, which
 * pairs them with smp_store_release()/smp_load_acquire()/xchg(). Python cannot
 * express acquire/release ordering, so pybpf.atomics calls these through ctypes.
 * On x86-64 they compile to plain moves (and an xchg); on arm64 to LDAR/STLR.
 *
 * This is not a Python extension module (nothing imports it, so it has no
 * PyInit function): setuptools only builds it as a shared library next to
 * pybpf/atomics.py, which loads it with ctypes. The ring buffer protocol itself
 * (positions, headers) stays in Python; keep this file tiny. The one exception
 * is pybpf_ringbuf_scan: walking record headers in Python costs ~400 ns a
 * record on the test machine, this loop ~7 ns; and copying fixed-size records
 * into a ctypes array here beats strided memoryview copies 2-3x (ringbuf.py).
 */
#include <stdint.h>
#include <string.h>

#define PYBPF_API __attribute__((visibility("default")))

PYBPF_API uint64_t pybpf_load_acquire_u64(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

PYBPF_API void pybpf_store_release_u64(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, v, __ATOMIC_RELEASE);
}

PYBPF_API uint32_t pybpf_load_acquire_u32(const uint32_t *p)
{
	return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

PYBPF_API uint32_t pybpf_xchg_acq_rel_u32(uint32_t *p, uint32_t v)
{
	return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);
}

/* Batch-level: plain (single-copy atomic) loads of a batch of record headers
 * followed by one acquire fence order every later load after all of them, as
 * if each header had been loaded with acquire (C11 fence-atomic synchronization).
 * One call per batch instead of one load_acquire_u32 per record.
 */
PYBPF_API void pybpf_fence_acquire(void)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
}

/* Kernel -> user ring (BPF_MAP_TYPE_RINGBUF): finds one batch of committed
 * records, from consumer position `cons` (kernel/bpf/ringbuf.c).
 *
 * Loads producer_pos once with acquire (pairs with the kernel's
 * smp_store_release), bounded by `limit`, then each record header with acquire
 * (pairs with the xchg in bpf_ringbuf_commit), and stops at the first BUSY
 * record, after `max_records` records handed out, or once the batch covers
 * `max_bytes`. For each record not discarded it writes the payload's start and
 * end, as offsets from position `cons`, to out[2i] and out[2i + 1]: `data` is
 * the data area mapped twice, so a record that wraps around is contiguous.
 * With `copy`, it also copies the first `copy_size` bytes of each of those
 * records (fewer if the record is shorter) to copy + i * copy_size.
 *
 * res[0]: the position after the last record walked (the next consumer_pos);
 * res[1]: producer_pos as loaded; res[2]: the records' common length when they
 * all have it and lie back to back (no discarded record between them), else
 * UINT64_MAX; res[3]: discarded records walked.
 * Returns the number of records handed out. Never writes to the ring.
 */
#define RINGBUF_BUSY_BIT	(1U << 31)
#define RINGBUF_DISCARD_BIT	(1U << 30)
#define RINGBUF_HDR_SZ		8

PYBPF_API uint32_t pybpf_ringbuf_scan(const uint64_t *producer_pos, const uint8_t *data,
				      uint64_t mask, uint64_t cons, uint64_t limit,
				      uint64_t max_bytes, uint32_t max_records,
				      uint32_t *out, uint64_t *res,
				      uint8_t *copy, uint32_t copy_size)
{
	uint64_t prod = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE);
	uint64_t pos = cons, common = 0, discards = 0;
	uint32_t n = 0, expect = 0;
	int uniform = 1;

	if (prod > limit)
		prod = limit;
	while (pos < prod && n < max_records && pos - cons < max_bytes) {
		uint32_t len = __atomic_load_n((const uint32_t *)(data + (pos & mask)), __ATOMIC_ACQUIRE);
		uint32_t size = len & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);
		uint64_t next = pos + ((size + RINGBUF_HDR_SZ + 7) & ~7ULL);
		uint32_t start = (uint32_t)(pos - cons) + RINGBUF_HDR_SZ;

		if ((len & RINGBUF_BUSY_BIT) || next > prod)
			break;	/* not committed yet: everything after it waits too */
		pos = next;
		if (len & RINGBUF_DISCARD_BIT) {
			discards++;
			continue;
		}
		if (n == 0)
			common = size;
		else if (size != common || start != expect)
			uniform = 0;
		expect = (uint32_t)(next - cons) + RINGBUF_HDR_SZ;
		out[2 * n] = start;
		out[2 * n + 1] = start + size;
		if (copy)
			memcpy(copy + (size_t)n * copy_size, data + (cons & mask) + start,
			       size < copy_size ? size : copy_size);
		n++;
	}
	res[0] = pos;
	res[1] = prod;
	res[2] = n && uniform ? common : UINT64_MAX;
	res[3] = discards;
	return n;
}
