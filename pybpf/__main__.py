"""``python -m pybpf`` and the ``pybpf`` console script (:func:`run`): see :mod:`pybpf.cli`.

Ctrl-C at any moment exits with 130 and no traceback: ``pybpf/__init__.py``
covers the imports, :func:`pybpf.cli.main` the work (its handler turns the
first SIGINT into KeyboardInterrupt, which unloads everything on its way out,
and a second one into an immediate exit: the kernel releases every fd of an
exiting process).

At the exit, everything the command made is closed, and the process leaves
without the interpreter's shutdown (``os._exit`` once the output is flushed):
the shutdown puts back the default action of SIGINT before it ends, so a Ctrl-C
arriving then killed the process by the signal with its unflushed output lost
(seen in 1 of ~16 trials that sent SIGINT ~50 ms into the command), and its
garbage collection of the imports' objects cost ~4 ms of every command.  Only
this process, whose whole life is the command; ``import pybpf`` changes nothing
of the kind.
"""

import os
import sys


def run():
    """The command: ``python -m pybpf`` and the ``pybpf`` console script.  Never returns: the
    process leaves with the command's exit code through ``os._exit`` (see above)."""
    try:
        from pybpf.cli import main
        code = main()
    except KeyboardInterrupt:
        code = 130
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except KeyboardInterrupt:
        code = 130
    except (OSError, ValueError):       # a closed or broken pipe: nothing more can be said
        pass
    os._exit(code)


if __name__ == "__main__":
    run()
