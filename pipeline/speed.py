"""How fast this machine is at the moment, for the parts of the budget no fit time predicts.

The work around the models (charts, tables, the logged model, reason codes) is interpreter-bound:
it takes two or three times longer on a slow or busy VM than on an idle fast one. A short probe of
the same kind of work, timed when a stage plans, scales what the budget keeps for it
(:func:`pipeline.budget.fixed_seconds`).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd

from pipeline import plots

PROBE_ROWS = 2_000


def probe_seconds(repeats: int = 3) -> float:
    """Median wall seconds of one round of that work: a chart drawn to PNG, a table to CSV and Markdown.

    The median of a few rounds: one stall does not count, a machine busy throughout does.
    """
    rng = np.random.default_rng(0)
    scores = rng.random(PROBE_ROWS)
    outcomes = (rng.random(PROBE_ROWS) < scores).astype(int)
    frame = pd.DataFrame({"score": scores, "outcome": outcomes, "segment": np.where(outcomes, "a", "b")})
    rounds = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        figure = plots.roc_chart(outcomes, scores)
        figure.savefig(io.BytesIO(), format="png")
        plots.close(figure)
        frame.to_csv(index=False)
        frame.head(100).to_markdown(index=False, floatfmt=".4f")
        rounds.append(time.perf_counter() - started)
    return float(np.median(rounds))
