"""``python -m pybpf``: see :mod:`pybpf.cli`.

Ctrl-C at any moment exits with 130 and no traceback: ``pybpf/__init__.py``
covers the imports, :func:`pybpf.cli.main` the work (its handler turns the
first SIGINT into KeyboardInterrupt, which unloads everything on its way out,
and a second one into an immediate exit: the kernel releases every fd of an
exiting process).

At the exit, everything the command made is closed: ``gc.freeze()`` spares the
interpreter's shutdown a collection of the ~7000 objects the imports made
(module functions, classes, enums: ~4 ms of every command).  Only this process,
whose whole life is the command; ``import pybpf`` changes nothing of the kind.
"""

import sys

try:
    from pybpf.cli import main
    code = main()
except KeyboardInterrupt:
    code = 130
import gc  # noqa: E402
gc.freeze()
sys.exit(code)
