"""The verifier log is capped at 16 MiB, as libbpf caps it, and a cut log says so.

programs/long_log.o is 3 KB: a bounded loop the verifier walks ~140k instructions
through, then a load through a scalar that it refuses.  At log level 1 the kernel
prints every instruction it processed, some 20 MB.  Without a cap pybpf kept
growing its buffer (up to 1 GiB; the audit saw a 64 MB log and 282 MB of RSS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import pybpf
from pybpf.loader import _LOG_MAX

from conftest import ROOT, program

pytestmark = pytest.mark.kernel

MiB = 1 << 20

_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import pybpf
    out = {}
    try:
        pybpf.load(sys.argv[2]).close()
        out["loaded"] = True
    except pybpf.Error as e:
        out.update(type=type(e).__name__, message=str(e), log_len=len(e.log or ""),
                   log_tail=(e.log or "")[-2000:])
    # VmHWM, not ru_maxrss: execve() folds the parent's (pytest's) peak into ru_maxrss
    out["peak_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status")
                          if l.startswith("VmHWM:")) / 1024
    print(json.dumps(out))
""")


def _load_in_child(path: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(ROOT), path], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cap_is_libbpfs():
    assert _LOG_MAX == 16 * MiB


def test_long_log_is_cut_at_16_mib_and_says_so():
    out = _load_in_child(program("long_log"))
    assert out.get("type") == "VerifierError", out
    msg = out["message"]
    # the reason is the verifier's own, from the end of the log the kernel kept
    assert "invalid mem access 'scalar'" in msg
    assert "invalid mem access 'scalar'" in out["log_tail"]
    assert "cut at 16 MiB" in msg
    assert 0 < out["log_len"] <= 16 * MiB
    # the kernel (6.4+) says how long the whole log would have been: more than what was kept
    if "bytes was cut" in msg:
        whole = int(msg.split("verifier log of ")[1].split()[0])
        assert whole > 16 * MiB
    assert out["peak_mb"] < 256, out["peak_mb"]


def test_short_log_is_whole_and_not_called_cut(no_fd_leak):
    """An ordinary rejection: the whole log, and no word of a cut."""
    with pytest.raises(pybpf.VerifierError) as ei:
        pybpf.load(program("verifier_fail"))
    msg = str(ei.value)
    assert "cut at" not in msg
    assert "the whole log is in the exception's .log" in msg
    assert ei.value.log.rstrip().splitlines()[-1].startswith(("processed", "verification time"))
