"""Pictures and rich displays for notebooks: struct layouts, histograms, tables.

Nothing here imports IPython: Jupyter asks objects for ``_repr_html_()`` (a str)
and IPython's pretty printer for ``_repr_pretty_(p, cycle)``; both are plain
methods.  What is drawn:

- :class:`Layout` (``layout(btf, "struct x")``, ``spec.layout("struct x")``): a
  struct as boxes on a byte grid, :data:`ROW_BYTES` bytes a row, each byte
  :data:`BYTE_WIDTH` pixels wide (so a bit is 8 pixels).  Holes and tail padding
  are shaded boxes of their own, bitfields are drawn inside their storage unit
  (unused bits shaded), nested structs hold their members' boxes.  Holes and
  padding follow the rules of ``inspect --type`` (pahole's), so the picture and
  the text agree.
- :class:`Histogram` (``histogram(counts)``, ``Map.histogram()``): log2 buckets
  as bcc's / libbpf-tools' ``print_log2_hist`` prints them (``str()``), and as
  SVG bars (``_repr_html_``).
- HTML tables for maps, objects and typed values (used by their ``_repr_html_``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from .errors import Error
from .spec.btf import BTF, MAX_RESOLVE_DEPTH, Kind

#: bytes in one row of a layout picture
ROW_BYTES = 8
#: pixels per byte (8 per bit) in a layout picture
BYTE_WIDTH = 64
#: left margin (offset labels) and top margin (title) of a layout picture, pixels
LEFT = 48
TOP = 28
#: height of a row with no nesting, and what each level of nesting adds (the parent's label strip)
ROW_HEIGHT = 44
NEST_STRIP = 14
ROW_GAP = 6
#: fill colours by box kind (a test reads them back from a rendered picture)
COLORS = {
    "field": "#9ec5fe",      # a plain member
    "struct": "#d1e7dd",     # a nested struct or union (its members drawn inside)
    "unit": "#fff3cd",       # the storage unit of bitfields
    "bitfield": "#ffc107",   # one bitfield
    "bits": "#adb5bd",       # unused bits of a bitfield unit
    "hole": "#6c757d",       # a hole between members
    "padding": "#dc3545",    # padding at the end of a struct
}
#: map entries shown in a map's table before "... N more"
MAX_ROWS = 20


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


# -- struct layouts ---------------------------------------------------------------------

@dataclass
class Box:
    """One box of a layout: a member, a nested member, a hole, padding, a bitfield unit.

    ``offset``/``size`` are bytes from the start of the outermost struct; bitfields
    (and unused bits) have ``bit_offset``/``bits`` instead (``offset``/``size`` then
    cover the bytes they touch).  ``depth`` is the nesting level (0: a member of the
    outermost struct; its children are at depth + 1)."""

    kind: str
    name: str
    type: str
    offset: int
    size: int
    depth: int = 0
    bit_offset: int | None = None
    bits: int | None = None

    @property
    def start_bit(self) -> int:
        return self.bit_offset if self.bit_offset is not None else 8 * self.offset

    @property
    def end_bit(self) -> int:
        return self.start_bit + (self.bits if self.bits is not None else 8 * self.size)


@dataclass
class Layout:
    """The layout of a struct or union: :attr:`boxes` in drawing order (a parent before its children).

    ``holes`` / ``hole_bytes`` / ``padding`` count the outermost struct only, as
    ``inspect --type`` does; the boxes show nested structs' holes too."""

    name: str
    kind: str            # "struct" or "union"
    size: int
    boxes: list = field(default_factory=list)
    holes: int = 0
    hole_bytes: int = 0
    padding: int = 0
    text: str = ""       # the pahole-like text of inspect --type

    @property
    def depth(self) -> int:
        """The deepest nesting level of any box."""
        return max((b.depth for b in self.boxes), default=0)

    @property
    def row_height(self) -> int:
        return ROW_HEIGHT + NEST_STRIP * self.depth

    def rows(self) -> int:
        return max(1, -(-self.size // ROW_BYTES))

    def rects(self, box: Box) -> list:
        """Where ``box`` is drawn: one (x, y, width, height) per row it spans, in pixels."""
        out = []
        start, end = box.start_bit, box.end_bit
        row_bits = 8 * ROW_BYTES
        bit_w = BYTE_WIDTH / 8
        while start < end:
            row = start // row_bits
            stop = min(end, (row + 1) * row_bits)
            x = LEFT + (start - row * row_bits) * bit_w
            y = TOP + row * (self.row_height + ROW_GAP) + NEST_STRIP * box.depth
            out.append((x, y, (stop - start) * bit_w, self.row_height - NEST_STRIP * box.depth))
            start = stop
        return out

    def svg(self) -> str:
        """The picture, as an inline ``<svg>`` element."""
        width = LEFT + ROW_BYTES * BYTE_WIDTH + 8
        height = TOP + self.rows() * (self.row_height + ROW_GAP) + 4
        summary = f"{self.kind} {self.name}: {self.size} bytes"
        if self.holes:
            summary += f", {self.holes} hole{'s' if self.holes != 1 else ''} ({self.hole_bytes} bytes)"
        if self.padding:
            summary += f", {self.padding} bytes of padding"
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="pybpf-layout" width="{width}" '
               f'height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
               f'<title>{_esc(summary)}</title>',
               f'<text x="4" y="16" font-size="13" font-weight="bold">{_esc(summary)}</text>']
        for row in range(self.rows()):
            y = TOP + row * (self.row_height + ROW_GAP)
            out.append(f'<text x="{LEFT - 6}" y="{y + self.row_height / 2 + 4}" text-anchor="end" '
                       f'fill="#555">{row * ROW_BYTES}</text>')
        for box in self.boxes:
            rects = self.rects(box)
            tip = _box_tip(box)
            for i, (x, y, w, h) in enumerate(rects):
                out.append(f'<g class="box {box.kind}" data-name="{_esc(box.name)}" data-kind="{box.kind}" '
                           f'data-offset="{box.offset}" data-size="{box.size}"'
                           + (f' data-bit-offset="{box.bit_offset}" data-bits="{box.bits}"'
                              if box.bit_offset is not None else "")
                           + f'><title>{_esc(tip)}</title>'
                           f'<rect x="{x:g}" y="{y:g}" width="{w:g}" height="{h:g}" '
                           f'fill="{COLORS[box.kind]}" stroke="#212529" stroke-width="1"/>')
                label = _box_label(box)
                if label and i == 0 or (label and box.kind in ("hole", "padding")):
                    if box.kind in ("struct", "unit"):    # the parent's strip above its children
                        out.append(f'<text x="{x + 3:g}" y="{y + 10:g}" fill="#000">'
                                   f'{_esc(_fit(label, w))}</text>')
                    else:
                        out.append(f'<text x="{x + w / 2:g}" y="{y + h / 2 + 4:g}" text-anchor="middle" '
                                   f'fill="{"#fff" if box.kind in ("hole", "padding") else "#000"}">'
                                   f'{_esc(_fit(label, w))}</text>')
                out.append('</g>')
        out.append('</svg>')
        return "\n".join(out)

    def _repr_html_(self) -> str:
        return self.svg()

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.text or repr(self))

    def __str__(self) -> str:
        return self.text


def _fit(label: str, width: float) -> str:
    """The label cut to what fits in ``width`` pixels (about 7 px a character at 11 px monospace)."""
    n = max(int((width - 4) // 7), 0)
    if len(label) <= n:
        return label
    return label[:max(n - 1, 0)] + "…" if n > 1 else ""


def _box_label(box: Box) -> str:
    if box.kind == "hole":
        return f"hole {box.size}" if box.size else "hole"
    if box.kind == "padding":
        return f"pad {box.size}"
    if box.kind == "bits":
        return ""
    if box.kind == "unit":
        return box.type
    return box.name.rsplit(".", 1)[-1]


def _box_tip(box: Box) -> str:
    if box.bit_offset is not None:
        where = f"bits {box.bit_offset}..{box.bit_offset + box.bits - 1} (byte {box.bit_offset // 8}:" \
                f"{box.bit_offset % 8}, {box.bits} bit{'s' if box.bits != 1 else ''})"
    else:
        where = f"bytes {box.offset}..{box.offset + box.size - 1} ({box.size} byte{'s' if box.size != 1 else ''})"
    what = {"hole": "hole", "padding": "padding", "bits": "unused bits"}.get(box.kind)
    return f"{what}: {where}" if what else f"{box.type} {box.name}: {where}"


def _decl(btf: BTF, type_id: int) -> str:
    t = btf[type_id] if type_id else None
    return btf.type_name(type_id) if t is not None else "void"


def _struct_type(btf: BTF, type_spec):
    if isinstance(type_spec, str):
        t = btf.find(type_spec)
    else:
        t = btf[type_spec] if isinstance(type_spec, int) else type_spec
    t = btf.resolve(t.id)
    if t is None or t.kind not in (Kind.STRUCT, Kind.UNION):
        what = btf.type_name(t.id) if t is not None else "void"
        raise Error(f"{type_spec!r} is not a struct or union (it is {what}): give a struct or union type")
    return t


def _walk(btf: BTF, t, base_bits: int, depth: int, prefix: str, boxes: list, level: int = 0) -> tuple:
    """Append the boxes of struct/union ``t`` placed at ``base_bits``; returns (holes, hole bytes, padding)."""
    if level > MAX_RESOLVE_DEPTH:
        raise btf.too_deep(t.id, "nested structs")
    holes = hole_bytes = 0
    end = 0                          # end of the previous member, bits from the start of t
    unit = None                      # the open bitfield unit box: (box, end bit relative to t)
    members = list(t.members)
    union = t.kind == Kind.UNION

    def close_unit(upto: int) -> None:
        nonlocal unit
        if unit is None:
            return
        ubox, used_end = unit
        unit_end = min(ubox.end_bit - base_bits, upto)
        ubox.size = max(1, -(-unit_end // 8) - ubox.offset + base_bits // 8)
        if used_end < unit_end:   # bits of the unit no bitfield uses
            boxes.append(Box("bits", f"{ubox.name}.unused", "", (base_bits + used_end) // 8,
                             -(-(unit_end - used_end) // 8), depth + 1, base_bits + used_end, unit_end - used_end))
        unit = None

    for i, m in enumerate(members):
        size = btf.size_of(m.type_id) if m.type_id else 0
        name = prefix + (m.name or f"(anon {i})")
        mt = btf.resolve(m.type_id)
        if m.bitfield_size:
            # bitfields live in a unit of their declared type, aligned to its size (C's rule for
            # the storage unit; BTF gives only bit offsets); several share it while they fit
            ubits = 8 * max(size, 1)
            ustart = m.bit_offset // ubits * ubits
            bf_end = m.bit_offset + m.bitfield_size
            # where the region may reach: the next plain member, or the end of the struct
            next_off = min((8 * n.offset for n in members[i + 1:] if not n.bitfield_size
                            and 8 * n.offset >= bf_end), default=8 * t.size)
            if unit is not None:
                ubox = unit[0]
                u0, u1 = ubox.start_bit - base_bits, ubox.end_bit - base_bits
                if u0 <= m.bit_offset < u1 < bf_end:
                    # it straddles the open unit's end (bool a:1; u32 b:31): one region for both
                    new_end = min(max(u1, -(-bf_end // 8) * 8), next_off, 8 * t.size)
                    if ubox.bits is not None:
                        ubox.bits = new_end - u0
                    ubox.size = -(-(base_bits + new_end) // 8) - ubox.offset
                    if _decl(btf, m.type_id) not in ubox.type.split(", "):
                        ubox.type += ", " + _decl(btf, m.type_id)
                elif not (u0 <= m.bit_offset and bf_end <= u1):
                    close_unit(m.bit_offset)
            if unit is None:
                drawn = max((b.end_bit - base_bits for b in boxes if b.depth == depth), default=0)
                if not union:     # the unit must not cover what is before it
                    ustart = max(ustart, end, drawn)
                if not union and ustart - max(end, drawn) >= 8:
                    # drawn, not counted: inspect --type (pahole) counts holes before plain members only
                    first = -(-max(end, drawn) // 8)
                    if ustart // 8 > first:
                        boxes.append(Box("hole", f"{name}.hole", "", base_bits // 8 + first,
                                         ustart // 8 - first, depth))
                uend = min(ustart + ubits, next_off, 8 * t.size)
                ubox = Box("unit", f"{name}.unit", _decl(btf, m.type_id), (base_bits + ustart) // 8,
                           -(-(uend - ustart) // 8), depth, base_bits + ustart if ustart % 8 else None,
                           (uend - ustart) if ustart % 8 else None)
                boxes.append(ubox)
                unit = [ubox, ustart]
            if m.bit_offset > unit[1]:
                boxes.append(Box("bits", f"{name}.unused", "", (base_bits + unit[1]) // 8,
                                 -(-(m.bit_offset - unit[1]) // 8), depth + 1, base_bits + unit[1],
                                 m.bit_offset - unit[1]))
            boxes.append(Box("bitfield", name, f"{_decl(btf, m.type_id)}:{m.bitfield_size}",
                             (base_bits + m.bit_offset) // 8,
                             -(-((m.bit_offset % 8) + m.bitfield_size) // 8), depth + 1,
                             base_bits + m.bit_offset, m.bitfield_size))
            unit[1] = max(unit[1], m.bit_offset + m.bitfield_size)
            end = max(end, m.bit_offset + m.bitfield_size)
            continue
        close_unit(m.bit_offset)
        # pahole's rule (inspect --type): a gap of 8 bits or more before a member is a hole
        if not union and m.bit_offset > end and m.bit_offset - end >= 8:
            gap = (m.bit_offset - end) // 8
            holes += 1
            hole_bytes += gap
            # drawn after what is drawn: the unit of a bitfield before it may reach into the gap
            drawn = max((b.offset + b.size for b in boxes if b.depth == depth), default=0)
            start = max(base_bits // 8 + m.offset - gap, drawn)
            if start < base_bits // 8 + m.offset:
                boxes.append(Box("hole", f"{name}.hole", "", start, base_bits // 8 + m.offset - start, depth))
        off = (base_bits + m.bit_offset) // 8
        if mt is not None and mt.kind in (Kind.STRUCT, Kind.UNION) and not union:
            boxes.append(Box("struct", name, _decl(btf, m.type_id), off, size, depth))
            if mt.kind == Kind.STRUCT:
                _walk(btf, mt, base_bits + m.bit_offset, depth + 1, name + ".", boxes, level + 1)
        else:
            boxes.append(Box("field", name, _decl(btf, m.type_id), off, size, depth))
        end = max(end, m.bit_offset + 8 * size)
    close_unit(8 * t.size)
    # pahole's count (inspect --type) is from the last member's last bit; the picture's box
    # starts after what is drawn (a bitfield unit may reach further than its bits)
    padding = t.size - (end + 7) // 8 if not union else 0
    drawn = max((b.offset + b.size for b in boxes if b.depth == depth), default=base_bits // 8) - base_bits // 8
    if padding > 0 and t.size > drawn:
        boxes.append(Box("padding", f"{prefix}padding", "", base_bits // 8 + drawn, t.size - drawn, depth))
    return holes, hole_bytes, max(padding, 0)


def layout(btf: BTF, type_spec) -> Layout:
    """The :class:`Layout` of a struct or union of ``btf``: a C spelling (``"struct event"``),
    a type id or a BTF Type.  ``str()`` of it is ``inspect --type``'s text; in a notebook it
    is drawn (``_repr_html_``: an SVG)."""
    from .inspect import layout as text_layout
    t = _struct_type(btf, type_spec)
    boxes: list = []
    if t.kind == Kind.UNION:
        # a union's members all start at 0: one box, its members named in it (and in the text)
        names = " | ".join(m.name or "(anon)" for m in t.members)
        boxes.append(Box("field", names, f"union {t.name or '(anon)'}", 0, t.size, 0))
        holes = hole_bytes = padding = 0
    else:
        holes, hole_bytes, padding = _walk(btf, t, 0, 0, "", boxes)
    word = "struct" if t.kind == Kind.STRUCT else "union"
    return Layout(t.name or "(anon)", word, t.size, boxes, holes, hole_bytes, padding, text_layout(btf, t))


def layout_svg(btf: BTF, type_spec) -> str:
    """The layout picture of a struct of ``btf`` (see :func:`layout`) as an SVG string."""
    return layout(btf, type_spec).svg()


# -- histograms -------------------------------------------------------------------------

class Histogram:
    """A log2 histogram: ``counts[i]`` values fell in [2**i >> 1 .. 2**(i+1) - 1] (bcc's buckets:
    slot 0 holds 0 and 1).  ``str()`` is bcc's / libbpf-tools' ``print_log2_hist``;
    ``_repr_html_`` draws the same as SVG bars."""

    STARS = 40

    def __init__(self, counts, unit: str = "value", title: str | None = None):
        self.counts = [int(c) for c in counts]
        self.unit = unit
        self.title = title

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list:
        """(low, high, count) for each slot up to the last non-empty one (as print_log2_hist)."""
        last = max((i for i, c in enumerate(self.counts) if c > 0), default=-1)
        out = []
        for i in range(last + 1):
            low, high = (1 << (i + 1)) >> 1, (1 << (i + 1)) - 1
            if low == high:
                low -= 1
            out.append((low, high, self.counts[i]))
        return out

    def __add__(self, other: "Histogram") -> "Histogram":
        n = max(len(self), len(other))
        a, b = self.counts + [0] * (n - len(self)), other.counts + [0] * (n - len(other))
        return Histogram([x + y for x, y in zip(a, b)], self.unit, self.title)

    def __eq__(self, other) -> bool:
        return isinstance(other, Histogram) and self.counts == other.counts

    def __str__(self) -> str:
        buckets = self.buckets()
        if not buckets:
            return (f"{self.title}\n" if self.title else "") + "(empty histogram)\n"
        wide = len(buckets) - 1 > 32
        stars = self.STARS // 2 if wide else self.STARS
        width = 20 if wide else 10
        vmax = max(c for _, _, c in buckets)
        lines = [self.title] if self.title else []
        lines.append(f"{'':{15 if wide else 5}}{self.unit:<{29 if wide else 19}} : count    distribution")
        for low, high, c in buckets:
            n = c * stars // vmax if vmax else 0
            lines.append(f"{low:>{width}} -> {high:<{width}} : {c:<8} |{'*' * n}{' ' * (stars - n)}|")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<Histogram {self.unit}: {self.total} values in {len(self.buckets())} buckets>"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def svg(self) -> str:
        """Horizontal bars, one per bucket, as print_log2_hist's rows."""
        buckets = self.buckets()
        bar_w, row_h, label_w, count_w = 320, 18, 190, 70
        width = label_w + bar_w + count_w
        top = 22
        height = top + row_h * max(len(buckets), 1) + 6
        vmax = max((c for _, _, c in buckets), default=0)
        head = f"{self.title}: {self.total} values ({self.unit})" if self.title else f"{self.unit}: {self.total} values"
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="pybpf-histogram" width="{width}" '
               f'height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
               f'<text x="4" y="15" font-size="12" font-weight="bold">{_esc(head)}</text>']
        if not buckets:
            out.append(f'<text x="4" y="{top + 12}">(empty histogram)</text>')
        for i, (low, high, c) in enumerate(buckets):
            y = top + i * row_h
            w = bar_w * c / vmax if vmax else 0
            out.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{low} -&gt; {high}</text>')
            out.append(f'<rect class="bar" data-low="{low}" data-high="{high}" data-count="{c}" x="{label_w}" '
                       f'y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="#0d6efd"/>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{c}</text>')
        out.append('</svg>')
        return "\n".join(out)

    def _repr_html_(self) -> str:
        return self.svg()


def _int_elem_array(btf: BTF, type_id: int) -> bool:
    t = btf.resolve(type_id)
    if t is None or t.kind != Kind.ARRAY or not t.nelems:
        return False
    e = btf.resolve(t.elem_type)
    return e is not None and e.kind == Kind.INT and e.size in (1, 2, 4, 8)


def hist_member(btf: BTF | None, type_id: int) -> str | None:
    """If BTF type ``type_id`` is a log2 histogram as libbpf-tools declares them (a struct with a
    ``slots`` array of integers, e.g. ``struct hist { __u32 slots[N]; }``): the member's name
    (``"slots"``); ``""`` for a bare integer array; None otherwise."""
    if btf is None or not type_id:
        return None
    t = btf.resolve(type_id)
    if t is None:
        return None
    if t.kind == Kind.STRUCT:
        for m in t.members:
            if m.name == "slots" and not m.bitfield_size and _int_elem_array(btf, m.type_id):
                return "slots"
        return None
    return "" if _int_elem_array(btf, type_id) else None


def _slots_of(value, member: str) -> list:
    if isinstance(value, list):      # per-CPU: one value per CPU, summed
        total = None
        for v in value:
            s = _slots_of(v, member)
            total = s if total is None else [a + b for a, b in zip(total, s)]
        return total or []
    v = getattr(value, member) if member else value
    return [int(x) for x in v]


def histogram(values, unit: str = "value", title: str | None = None) -> Histogram:
    """A :class:`Histogram` of log2 slot counts: a list of counts, a typed ``struct hist``
    value (its ``slots``), or a mapping slot -> count (bcc's BPF_HISTOGRAM: an array keyed by slot)."""
    if isinstance(values, Histogram):
        return values
    if isinstance(values, dict):
        n = max(values, default=-1) + 1
        counts = [0] * n
        for k, v in values.items():
            counts[int(k)] += sum(v) if isinstance(v, list) else int(v)
        return Histogram(counts, unit, title)
    if hasattr(values, "slots"):
        return Histogram([int(x) for x in values.slots], unit, title)
    return Histogram([int(x) for x in values], unit, title)


def _map_hist_kind(m) -> str | None:
    """'slots' / '' (a value that is a histogram), 'keyed' (bcc: int key = slot, int value), or None."""
    member = hist_member(m.btf, m.spec.value_type_id)
    if member is not None:
        return member
    from .kernel.constants import MapType
    btf = m.btf
    if btf is None or m.type not in (MapType.ARRAY, MapType.PERCPU_ARRAY, MapType.HASH, MapType.PERCPU_HASH):
        return None
    kt, vt = btf.resolve(m.spec.key_type_id), btf.resolve(m.spec.value_type_id)
    if kt is not None and vt is not None and kt.kind == Kind.INT and vt.kind == Kind.INT \
            and m.max_entries <= 128 and m.name.lower() in ("dist", "hist", "hists", "histogram", "slots"):
        return "keyed"
    return None


def histograms(m, unit: str = "value") -> list:
    """Every histogram in map ``m``: (key, Histogram) pairs for maps whose values are histograms
    (empty ones left out; keys may be typed structs, which are not hashable), or one
    (None, Histogram) for a bcc-style map keyed by slot."""
    kind = _map_hist_kind(m)
    if kind is None:
        raise Error(f"map {m.name!r} does not hold log2 histograms: its value type is not a struct "
                    f"with a slots[] array of integers (as libbpf-tools' struct hist)")
    if kind == "keyed":
        return [(None, histogram(dict(m.items()), unit, f"{m.name}"))]
    out = []
    for k, v in m.items():
        h = Histogram(_slots_of(v, kind), unit, f"{m.name}[{k!r}]")
        if h.total:
            out.append((k, h))
    return out


def map_histogram(m, key=None, unit: str = "value") -> Histogram:
    """The histogram under ``key`` of map ``m`` or, without a key, all its histograms added up."""
    kind = _map_hist_kind(m)
    if kind is not None and kind != "keyed" and key is not None:
        v = m.lookup(key)
        if v is None:
            raise Error(f"map {m.name!r} has no entry {key!r}")
        return Histogram(_slots_of(v, kind), unit, f"{m.name}[{key!r}]")
    hs = histograms(m, unit)
    total = Histogram([], unit, m.name)
    for _, h in hs:
        total = total + h
    total.title = m.name
    return total


# -- tables -----------------------------------------------------------------------------

def value_html(v) -> str:
    """A typed value (or plain Python value) as HTML: structs as a two-column table."""
    from .spec.typed import TypedStruct
    if isinstance(v, TypedStruct):
        rows = "".join(f"<tr><td><code>{_esc(n)}</code></td><td>{value_html(x)}</td></tr>" for n, x in v)
        return (f'<table class="pybpf-value"><tr><th colspan="2" style="text-align:left">'
                f'{_esc(v._btf_name_)}</th></tr>{rows}</table>')
    if isinstance(v, list):
        return "[" + ", ".join(value_html(x) for x in v) + "]"
    return f"<code>{_esc(repr(v) if not hasattr(v, 'name') or isinstance(v, (int, str)) else v.name)}</code>"


def map_html(m, max_rows: int = MAX_ROWS) -> str:
    """A map as HTML: its header, up to ``max_rows`` entries (then how many more), and its histogram
    when its values are log2 histograms."""
    from .maps import _NO_ELEMENTS, _type_name
    head = (f"<b>map {_esc(m.name)}</b> {_esc(_type_name(m.type))}, key {m.key_size} B"
            + (f" ({_esc(m.btf.type_name(m.spec.key_type_id))})" if m.key_type is not None else "")
            + f", value {m.value_size} B"
            + (f" ({_esc(m.btf.type_name(m.spec.value_type_id))})" if m.value_type is not None else "")
            + f", max_entries {m.max_entries}")
    if m.closed:
        return f'<div class="pybpf-map">{head} (closed)</div>'
    if m.type in _NO_ELEMENTS:
        rt = m.record_type
        return (f'<div class="pybpf-map">{head}'
                + (f"<br>records: {_esc(m.btf.type_name(rt.id))}" if rt is not None else "") + "</div>")
    rows, total = [], 0
    for k in m.keys():
        total += 1
        if total <= max_rows:
            rows.append((k, m.lookup(k)))
        if total > 100 * max_rows:
            break
    body = "".join(f"<tr><td>{value_html(k)}</td><td>{value_html(v)}</td></tr>" for k, v in rows)
    more = ""
    if total > len(rows):
        n = f"{total - len(rows)}" + ("+" if total > 100 * max_rows else "")
        more = f'<tr><td colspan="2" class="more"><i>… {n} more entries ({len(rows)} shown)</i></td></tr>'
    table = (f'<table class="pybpf-map-entries"><tr><th>key</th><th>value</th></tr>{body}{more}</table>'
             if total else "<br><i>(no entries)</i>")
    hist = ""
    if total and _map_hist_kind(m) is not None:
        try:
            hist = map_histogram(m).svg()
        except Error:
            hist = ""
    return f'<div class="pybpf-map">{head} — {total}{"+" if total > 100 * max_rows else ""} entries' \
           f'{table}{hist}</div>'


def map_text(m, max_rows: int = MAX_ROWS) -> str:
    """A map as text: its repr and up to ``max_rows`` entries; histograms as print_log2_hist."""
    from .maps import _NO_ELEMENTS
    lines = [repr(m)]
    if m.closed or m.type in _NO_ELEMENTS:
        return lines[0]
    if _map_hist_kind(m) is not None:
        try:
            return lines[0] + "\n" + str(map_histogram(m))
        except Error:
            pass
    total = 0
    for k in m.keys():
        total += 1
        if total <= max_rows:
            lines.append(f"  {k!r}: {m.lookup(k)!r}")
    if total > max_rows:
        lines.append(f"  ... {total - max_rows} more entries")
    return "\n".join(lines)


def _table(header: list, rows: list) -> str:
    h = "".join(f"<th>{_esc(x)}</th>" for x in header)
    b = "".join("<tr>" + "".join(f"<td>{_esc(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def spec_html(spec) -> str:
    """An ObjectSpec as HTML: programs, maps, variables."""
    from .maps import _type_name
    btf = spec.btf
    progs = [[n, p.section, getattr(p.prog_type, "name", p.prog_type), p.function.insn_cnt]
             for n, p in spec.programs.items()]
    maps = [[n, _type_name(m.type), m.key_size, m.value_size, m.max_entries,
             btf.type_name(m.value_type_id) if btf is not None and m.value_type_id and not m.internal
             else (f"section {m.section}" if m.internal else "-")] for n, m in spec.maps.items()]
    variables = [[n, v.section, v.type_name, v.size] for n, v in spec.variables.items()]
    return (f'<div class="pybpf-object"><b>object {_esc(spec.name)}</b> ({_esc(spec.path)})'
            f"<h4>programs ({len(progs)})</h4>{_table(['name', 'section', 'type', 'instructions'], progs)}"
            f"<h4>maps ({len(maps)})</h4>"
            f"{_table(['name', 'type', 'key', 'value', 'max_entries', 'value type'], maps)}"
            f"<h4>variables ({len(variables)})</h4>{_table(['name', 'section', 'type', 'size'], variables)}</div>")


def spec_text(spec) -> str:
    lines = [repr(spec)]
    for n, p in spec.programs.items():
        lines.append(f"  program {n}: {p.section!r} {getattr(p.prog_type, 'name', p.prog_type)}")
    for n, m in spec.maps.items():
        lines.append(f"  map {n}: {m!r}")
    for n, v in spec.variables.items():
        lines.append(f"  variable {n}: {v.type_name}")
    return "\n".join(lines)


def object_html(obj) -> str:
    """A loaded Object as HTML: programs with their ids, maps with their ids and entries."""
    if obj.closed:
        return f"<div class=\"pybpf-object\">{_esc(repr(obj))}</div>"
    progs = [[n, p.spec.section, getattr(p.spec.prog_type, "name", p.spec.prog_type), _safe_id(p)]
             for n, p in obj.programs.items()]
    maps = "".join(f"<li>{map_html(m, max_rows=5)} (id {_safe_id(m)})</li>" for m in obj.maps.values())
    return (f'<div class="pybpf-object"><b>object {_esc(obj.name)}</b>: {len(obj.programs)} programs, '
            f"{len(obj.maps)} maps, {len(obj.links)} links"
            f"<h4>programs</h4>{_table(['name', 'section', 'type', 'id'], progs)}"
            f"<h4>maps</h4><ul>{maps}</ul></div>")


def object_text(obj) -> str:
    lines = [repr(obj)]
    if not obj.closed:
        for n, p in obj.programs.items():
            lines.append(f"  program {n}: {p.spec.section!r} id {_safe_id(p)}")
        for m in obj.maps.values():
            lines.append("  " + repr(m))
    return "\n".join(lines)


def _safe_id(x):
    try:
        return x.id
    except Exception:
        return "?"
