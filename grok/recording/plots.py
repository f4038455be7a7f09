"""The end-of-run figure: loss (log scale) and accuracy against epoch, memorization and grokking marked.

Every run draws these as it finishes, so their margins are fixed: matplotlib's constrained layout
measures every tick label first, over a third of a run's figure time (docs/performance.md)."""

from pathlib import Path
from typing import Dict, List, Optional


def pyplot():
    """matplotlib.pyplot drawing to files only (no screen), imported when a figure is first drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_scale(ax, which: str) -> None:
    """ax's x or y axis on a log scale whose ticks cost less to draw: minor ticks at 2 and 5 of each
    decade (not at every 2..9), labels in plain text (1000, 0.01, 1e-06) rather than mathtext, the
    minor ones where no more than a decade is in view. matplotlib makes each tick several artists of
    its own and parses each mathtext label: with its defaults they took most of an end-of-run
    figure's time (docs/performance.md)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis = getattr(ax, f"{which}axis")

    def label(value: float, minor: bool) -> str:
        low, high = sorted(axis.get_view_interval())
        return "" if minor and high > 10 * low else f"{value:g}"

    getattr(ax, f"set_{which}scale")("log")
    axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: label(value, minor=False)))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: label(value, minor=True)))


def plot_curves(
    rows: List[Dict[str, float]], memorize_epoch: Optional[int], grok_epoch: Optional[int], path: Path
) -> None:
    plt = pyplot()

    epochs = [row["epoch"] for row in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.96, wspace=0.2)
    for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in rows], color=colour, label=split)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in rows], color=colour, label=split)
    if rows and "test_acc_clean" in rows[0]:
        ax_acc.plot(epochs, [row["test_acc_clean"] for row in rows], color="tab:green", label="test (clean labels)")
    for ax in (ax_loss, ax_acc):
        for epoch, name, style in ((memorize_epoch, "memorized", ":"), (grok_epoch, "grokked", "--")):
            if epoch is not None:
                ax.axvline(epoch, color="gray", linestyle=style, label=f"{name} @ {epoch}")
        log_scale(ax, "x")
        ax.set_xlabel("epoch")
        ax.legend()
    log_scale(ax_loss, "y")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_ylabel("accuracy")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_progress(rows: List[Dict[str, float]], measures: List[Dict[str, float]], path: Path) -> None:
    """The progress measures over epochs beside the loss curves (Nanda et al. 2023, Prieto et al. 2025)."""
    plt = pyplot()

    epochs = [row["epoch"] for row in rows]
    at = [m["epoch"] for m in measures]
    fig, (ax_loss, ax_sparsity, ax_collapse) = plt.subplots(1, 3, figsize=(15, 4))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.92, wspace=0.35)
    ax_loss.plot(epochs, [row["train_loss"] for row in rows], label="train")
    ax_loss.plot(epochs, [row["test_loss"] for row in rows], label="test")
    for key in ("restricted_loss", "excluded_loss"):
        if measures and key in measures[0]:
            ax_loss.plot(at, [m[key] for m in measures], linestyle="--", label=f"{key.split('_')[0]} (train)")
    log_scale(ax_loss, "y")
    ax_loss.set(ylabel="loss", title="loss, restricted and excluded")
    if measures and "fourier_gini" in measures[0]:
        ax_sparsity.plot(
            at, [m["fourier_gini"] for m in measures], color="tab:purple", label="Gini of embedding Fourier norms"
        )
    ax_norm = ax_sparsity.twinx()
    ax_norm.plot(epochs, [row["weight_norm"] for row in rows], color="gray", label="total weight norm")
    ax_norm.set_ylabel("weight norm")
    ax_sparsity.set(ylabel="Gini coefficient", title="sparsity in frequency, weight norm")
    for key, label in (("zero_loss_frac", "float32 loss exactly 0"), ("saturated_frac", "softmax saturated")):
        ax_collapse.plot(at, [m[key] for m in measures], label=label)
    ax_collapse.set(ylabel="fraction of train examples", title="softmax collapse")
    for ax in (ax_loss, ax_sparsity, ax_collapse):
        log_scale(ax, "x")
        ax.set_xlabel("epoch")
        ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fourier_spectrum(norms: List[float], key_frequencies: List[int], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 3.5))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.91)
    freqs = list(range(1, len(norms) + 1))
    ax.bar(freqs, norms, color=["tab:red" if k in key_frequencies else "tab:blue" for k in freqs])
    ax.set(
        xlabel="frequency k (w = 2 pi k / p)",
        ylabel="norm of the embedding",
        title="token embedding in the Fourier basis (key frequencies in red)",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
