/* Memory-ordered loads and stores for the ring buffers' shared pages, and the
 * buffer type of a reserved user ring buffer sample.
 *
 * Ring buffer positions and record headers are shared with the kernel, which
 * pairs them with smp_store_release()/smp_load_acquire()/xchg(). Python cannot
 * express acquire/release ordering, so pybpf.atomics calls these through ctypes.
 * On x86-64 they compile to plain moves (and an xchg); on arm64 to LDAR/STLR.
 *
 * The plain functions are called through ctypes (pybpf.atomics loads this
 * shared library with ctypes.PyDLL); the same file is also a Python extension
 * module, pybpf._atomics, for one thing ctypes cannot do: a type with the
 * buffer protocol (SampleBuffer, below), which a pure-Python class cannot have
 * before Python 3.12. The ring buffer protocol itself (positions, headers)
 * stays in Python; keep this file tiny. The exceptions are the batch loops
 * (pybpf_ringbuf_scan, pybpf_ringbuf_copy, pybpf_user_ringbuf_fill):
 * walking record headers in Python costs ~400 ns a record on the test
 * machine, these loops ~7 ns; and copying fixed-size records into a
 * ctypes array here beats strided memoryview copies 2-3x (ringbuf/reader.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
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

/* read_array (pybpf/ringbuf/arrays.py): copies the committed records of
 * exactly `size` bytes from consumer position `cons` into out[0..], back to
 * back, walking headers as pybpf_ringbuf_scan does (acquire of producer_pos,
 * bounded by `limit`; acquire of each header; stop at the first BUSY record).
 * Discarded records are skipped. Stops at the first committed record of
 * another length, which is left unconsumed (even with max_records 0, so that
 * the caller learns of it), and before a copy past `max_records`.
 *
 * res[0]: the position after the last record walked (the next consumer_pos);
 * res[1]: producer_pos as loaded; res[2]: discarded records walked; res[3]:
 * the length of the record it stopped at for its size, else UINT64_MAX.
 * Returns the number of records copied. Never writes to the ring.
 */
PYBPF_API uint64_t pybpf_ringbuf_copy(const uint64_t *producer_pos, const uint8_t *data,
				      uint64_t mask, uint64_t cons, uint64_t limit,
				      uint64_t max_records, uint8_t *out, uint32_t size,
				      uint64_t *res)
{
	uint64_t prod = __atomic_load_n(producer_pos, __ATOMIC_ACQUIRE);
	uint64_t pos = cons, n = 0, discards = 0, other = UINT64_MAX;

	if (prod > limit)
		prod = limit;
	while (pos < prod) {
		uint32_t len = __atomic_load_n((const uint32_t *)(data + (pos & mask)), __ATOMIC_ACQUIRE);
		uint32_t sz = len & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);
		uint64_t next = pos + ((sz + RINGBUF_HDR_SZ + 7) & ~7ULL);

		if ((len & RINGBUF_BUSY_BIT) || next > prod)
			break;
		if (len & RINGBUF_DISCARD_BIT) {
			discards++;
			pos = next;
			continue;
		}
		if (sz != size) {
			other = sz;
			break;
		}
		if (n == max_records)
			break;
		memcpy(out + n * size, data + (pos & mask) + RINGBUF_HDR_SZ, size);
		n++;
		pos = next;
	}
	res[0] = pos;
	res[1] = prod;
	res[2] = discards;
	res[3] = other;
	return n;
}

/* write_array (pybpf/ringbuf/user.py): writes `count` committed samples of
 * `size` bytes from src (back to back) into a USER_RINGBUF data area `data`
 * (mapped twice) from producer position `prod`, each after its header
 * (len, pg_off 0). The caller has checked the room and releases
 * producer_pos after (which publishes them). Returns the next position.
 */
PYBPF_API uint64_t pybpf_user_ringbuf_fill(uint8_t *data, uint64_t mask, uint64_t prod,
					   const uint8_t *src, uint32_t size, uint64_t count)
{
	uint64_t stride = (size + RINGBUF_HDR_SZ + 7) & ~7ULL;

	for (uint64_t i = 0; i < count; i++, prod += stride) {
		uint8_t *hdr = data + (prod & mask);

		((uint32_t *)hdr)[0] = size;
		((uint32_t *)hdr)[1] = 0;
		memcpy(hdr + RINGBUF_HDR_SZ, src + i * size, size);
	}
	return prod;
}

/* --- SampleBuffer: a reserved USER_RINGBUF sample as a writable buffer -------
 *
 * pybpf.ringbuf.user.Sample subclasses it. The object is a buffer of exactly
 * `len` bytes at `buf`, inside the ring's mapping, for as long as the sample
 * is reserved: struct.pack_into, slice assignment, memoryview(), ctypes
 * from_buffer and bytes() all work on it. It counts its buffer exports, so
 * that _commit (submit/discard) can refuse while anything still points into
 * the sample: after the commit the kernel owns that memory, and nothing may
 * write into it silently. Once committed it refuses reads, writes and new
 * exports (the error class given to set_errors()).
 *
 * While reserved it holds an export of the mapping (`base`), so the memory
 * stays mapped whatever happens to the ring buffer object; it lets go of it
 * once committed and no export is left.
 */
typedef struct {
	PyObject_HEAD
	char *buf;		/* the payload, in the ring; the header is the 8 bytes before */
	Py_ssize_t len;
	Py_ssize_t exports;	/* buffer exports alive (memoryview, ctypes, numpy...) */
	int committed;
	Py_buffer base;		/* export of the mapping; base.obj NULL once let go */
	PyObject *ring;		/* the UserRingBuffer, for Sample.submit() */
	PyObject *data;		/* cached memoryview of .data, released at the commit */
	unsigned long long pos;	/* ring position of the header */
} SampleBuffer;

static PyObject *closed_error;		/* pybpf.ringbuf.user.SampleClosedError */
static PyObject *exported_error;	/* pybpf.ringbuf.user.SampleExportedError */

static void sample_let_go(SampleBuffer *self)
{
	if (self->base.obj != NULL)
		PyBuffer_Release(&self->base);
}

static int sample_refuse_closed(SampleBuffer *self)
{
	if (!self->committed)
		return 0;
	PyErr_SetString(closed_error ? closed_error : PyExc_ValueError,
			"the sample was already submitted or discarded: its memory belongs to the "
			"kernel now (reserve another one)");
	return -1;
}

static int sample_getbuffer(SampleBuffer *self, Py_buffer *view, int flags)
{
	if (sample_refuse_closed(self) < 0) {
		view->obj = NULL;
		return -1;
	}
	if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, 0, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void sample_releasebuffer(SampleBuffer *self, Py_buffer *view)
{
	(void)view;
	if (--self->exports == 0 && self->committed)
		sample_let_go(self);	/* the last view of a sample closed by force */
}

static PyBufferProcs sample_as_buffer = {
	(getbufferproc)sample_getbuffer,
	(releasebufferproc)sample_releasebuffer,
};

static Py_ssize_t sample_length(SampleBuffer *self)
{
	return self->len;
}

static PyObject *release_name;	/* "release", interned */

static int release_view(PyObject *view)
{
	PyObject *r = PyObject_CallMethodNoArgs(view, release_name);

	Py_XDECREF(r);
	return r ? 0 : -1;
}

/* s[i] -> int, s[a:b] -> bytes (a copy: no view of the ring escapes). */
static PyObject *sample_subscript(SampleBuffer *self, PyObject *key)
{
	PyObject *view, *item, *copy;

	view = PyMemoryView_FromObject((PyObject *)self);
	if (view == NULL)
		return NULL;
	item = PyObject_GetItem(view, key);
	if (item != NULL && PyMemoryView_Check(item)) {
		copy = PyBytes_FromObject(item);
		if (release_view(item) < 0)
			Py_CLEAR(copy);
		Py_DECREF(item);
		item = copy;
	}
	if (release_view(view) < 0)
		Py_CLEAR(item);
	Py_DECREF(view);
	return item;
}

static int sample_ass_subscript(SampleBuffer *self, PyObject *key, PyObject *value)
{
	PyObject *view;
	int err;

	if (value == NULL) {
		PyErr_SetString(PyExc_TypeError, "a sample's bytes cannot be deleted (its size is fixed)");
		return -1;
	}
	view = PyMemoryView_FromObject((PyObject *)self);
	if (view == NULL)
		return -1;
	err = PyObject_SetItem(view, key, value);
	if (release_view(view) < 0)
		err = -1;
	Py_DECREF(view);
	return err;
}

static PyMappingMethods sample_as_mapping = {
	(lenfunc)sample_length,
	(binaryfunc)sample_subscript,
	(objobjargproc)sample_ass_subscript,
};

static PySequenceMethods sample_as_sequence = {
	.sq_length = (lenfunc)sample_length,
};

/* _commit(value, force=False) -> length: submit (value = len) or discard
 * (value = len | DISCARD). Refuses (exported_error, a BufferError) while a
 * buffer export is alive, unless `force` (closing the ring: a BUSY sample
 * left behind would stop the kernel's drain for good). */
static PyObject *sample_commit(SampleBuffer *self, PyObject *const *args, Py_ssize_t nargs)
{
	unsigned long value;
	int force = 0;

	if (nargs < 1 || nargs > 2) {
		PyErr_SetString(PyExc_TypeError, "_commit(value, force=False)");
		return NULL;
	}
	value = PyLong_AsUnsignedLong(args[0]);
	if (value == (unsigned long)-1 && PyErr_Occurred())
		return NULL;
	if (nargs == 2 && (force = PyObject_IsTrue(args[1])) < 0)
		return NULL;
	if (sample_refuse_closed(self) < 0)
		return NULL;
	if (self->data != NULL) {
		/* .data is ours: released here, so that it cannot write afterwards */
		if (release_view(self->data) < 0) {
			if (!force) {
				PyErr_Clear();
				goto exported;
			}
			PyErr_Clear();
		} else {
			Py_CLEAR(self->data);
		}
	}
	if (self->exports && !force)
		goto exported;
	/* Synchronizes with the drain's smp_load_acquire() of the header
	 * (__bpf_user_ringbuf_peek); payload stores before it are visible. */
	__atomic_exchange_n((uint32_t *)(self->buf - RINGBUF_HDR_SZ), (uint32_t)value, __ATOMIC_ACQ_REL);
	self->committed = 1;
	if (!self->exports)
		sample_let_go(self);
	return PyLong_FromSsize_t(self->len);
exported:
	PyErr_Format(exported_error ? exported_error : PyExc_BufferError,
		     "%zd buffer export(s) of the sample are still alive (a memoryview, a ctypes "
		     "object from from_buffer, a numpy array...): they would write into memory the "
		     "kernel owns after this; drop them (del, or memoryview.release()) and try again; "
		     "the sample stays reserved", self->exports);
	return NULL;
}

static PyObject *sample_get_data(SampleBuffer *self, void *closure)
{
	(void)closure;
	if (sample_refuse_closed(self) < 0)
		return NULL;
	if (self->data == NULL && (self->data = PyMemoryView_FromObject((PyObject *)self)) == NULL)
		return NULL;
	Py_INCREF(self->data);
	return self->data;
}

static PyObject *sample_get_committed(SampleBuffer *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->committed);
}

static PyObject *sample_get_exports(SampleBuffer *self, void *closure)
{
	(void)closure;
	return PyLong_FromSsize_t(self->exports);
}

static PyGetSetDef sample_getset[] = {
	{"data", (getter)sample_get_data, NULL,
	 "A writable memoryview of the whole sample (the same one each time), released by "
	 "submit/discard.", NULL},
	{"committed", (getter)sample_get_committed, NULL, "True once submitted or discarded.", NULL},
	{"exports", (getter)sample_get_exports, NULL,
	 "How many buffer exports of the sample are alive (submit refuses while any is).", NULL},
	{NULL}
};

static PyMemberDef sample_members[] = {
	{"_ring", T_OBJECT, offsetof(SampleBuffer, ring), READONLY, NULL},
	{"_pos", T_ULONGLONG, offsetof(SampleBuffer, pos), READONLY, NULL},
	{NULL}
};

static PyMethodDef sample_methods[] = {
	{"_commit", (PyCFunction)(void (*)(void))sample_commit, METH_FASTCALL, NULL},
	{NULL}
};

static int sample_traverse(SampleBuffer *self, visitproc visit, void *arg)
{
	/* base.obj is not visited: the collector must never free the mapping
	 * under a sample that may still be written (it is not in a cycle). */
	Py_VISIT(self->ring);
	Py_VISIT(self->data);
	return 0;
}

static int sample_clear(SampleBuffer *self)
{
	Py_CLEAR(self->ring);
	Py_CLEAR(self->data);
	return 0;
}

static void sample_dealloc(SampleBuffer *self)
{
	/* Sample (a heap subclass) comes here from subtype_dealloc, which
	 * drops the reference to its type itself */
	PyObject_GC_UnTrack(self);
	sample_clear(self);
	sample_let_go(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *sample_no_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	(void)args;
	(void)kwds;
	PyErr_Format(PyExc_TypeError, "%s objects come from UserRingBuffer.reserve()", type->tp_name);
	return NULL;
}

static PyTypeObject SampleBufferType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "pybpf._atomics.SampleBuffer",
	.tp_basicsize = sizeof(SampleBuffer),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A reserved user ring buffer sample: a writable buffer over the ring's memory.",
	.tp_dealloc = (destructor)sample_dealloc,
	.tp_traverse = (traverseproc)sample_traverse,
	.tp_clear = (inquiry)sample_clear,
	.tp_as_buffer = &sample_as_buffer,
	.tp_as_mapping = &sample_as_mapping,
	.tp_as_sequence = &sample_as_sequence,
	.tp_methods = sample_methods,
	.tp_members = sample_members,
	.tp_getset = sample_getset,
	.tp_new = sample_no_new,
};

/* new_sample(cls, mapping, offset, n, ring, pos): a `cls` (a SampleBuffer
 * subclass) over bytes [offset, offset + n) of `mapping` (a writable buffer:
 * the mmap of the producer page and data), whose 8-byte header is at
 * offset - 8. One call per reserve(). */
static PyObject *new_sample(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	PyTypeObject *cls;
	SampleBuffer *self;
	Py_ssize_t offset, n;
	unsigned long long pos;

	(void)module;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "new_sample(cls, mapping, offset, n, ring, pos)");
		return NULL;
	}
	if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &SampleBufferType)) {
		PyErr_SetString(PyExc_TypeError, "new_sample: cls must be a SampleBuffer subclass");
		return NULL;
	}
	cls = (PyTypeObject *)args[0];
	offset = PyLong_AsSsize_t(args[2]);
	if (offset == -1 && PyErr_Occurred())
		return NULL;
	n = PyLong_AsSsize_t(args[3]);
	if (n == -1 && PyErr_Occurred())
		return NULL;
	pos = PyLong_AsUnsignedLongLong(args[5]);
	if (pos == (unsigned long long)-1 && PyErr_Occurred())
		return NULL;
	self = (SampleBuffer *)cls->tp_alloc(cls, 0);
	if (self == NULL)
		return NULL;
	if (PyObject_GetBuffer(args[1], &self->base, PyBUF_WRITABLE) < 0) {
		self->base.obj = NULL;
		Py_DECREF(self);
		return NULL;
	}
	if (offset < RINGBUF_HDR_SZ || n < 0 || n > self->base.len - offset || (offset & 7)) {
		PyErr_Format(PyExc_ValueError, "new_sample: %zd bytes at offset %zd do not fit a "
			     "%zd-byte mapping with an 8-aligned header before them", n, offset, self->base.len);
		Py_DECREF(self);
		return NULL;
	}
	self->buf = (char *)self->base.buf + offset;
	self->len = n;
	Py_INCREF(args[4]);
	self->ring = args[4];
	self->pos = pos;
	return (PyObject *)self;
}

/* set_errors(closed, exported): the exception classes SampleBuffer raises. */
static PyObject *set_errors(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	(void)module;
	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "set_errors(closed, exported)");
		return NULL;
	}
	Py_INCREF(args[0]);
	Py_XSETREF(closed_error, args[0]);
	Py_INCREF(args[1]);
	Py_XSETREF(exported_error, args[1]);
	Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
	{"new_sample", (PyCFunction)(void (*)(void))new_sample, METH_FASTCALL, NULL},
	{"set_errors", (PyCFunction)(void (*)(void))set_errors, METH_FASTCALL, NULL},
	{NULL}
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "_atomics",
	.m_doc = "pybpf's C helper: see pybpf/atomics.py (ctypes functions) and SampleBuffer.",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__atomics(void)
{
	PyObject *m;

	if (PyType_Ready(&SampleBufferType) < 0)
		return NULL;
	if (release_name == NULL && (release_name = PyUnicode_InternFromString("release")) == NULL)
		return NULL;
	m = PyModule_Create(&module_def);
	if (m == NULL)
		return NULL;
#ifndef PYBPF_SOURCE_SHA256
#define PYBPF_SOURCE_SHA256 ""	/* built without setup.py */
#endif
	if (PyModule_AddStringConstant(m, "SOURCE_SHA256", PYBPF_SOURCE_SHA256) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	Py_INCREF(&SampleBufferType);
	if (PyModule_AddObject(m, "SampleBuffer", (PyObject *)&SampleBufferType) < 0) {
		Py_DECREF(&SampleBufferType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
