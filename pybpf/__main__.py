"""``python -m pybpf``: see :mod:`pybpf.cli`."""

import sys

from pybpf.cli import main

sys.exit(main())
