"""The figures' log axes (grok.recording.plots.log_scale): plain-text labels that read as the values
they mark, over any range a run's curves or a sweep's epochs can span."""

import math

import pytest

from grok.recording.plots import log_scale, pyplot

RANGES = [(1, 3000), (1e-12, 10), (1, 100_000), (1, 10), (1.89, 6.62), (120, 900), (2000, 8000),
          (12_000, 30_000), (0.02, 0.05), (0.9, 1.1), (2.577, 2.584)]  # fmt: skip


@pytest.mark.parametrize("low, high", RANGES)
def test_a_log_axis_labels_at_least_two_ticks_in_view_each_with_its_own_value(low, high):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([low, high], [low, high])
    log_scale(ax, "y")
    ax.set_ylim(low, high)
    fig.canvas.draw()
    labelled = [
        (tick.get_loc(), tick.label1.get_text())
        for tick in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
        if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
    ]
    plt.close(fig)
    assert len(labelled) >= 2, labelled
    for value, text in labelled:
        assert math.isclose(float(text), value, rel_tol=1e-3), (value, text)
