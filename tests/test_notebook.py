"""examples/lab.ipynb, executed as Jupyter would (nbclient, an ipykernel in this Python),
and its outputs checked: the spec's tables, the layout picture (SVG boxes of the
struct's members, holes and padding), the map's table of typed values, the histogram's
bars (HTML) and print_log2_hist text, and syscall_latency's real histogram.

Needs nbclient, nbformat and ipykernel (test dependencies: tools/setup.sh --test).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

import pybpf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "lab.ipynb")


_EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
client = NotebookClient(nb, timeout=120, startup_timeout=120, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}})
client.execute()
nbformat.write(nb, sys.argv[2])
"""


def _run_notebook(tmp_path):
    """The executed notebook. nbclient runs in a child process (its ZeroMQ sockets are not
    ours to account for), its kernel in a grandchild, both gone when this returns."""
    import nbformat
    done = tmp_path / "lab.executed.ipynb"
    subprocess.run([sys.executable, "-c", _EXECUTE, NOTEBOOK, str(done), os.path.dirname(NOTEBOOK)],
                   check=True, timeout=600, cwd=ROOT)
    return nbformat.read(str(done), as_version=4)


def _outputs(nb) -> dict:
    """tag -> {'html': ..., 'text': ...} of each tagged code cell."""
    out = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tag = cell.metadata.get("tags", [""])[0]
        html, text = "", ""
        for o in cell.outputs:
            assert o.output_type != "error", (tag, o.get("ename"), o.get("evalue"))
            if o.output_type in ("execute_result", "display_data"):
                html += o.data.get("text/html", "")
                text += o.data.get("text/plain", "")
            elif o.output_type == "stream":
                text += o.text
        out[tag] = {"html": html, "text": text}
    return out


@pytest.mark.kernel
def test_lab_notebook(no_fd_leak, tmp_path):
    nb = _run_notebook(tmp_path)
    out = _outputs(nb)

    spec = out["spec"]["html"]
    for s in ("object layout_demo", "<td>fill</td>", "<td>demos</td>", "struct layout_demo", "struct hist"):
        assert s in spec, s

    svg = out["layout"]["html"]
    assert svg.lstrip().startswith("<svg") and 'class="pybpf-layout"' in svg
    for name, kind in (("kind", "field"), ("pid.hole", "hole"), ("pid", "field"), ("flags", "bitfield"),
                       ("level", "bitfield"), ("urgent", "bitfield"), ("ts.hole", "hole"), ("where", "struct"),
                       ("where.tag", "field"), ("where.x.hole", "hole"), ("where.y", "field"),
                       ("comm", "field"), ("padding", "padding")):
        assert f'data-name="{name}" data-kind="{kind}"' in svg, name
    assert "2 holes (9 bytes), 3 bytes of padding" in svg
    assert "/* XXX 3 bytes hole, try to pack */" in out["layout-text"]["text"]
    assert "padding: 3" in out["layout-text"]["text"]

    table = out["map"]["html"]
    assert "map demos" in table and "4 entries" in table and "struct layout_demo" in table
    assert table.count("<code>kind</code>") == 4 and "&#x27;demo&#x27;" in table
    value = out["value"]
    assert "<code>level</code></td><td><code>17</code>" in value["html"]
    assert re.search(r"layout_demo\(kind=7, pid=\d+, flags=5, level=17, urgent=1", value["text"])

    # 1 3 5 9 100 120 1000 70000 -> slots 0 1 2 3 6 6 9 16 (16 is past the 16 slots: not counted)
    bars = re.findall(r'class="bar" data-low="(\d+)" data-high="(\d+)" data-count="(\d+)"',
                      out["histogram"]["html"])
    assert [(int(lo), int(hi), int(c)) for lo, hi, c in bars] == \
        [(0, 1, 1), (2, 3, 1), (4, 7, 1), (8, 15, 1), (16, 31, 0), (32, 63, 0), (64, 127, 2),
         (128, 255, 0), (256, 511, 0), (512, 1023, 1)]
    text = out["histogram-text"]["text"]
    assert "     value               : count    distribution" in text
    assert "        64 -> 127        : 2        |****************************************|" in text

    # the kernel process is gone and with it what it loaded: the programs' ids are free
    prog_ids = [int(i) for i in re.findall(r"program fill: 'syscall' id (\d+)", out["object"]["text"])]
    map_ids = [int(i) for i in re.findall(r"\(id (\d+)\)</li>", out["object"]["html"])]
    assert len(prog_ids) == 1 and len(map_ids) == 2
    for prog_id in prog_ids:
        with pytest.raises(pybpf.Error, match="no BPF program with id"):
            pybpf.Program.from_id(prog_id)
    for map_id in map_ids:
        # a map's id goes when its last reference does, and the program's reference is dropped
        # only when the program is freed, after an RCU grace period (kernel/bpf/syscall.c
        # __bpf_prog_put_noref -> call_rcu): give that up to 2 s
        deadline = time.monotonic() + 2
        while True:
            try:
                pybpf.Map.from_id(map_id).close()
            except pybpf.Error as e:
                assert re.search("no BPF map with id|no map with id", str(e)), e
                break
            assert time.monotonic() < deadline, f"map {map_id} still in the kernel 2 s after its process exited"
            time.sleep(0.02)

    lat = out["latency"]["html"]
    assert "getppid latency" in lat
    counts = [int(c) for c in re.findall(r'class="bar" data-low="\d+" data-high="\d+" data-count="(\d+)"', lat)]
    assert sum(counts) >= 200
