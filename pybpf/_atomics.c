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
 * And the user ring producer's per-sample common case (Producer, below:
 * reserve/submit/write/write_batch): in Python, a reserve + fill + submit
 * cost ~1 us, 200 times libbpf's C producer; every other case, and every
 * rule and message, stays in the Python methods it hands them to.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#ifndef PySet_CheckExact		/* Python 3.9 */
#define PySet_CheckExact(op) Py_IS_TYPE(op, &PySet_Type)
#endif

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

/* An 8-byte record header at `pos`: len (with BUSY, or committed), pg_off 0 (a user
 * ring's samples carry no page offset).  Plain stores: the release of producer_pos
 * (or the commit's xchg of len) publishes them. */
static inline void ring_header(uint8_t *data, uint64_t mask, uint64_t pos, uint32_t len)
{
	uint32_t *hdr = (uint32_t *)(data + (pos & mask));

	hdr[1] = 0;	/* pg_off */
	hdr[0] = len;
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
		ring_header(data, mask, prod, size);
		memcpy(data + (prod & mask) + RINGBUF_HDR_SZ, src + i * size, size);
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

/* Releases `view` when an error is already set: the error stays the one set. */
static void release_view_in_error(PyObject *view)
{
	PyObject *type, *val, *tb;

	PyErr_Fetch(&type, &val, &tb);
	if (release_view(view) < 0)
		PyErr_Clear();
	PyErr_Restore(type, val, tb);
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
		if (copy == NULL)
			release_view_in_error(item);
		else if (release_view(item) < 0)
			Py_CLEAR(copy);
		Py_DECREF(item);
		item = copy;
	}
	if (item == NULL)
		release_view_in_error(view);
	else if (release_view(view) < 0)
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
	/* s[:] = payload (bytes of the sample's size): one memcpy, no memoryview */
	if (PySlice_Check(key) && PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) == self->len) {
		Py_ssize_t start, stop, step;

		if (PySlice_Unpack(key, &start, &stop, &step) < 0)
			return -1;
		if (step == 1 && PySlice_AdjustIndices(self->len, &start, &stop, step) == self->len) {
			if (sample_refuse_closed(self) < 0)
				return -1;
			memcpy(self->buf, PyBytes_AS_STRING(value), (size_t)self->len);
			return 0;
		}
	}
	view = PyMemoryView_FromObject((PyObject *)self);
	if (view == NULL)
		return -1;
	err = PyObject_SetItem(view, key, value);
	if (err < 0)
		release_view_in_error(view);
	else if (release_view(view) < 0)
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
 * offset - 8. One call per reserve() that the Python slow path
 * (UserRingBuffer._reserve_slow) does; Producer.reserve makes its own. */
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

/* --- Mutex: the user ring producer's mutex, that C can see is held ---------
 *
 * Mutex(get, put): get/put of a queue.SimpleQueue holding one token. take()
 * is get() (interruptible, with get's block and timeout arguments), then
 * marks it held; give() unmarks it, then put(None). The Python methods of
 * UserRingBuffer take it as before; the C fast paths below never wait for it:
 * they run only while it is not held (else they call the Python method,
 * which waits). Both marks are set with the GIL held and no Python code
 * between them and the token changing hands, so a fast path can never run
 * while a Python method is between its take() and give().
 */
typedef struct {
	PyObject_HEAD
	PyObject *get, *put;
	int held;
} Mutex;

static PyTypeObject MutexType;

static PyObject *mutex_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	PyObject *get, *put;
	Mutex *self;

	if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
		PyErr_SetString(PyExc_TypeError, "Mutex(get, put)");
		return NULL;
	}
	if (!PyArg_UnpackTuple(args, "Mutex", 2, 2, &get, &put))
		return NULL;
	self = (Mutex *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	Py_INCREF(get);
	self->get = get;
	Py_INCREF(put);
	self->put = put;
	return (PyObject *)self;
}

static void mutex_dealloc(Mutex *self)
{
	Py_CLEAR(self->get);
	Py_CLEAR(self->put);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *mutex_take(Mutex *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	PyObject *r = PyObject_Vectorcall(self->get, args, nargsf, kwnames);

	if (r == NULL)
		return NULL;
	Py_DECREF(r);
	self->held = 1;
	Py_RETURN_NONE;
}

static PyObject *mutex_give(Mutex *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *r, *none = Py_None;

	(void)args;
	if (nargs > 1) {
		PyErr_SetString(PyExc_TypeError, "give(token=None)");
		return NULL;
	}
	self->held = 0;
	r = PyObject_Vectorcall(self->put, &none, 1, NULL);
	if (r == NULL)
		return NULL;
	Py_DECREF(r);
	Py_RETURN_NONE;
}

static PyObject *mutex_enter(Mutex *self, PyObject *unused)
{
	(void)unused;
	return mutex_take(self, NULL, 0, NULL);
}

static PyObject *mutex_exit(Mutex *self, PyObject *const *args, Py_ssize_t nargs)
{
	(void)args;
	(void)nargs;
	return mutex_give(self, NULL, 0);
}

static PyObject *mutex_get_held(Mutex *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->held);
}

static PyMethodDef mutex_methods[] = {
	{"take", (PyCFunction)(void (*)(void))mutex_take, METH_FASTCALL | METH_KEYWORDS,
	 "take(block=True, timeout=None): takes the token (as SimpleQueue.get)."},
	{"give", (PyCFunction)(void (*)(void))mutex_give, METH_FASTCALL, "give(None): gives the token back."},
	{"__enter__", (PyCFunction)mutex_enter, METH_NOARGS, NULL},
	{"__exit__", (PyCFunction)(void (*)(void))mutex_exit, METH_FASTCALL, NULL},
	{NULL}
};

static PyGetSetDef mutex_getset[] = {
	{"held", (getter)mutex_get_held, NULL, "True between take() and give().", NULL},
	{NULL}
};

static PyTypeObject MutexType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "pybpf._atomics.Mutex",
	.tp_basicsize = sizeof(Mutex),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Mutex(get, put): a one-token SimpleQueue as a mutex the C fast paths can see.",
	.tp_dealloc = (destructor)mutex_dealloc,
	.tp_methods = mutex_methods,
	.tp_getset = mutex_getset,
	.tp_new = mutex_new,
};

/* --- Producer: the base of UserRingBuffer, with its per-sample fast paths ---
 *
 * pybpf.ringbuf.user.UserRingBuffer subclasses it. The producer's state
 * (positions, counters, the pending set, the mutex) lives here as members,
 * under the names the Python methods use (self._prod...), so that Python and
 * C share it. reserve(n), submit(sample), write(data) and write_batch(items)
 * are C methods that do the common case and hand every other one (another
 * type or size, the ring closed or short of room even after a reload of
 * consumer_pos, the mutex held, an export alive, keyword arguments...) to
 * the Python method of the same name with "_slow" appended, untouched: the
 * Python methods keep every rule and message. A fast path runs no Python
 * code once it has read the state (the one allocation, a Sample, comes
 * first), so with the GIL it is atomic against the other threads and against
 * signal handlers.
 *
 * Ordering (kernel/bpf/ringbuf.c, __bpf_user_ringbuf_peek): a sample's header
 * and payload are plain stores before the release store of producer_pos
 * (which pairs with the drain's smp_load_acquire); a reserved sample's commit
 * is an xchg of its header (SampleBuffer._commit); consumer_pos is loaded
 * with acquire (pairs with the kernel's smp_store_release after a drain).
 * These are C11 atomics: correct on every architecture, not only x86.
 */
typedef struct {
	PyObject_HEAD
	PyObject *lock;		/* a Mutex (_lock) */
	PyObject *pending;	/* set of the samples reserved, not yet committed (_pending) */
	PyObject *sample_cls;	/* Sample */
	Py_buffer map;		/* export of the producer page + data mapping; map.obj NULL when detached */
	char *data;		/* the data area (mapped twice); NULL when detached */
	uint64_t *prod_pos;
	const uint64_t *cons_pos;
	unsigned long long prod, cons, size, mask, max_sample, records, bytes, discards;
	char closed;
} Producer;

static PyObject *reserve_slow, *submit_slow, *write_slow, *write_batch_slow;	/* interned names */

static int producer_traverse(Producer *self, visitproc visit, void *arg)
{
	/* map.obj is not visited, as SampleBuffer's base is not */
	Py_VISIT(self->lock);
	Py_VISIT(self->pending);
	Py_VISIT(self->sample_cls);
	return 0;
}

static int producer_clear(Producer *self)
{
	Py_CLEAR(self->lock);
	Py_CLEAR(self->pending);
	Py_CLEAR(self->sample_cls);
	return 0;
}

static void producer_detach_map(Producer *self)
{
	self->data = NULL;
	self->prod_pos = NULL;
	self->cons_pos = NULL;
	if (self->map.obj != NULL)
		PyBuffer_Release(&self->map);
}

static void producer_dealloc(Producer *self)
{
	PyObject_GC_UnTrack(self);
	producer_clear(self);
	producer_detach_map(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _attach(mapping, page, consumer_addr, sample_cls): the fast paths use the
 * producer page (producer_pos) and data area of `mapping` (the writable mmap
 * of both, data at offset `page`, 2 * size bytes) and the consumer_pos at
 * `consumer_addr` (kept mapped by the caller until _detach()). Set size and
 * _mask first. */
static PyObject *producer_attach(Producer *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_ssize_t page;
	void *cons;

	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "_attach(mapping, page, consumer_addr, sample_cls)");
		return NULL;
	}
	page = PyLong_AsSsize_t(args[1]);
	if (page == -1 && PyErr_Occurred())
		return NULL;
	cons = PyLong_AsVoidPtr(args[2]);
	if (cons == NULL) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "_attach: consumer_addr is NULL");
		return NULL;
	}
	if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &SampleBufferType)) {
		PyErr_SetString(PyExc_TypeError, "_attach: sample_cls must be a SampleBuffer subclass");
		return NULL;
	}
	if (self->size == 0 || (self->size & (self->size - 1)) || self->mask != self->size - 1 || page <= 0 ||
	    (page & 7)) {
		PyErr_SetString(PyExc_ValueError, "_attach: size must be a power of 2 (set first, with _mask), "
				"page positive and 8-aligned");
		return NULL;
	}
	producer_detach_map(self);
	if (PyObject_GetBuffer(args[0], &self->map, PyBUF_WRITABLE) < 0) {
		self->map.obj = NULL;
		return NULL;
	}
	if ((unsigned long long)self->map.len < (unsigned long long)page + 2 * self->size ||
	    ((uintptr_t)self->map.buf & 7)) {
		PyBuffer_Release(&self->map);
		PyErr_SetString(PyExc_ValueError, "_attach: the mapping is smaller than page + 2 * size");
		return NULL;
	}
	Py_INCREF(args[3]);
	Py_XSETREF(self->sample_cls, args[3]);
	self->prod_pos = (uint64_t *)self->map.buf;
	self->cons_pos = (const uint64_t *)cons;
	self->data = (char *)self->map.buf + page;
	Py_RETURN_NONE;
}

/* _detach(): the fast paths stop using the mapping (before it is unmapped). Idempotent. */
static PyObject *producer_detach(Producer *self, PyObject *unused)
{
	(void)unused;
	producer_detach_map(self);
	Py_RETURN_NONE;
}

/* True when the fast paths may run: attached, open, the mutex not held. */
static inline int producer_ready(Producer *self)
{
	return self->data != NULL && !self->closed && self->lock != NULL && Py_IS_TYPE(self->lock, &MutexType) &&
	       !((Mutex *)self->lock)->held && self->pending != NULL && PySet_CheckExact(self->pending);
}

/* True when `total` more bytes fit, reloading consumer_pos if they do not with the cached one. */
static inline int producer_room(Producer *self, unsigned long long total)
{
	if (self->size - (self->prod - self->cons) >= total)
		return 1;
	/* pairs with the kernel's smp_store_release of consumer_pos after a drain */
	self->cons = __atomic_load_n(self->cons_pos, __ATOMIC_ACQUIRE);
	return self->size - (self->prod - self->cons) >= total;
}

static inline void producer_header(Producer *self, unsigned long long pos, uint32_t len)
{
	ring_header((uint8_t *)self->data, self->mask, pos, len);
}

static inline void producer_publish(Producer *self)
{
	/* release: every header and payload stored before it is visible to the
	 * drain's smp_load_acquire of producer_pos */
	__atomic_store_n(self->prod_pos, (uint64_t)self->prod, __ATOMIC_RELEASE);
}

static PyObject *producer_call_slow(Producer *self, PyObject *name, PyObject *const *args, size_t nargsf,
				    PyObject *kwnames)
{
	PyObject *meth = PyObject_GetAttr((PyObject *)self, name), *r;

	if (meth == NULL)
		return NULL;
	r = PyObject_Vectorcall(meth, args, nargsf, kwnames);
	Py_DECREF(meth);
	return r;
}

/* reserve(n): see UserRingBuffer._reserve_slow for everything but an int n that fits now. */
static PyObject *producer_reserve(Producer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
	PyTypeObject *cls;
	SampleBuffer *s;
	long long n;
	unsigned long long total, off;
	int overflow;

	if (nargs != 1 || kwnames != NULL || !PyLong_CheckExact(args[0]))
		goto slow;
	n = PyLong_AsLongLongAndOverflow(args[0], &overflow);
	if (overflow || n < 0 || (unsigned long long)n > self->max_sample || !producer_ready(self))
		goto slow;
	/* the allocation first: it may collect garbage, which may run Python code */
	cls = (PyTypeObject *)self->sample_cls;
	s = (SampleBuffer *)cls->tp_alloc(cls, 0);
	if (s == NULL)
		return NULL;
	total = ((unsigned long long)n + RINGBUF_HDR_SZ + 7) & ~7ULL;
	if (!producer_ready(self) || (unsigned long long)n > self->max_sample || !producer_room(self, total)) {
		Py_DECREF(s);
		goto slow;
	}
	if (PyObject_GetBuffer(self->map.obj, &s->base, PyBUF_WRITABLE) < 0) {
		s->base.obj = NULL;
		Py_DECREF(s);
		return NULL;
	}
	off = self->prod & self->mask;
	s->buf = self->data + off + RINGBUF_HDR_SZ;
	s->len = (Py_ssize_t)n;
	Py_INCREF(self);
	s->ring = (PyObject *)self;
	s->pos = self->prod;
	if (PySet_Add(self->pending, (PyObject *)s) < 0) {
		Py_DECREF(s);
		return NULL;
	}
	/* BUSY first: the drain stops at this sample until it is committed */
	producer_header(self, self->prod, (uint32_t)n | RINGBUF_BUSY_BIT);
	self->prod += total;
	producer_publish(self);
	return (PyObject *)s;
slow:
	return producer_call_slow(self, reserve_slow, args, nargsf, kwnames);
}

/* submit(sample): see UserRingBuffer._submit_slow for all but a pending Sample of ours without exports. */
static PyObject *producer_submit(Producer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
	SampleBuffer *s;
	int found;

	if (nargs != 1 || kwnames != NULL || self->sample_cls == NULL || (PyObject *)Py_TYPE(args[0]) != self->sample_cls ||
	    !producer_ready(self))
		goto slow;
	s = (SampleBuffer *)args[0];
	if (s->ring != (PyObject *)self || s->committed)
		goto slow;
	if (s->data != NULL) {
		/* .data is ours: released first, so that it cannot write afterwards */
		if (release_view(s->data) < 0) {
			PyErr_Clear();
			goto slow;	/* a view of it is alive: the slow path says so */
		}
		Py_CLEAR(s->data);
		if (!producer_ready(self))
			goto slow;
	}
	if (s->exports)
		goto slow;
	found = PySet_Discard(self->pending, args[0]);
	if (found < 0)
		return NULL;
	if (!found)
		goto slow;
	/* Synchronizes with the drain's smp_load_acquire() of the header
	 * (__bpf_user_ringbuf_peek); payload stores before it are visible. */
	__atomic_exchange_n((uint32_t *)(s->buf - RINGBUF_HDR_SZ), (uint32_t)s->len, __ATOMIC_ACQ_REL);
	s->committed = 1;
	sample_let_go(s);
	self->records++;
	self->bytes += (unsigned long long)s->len;
	Py_RETURN_NONE;
slow:
	return producer_call_slow(self, submit_slow, args, nargsf, kwnames);
}

/* write(data): see UserRingBuffer._write_slow for all but bytes/bytearray that fit now. */
static PyObject *producer_write(Producer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
	const char *src;
	Py_ssize_t n;
	unsigned long long total;

	if (nargs != 1 || kwnames != NULL || !producer_ready(self))
		goto slow;
	if (PyBytes_CheckExact(args[0])) {
		src = PyBytes_AS_STRING(args[0]);
		n = PyBytes_GET_SIZE(args[0]);
	} else if (PyByteArray_CheckExact(args[0])) {
		src = PyByteArray_AS_STRING(args[0]);
		n = PyByteArray_GET_SIZE(args[0]);
	} else {
		goto slow;
	}
	if ((unsigned long long)n > self->max_sample)
		goto slow;
	total = ((unsigned long long)n + RINGBUF_HDR_SZ + 7) & ~7ULL;
	if (!producer_room(self, total))
		goto slow;
	memcpy(self->data + (self->prod & self->mask) + RINGBUF_HDR_SZ, src, (size_t)n);
	/* committed from the start: it becomes visible with producer_pos */
	producer_header(self, self->prod, (uint32_t)n);
	self->prod += total;
	producer_publish(self);
	self->records++;
	self->bytes += (unsigned long long)n;
	Py_RETURN_NONE;
slow:
	return producer_call_slow(self, write_slow, args, nargsf, kwnames);
}

/* write_batch(items): see UserRingBuffer._write_batch_slow for all but a
 * list or tuple of bytes of one length that all fit now: one loop here
 * writes each header and copies each sample, one release publishes them. */
static PyObject *producer_write_batch(Producer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), count, i, len;
	PyObject **items, *seq;
	unsigned long long stride, pos;

	if (nargs != 1 || kwnames != NULL || !producer_ready(self))
		goto slow;
	seq = args[0];
	if (PyList_CheckExact(seq)) {
		items = ((PyListObject *)seq)->ob_item;
		count = PyList_GET_SIZE(seq);
	} else if (PyTuple_CheckExact(seq)) {
		items = ((PyTupleObject *)seq)->ob_item;
		count = PyTuple_GET_SIZE(seq);
	} else {
		goto slow;
	}
	if (count == 0 || !PyBytes_CheckExact(items[0]))
		goto slow;
	len = PyBytes_GET_SIZE(items[0]);
	if ((unsigned long long)len > self->max_sample)
		goto slow;
	for (i = 1; i < count; i++)
		if (!PyBytes_CheckExact(items[i]) || PyBytes_GET_SIZE(items[i]) != len)
			goto slow;
	stride = ((unsigned long long)len + RINGBUF_HDR_SZ + 7) & ~7ULL;
	if ((unsigned long long)count > self->size / stride || !producer_room(self, (unsigned long long)count * stride))
		goto slow;	/* not all of them fit now: the slow path writes what does, or waits */
	pos = self->prod;
	for (i = 0; i < count; i++, pos += stride) {
		producer_header(self, pos, (uint32_t)len);
		/* the data area is mapped twice: a sample across its end is contiguous */
		memcpy(self->data + (pos & self->mask) + RINGBUF_HDR_SZ, PyBytes_AS_STRING(items[i]), (size_t)len);
	}
	self->prod = pos;
	producer_publish(self);
	self->records += (unsigned long long)count;
	self->bytes += (unsigned long long)count * (unsigned long long)len;
	return PyLong_FromSsize_t(count);
slow:
	return producer_call_slow(self, write_batch_slow, args, nargsf, kwnames);
}

static PyMemberDef producer_members[] = {
	{"_lock", T_OBJECT, offsetof(Producer, lock), 0, NULL},
	{"_pending", T_OBJECT, offsetof(Producer, pending), 0, NULL},
	{"_prod", T_ULONGLONG, offsetof(Producer, prod), 0, NULL},
	{"_cons", T_ULONGLONG, offsetof(Producer, cons), 0, NULL},
	{"size", T_ULONGLONG, offsetof(Producer, size), 0, "The ring's data size in bytes."},
	{"_mask", T_ULONGLONG, offsetof(Producer, mask), 0, NULL},
	{"max_sample", T_ULONGLONG, offsetof(Producer, max_sample), 0, "The largest sample size that fits."},
	{"records", T_ULONGLONG, offsetof(Producer, records), 0, "Samples submitted."},
	{"bytes", T_ULONGLONG, offsetof(Producer, bytes), 0, "Payload bytes submitted."},
	{"discards", T_ULONGLONG, offsetof(Producer, discards), 0, "Samples discarded."},
	{"_closed", T_BOOL, offsetof(Producer, closed), 0, NULL},
	{NULL}
};

static PyMethodDef producer_methods[] = {
	{"reserve", (PyCFunction)(void (*)(void))producer_reserve, METH_FASTCALL | METH_KEYWORDS,
	 "reserve($self, n=None)\n--\n\n"
	 "Reserves an n-byte sample (a Sample: a writable buffer into the ring), or with no size a typed\n"
	 "sample; the rules: UserRingBuffer._reserve_slow, where all but the common case go."},
	{"submit", (PyCFunction)(void (*)(void))producer_submit, METH_FASTCALL | METH_KEYWORDS,
	 "submit($self, sample)\n--\n\n"
	 "Commits a reserved sample; the rules: UserRingBuffer._submit_slow."},
	{"write", (PyCFunction)(void (*)(void))producer_write, METH_FASTCALL | METH_KEYWORDS,
	 "write($self, data, timeout_ms=0)\n--\n\n"
	 "Copies data into the ring as one sample; the rules: UserRingBuffer._write_slow."},
	{"write_batch", (PyCFunction)(void (*)(void))producer_write_batch, METH_FASTCALL | METH_KEYWORDS,
	 "write_batch($self, samples, timeout_ms=0)\n--\n\n"
	 "Copies each of samples into the ring as one sample, one release of producer_pos for all; returns\n"
	 "how many were written. The rules: UserRingBuffer._write_batch_slow."},
	{"_attach", (PyCFunction)(void (*)(void))producer_attach, METH_FASTCALL, NULL},
	{"_detach", (PyCFunction)producer_detach, METH_NOARGS, NULL},
	{NULL}
};

static PyTypeObject ProducerType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "pybpf._atomics.Producer",
	.tp_basicsize = sizeof(Producer),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "The base of UserRingBuffer: its state and per-sample fast paths.",
	.tp_dealloc = (destructor)producer_dealloc,
	.tp_traverse = (traverseproc)producer_traverse,
	.tp_clear = (inquiry)producer_clear,
	.tp_methods = producer_methods,
	.tp_members = producer_members,
	.tp_new = PyType_GenericNew,
};

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

/* ---- kernel -> user: handing a batch of records to a callback ----------------------------
 *
 * deliver(batch, first, stride, length, n, offsets, callback, owner, stops, at) is the loop of
 * RingBuffer._consume: callback(batch[start:end]) for the n committed records of one batch,
 * record i at first + i * stride, `length` bytes (a uniform batch, offsets 0), or between the
 * u32 pairs (start, end) at address `offsets`.  Each view is a slice of `batch` (a memoryview
 * of the ring's mapping), as in the Python loop, and what the callback kept is handled as
 * there: a view it kept is released (using it then raises), a kept export of it is refused
 * (at[1] = 1, BufferError), and a slice of it keeps the mapping's export alive.  A view nobody
 * kept (one reference, ours: no export, no weak reference, not released) is moved on to the
 * next record instead of being freed and sliced again, through its buffer
 * (PyMemoryView_GET_BUFFER: pointer, length, shape; its cached hash reset): no object is made
 * per record and no release() is called (the slice, its bounds and the view cost ~60 ns a
 * record: tools/bench_ringbuf.py).
 *
 * Stops after the record whose callback returned a value that `stops(value)` says stops (a
 * negative int), or after any record once owner._closed is true.  Returns (done, stopped):
 * the records handed over, the stopping value or None.  On an error, at[0] is how many records
 * count as consumed: those handed over, the one whose callback raised included (as in the
 * Python loop), and the error propagates.  The caller holds the consumer lock: the mapping
 * outlives the call. */
static PyObject *closed_name;	/* "_closed", interned */

/* The view of one record of `batch`: a new slice, or `reuse` (the last record's view, which
 * only we hold) moved onto it.  NULL with an error set if the slice cannot be made. */
static PyObject *record_view(PyObject *batch, PyObject *reuse, unsigned long long start,
			     unsigned long long end)
{
	PyObject *lo, *hi, *slice, *view;

	if (reuse != NULL) {
		PyMemoryViewObject *mv = (PyMemoryViewObject *)reuse;
		Py_buffer *b = PyMemoryView_GET_BUFFER(reuse);

		b->buf = (char *)PyMemoryView_GET_BUFFER(batch)->buf + start;
		b->len = (Py_ssize_t)(end - start);
		b->shape[0] = b->len;
		mv->hash = -1;
		return reuse;
	}
	lo = PyLong_FromUnsignedLongLong(start);
	hi = PyLong_FromUnsignedLongLong(end);
	slice = (lo && hi) ? PySlice_New(lo, hi, NULL) : NULL;
	Py_XDECREF(lo);
	Py_XDECREF(hi);
	if (slice == NULL)
		return NULL;
	view = PyObject_GetItem(batch, slice);
	Py_DECREF(slice);
	return view;
}

/* Only we hold `view`, nothing exports or weakly refers to it, it is not released, and it is
 * a one-dimensional byte view (as every slice of a batch): it can show another record. */
static int view_reusable(PyObject *view)
{
	PyMemoryViewObject *mv = (PyMemoryViewObject *)view;
	Py_buffer *b = PyMemoryView_GET_BUFFER(view);

	return Py_REFCNT(view) == 1 && Py_IS_TYPE(view, &PyMemoryView_Type) && mv->exports == 0 &&
	       mv->weakreflist == NULL && !(mv->flags & _Py_MEMORYVIEW_RELEASED) && b->ndim == 1 &&
	       b->itemsize == 1 && b->shape != NULL && (b->strides == NULL || b->strides[0] == 1) &&
	       b->suboffsets == NULL;
}

static PyObject *deliver(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
	unsigned long long first, stride, length, n, offs_addr, at_addr, i;
	PyObject *batch, *callback, *owner, *stops, *spare = NULL;
	Py_ssize_t batch_len;
	const uint32_t *offs;
	unsigned long long *at;

	if (nargs != 10) {
		PyErr_SetString(PyExc_TypeError, "deliver() takes 10 arguments");
		return NULL;
	}
	batch = args[0];
	first = PyLong_AsUnsignedLongLong(args[1]);
	stride = PyLong_AsUnsignedLongLong(args[2]);
	length = PyLong_AsUnsignedLongLong(args[3]);
	n = PyLong_AsUnsignedLongLong(args[4]);
	offs_addr = PyLong_AsUnsignedLongLong(args[5]);
	callback = args[6];
	owner = args[7];
	stops = args[8];
	at_addr = PyLong_AsUnsignedLongLong(args[9]);
	if (PyErr_Occurred())
		return NULL;
	if (!PyMemoryView_Check(batch) || at_addr == 0) {
		PyErr_SetString(PyExc_TypeError, "deliver(): batch must be a memoryview, at an address");
		return NULL;
	}
	offs = (const uint32_t *)(uintptr_t)offs_addr;
	at = (unsigned long long *)(uintptr_t)at_addr;
	at[1] = 0;
	batch_len = PyMemoryView_GET_BUFFER(batch)->len;
	for (i = 0; i < n; i++) {
		unsigned long long start = offs ? offs[2 * i] : first + i * stride;
		unsigned long long end = offs ? offs[2 * i + 1] : start + length;
		PyObject *view, *ret, *closed;
		int truth;

		at[0] = i;				/* not handed over yet */
		if (start > end || end > (unsigned long long)batch_len) {
			PyErr_SetString(PyExc_ValueError, "deliver(): a record outside its batch");
			goto fail;
		}
		view = record_view(batch, spare, start, end);
		spare = NULL;
		if (view == NULL)
			goto fail;
		at[0] = i + 1;				/* handed over: consumed, whatever the callback does */
		ret = PyObject_CallOneArg(callback, view);
		if (Py_REFCNT(view) > 1) {		/* kept: release it, or refuse a kept export */
			if (ret == NULL) {
				release_view_in_error(view);
			} else if (release_view(view) < 0) {
				at[1] = PyErr_ExceptionMatches(PyExc_BufferError);
				Py_CLEAR(ret);
			}
		}
		if (ret != NULL && view_reusable(view))
			spare = view;			/* the next record's */
		else
			Py_DECREF(view);
		if (ret == NULL)
			goto fail;
		if (ret != Py_None) {
			PyObject *stop = PyObject_CallOneArg(stops, ret);

			truth = stop ? PyObject_IsTrue(stop) : -1;
			Py_XDECREF(stop);
			if (truth) {			/* stops (1) or an error (-1) */
				Py_XDECREF(spare);
				if (truth < 0) {
					Py_DECREF(ret);
					return NULL;
				}
				return Py_BuildValue("(KN)", i + 1, ret);
			}
		}
		Py_DECREF(ret);
		closed = PyObject_GetAttr(owner, closed_name);
		truth = closed ? PyObject_IsTrue(closed) : -1;
		Py_XDECREF(closed);
		if (truth < 0)
			goto fail;
		if (truth)
			break;				/* closed: stop after this record */
		/* a callback that never runs Python code (a builtin) never reaches the eval loop's
		 * signal check: make one every 4096 records */
		if ((i & 4095) == 4095 && PyErr_CheckSignals() < 0)
			goto fail;
	}
	Py_XDECREF(spare);
	return Py_BuildValue("(KO)", i < n ? i + 1 : n, Py_None);

fail:
	Py_XDECREF(spare);
	return NULL;
}

static PyMethodDef module_methods[] = {
	{"new_sample", (PyCFunction)(void (*)(void))new_sample, METH_FASTCALL, NULL},
	{"set_errors", (PyCFunction)(void (*)(void))set_errors, METH_FASTCALL, NULL},
	{"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL, NULL},
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
	if (PyType_Ready(&MutexType) < 0 || PyType_Ready(&ProducerType) < 0)
		return NULL;
	if (release_name == NULL && (release_name = PyUnicode_InternFromString("release")) == NULL)
		return NULL;
	if (closed_name == NULL && (closed_name = PyUnicode_InternFromString("_closed")) == NULL)
		return NULL;
	if (reserve_slow == NULL && ((reserve_slow = PyUnicode_InternFromString("_reserve_slow")) == NULL ||
				     (submit_slow = PyUnicode_InternFromString("_submit_slow")) == NULL ||
				     (write_slow = PyUnicode_InternFromString("_write_slow")) == NULL ||
				     (write_batch_slow = PyUnicode_InternFromString("_write_batch_slow")) == NULL))
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
	Py_INCREF(&MutexType);
	if (PyModule_AddObject(m, "Mutex", (PyObject *)&MutexType) < 0) {
		Py_DECREF(&MutexType);
		Py_DECREF(m);
		return NULL;
	}
	Py_INCREF(&ProducerType);
	if (PyModule_AddObject(m, "Producer", (PyObject *)&ProducerType) < 0) {
		Py_DECREF(&ProducerType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
