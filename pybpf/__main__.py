"""``python -m pybpf``: see :mod:`pybpf.cli`.

Ctrl-C at any moment exits with 130 and no traceback: ``pybpf/__init__.py``
covers the imports, :func:`pybpf.cli.main` the work (its handler turns the
first SIGINT into KeyboardInterrupt, which unloads everything on its way out,
and a second one into an immediate exit: the kernel releases every fd of an
exiting process).
"""

import sys

try:
    from pybpf.cli import main
    code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
