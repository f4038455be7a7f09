"""The end-of-run figure: loss (log scale) and accuracy against epoch, memorization and grokking marked."""

from pathlib import Path
from typing import Dict, List, Optional


def plot_curves(rows: List[Dict[str, float]], memorize_epoch: Optional[int], grok_epoch: Optional[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for split, colour in (("train", "tab:blue"), ("test", "tab:orange")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in rows], color=colour, label=split)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in rows], color=colour, label=split)
    if rows and "test_acc_clean" in rows[0]:
        ax_acc.plot(epochs, [row["test_acc_clean"] for row in rows], color="tab:green", label="test (clean labels)")
    for ax in (ax_loss, ax_acc):
        for epoch, name, style in ((memorize_epoch, "memorized", ":"), (grok_epoch, "grokked", "--")):
            if epoch is not None:
                ax.axvline(epoch, color="gray", linestyle=style, label=f"{name} @ {epoch}")
        ax.set_xscale("log")
        ax.set_xlabel("epoch")
        ax.legend()
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_acc.set_ylabel("accuracy")
    fig.savefig(path, dpi=110)
    plt.close(fig)
