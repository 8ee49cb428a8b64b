"""The scoreboard's figures: any metric against any other, the Pareto frontier, min-p90 variation bars.

One function, :func:`scatter`, draws for both the CLI (``requestflow plot``) and the scoreboard page inside Airflow
(``plugins/requestflow_scoreboard``), so the two always agree. The encoding is the seed notebook's (ReQuEST-ASPLOS'18
``analysis.ipynb``): colour by backend (or by library version, as the seed's plots of ArmCL releases: ``colour``,
the legend naming each library and version), marker size by input resolution (resolution / 16), marker shape by width
multiplier, Pareto-optimal points marked with black pluses. The frontier is also drawn as a staircase.

The frontier follows the rule of the ``pareto_frontier`` view (``sql/views/pareto_frontier.v2.sql``; since version 7
a frontier per latency statistic: on the p90 as an axis, this is its ``latency_stat = 'p90'`` rows), generalised
from (median latency, top-1) to any pair of metrics, each with its own better direction: per board, a point is on the
frontier when no other point of that board is at least as good on both metrics and strictly better on one; points
equal on both are all kept; random-weight points and points missing either figure take no part.

Server-side matplotlib (no JavaScript library): the SVG carries, for every mark, a group ``<g id="point-<mark>"
class="point" data-point-id=... data-mark=... data-images=... data-x=... data-y=... data-frontier="true|false">``
with a ``<title>`` tooltip (and a link when the caller gives one), so a page can link, and a test can check, each
mark. A mark is one scoreboard row (:func:`mark_id`): a point measured on several image sets, all of them shown
(dataset sizes ticked), is one mark per image set, each with its own figures and its own place on its frontier.
"""

from __future__ import annotations

import io
import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from requestflow.errors import UserError
from requestflow.results.plot_colours import colour_by, colour_key, colours


@dataclass(frozen=True)
class Metric:
    column: str  # the scoreboard's column
    label: str
    unit: str
    scale: float  # column value x scale = value in ``unit``
    better: str  # "lower" or "higher"
    bars: str | None = None  # how min-p90 latency variation shows on this axis: "latency", "per_median", "inverse"

    def axis_label(self) -> str:
        return f"{self.label} ({self.unit}), {self.better} is better"


METRICS: dict[str, Metric] = {m.column: m for m in (
    Metric("latency_median_s", "median latency", "ms", 1e3, "lower", "latency"),
    Metric("latency_min_s", "min latency", "ms", 1e3, "lower", "latency"),
    Metric("latency_p90_s", "p90 latency", "ms", 1e3, "lower", "latency"),
    Metric("throughput_ips", "throughput", "images/s", 1.0, "higher", "inverse"),
    Metric("top1", "top-1", "%", 100.0, "higher"),
    Metric("top5", "top-5", "%", 100.0, "higher"),
    Metric("model_size_bytes", "model size", "MB", 1e-6, "lower"),
    Metric("macs", "MACs", "millions", 1e-6, "lower"),
    Metric("energy_est_j", "energy per batch (upper bound)", "mJ", 1e3, "lower", "per_median"),
    # scoreboard v6 (issue #19): the power meter's joules where measured, else the estimate (energy_source says)
    Metric("energy_j", "energy per batch (measured, else upper bound)", "mJ", 1e3, "lower"),
    Metric("energy_measured_j", "energy per batch, measured", "mJ", 1e3, "lower"),
    Metric("cost_per_million_images_usd", "cost per million images", "USD", 1.0, "lower", "per_median"),
)}
ALIASES = {"median": "latency_median_s", "min": "latency_min_s", "p90": "latency_p90_s", "latency": "latency_median_s",
           "throughput": "throughput_ips", "size": "model_size_bytes", "energy": "energy_est_j",
           "joules": "energy_j", "cost": "cost_per_million_images_usd"}

WIDTH_MARKERS = {1.0: "p", 0.75: "s", 0.5: "^", 0.25: "o"}  # the notebook's markers (its DIRECT set)
OTHER_MARKER = "D"
SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
_RENDER_LOCK = threading.Lock()  # matplotlib's rcParams are process-wide: one figure saved at a time


def metric(name: str) -> Metric:
    """A metric by column name or alias (``median``, ``p90``, ``throughput``, ``size``, ``energy``, ``cost``...)."""
    column = ALIASES.get(name, name)
    if column not in METRICS:
        raise UserError(f"unknown metric {name!r}; known: {', '.join(METRICS)} "
                        f"(or {', '.join(ALIASES)})")
    return METRICS[column]


def _goodness(m: Metric, value: float) -> float:
    """A value where lower is always better."""
    return value if m.better == "lower" else -value


def mark_id(row: dict) -> str:
    """What tells a scoreboard row apart from the others: its point id, and its image set when it has one (the
    scoreboard's key since version 5 is (point_id, image_set): a performance point shows once per image set its
    configuration's accuracy was measured on)."""
    image_set = row.get("image_set")
    return f"{row['point_id']}-{image_set}" if image_set else row["point_id"]


def frontier(rows: Iterable[dict], x: str, y: str) -> set[str]:
    """The ``point_id``s with a row on the Pareto frontier of metrics ``x`` and ``y`` (:func:`frontier_marks`). Only
    for rows with one row per point (like the ``pareto_frontier`` view's): a point shown on two image sets can be on
    one image set's frontier and not on the other's, which only :func:`frontier_marks` can say."""
    rows = list(rows)
    marks = frontier_marks(rows, x, y)
    return {row["point_id"] for row in rows if mark_id(row) in marks}


def frontier_marks(rows: Iterable[dict], x: str, y: str) -> set[str]:
    """The rows (:func:`mark_id`) on the Pareto frontier of metrics ``x`` and ``y``, per board and, when an axis is
    an accuracy, per image set (:func:`frontier_group`; the view's rule, any axes).

    Sorted by (x, y) with lower better on both, the rows in earlier peer groups (equal on both) are exactly those
    better on x, or as good on x and better on y: a row is on the frontier when none of them is at least as good on
    y, i.e. when the best y among them is worse than its own. O(n log n), like the view's window."""
    mx, my = metric(x), metric(y)
    by_board: dict[tuple, list[tuple[float, float, str]]] = {}
    for row in rows:
        if row.get("random_weights") or row.get(mx.column) is None or row.get(my.column) is None \
                or row.get("quality") == "EMULATED":  # qemu's timings: never on a frontier (pareto_frontier v5)
            continue
        by_board.setdefault(frontier_group(row, mx, my), []).append(
            (_goodness(mx, float(row[mx.column])), _goodness(my, float(row[my.column])), mark_id(row)))
    out: set[str] = set()
    for candidates in by_board.values():
        candidates.sort(key=lambda c: (c[0], c[1]))
        best_before = math.inf
        i = 0
        while i < len(candidates):
            j = i
            while j < len(candidates) and candidates[j][:2] == candidates[i][:2]:
                j += 1
            if best_before > candidates[i][1]:
                out.update(c[2] for c in candidates[i:j])
            best_before = min(best_before, candidates[i][1])
            i = j
    return out


ACCURACY_METRICS = ("top1", "top5")
MIXED_ENERGY = "energy_j"  # measured on some rows, estimated on others


def frontier_group(row: dict, mx: Metric, my: Metric) -> tuple:
    """Which rows a row is compared with: those of its board, and of its image set when an axis is an accuracy (a
    top-1 on 20 images never beats or hides one on 500: scoreboard version 5, pareto_frontier version 6), and of its
    energy_source when an axis is energy_j (measured joules never compete with estimates: energy_frontier)."""
    by_images = mx.column in ACCURACY_METRICS or my.column in ACCURACY_METRICS
    by_source = MIXED_ENERGY in (mx.column, my.column)
    return (row["board"], (row.get("image_set") if by_images else None),
            (row.get("energy_source") if by_source else None))


def _bar(m: Metric, row: dict) -> tuple[float, float] | None:
    """The min-p90 variation of ``row`` on metric ``m``'s axis (in the column's unit), or None."""
    lo, mid, hi = (row.get(k) for k in ("latency_min_s", "latency_median_s", "latency_p90_s"))
    value = row.get(m.column)
    if m.bars is None or None in (lo, mid, hi, value) or mid <= 0 or lo <= 0:
        return None
    if m.bars == "latency":
        return lo, hi
    if m.bars == "per_median":  # energy and cost are proportional to the median latency
        return value * lo / mid, value * hi / mid
    return value * mid / hi, value * mid / lo  # throughput: batch / latency


def width_marker(width) -> str:
    return WIDTH_MARKERS.get(float(width), OTHER_MARKER) if width is not None else OTHER_MARKER


@dataclass
class Drawing:
    data: bytes
    fmt: str
    frontier: set[str]  # marks (mark_id: a point on one image set) on the frontier
    drawn: list[str] = field(default_factory=list)  # marks drawn (both figures present)
    missing: int = 0  # rows without one of the two figures (not drawn)


def _label(row: dict) -> str:
    return (f"{row.get('model')} {row.get('backend')} {row.get('precision')}"
            f"{' ' + row['variant_label'] if row.get('variant_label') not in (None, '', 'default') else ''}"
            f"{' (' + str(row['image_count']) + ' images)' if row.get('image_count') else ''} on {row.get('board')}")


def _number(value: float) -> str:
    return f"{value:.4g}"


def scatter(rows: list[dict], x: str, y: str, fmt: str = "svg", *, title: str | None = None, log_x: bool = False,
            log_y: bool = False, point_href: Callable[[dict], str] | None = None, colour: str = "backend") -> Drawing:
    """Draw ``rows`` (scoreboard rows as dicts) as metric ``y`` against metric ``x``, coloured by ``colour``
    (:data:`COLOUR_BY`): SVG or PNG bytes, and which points were drawn and are on the frontier."""
    if fmt not in ("svg", "png"):
        raise UserError(f"a plot is written as svg or png, not {fmt!r}")
    mx, my, by = metric(x), metric(y), colour_by(colour)
    on_frontier = frontier_marks(rows, mx.column, my.column)
    drawable = [r for r in rows if r.get(mx.column) is not None and r.get(my.column) is not None]
    palette = colours(drawable, by)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    with _RENDER_LOCK:
        import matplotlib

        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "requestflow", "font.size": 10}):
            fig = Figure(figsize=(10, 5.8), layout="constrained")
            ax = fig.add_subplot()
            for row in drawable:
                px, py = float(row[mx.column]) * mx.scale, float(row[my.column]) * my.scale
                size = (row.get("resolution") or 160) / 16
                colour = palette[colour_key(row, by)]
                ax.plot([px], [py], linestyle="none", marker=width_marker(row.get("width")), markersize=size,
                        markerfacecolor="none" if row.get("random_weights") else colour, markeredgecolor=colour,
                        markeredgewidth=1.2 if row.get("random_weights") else 0.6, alpha=0.9,
                        gid=f"point-{mark_id(row)}", zorder=3)
                for axis, m in (("x", mx), ("y", my)):
                    bar = _bar(m, row)
                    if bar is None:
                        continue
                    lo, hi = bar[0] * m.scale, bar[1] * m.scale
                    xs, ys = ([lo, hi], [py, py]) if axis == "x" else ([px, px], [lo, hi])
                    ax.plot(xs, ys, color=colour, linewidth=1.0, alpha=0.6, gid=f"bar-{axis}-{mark_id(row)}",
                            zorder=2)
                if mark_id(row) in on_frontier:
                    ax.plot([px], [py], linestyle="none", marker="+", markersize=size, color="black",
                            markeredgewidth=1.2, gid=f"frontier-mark-{mark_id(row)}", zorder=4)
            groups = sorted({frontier_group(r, mx, my) for r in drawable if mark_id(r) in on_frontier},
                            key=lambda g: (g[0], g[1] or "", g[2] or ""))
            images = {frontier_group(r, mx, my): r.get("image_count") for r in drawable}
            for i, group in enumerate(groups):
                points = sorted(((float(r[mx.column]), float(r[my.column])) for r in drawable
                                 if frontier_group(r, mx, my) == group and mark_id(r) in on_frontier),
                                key=lambda p: (_goodness(mx, p[0]), _goodness(my, p[1])))
                named = [group[0]] * (len({g[0] for g in groups}) > 1) + (
                    [f"{images[group]} images"] if len({g[1] for g in groups}) > 1 and images[group] else []) + (
                    [group[2]] if len({g[2] for g in groups}) > 1 and group[2] else [])
                ax.plot([p[0] * mx.scale for p in points], [p[1] * my.scale for p in points], color="black",
                        linestyle=(0, (4, 3)) if i == 0 else (0, (1, 2)), linewidth=1.0, drawstyle="steps-post",
                        gid=f"frontier-line-{i}", zorder=1,
                        label=f"Pareto frontier{' (' + ', '.join(named) + ')' if named else ''}")
            if log_x:
                ax.set_xscale("log")
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel(mx.axis_label())
            ax.set_ylabel(my.axis_label())
            ax.set_title(title or f"{my.label} vs {mx.label}")
            ax.grid(True, alpha=0.3)
            if not drawable:
                ax.text(0.5, 0.5, f"no point has both {mx.label} and {my.label}", transform=ax.transAxes,
                        ha="center", va="center", color="gray")
            handles = [Line2D([], [], linestyle="none", marker="s", markersize=8, color=palette[key], label=key)
                       for key in palette]
            handles += [Line2D([], [], linestyle="none", marker=width_marker(w), markersize=8, color="gray",
                               label=f"width {_number(float(w))}")
                        for w in sorted({r["width"] for r in drawable if r.get("width") is not None})]
            handles += [Line2D([], [], linestyle="none", marker="o", markersize=res / 16, color="lightgray",
                               markeredgecolor="gray", label=f"{res} px")
                        for res in sorted({r["resolution"] for r in drawable if r.get("resolution")})]
            if any(r.get("random_weights") for r in drawable):
                handles.append(Line2D([], [], linestyle="none", marker="o", markersize=8, markerfacecolor="none",
                                      color="gray", label="random weights"))
            if on_frontier:
                handles.append(Line2D([], [], linestyle="none", marker="+", markersize=10, color="black",
                                      label="on the frontier"))
            handles += [line for line in ax.get_lines() if line.get_label().startswith("Pareto")]
            if handles:
                ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
            out = io.BytesIO()
            fig.savefig(out, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    data = out.getvalue()
    if fmt == "svg":
        data = _annotate_svg(data, {mark_id(r): r for r in drawable}, mx, my, on_frontier, point_href, by)
    return Drawing(data=data, fmt=fmt, frontier=on_frontier, drawn=[mark_id(r) for r in drawable],
                   missing=len(rows) - len(drawable))


def _annotate_svg(data: bytes, rows: dict[str, dict], mx: Metric, my: Metric, on_frontier: set[str],
                  point_href: Callable[[dict], str] | None, by: str = "backend") -> bytes:
    """Give every point group its data attributes and a tooltip, and a link when ``point_href`` is given."""
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    root = ET.fromstring(data)
    root.set("class", "scoreboard-plot")
    parents = {child: parent for parent in root.iter() for child in parent}
    for group in list(root.iter(f"{{{SVG_NS}}}g")):
        gid = group.get("id", "")
        if not gid.startswith("point-"):
            continue
        mark = gid.removeprefix("point-")
        row = rows[mark]
        x, y = float(row[mx.column]), float(row[my.column])
        group.set("class", "point frontier" if mark in on_frontier else "point")
        group.set("data-point-id", row["point_id"])
        group.set("data-mark", mark)
        if row.get("image_count") is not None:
            group.set("data-images", str(row["image_count"]))
        group.set("data-board", str(row["board"]))
        group.set("data-backend", str(row["backend"]))
        group.set("data-model", str(row["model"]))
        group.set("data-library-version", str(row.get("library_version") or ""))
        group.set("data-colour", colour_key(row, by))  # what its colour stands for: a backend, or a version
        group.set("data-x", repr(x))
        group.set("data-y", repr(y))
        group.set("data-frontier", "true" if mark in on_frontier else "false")
        title = ET.Element(f"{{{SVG_NS}}}title")
        title.text = (f"{_label(row)}\n{mx.label}: {_number(x * mx.scale)} {mx.unit}\n"
                      f"{my.label}: {_number(y * my.scale)} {my.unit}"
                      f"{chr(10) + 'on the Pareto frontier' if mark in on_frontier else ''}")
        group.insert(0, title)
        if point_href is not None:
            parent = parents[group]
            link = ET.Element(f"{{{SVG_NS}}}a", {"href": point_href(row), "class": "point-link"})
            parent.insert(list(parent).index(group), link)
            parent.remove(group)
            link.append(group)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def histogram(samples_s: list[float], fmt: str = "svg", *, title: str = "latency samples",
              marks: dict[str, float] | None = None) -> bytes:
    """The raw latency samples (seconds) as a histogram in milliseconds, with vertical lines at ``marks``."""
    from matplotlib.figure import Figure

    with _RENDER_LOCK:
        import matplotlib

        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "requestflow", "font.size": 10}):
            fig = Figure(figsize=(8, 3.6), layout="constrained")
            ax = fig.add_subplot()
            values = [s * 1e3 for s in samples_s]
            if values:
                _, _, bars = ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="tab:blue", alpha=0.75)
                for i, bar in enumerate(bars):
                    bar.set_gid(f"histogram-bar-{i}")
            else:
                ax.text(0.5, 0.5, "no raw samples", transform=ax.transAxes, ha="center", va="center", color="gray")
            styles = ((0, (1, 1)), "solid", (0, (4, 2)), (0, (6, 2, 1, 2)))
            for i, (name, seconds) in enumerate((marks or {}).items()):
                ax.axvline(seconds * 1e3, color="black", linestyle=styles[i % len(styles)], linewidth=1,
                           label=f"{name} {seconds * 1e3:.4g} ms", gid=f"mark-{name}")
            ax.set_xlabel("latency of one batch (ms)")
            ax.set_ylabel("runs")
            ax.set_title(f"{title} ({len(values)} runs)")
            if marks:
                ax.legend(fontsize=8, frameon=False)
            ax.grid(True, alpha=0.3)
            out = io.BytesIO()
            fig.savefig(out, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    return out.getvalue()


def inline_svg(data: bytes) -> str:
    """An SVG document as markup to put inside an HTML page (no XML declaration, no DOCTYPE)."""
    text = data.decode("utf-8")
    return text[text.index("<svg"):]
