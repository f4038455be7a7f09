"""Phase diagrams of a sweep: when each grid point grokked, which phase of learning it is in, and all
test-accuracy curves at once.

Phases (after Liu et al. 2022, "Towards Understanding Grokking"), read off when a run first
memorized (train accuracy >= 0.99: memorize_epoch) and first generalized (test accuracy >= 0.99:
grok_epoch) within its epoch budget:
  comprehension  generalized, without a long wait: grok_epoch <= (1 + GROKKING_DELAY) * memorize_epoch,
                 or generalized without memorizing (noisy labels)
  grokking       generalized long after memorizing: grok_epoch > (1 + GROKKING_DELAY) * memorize_epoch
  memorization   memorized, never generalized
  confusion      neither memorized nor generalized
"""

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from grok.recording.plots import log_scale, pyplot

# keys whose values repeat a setting rather than change it: a curve over the other keys takes their median
REPLICATE_KEYS = ("seed", "data_seed")
GROKKING_DELAY = 1.0  # generalizing later than this many memorization times after memorizing is grokking
PHASE_COLOURS = {
    "comprehension": "tab:green",
    "grokking": "tab:blue",
    "memorization": "tab:orange",
    "confusion": "tab:red",
}
NOT_DONE_STYLE = {
    "failed": ("white", "failed", "xx"),
    "interrupted": ("white", "stopped", "//"),
    "incomplete": ("white", "…", ""),
    "unreadable": ("white", "?", ".."),
}


def phase(memorize_epoch: Optional[float], grok_epoch: Optional[float]) -> str:
    if grok_epoch is None:
        return "confusion" if memorize_epoch is None else "memorization"
    if memorize_epoch is None or grok_epoch <= (1 + GROKKING_DELAY) * memorize_epoch:
        return "comprehension"
    return "grokking"


# ----------------------------------------------------------------------------- axes
def _numbers(values: Sequence[str]) -> Optional[List[float]]:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def _spread(diffs: List[float]) -> float:
    """Coefficient of variation: 0 for evenly spaced points."""
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / len(diffs)) / mean if mean > 0 else 0.0


def is_log_spaced(values: Sequence[float]) -> bool:
    """Positive values (and at most a zero) spanning a factor >= 10 and more evenly spaced in log
    than in linear terms: 0, 0.01, 0.03, 0.1 ... 10 is; 0.1 ... 0.9 and seeds 0 ... 4 are not."""
    positive = sorted(set(v for v in values if v > 0))
    if len(positive) < 2 or any(v < 0 for v in values) or positive[-1] / positive[0] < 10:
        return False
    logs = [math.log10(v) for v in positive]
    return _spread([b - a for a, b in zip(logs, logs[1:])]) <= _spread([b - a for a, b in zip(positive, positive[1:])])


def axis_positions(values: Sequence[str]) -> Tuple[Dict[str, float], bool]:
    """Each distinct value's coordinate on its axis, and whether the axis is logarithmic. Numbers sit
    at their value (log10 of it on a log axis, where 0 sits one step below the smallest positive);
    anything else (task=add,divide) at 0, 1, 2, ... in order of appearance."""
    distinct = list(dict.fromkeys(values))
    numbers = _numbers(distinct)
    if numbers is None:
        return {value: float(i) for i, value in enumerate(distinct)}, False
    if not is_log_spaced(numbers):
        return dict(zip(distinct, numbers)), False
    logs = sorted(math.log10(v) for v in set(numbers) if v > 0)
    step = sorted(b - a for a, b in zip(logs, logs[1:]))[(len(logs) - 1) // 2]
    return {value: math.log10(v) if v > 0 else logs[0] - step for value, v in zip(distinct, numbers)}, True


def _edges(coords: List[float]) -> Dict[float, Tuple[float, float]]:
    """Each coordinate's cell: from halfway to the previous one to halfway to the next."""
    coords = sorted(set(coords))
    if len(coords) == 1:
        return {coords[0]: (coords[0] - 0.5, coords[0] + 0.5)}
    mids = [(a + b) / 2 for a, b in zip(coords, coords[1:])]
    lows = [2 * coords[0] - mids[0]] + mids
    highs = mids + [2 * coords[-1] - mids[-1]]
    return {c: (lo, hi) for c, lo, hi in zip(coords, lows, highs)}


# ----------------------------------------------------------------------------- grids
Cell = Tuple[str, str, str]  # facecolour, text, hatch


def _panels(records: List[Dict[str, Any]], keys: Sequence[str]):
    """x = the first swept key, y = the second, one panel per combination of the others."""
    x_key = keys[0] if keys else None
    y_key = keys[1] if len(keys) > 1 else None
    panels: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        panels[", ".join(f"{k}={record[k]}" for k in keys[2:])].append(record)
    return x_key, y_key, panels


def _draw_grid(
    records: List[Dict[str, Any]],
    keys: Sequence[str],
    cell: Callable[[Dict[str, Any]], Cell],
    title: str,
    path: Path,
    legend: Callable[[Any, Any], None],
) -> None:
    plt = pyplot()
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Rectangle

    x_key, y_key, panels = _panels(records, keys)
    x_pos, x_log = axis_positions([str(r[x_key]) for r in records] if x_key else [""])
    y_pos, y_log = axis_positions([str(r[y_key]) for r in records] if y_key else [""])
    x_edges, y_edges = _edges(list(x_pos.values())), _edges(list(y_pos.values()))
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols + 1.5, 4.2 * nrows), squeeze=False, constrained_layout=True
    )
    for ax, (panel_title, members) in zip(axes.flat, panels.items()):
        values = [(str(r[x_key]) if x_key else "", str(r[y_key]) if y_key else "") for r in members]
        as_grid = len(set(values)) == len(values) and len(values) >= 0.5 * len(x_edges) * len(y_edges)
        for (x_value, y_value), record in zip(values, members):
            colour, text, hatch = cell(record)
            x, y = x_pos[x_value], y_pos[y_value]
            if as_grid:
                (x0, x1), (y0, y1) = x_edges[x], y_edges[y]
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=colour, edgecolor="white", hatch=hatch))
                dark = sum(w * c for w, c in zip((0.3, 0.59, 0.11), to_rgb(colour))) < 0.45  # perceived brightness
                ax.text(x, y, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
            else:  # points that form no grid (a search): one marker each, on plain numeric axes
                ax.scatter(
                    *(_numbers([v]) or [c] for v, c in ((x_value, x), (y_value, y))),
                    s=120,
                    color=colour,
                    edgecolors="black",
                    hatch=hatch,
                )
        for set_label, set_scale, set_lim, set_ticks, positions, edges, key, log in (
            (ax.set_xlabel, ax.set_xscale, ax.set_xlim, ax.set_xticks, x_pos, x_edges, x_key, x_log),
            (ax.set_ylabel, ax.set_yscale, ax.set_ylim, ax.set_yticks, y_pos, y_edges, y_key, y_log),
        ):
            set_label(f"{key} (log scale)" if log else (key or ""))
            numbers = _numbers(list(positions))
            if not as_grid and numbers is not None:  # matplotlib's own ticks for scattered numbers
                set_scale("log" if log and min(numbers) > 0 else "linear")
                continue
            set_lim(min(lo for lo, _ in edges.values()), max(hi for _, hi in edges.values()))
            set_ticks(list(positions.values()), list(positions), fontsize=8)
        ax.set_title(panel_title, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    legend(fig, axes)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grok_epochs(records: List[Dict[str, Any]], keys: Sequence[str], path: Path) -> None:
    """Heatmap of grok_epoch over the first two swept keys; never-grokked cells grey, 'never'."""
    import matplotlib.cm as cm
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm

    grokked = [r["grok_epoch"] for r in records if r["status"] == "completed" and r["grok_epoch"] is not None]
    norm = LogNorm(vmin=min(grokked), vmax=max(max(grokked), min(grokked) + 1)) if grokked else None
    cmap = colormaps["viridis"]

    def cell(record) -> Cell:
        if record["status"] != "completed":
            return NOT_DONE_STYLE[record["status"]]
        if record["grok_epoch"] is None:
            return ("lightgrey", "never", "")
        return (cmap(norm(record["grok_epoch"])), f"{record['grok_epoch']:.0f}", "")

    def legend(fig, axes) -> None:
        if norm is not None:
            fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="grok epoch (test acc >= 0.99)")

    _draw_grid(records, keys, cell, "epoch of grokking (grey: never, within the epoch budget)", path, legend)


def plot_phase_map(records: List[Dict[str, Any]], keys: Sequence[str], path: Path) -> None:
    """Each grid point coloured by its phase of learning (see the module docstring)."""
    from matplotlib.patches import Patch

    def cell(record) -> Cell:
        if record["status"] != "completed":
            return NOT_DONE_STYLE[record["status"]]
        return (PHASE_COLOURS[record["phase"]], record["phase"][:4], "")

    def legend(fig, axes) -> None:
        handles = [Patch(facecolor=colour, label=name) for name, colour in PHASE_COLOURS.items()]
        fig.legend(handles=handles, loc="outside right center", fontsize=8)

    _draw_grid(records, keys, cell, "phases of learning (Liu et al. 2022)", path, legend)


def plot_test_curves(
    curves: List[Tuple[Dict[str, Any], List[Dict[str, float]]]], keys: Sequence[str], path: Path
) -> None:
    """Every job's test accuracy (clean labels for noisy tasks) against epoch, coloured by the first
    swept key; one panel per value of the second."""
    import matplotlib.cm as cm

    from grok.training.experiment import generalization_key

    plt = pyplot()
    colour_key = keys[0] if keys else None
    panel_key = keys[1] if len(keys) > 1 else None
    positions, _ = axis_positions([str(record[colour_key]) for record, _ in curves] if colour_key else [""])
    low, high = min(positions.values()), max(positions.values())
    panel_values = list(dict.fromkeys(str(record[panel_key]) for record, _ in curves)) if panel_key else [""]
    ncols = min(len(panel_values), 3)
    nrows = math.ceil(len(panel_values) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5 * ncols + 1.5, 3.6 * nrows), squeeze=False, sharey=True, constrained_layout=True
    )
    for ax, panel in zip(axes.flat, panel_values):
        labelled = set()
        for record, rows in curves:
            if (str(record[panel_key]) if panel_key else "") != panel or not rows:
                continue
            value = str(record[colour_key]) if colour_key else ""
            colour = cm.plasma(0.85 * (positions[value] - low) / (high - low) if high > low else 0.0)
            test_key = generalization_key(rows[0])
            ax.plot(
                [row["epoch"] for row in rows],
                [row[test_key] for row in rows],
                color=colour,
                lw=1,
                label=None if value in labelled else f"{colour_key}={value}",
            )
            labelled.add(value)
        log_scale(ax, "x")
        ax.set_xlabel("epoch")
        ax.set_title(f"{panel_key}={panel}" if panel_key else "", fontsize=9)
        if labelled:
            ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(panel_values) :]:
        ax.set_visible(False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def median_epoch(epochs: Sequence[Optional[float]]) -> Optional[float]:
    """The median of the runs' epochs, a run that never got there (None) counting as later than any
    that did: None where half of them or more never did (of 2 runs, the median needs both), or no runs."""
    if not epochs:
        return None
    median = statistics.median(math.inf if epoch is None else epoch for epoch in epochs)
    if not math.isfinite(median):
        return None
    return int(median) if median == int(median) else median  # an epoch, or halfway between two


OVER_SEEDS_FIELDS = [
    "runs",
    "unfinished",
    "memorized",
    "grokked",
    "median_memorize_epoch",
    "median_grok_epoch",
    "phases",
]


def over_seeds(records: List[Dict[str, Any]], keys: Sequence[str]) -> List[Dict[str, Any]]:
    """The runs grouped by their values of `keys` (the swept keys besides REPLICATE_KEYS; with none,
    one group of all), in the order of their axes (numbers by value, others as they first appear):
    per group its values, then OVER_SEEDS_FIELDS: how many runs completed and how many did not
    (failed, interrupted, unreadable, still running or not started: left out of the rest), how many
    memorized and grokked, the median of each epoch (median_epoch) and the count of each phase."""
    groups: Dict[Tuple[str, ...], List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        if all(record[key] is not None for key in keys):  # None: a job whose overrides are unknown
            groups[tuple(str(record[key]) for key in keys)].append(record)
    axes = [axis_positions([values[i] for values in groups])[0] for i in range(len(keys))]
    rows = []
    for values in sorted(groups, key=lambda values: [axis[value] for axis, value in zip(axes, values)]):
        done = [record for record in groups[values] if record["status"] == "completed"]
        memorized, grokked = ([run[field] for run in done] for field in ("memorize_epoch", "grok_epoch"))
        phases = [sum(run["phase"] == name for run in done) for name in PHASE_COLOURS]
        rows.append({
            **dict(zip(keys, values)),
            "runs": len(done),
            "unfinished": len(groups[values]) - len(done),
            "memorized": sum(epoch is not None for epoch in memorized),
            "grokked": sum(epoch is not None for epoch in grokked),
            "median_memorize_epoch": median_epoch(memorized),
            "median_grok_epoch": median_epoch(grokked),
            "phases": " ".join(f"{name}:{n}" for name, n in zip(PHASE_COLOURS, phases) if n),
        })  # fmt: skip
    return rows


def plot_epochs_curve(records: List[Dict[str, Any]], key: str, path: Path) -> None:
    """memorize_epoch and grok_epoch against one numeric swept key (Power et al. 2022's Figure 1 for
    train_frac): a marker per run (open, at its epoch budget, where it never got there) and a line
    through each value's median (median_epoch) over the runs that repeat it with other seeds, with how
    many of them grokked under the value. The values sit where axis_positions puts them (a log axis
    with 0 one step below the smallest positive value)."""
    done = [record for record in records if record["status"] == "completed" and record[key] is not None]
    if _numbers([str(record[key]) for record in done]) is None:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    medians = over_seeds(done, [key])
    at, log = axis_positions([row[key] for row in medians])
    repeated = any(row["runs"] > 1 for row in medians)
    for field, colour, label in (("memorize_epoch", "tab:orange", "train acc >= 0.99"),
                                 ("grok_epoch", "tab:blue", "test acc >= 0.99")):  # fmt: skip
        line = [(at[row[key]], row[f"median_{field}"]) for row in medians if row[f"median_{field}"] is not None]
        xs, ys = zip(*line) if line else ((), ())
        ax.plot(xs, ys, "-" if repeated else "o-", color=colour, label=f"{label}, median" if repeated else label)
        reached = [(at[str(r[key])], r[field]) for r in done if r[field] is not None]
        if repeated and reached:
            ax.scatter(*zip(*reached), color=colour, alpha=0.6, zorder=3)
        never = [(at[str(r[key])], r["epochs"]) for r in done if r[field] is None]
        if never:
            ax.scatter(*zip(*never), facecolors="none", edgecolors=colour, label=f"never ({label}), at the budget")
    log_scale(ax, "y")
    every = math.ceil(len(medians) / 12)  # at most 12 labels
    labels = [f"{float(row[key]):.4g}" + (f"\n{row['grokked']}/{row['runs']}" if repeated else "") for row in medians]
    ax.set_xticks([at[row[key]] for row in medians[::every]], labels[::every])
    ax.set_xlabel(f"{key} (log scale)" if log else key)
    ax.set_ylabel("epoch")
    if repeated:  # markers at the budget overlap: how many of each value's runs grokked, under it
        ax.set_title("a marker per run; under each value, how many of its runs grokked", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
