"""Mutation pass over the ring buffer code (pybpf/_atomics.c, pybpf/ringbuf/, pybpf/ringbuf/perf.py).

    python tools/bench/mutate_ringbuf.py [ID...] [-- mutate.py options]

The mutants are tools/mutate.py's "ringbuf" set; this runs that engine on them
(copies of the tree at HEAD, the C helper rebuilt there for C mutants, never the
working tree).  Prints killed/SURVIVED per mutant with the tests that failed.
Needs root and the kernel, as the tests do.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import mutate  # noqa: E402

args = sys.argv[1:]
ids, rest = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
sys.exit(mutate.main(["--set", "ringbuf", *[a for i in ids for a in ("--only", i)], *rest]))
