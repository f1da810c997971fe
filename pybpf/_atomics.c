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
 * (positions, headers) stays in Python; keep this file tiny.
 */
#include <stdint.h>

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
