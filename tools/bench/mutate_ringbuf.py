"""Mutation pass over the ring buffer code: applies each mutant (one small bug)
to a COPY of the tree, runs the ring buffer tests there, reverts.

    cp -r pybpf tests programs setup.py pyproject.toml /tmp/mut/
    (cd /tmp/mut && python setup.py -q build_ext --inplace)
    python tools/bench/mutate_ringbuf.py /tmp/mut [PREFIX...]

A copy, so that C mutants (rebuilt in place there) never reach the installed
helper other test runs use.  Prints killed/SURVIVED per mutant, with the tests
that failed.  Needs root and the kernel, as the tests do.
"""
import pathlib
import signal
import subprocess
import sys


def DFL():  # children get SIGINT back (a background shell ignores it): the Ctrl-C test needs it
    signal.signal(signal.SIGINT, signal.SIG_DFL)


ROOT = pathlib.Path(sys.argv[1]).resolve()
MUTANTS = [
 ("C1 scan: record size rounded down", "pybpf/_atomics.c", "((size + RINGBUF_HDR_SZ + 7) & ~7ULL)", "((size + RINGBUF_HDR_SZ) & ~7ULL)"),
 ("C2 scan: BUSY ignored", "pybpf/_atomics.c", "if ((len & RINGBUF_BUSY_BIT) || next > prod)", "if (next > prod)"),
 ("C3 scan: DISCARD bit kept in the length", "pybpf/_atomics.c", "uint32_t size = len & ~(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT);", "uint32_t size = len & ~RINGBUF_BUSY_BIT;"),
 ("C4 scan: discarded records handed out", "pybpf/_atomics.c", "if (len & RINGBUF_DISCARD_BIT) {", "if (0) {"),
 ("C5 scan: record past producer_pos read", "pybpf/_atomics.c", "if ((len & RINGBUF_BUSY_BIT) || next > prod)", "if ((len & RINGBUF_BUSY_BIT))"),
 ("C6 scan: uniform run check off", "pybpf/_atomics.c", "else if (size != common || start != expect)", "else if (size != common)"),
 ("C7 commit: BUSY left set", "pybpf/_atomics.c", "(uint32_t)value, __ATOMIC_ACQ_REL);", "(uint32_t)value | RINGBUF_BUSY_BIT, __ATOMIC_ACQ_REL);"),
 ("C8 sample: exports not counted", "pybpf/_atomics.c", "\tself->exports++;\n\treturn 0;", "\treturn 0;"),
 ("P1 _stop_at: consumer_pos rounded down", "pybpf/ringbuf/reader.py", "end = cons + ((ends[k] + 7) & _ALIGN)", "end = cons + (ends[k] & _ALIGN)"),
 ("P2 _consume: uniform stride rounded down", "pybpf/ringbuf/reader.py", "                stride = (common + _ROUND) & _ALIGN\n", "                stride = (common + _HDR) & _ALIGN\n"),
 ("P3 _count_discards: rounded down", "pybpf/ringbuf/reader.py", "cons += ((length & _LEN_MASK) + _ROUND) & _ALIGN", "cons += ((length & _LEN_MASK) + _HDR) & _ALIGN"),
 ("P4 _count_discards: DISCARD not counted", "pybpf/ringbuf/reader.py", "count += bool(length & _DISCARD)", "count += 0"),
 ("P5 _read_typed: short record end rounded down", "pybpf/ringbuf/reader.py", "end = cons + ((ends[0] + 7) & _ALIGN)", "end = cons + (ends[0] & _ALIGN)"),
 ("P6 _read_typed: stop before record k off by a header", "pybpf/ringbuf/reader.py", "end = cons + starts[k] - _HDR", "end = cons + starts[k]"),
 ("P7 _read: unpack stride rounded down", "pybpf/ringbuf/reader.py", "_unpack_records(records, data, base + out[0] - _HDR, common, (common + _ROUND) & _ALIGN, n)", "_unpack_records(records, data, base + out[0] - _HDR, common, (common + _HDR + 7) & ~15 if common % 8 > 4 else (common + _ROUND) & _ALIGN, n)"),
 ("P8 _read_typed: cap bound rounded down", "pybpf/ringbuf/reader.py", "cap = min(remaining, (limit - cons) // ((item + _ROUND) & _ALIGN))", "cap = min(remaining, (limit - cons) // ((item + _ROUND + 8) & _ALIGN))"),
 ("M1 _LEN_MASK keeps DISCARD", "pybpf/ringbuf/_mapping.py", "_LEN_MASK = 0xFFFFFFFF & ~(_BUSY | _DISCARD)", "_LEN_MASK = 0xFFFFFFFF & ~_BUSY"),
 ("U1 reserve: total rounded down", "pybpf/ringbuf/user.py", "        total = (n + _ROUND) & _ALIGN\n        self._take()", "        total = (n + _HDR) & _ALIGN\n        self._take()"),
 ("U2 write: total rounded down", "pybpf/ringbuf/user.py", "total = self._check_size(n) if n > self.max_sample else (n + _ROUND) & _ALIGN", "total = self._check_size(n) if n > self.max_sample else (n + _HDR) & _ALIGN"),
 ("U3 write_uniform: stride rounded down", "pybpf/ringbuf/user.py", "        stride = (length + _ROUND) & _ALIGN\n        want", "        stride = (length + _HDR) & _ALIGN\n        want"),
 ("U4 write_each: total rounded down", "pybpf/ringbuf/user.py", "            total = (size + _ROUND) & _ALIGN\n            if self.size", "            total = (size + _HDR) & _ALIGN\n            if self.size"),
 ("U5 _check_size: rounded down", "pybpf/ringbuf/user.py", "        return (n + _ROUND) & _ALIGN\n", "        return (n + _HDR) & _ALIGN\n"),
 ("U6 reserve: header not BUSY", "pybpf/ringbuf/user.py", "                self._hdr[index] = (n | _BUSY) << _HDR_SHIFT", "                self._hdr[index] = n << _HDR_SHIFT"),
 ("U7 discard: DISCARD not set", "pybpf/ringbuf/user.py", 'self._commit(sample, _DISCARD, "discard")', 'self._commit(sample, 0, "discard")'),
 ("U8 _room: a full ring refused", "pybpf/ringbuf/user.py", "        return self.size - (self._prod - self._cons) >= total\n", "        return self.size - (self._prod - self._cons) > total\n"),
 ("U9 max_sample: size instead of size - 8", "pybpf/ringbuf/user.py", "self.max_sample = min(size - _HDR, _DYNPTR_MAX_SIZE)", "self.max_sample = min(size, _DYNPTR_MAX_SIZE)"),
 ("U10 _packer: pad off by one", "pybpf/ringbuf/user.py", "        pad = stride - _HDR - length\n        one = f\"{_HDR}x{length}s\" + (f\"{pad}x\" if pad else \"\")\n        headers", "        pad = max(stride - _HDR - length - 1, 0)\n        one = f\"{_HDR}x{length}s\" + (f\"{pad}x\" if pad else \"\")\n        headers"),
 ("U11 close: pending samples left BUSY", "pybpf/ringbuf/user.py", "            sample._commit(len(sample) | _DISCARD, True)\n", "            pass\n"),
 ("R1 callback return ignored", "pybpf/ringbuf/reader.py", "    return isinstance(ret, int) and not isinstance(ret, bool) and ret < 0", "    return False"),
 ("F1 perf: sample length cut by one", "pybpf/perfbuf.py", "sample = record[12:12 + raw]", "sample = record[12:11 + raw]"),
 # equivalent mutants, kept out: perfbuf's "off + length <= size" as "<" (the
 # copy path gives the same bytes); _write_uniform's stride rounded down (its
 # struct format fails and write_batch falls back to the per-sample path)
]
TESTS = ["tests/test_ringbuf.py", "tests/test_ringbuf_batch.py", "tests/test_ringbuf_asyncio.py",
         "tests/test_perfbuf.py", "tests/test_atomics.py"]
only = sys.argv[2:]
results = {}
def build():
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=ROOT, capture_output=True, check=True)
for name, path, old, new in MUTANTS:
    if only and not any(name.startswith(o) for o in only):
        continue
    f = ROOT / path
    orig = f.read_text()
    assert orig.count(old) >= 1, (name, "not found")
    f.write_text(orig.replace(old, new, 1))
    try:
        if path.endswith(".c"):
            build()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=DFL)
        failed = [l.split(" ")[1] for l in p.stdout.splitlines() if l.startswith("FAILED") or l.startswith("ERROR")]
        status = "killed" if p.returncode else "SURVIVED"
        results[name] = (status, failed[:4] or [p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-200:]])
    except subprocess.TimeoutExpired:
        results[name] = ("killed (timeout)", [])
    finally:
        f.write_text(orig)
        if path.endswith(".c"):
            build()
    print(f"{results[name][0]:9s} {name}: {results[name][1]}", flush=True)
print(sum(r[0].startswith("killed") for r in results.values()), "of", len(results), "killed")
