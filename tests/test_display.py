"""pybpf.display: struct layouts as SVG, log2 histograms, rich reprs for notebooks.

Pure part: the layout model of programs/layout_demo.o's struct (holes, bitfields
in their unit, a nested struct, tail padding) box by box; its hole and padding
counts against ``inspect --type``'s text for it and for kernel structs; the SVG
rendered by headless Chromium and read back pixel by pixel at the box positions
the layout gives (so a shifted, missing or miscoloured box fails); histograms as
bcc's print_log2_hist prints them; no IPython imported.

Kernel part: layout_demo's ``fill`` run with test_run writes a struct and a
histogram; the map's HTML table, truncation, typed values, Object/ObjectSpec
reprs and Map.histogram() show what it wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib

import pytest

import pybpf
from pybpf import display
from pybpf.inspect import layout as text_layout
from pybpf.spec.btf import BTF, Kind

from conftest import program

# (kind, name, offset, size, depth, bit_offset, bits): struct layout_demo as the C source says
EXPECTED_BOXES = [
    ("field", "kind", 0, 1, 0, None, None),
    ("hole", "pid.hole", 1, 3, 0, None, None),
    ("field", "pid", 4, 4, 0, None, None),
    ("unit", "flags.unit", 8, 2, 0, None, None),
    ("bitfield", "flags", 8, 1, 1, 64, 3),
    ("bitfield", "level", 8, 1, 1, 67, 5),
    ("bitfield", "urgent", 9, 1, 1, 72, 1),
    ("bits", "flags.unit.unused", 9, 1, 1, 73, 7),
    ("hole", "ts.hole", 10, 6, 0, None, None),
    ("field", "ts", 16, 8, 0, None, None),
    ("struct", "where", 24, 8, 0, None, None),
    ("field", "where.tag", 24, 1, 1, None, None),
    ("hole", "where.x.hole", 25, 1, 1, None, None),
    ("field", "where.x", 26, 2, 1, None, None),
    ("field", "where.y", 28, 4, 1, None, None),
    ("field", "comm", 32, 5, 0, None, None),
    ("padding", "padding", 37, 3, 0, None, None),
]


@pytest.fixture(scope="module")
def spec():
    return pybpf.open(program("layout_demo"))


@pytest.fixture(scope="module")
def demo_layout(spec):
    return spec.layout("struct layout_demo")


def test_layout_boxes(spec, demo_layout):
    got = [(b.kind, b.name, b.offset, b.size, b.depth, b.bit_offset, b.bits) for b in demo_layout.boxes]
    assert got == EXPECTED_BOXES
    assert (demo_layout.size, demo_layout.holes, demo_layout.hole_bytes, demo_layout.padding) == (40, 2, 9, 3)
    # every byte of the struct is covered by exactly one depth-0 box: nothing left undrawn
    covered = sorted((b.offset, b.offset + b.size) for b in demo_layout.boxes if b.depth == 0)
    assert covered[0][0] == 0 and covered[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    # str() is inspect --type's text
    assert str(demo_layout) == text_layout(spec.btf, "struct layout_demo")


def _summary(text: str) -> tuple:
    m = re.search(r"/\* size: (\d+), cachelines: \d+, members: \d+(?:, holes: (\d+), sum holes: (\d+))?"
                  r"(?:, padding: (\d+))? \*/", text)
    return tuple(int(x or 0) for x in m.groups())


@pytest.mark.parametrize("name", ["struct sk_buff", "struct task_struct", "struct sock", "struct file",
                                  "struct bpf_prog", "struct inode", "struct net_device", "struct page"])
def test_holes_and_padding_agree_with_inspect(name):
    btf = BTF.load()
    lay = display.layout(btf, name)
    assert _summary(lay.text) == (lay.size, lay.holes, lay.hole_bytes, lay.padding)
    svg = ET.fromstring(lay.svg())
    assert len([g for g in svg.iter("{http://www.w3.org/2000/svg}g")]) >= len(lay.boxes)


def test_every_kernel_struct_lays_out_without_overlap():
    """All of vmlinux's named structs: boxes of one level never overlap nor pass the end, and the
    outermost level tiles the struct from byte 0 to its size (every byte drawn once)."""
    btf = BTF.load()
    n = 0
    for t in btf.by_kind(Kind.STRUCT):
        if not t.name or not t.size:
            continue
        lay = display.layout(btf, t.id)
        n += 1
        for d in range(lay.depth + 1):
            spans = sorted((b.start_bit, b.end_bit) for b in lay.boxes
                           if b.depth == d and b.kind not in ("bits", "bitfield"))
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), (t.name, d)
            assert not spans or spans[-1][1] <= 8 * t.size, (t.name, d)
        top = sorted((b.offset, b.offset + b.size) for b in lay.boxes if b.depth == 0)
        assert top[0][0] == 0 and top[-1][1] == t.size, t.name
        assert all(a[1] == b[0] for a, b in zip(top, top[1:])), (t.name, top)
    assert n > 1000


def test_layout_refuses_non_struct(spec):
    with pytest.raises(pybpf.Error, match="not a struct or union"):
        spec.layout("__u32")


def test_svg_elements(demo_layout):
    svg = ET.fromstring(demo_layout.svg())
    ns = "{http://www.w3.org/2000/svg}"
    groups = {g.get("data-name"): g for g in svg.iter(ns + "g")}
    for kind, name, offset, size, *_ in EXPECTED_BOXES:
        g = groups[name]
        assert (g.get("data-kind"), int(g.get("data-offset")), int(g.get("data-size"))) == (kind, offset, size)
    texts = [t.text for t in svg.iter(ns + "text")]
    for label in ("kind", "pid", "ts", "where", "tag", "x", "y", "comm", "level", "hole 3", "hole 6", "pad 3"):
        assert label in texts
    assert demo_layout._repr_html_() == demo_layout.svg()


# -- the picture, rendered ----------------------------------------------------------------

def _png_pixels(data: bytes) -> tuple:
    """(width, height, rows of RGB tuples) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, hdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def _rgb(hexcolor: str) -> tuple:
    return tuple(int(hexcolor[i:i + 2], 16) for i in (1, 3, 5))


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "headless Chromium is needed to render the layout picture: tools/setup.sh --test installs it"
    return exe


def _screenshot(svg: str, width: int, height: int) -> tuple:
    with tempfile.TemporaryDirectory(prefix="pybpf-svg-") as d:
        page, png = os.path.join(d, "layout.html"), os.path.join(d, "layout.png")
        with open(page, "w") as f:
            f.write('<!doctype html><html><body style="margin:0;background:#ffffff">' + svg + "</body></html>")
        subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--force-device-scale-factor=1", f"--user-data-dir={d}/profile",
                        f"--window-size={width},{height}", f"--screenshot={png}", "file://" + page],
                       check=True, capture_output=True, timeout=120)
        with open(png, "rb") as f:
            return _png_pixels(f.read())


def _expected_rect(kind, offset, size, depth, bit_offset, bits, row_height):
    """Where the box must be, from the byte grid the module documents (not from its own code)."""
    start = bit_offset if bit_offset is not None else 8 * offset
    end = start + (bits if bits is not None else 8 * size)
    out = []
    while start < end:
        row = start // 64
        stop = min(end, (row + 1) * 64)
        x0 = display.LEFT + (start % 64) * display.BYTE_WIDTH // 8
        x1 = x0 + (stop - start) * display.BYTE_WIDTH // 8
        y0 = display.TOP + row * (row_height + display.ROW_GAP) + display.NEST_STRIP * depth
        y1 = display.TOP + row * (row_height + display.ROW_GAP) + row_height
        out.append((x0, y0, x1, y1))
        start = stop
    return out


def test_svg_rendered_matches_geometry(demo_layout):
    assert display.ROW_BYTES == 8 and display.BYTE_WIDTH == 64
    # each kind its own colour, none the background: holes and padding stand out
    assert len({_rgb(c) for c in display.COLORS.values()} | {(255, 255, 255)}) == len(display.COLORS) + 1
    row_height = display.ROW_HEIGHT + display.NEST_STRIP * 1       # one level of nesting in layout_demo
    width, height = 600, display.TOP + 5 * (row_height + display.ROW_GAP) + 40
    w, h, px = _screenshot(demo_layout.svg(), width, height)
    assert (w, h) == (width, height)

    def close(a, b):
        return all(abs(x - y) <= 4 for x, y in zip(a, b))

    checked = 0
    for kind, name, offset, size, depth, bit_offset, bits in EXPECTED_BOXES:
        want = _rgb(display.COLORS[kind])
        for x0, y0, x1, y1 in _expected_rect(kind, offset, size, depth, bit_offset, bits, row_height):
            # away from the labels: the bottom corners for leaves, the strip's right end for parents
            if kind in ("struct", "unit"):
                points = [(x1 - 4, y0 + 3)]
            else:
                points = [(x0 + 3, y1 - 4), (x1 - 4, y1 - 4)] if x1 - x0 >= 8 else [((x0 + x1) // 2, y1 - 4)]
            for x, y in points:
                assert close(px[y][x], want), (name, kind, (x, y), px[y][x], want)
                checked += 1
            # just outside the left edge: not this box's colour (the neighbour or the margin)
            if x0 == display.LEFT:
                assert close(px[y1 - 4][x0 - 3], (255, 255, 255)), (name, "left margin")
    assert checked >= 25
    # the gap between rows is background: boxes end where the grid says
    for row in range(5):
        y = display.TOP + row * (row_height + display.ROW_GAP) + row_height + display.ROW_GAP // 2
        assert close(px[y][display.LEFT + 100], (255, 255, 255)), row
    # nothing drawn past 40 bytes (row 4 ends at byte 40 = the grid's right edge)
    x_end = display.LEFT + 8 * display.BYTE_WIDTH
    assert close(px[display.TOP + 10][x_end + 4], (255, 255, 255))


# -- histograms -----------------------------------------------------------------------------

def test_histogram_text_is_print_log2_hist():
    h = display.histogram([0, 3, 1, 0, 6], unit="usecs")
    assert str(h) == (
        "     usecs               : count    distribution\n"
        "         0 -> 1          : 0        |                                        |\n"
        "         2 -> 3          : 3        |********************                    |\n"
        "         4 -> 7          : 1        |******                                  |\n"
        "         8 -> 15         : 0        |                                        |\n"
        "        16 -> 31         : 6        |****************************************|\n")
    assert h.buckets()[-1] == (16, 31, 6) and h.total == 10
    # trailing empty slots are not printed; an empty histogram says so
    assert str(display.histogram([1, 0, 0, 0])).count("->") == 1
    assert "empty" in str(display.histogram([0] * 27))
    # bcc-style: a mapping slot -> count
    assert display.histogram({0: 2, 3: [1, 1]}).counts == [2, 0, 0, 2]


def test_histogram_wide_uses_bcc_wide_format():
    counts = [0] * 40
    counts[35] = 2
    text = str(display.histogram(counts, unit="nsecs"))
    lines = text.splitlines()
    assert lines[0] == " " * 15 + f"{'nsecs':<29} : count    distribution"
    assert lines[-1].startswith(f"{1 << 35:>20} -> {(1 << 36) - 1:<20} : 2 ")
    assert lines[-1].endswith("|" + "*" * 20 + "|")


def test_histogram_svg_bars():
    h = display.histogram([1, 4, 2], unit="usecs")
    svg = ET.fromstring(h._repr_html_())
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "bar"]
    assert [(int(b.get("data-low")), int(b.get("data-high")), int(b.get("data-count"))) for b in bars] == \
        [(0, 1, 1), (2, 3, 4), (4, 7, 2)]
    widths = [float(b.get("width")) for b in bars]
    assert widths[1] == max(widths) and abs(widths[0] * 4 - widths[1]) < 1 and abs(widths[2] * 2 - widths[1]) < 1


def test_no_ipython_imported():
    code = ("import sys, pybpf, pybpf.display, pybpf.spec.typed\n"
            "s = pybpf.open(sys.argv[1]); s._repr_html_(); s.layout('struct layout_demo')._repr_html_()\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipykernel')], sorted(sys.modules)\n")
    subprocess.run([sys.executable, "-c", code, program("layout_demo")], check=True, timeout=60)


class _Printer:
    """What IPython's pretty printer gives _repr_pretty_: text()."""

    def __init__(self):
        self.out = []

    def text(self, s):
        self.out.append(s)


def test_spec_reprs(spec):
    html = spec._repr_html_()
    for s in ("layout_demo", "fill", "syscall", "demos", "struct layout_demo", "hist"):
        assert s in html
    p = _Printer()
    spec._repr_pretty_(p, False)
    assert "program fill" in p.out[0] and "map demos" in p.out[0]
    p = _Printer()
    spec.layout("struct point")._repr_pretty_(p, False)
    assert "XXX 1 byte hole" in p.out[0]


# -- kernel: maps, objects, typed values -------------------------------------------------------

@pytest.mark.kernel
def test_map_object_and_value_displays(no_fd_leak, spec):
    with spec.load() as obj:
        fill = obj.programs["fill"]
        for i, v in enumerate([1, 3, 5, 100, 100, 1000]):
            assert fill.test_run(ctx=struct.pack("II", i % 4, v)).retval == 0
        demos, hist = obj.maps["demos"], obj.maps["hist"]
        value = demos[0]
        assert (value.kind, value.pid, value.flags, value.level, value.urgent, value.where.x, value.comm) == \
            (7, os.getpid(), 5, 17, 1, 10, "demo")
        # typed value: a table of its fields, nested struct inside
        vh = value._repr_html_()
        for s in ("<code>kind</code>", "<code>7</code>", "<code>level</code>", "<code>17</code>", "point",
                  "<code>y</code>", "<code>20</code>", "&#x27;demo&#x27;"):
            assert s in vh
        p = _Printer()
        value._repr_pretty_(p, False)
        assert p.out == [repr(value)] and "where=point(tag=1, x=10, y=20)" in p.out[0]
        # the map as a table, truncated with a count
        mh = display.map_html(demos, max_rows=2)
        assert mh.count('class="pybpf-value"><tr><th colspan="2"') == 2 * 2   # 2 rows, each a struct + point
        assert "… 2 more entries (2 shown)" in mh and "4 entries" in mh
        assert "… " not in demos._repr_html_()          # 4 entries fit in MAX_ROWS
        # histogram: slots 0 (1), 1 (3), 2 (5), 6 (100 x2), 9 (1000)
        h = hist.histogram()
        assert h.counts[:10] == [1, 1, 1, 0, 0, 0, 2, 0, 0, 1] and sum(h.counts) == 6
        assert hist.histogram(0) == h
        assert "64 -> 127        : 2        |****************************************|" in str(h)
        hh = hist._repr_html_()
        assert 'class="pybpf-histogram"' in hh and 'data-low="64" data-high="127" data-count="2"' in hh
        p = _Printer()
        hist._repr_pretty_(p, False)
        assert "distribution" in p.out[0]
        with pytest.raises(pybpf.Error, match="does not hold log2 histograms"):
            demos.histogram()
        oh = obj._repr_html_()
        assert "fill" in oh and str(fill.id) in oh and "map demos" in oh and "map hist" in oh
        p = _Printer()
        obj._repr_pretty_(p, False)
        assert f"program fill: 'syscall' id {fill.id}" in p.out[0]
    assert "closed" in obj._repr_html_()


@pytest.mark.kernel
def test_hash_of_hists_syscall_latency(no_fd_leak):
    """syscall_latency.o's hists (hash of struct hist {slots[27]; total_ns}) as histograms."""
    spec = pybpf.open(program("syscall_latency"))
    spec.variables["targ_tgid"].set(os.getpid())
    with spec.load() as obj:
        obj.attach()
        for _ in range(50):
            os.getppid()
        hs = display.histograms(obj.maps["hists"], unit="usecs")
        nr_getppid = 110   # x86-64
        assert nr_getppid in [k.nr for k, _ in hs]
        h = next(h for k, h in hs if k.nr == nr_getppid)
        assert h.total >= 50
        assert obj.maps["hists"].histogram().total >= h.total
        assert "usecs" in str(h)
