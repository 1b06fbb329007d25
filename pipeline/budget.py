"""The one time budget of stages 1 and 2: how it is split, and the racing decisions of stage 1.

Pure: seconds and scores in, decisions out. The stages measure, these functions decide, and the
stages record planned against spent seconds per step (``budget.planned.<step>`` /
``budget.spent.<step>``).

The split: stage 1 plans ``RESEARCH_SHARE`` of the budget. Stage 2 takes what stage 1 left, keeps a
reserve for the final step (its refit estimated from the fit times stage 1 measured, its fixed part
scaled by a speed probe of the machine) and gives each tuned family a share of the rest by its
research score (``family_weights``), the leader's raised to fit its queued first trials (its
research candidate and known configurations, ``with_leader_first``), re-planned at each family's
start but never above its part of the first plan. What the first round leaves (a family at its
trial cap, a reserve kept for families then skipped) goes in a second round to the best family time
stopped, then to the next, then to those skipped. Once the final candidate is chosen, the reserve
its refit does not need (the reserve was for the dearest final, a vote of every tuned family) goes
in a third round to its best member.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Stage 1 plans this share: enough to rank a portfolio on small data, and the rest is tuning, which
# buys more than an exhaustive comparison once the promising families are known.
RESEARCH_SHARE = 0.3
# Above this many fold-training rows a candidate is first timed on this many rows (a probe), so a
# candidate too slow for the budget is skipped before its first real fold.
PROBE_ROWS = 2_000
# Fit time grows a little faster than the rows (sorting in trees, more boosting splits).
FIT_EXPONENT = 1.15
# Families whose prediction time grows with the training rows too (neighbour search).
QUADRATIC_PREDICT = frozenset({"knn"})
# A candidate's first folds may take this multiple of its fair share of what is left: cheap
# candidates leave time, but one slow candidate never takes more than a couple of shares.
FAIR_SHARE_SLACK = 2.0
# The final step's fixed part (the logged model, charts, tables, reason codes) where the speed
# probe (pipeline.speed) takes PROBE_REFERENCE_SECONDS; on another machine, or the same one busier,
# it is scaled by what the probe takes there (fixed_seconds) ...
FINAL_OVERHEAD_SECONDS = 12.0
# ... plus the refit (one fit on every training row: a calibrator is fitted on the tuned folds'
# scores) of the tuned parameters, which may be larger than the research candidate's (more trees),
# hence the slack.
FINAL_FIT_SLACK = 1.5
# The final step never takes more than this share of what stage 2 has left (the rest is tuning:
# the first family's first trial runs whatever the time). Measured finals took what the estimate said.
MAX_RESERVE_SHARE = 0.8


PROBE_REFERENCE_SECONDS = 0.3
# The probe is noisy: a machine never counts as more than this many times faster than the reference.
MIN_SPEED_FACTOR = 0.4


def fixed_seconds(reference_seconds: float, probe_seconds: float | None) -> float:
    """A fixed cost that takes ``reference_seconds`` where the probe takes PROBE_REFERENCE_SECONDS,
    scaled to where it took ``probe_seconds`` (unchanged without a probe)."""
    if probe_seconds is None or not math.isfinite(probe_seconds) or probe_seconds <= 0:
        return reference_seconds
    return reference_seconds * max(MIN_SPEED_FACTOR, probe_seconds / PROBE_REFERENCE_SECONDS)


@dataclass(frozen=True)
class Step:
    """One step of the budget: what it was given, what it took, and why it ended."""

    name: str
    planned: float
    spent: float
    stopped_by: str = ""  # "time", "count", "skipped", or "" when it simply finished

    @property
    def over(self) -> float:
        return self.spent - self.planned


# What a command takes after its stage returns (printing, worker pools and the interpreter shutting
# down), which its own clock cannot see: each stage leaves this much of its plan unused.
PROCESS_EXIT_SECONDS = 3.0


# Stage 1's work after the candidates (the scorecard tables, the leaderboard chart, logging) where
# the speed probe takes PROBE_REFERENCE_SECONDS: kept out of the candidates' time so the stage holds
# to its plan.
RESEARCH_TAIL_SECONDS = 1.0


def research_plan(budget_seconds: float) -> float:
    """Seconds stage 1 plans to spend (its process's exit not included)."""
    return max(0.0, budget_seconds * RESEARCH_SHARE - PROCESS_EXIT_SECONDS)


def seconds_left(budget_seconds: float, research_spent: float, optimize_elapsed: float) -> float:
    """What stage 2 has left: the budget less stage 1, its own time so far, and both processes' exits."""
    return budget_seconds - research_spent - optimize_elapsed - 2 * PROCESS_EXIT_SECONDS


def fair_cap(seconds_left: float, candidates_left: int) -> float:
    """The most a candidate's first rung may take: a couple of fair shares of what is left, never
    more than all of it (the last candidates would otherwise be allowed twice what stage 1 has)."""
    left = max(0.0, seconds_left)
    return min(left, left / max(1, candidates_left) * FAIR_SHARE_SLACK)


# A first rung still running at this many times its cap is stopped (its fold workers killed): a
# prediction can be off several times (a forest extrapolated from a small probe to deep trees on a
# large table took 73 s a fold against 27 s predicted), and one such candidate must not eat stage 2.
RUNG_STOP_FACTOR = 2.0
# ... but never sooner than this: starting fold workers alone can take seconds on a busy machine.
RUNG_STOP_FLOOR_SECONDS = 10.0


def rung_limit(cap: float, seconds_left: float) -> float:
    """When a candidate's first rung is stopped: at RUNG_STOP_FACTOR times its cap, never past what
    stage 1 has left, never sooner than RUNG_STOP_FLOOR_SECONDS."""
    return max(RUNG_STOP_FLOOR_SECONDS, min(RUNG_STOP_FACTOR * cap, seconds_left))


# A candidate too slow for its share on every training row is cross-validated on a stratified sample
# of them instead (the most rows its share fits) when that is at least this many: fewer would say
# little about the family, which is then skipped. Stage 2 tunes and refits it on the same sample.
MIN_SAMPLE_ROWS = 10_000
# The sample aims below the share: how fit time grows with the rows is an estimate.
SAMPLE_SAFETY = 0.8


def predicted_from_probe(
    fit_seconds: float, predict_seconds: float, probe_rows: int, train_rows: int, valid_rows: int, family: str
) -> float:
    """Seconds one fold would take at full size, scaled from a probe on ``probe_rows`` rows."""
    fit_ratio = max(1.0, train_rows / max(1, probe_rows))
    predict_ratio = max(1.0, valid_rows / max(1, probe_rows))
    if family in QUADRATIC_PREDICT:
        predict_ratio *= fit_ratio
    return fit_seconds * fit_ratio**FIT_EXPONENT + predict_seconds * predict_ratio


# A candidate is timed on PROBE_ROWS rows and on a quarter of them: what the two fits share is a
# fixed cost (start-up, a booster's trees on few rows) that does not grow with the rows; scaling it
# too predicted a dummy's fold on 600,000 rows at 1,124 s. At least this share of the larger
# probe's fit is taken to grow, whatever the two timings say (they are noisy on shared cores).
MIN_GROWING_SHARE = 0.25


@dataclass(frozen=True)
class Probe:
    """A candidate timed on ``rows`` rows: what one of its folds would take at any size."""

    family: str
    fit_seconds: float
    predict_seconds: float
    rows: int
    fixed_seconds: float = 0.0  # the part of ``fit_seconds`` that does not grow with the rows
    # A family sized for its part fits each model (a forest's tree) on at most this many of the
    # part's rows, as a share of them (``models.fit_rows_cap``); None: on every training row. The
    # probe itself fits on all of its rows.
    capped_rows: int | None = None

    def fold_seconds(self, part_rows: int, cv_folds: int) -> float:
        """Predicted seconds of one fold when the training part has ``part_rows`` rows."""
        valid = part_rows // max(1, cv_folds)
        train = part_rows - valid
        if self.capped_rows is not None:
            train = max(1, round(train * min(1.0, self.capped_rows / max(1, part_rows))))
        growing = self.fit_seconds - self.fixed_seconds
        return self.fixed_seconds + predicted_from_probe(
            growing, self.predict_seconds, self.rows, train, valid, self.family
        )


def probe_from_fits(
    family: str,
    small_rows: int,
    small_fit: float,
    rows: int,
    fit: float,
    predict: float,
    capped_rows: int | None = None,
) -> Probe:
    """A probe from fits on ``small_rows`` and on ``rows`` rows: fit = fixed + growing * rows **
    FIT_EXPONENT, solved from the two (the growing part at least ``MIN_GROWING_SHARE`` of ``fit``)."""
    growth = (rows / max(1, small_rows)) ** FIT_EXPONENT
    growing = max(0.0, fit - small_fit) / max(1e-9, growth - 1) * growth
    growing = min(fit, max(growing, MIN_GROWING_SHARE * fit))
    return Probe(family, fit, predict, rows, fixed_seconds=fit - growing, capped_rows=capped_rows)


def sample_rows(probe: Probe, part_rows: int, cv_folds: int, seconds: float) -> int | None:
    """The most rows of the training part whose fold the probe predicts within ``seconds`` (aiming at
    ``SAMPLE_SAFETY`` of it when not all fit); None when not even ``MIN_SAMPLE_ROWS`` fit."""
    if probe.fold_seconds(part_rows, cv_folds) <= seconds:
        return part_rows
    aim = seconds * SAMPLE_SAFETY
    low, high = MIN_SAMPLE_ROWS, part_rows
    if low >= high or probe.fold_seconds(low, cv_folds) > aim:
        return None
    while high - low > max(1, part_rows // 1_000):  # fold seconds grow with the rows: bisect
        middle = (low + high) // 2
        if probe.fold_seconds(middle, cv_folds) <= aim:
            low = middle
        else:
            high = middle
    return low


# A forest too slow for its share, on a part too small to sample, is ranked with fewer trees (at
# least this many) rather than skipped: a forest's time grows with its trees, its ROC AUC barely.
MIN_RESEARCH_TREES = 50


def trees_that_fit(probe: Probe, trees: int, part_rows: int, cv_folds: int, seconds: float) -> int | None:
    """The most trees, fewer than ``trees``, whose fold on every row the probe (of a forest of ``trees``)
    predicts within ``seconds`` (aiming at ``SAMPLE_SAFETY`` of it); None below ``MIN_RESEARCH_TREES``."""
    predicted = probe.fold_seconds(part_rows, cv_folds)
    fixed = min(probe.fixed_seconds, predicted)  # what fewer trees do not save
    aim = seconds * SAMPLE_SAFETY
    if aim <= fixed or predicted <= fixed:
        return None
    fitting = int(trees * (aim - fixed) / (predicted - fixed))
    return fitting if MIN_RESEARCH_TREES <= fitting < trees else None


# The order candidates run their first rung in (a prior, not a measurement): first the families
# that are cheap and most often best on tabular data, then the other cheap ones, the dear ones last.
# When stage 1's share runs out (a slow or busy machine, a large table), the candidates left unrun
# are then the dear or rarely best ones, never every strong family.
RUNG_PRIOR = (
    "lightgbm",
    "logistic_regression",
    "hist_gradient_boosting",
    "dummy",
    "naive_bayes",
    "decision_tree",
    "woe_scorecard",
    "knn",
    "extra_trees",
    "random_forest",
)


# Up to this many training rows a cheap family (models.CHEAP_FAMILIES) whose fold is not predicted
# dearer than CHEAP_FOLD_SECONDS is never skipped for time: on a small budget the fixed costs
# (imports, the store, the workers) can take stage 1's whole share, and a ranking of one family would
# leave stage 2 the one choice.
CHEAP_ROWS = 20_000
CHEAP_FOLD_SECONDS = 1.0


def rung_order(families: Mapping[str, str]) -> list[str]:
    """Candidate names (``{name: family}``, in config order) in the order their first rungs run."""
    rank = {family: position for position, family in enumerate(RUNG_PRIOR)}
    return sorted(families, key=lambda name: rank.get(families[name], len(RUNG_PRIOR)))


@dataclass(frozen=True)
class RungScore:
    """A candidate after its first rung (a few folds): how it scored and what the rest would cost."""

    name: str
    roc_auc: float
    expected_cost: float
    rung_seconds: float  # wall time of the rung (its folds ran side by side)
    rung_folds: int
    folds_left: int
    n_jobs: int = 1

    @property
    def predicted_rest(self) -> float:
        """Seconds the remaining folds would take, in batches of ``n_jobs`` like the rung."""
        batches_done = math.ceil(self.rung_folds / self.n_jobs)
        batches_left = math.ceil(self.folds_left / self.n_jobs)
        return self.rung_seconds / max(1, batches_done) * batches_left


def promote(scores: Sequence[RungScore], seconds_left: float) -> tuple[list[str], dict[str, str]]:
    """Successive halving's cut: which candidates go on to full cross-validation.

    Everyone when the whole rest fits in ``seconds_left``. Otherwise the better half by first-rung
    ROC AUC (ties: lower cost), best first, each only if its predicted rest still fits; the others
    are raced out, with the reason. Returns (promoted names, {raced-out name: reason}).
    """
    ranked = sorted(scores, key=lambda s: (-_finite(s.roc_auc), s.expected_cost))
    if sum(s.predicted_rest for s in ranked) <= seconds_left:
        return [s.name for s in ranked], {}
    half = math.ceil(len(ranked) / 2)
    promoted: list[str] = []
    raced_out: dict[str, str] = {}
    left = seconds_left
    for position, score in enumerate(ranked):
        if position >= half:
            raced_out[score.name] = f"raced out: ranked {position + 1} of {len(ranked)} after its first folds"
        elif score.predicted_rest > left:
            raced_out[score.name] = (
                f"raced out: the other folds would take about {score.predicted_rest:.0f} s, {left:.0f} s left"
            )
        else:
            promoted.append(score.name)
            left -= score.predicted_rest
    return promoted, raced_out


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def full_fit_seconds(fold_seconds: float, cv_folds: int) -> float:
    """A fit on the whole training part, from a fold's (which trains on (k-1)/k of it)."""
    return fold_seconds * cv_folds / max(1, cv_folds - 1)


def trial_seconds(research_fold_seconds: float, research_folds: int, cv_folds: int) -> float:
    """Predicted seconds of one tuning trial (``cv_folds`` folds one after another)."""
    per_row = research_fold_seconds / max(1e-9, (research_folds - 1) / research_folds)
    return cv_folds * per_row * (cv_folds - 1) / cv_folds


def fold_seconds_from_trials(
    spent_seconds: float, trials: int, cv_folds: int, research_folds: int
) -> float | None:
    """Stage 1's fold seconds that would predict the trials stage 2 measured (the inverse of
    :func:`trial_seconds`), or None without a trial. Stage 1's folds run side by side and its
    boosters on fewer threads, so what stage 2 measured is the better guide for the rest of it."""
    if trials <= 0:
        return None
    return spent_seconds / trials / max(1, cv_folds - 1) * (research_folds - 1) / research_folds


def final_reserve(
    research_fold_seconds: Mapping[str, float],
    research_folds: int,
    ensemble: bool,
    seconds_left: float,
    overhead: float = FINAL_OVERHEAD_SECONDS,
) -> float:
    """Seconds kept for the final step: the refit (one fit, calibrated or not), test scoring, and
    ``overhead`` for the logging (``fixed_seconds(FINAL_OVERHEAD_SECONDS, probe)`` on this machine).

    A soft vote refits every tuned family, a single winner only itself; the winner is not known
    yet, so the dearest case is kept. Never more than ``MAX_RESERVE_SHARE`` of what is left.
    """
    fits = [full_fit_seconds(s, research_folds) for s in research_fold_seconds.values()]
    fit = (sum(fits) if ensemble else max(fits, default=0.0)) * FINAL_FIT_SLACK
    return min(overhead + fit, max(0.0, seconds_left) * MAX_RESERVE_SHARE)


# The research leader weighs 1 in the split of stage 2's time. A family within this many standard
# errors of the difference is one research cannot tell from it: it weighs TIED_WEIGHT (the leader
# is still the better bet, and a few more trials of one family buy more than a few of two). A family
# further behind is unlikely to catch up by tuning: TRAILING_WEIGHT (still tuned, for the soft vote).
TRAILING_STANDARD_ERRORS = 2.0
TIED_WEIGHT = 0.5
TRAILING_WEIGHT = 0.25
# Per-fold ROC AUC spread is never taken as below this (two folds can agree by chance).
MIN_FOLD_STD = 0.005


@dataclass(frozen=True)
class FamilyScore:
    """A family's best research candidate: mean and standard deviation of its per-fold ROC AUC."""

    roc_auc: float
    std: float
    folds: int

    @property
    def standard_error(self) -> float:
        std = self.std if math.isfinite(self.std) else 0.0  # one fold has no spread
        return max(std, MIN_FOLD_STD) / math.sqrt(max(1, self.folds))


def family_weights(families: Sequence[str], scores: Mapping[str, FamilyScore]) -> dict[str, float]:
    """Each tuned family's weight in the split of stage 2's time: 1 for the leader, ``TIED_WEIGHT``
    for the families research cannot tell from it, ``TRAILING_WEIGHT`` for those clearly behind.
    Every family weighs 1 when a score is missing (a research run from before these were recorded)."""
    if not families or any(f not in scores or not math.isfinite(scores[f].roc_auc) for f in families):
        return {f: 1.0 for f in families}
    leader = max(families, key=lambda f: scores[f].roc_auc)
    best = scores[leader]
    weights = {}
    for family in families:
        score = scores[family]
        spread = math.hypot(best.standard_error, score.standard_error)
        behind = (best.roc_auc - score.roc_auc) > TRAILING_STANDARD_ERRORS * spread
        weights[family] = 1.0 if family == leader else TRAILING_WEIGHT if behind else TIED_WEIGHT
    return weights


def family_share(seconds_left: float, reserve: float, weight: float, weights_left: float) -> float:
    """A tuned family's share: what is left after the reserve, split over the families left by weight
    (``weights_left``: their weights' sum, this family's included)."""
    return max(0.0, seconds_left - reserve) * weight / max(weight, weights_left, 1e-9)


# A share raised to fit one trial gets this much more than the trial's prediction.
ONE_TRIAL_MARGIN = 1.1
# ... taken from the largest share only while that keeps this many of its own trials.
DONOR_TRIALS_KEPT = 3


def with_one_trial_each(shares: Mapping[str, float], trials: Mapping[str, float]) -> dict[str, float]:
    """``shares`` (seconds per family) moved so that each fits one of its family's ``trials``
    (predicted seconds), taken from the largest share while that keeps ``DONOR_TRIALS_KEPT`` of its
    own; a family needing more than can be spared keeps its share (and is skipped). A family's first
    trials (its research candidate, its known configurations) buy more than the leader's last ones:
    on an 8,000-row table the leader's 25 trials found nothing after the third while two boosters
    were skipped for shares of 4-6 s against 6-7 s trials."""
    moved = dict(shares)
    for family in sorted(moved, key=lambda f: trials[f]):  # the cheapest first: most families fit
        need = trials[family] * ONE_TRIAL_MARGIN - moved[family]
        donor = max(moved, key=lambda f: moved[f])
        if need > 0 and donor != family and moved[donor] - need >= DONOR_TRIALS_KEPT * trials[donor]:
            moved[donor] -= need
            moved[family] += need
    return moved


# A trial's fit time grows with these parameters: linearly with the number of trees (or boosting
# iterations), about with the depth of each tree (the log of its leaves).
TREE_COUNT_PARAMS = ("n_estimators", "max_iter")
LEAF_COUNT_PARAMS = ("num_leaves", "max_leaf_nodes")


def relative_cost(reference: Mapping[str, object], params: Mapping[str, object]) -> float:
    """A configuration's fit time against the ``reference`` configuration's (the research candidate's,
    which stage 1 timed), from the size parameters both give; a parameter one of them leaves to the
    sampler or to the default counts as the reference's."""
    ratio = 1.0
    for key in (*TREE_COUNT_PARAMS, *LEAF_COUNT_PARAMS):
        ours, theirs = params.get(key), reference.get(key)
        if not (_is_number(ours) and _is_number(theirs)) or min(ours, theirs) < 2:
            continue
        ratio *= ours / theirs if key in TREE_COUNT_PARAMS else math.log2(ours) / math.log2(theirs)
    return ratio


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def first_trials_seconds(
    trial: float, reference: Mapping[str, object], configurations: Sequence[Mapping[str, object]]
) -> float:
    """Predicted seconds of a study's queued first trials (``configurations``: the research
    candidate's, then the known ones), from ``trial``, the predicted seconds of the reference's."""
    return trial * sum(relative_cost(reference, c) for c in configurations)


# The research leader's share in the first round is raised to fit its queued first trials (its
# research candidate and known configurations), up to this share of the tuning time: those trials
# are the best bet of the whole stage, and a known configuration the clock cut was lost (credit_risk,
# B = 60 s: LightGBM's larger known setting, 0.947 out-of-fold, was cut in a 4-8 s share while two
# tied families took the rest). What the others then lack, the second round gives back.
LEADER_FIRST_MAX_SHARE = 0.75


def with_leader_first(shares: Mapping[str, float], leader: str, need: float) -> dict[str, float]:
    """``shares`` (seconds per family) moved so that the ``leader``'s fits ``need`` (its first trials),
    taken from the others in proportion to theirs, never raising it above ``LEADER_FIRST_MAX_SHARE``
    of all of them."""
    total = sum(shares.values())
    others = total - shares[leader]
    extra = min(need, LEADER_FIRST_MAX_SHARE * total) - shares[leader]
    if extra <= 0 or others <= 0:
        return dict(shares)
    taken = min(extra, others)
    moved = {family: share * (1.0 - taken / others) for family, share in shares.items()}
    moved[leader] = shares[leader] + taken
    return moved


def first_round_share(
    seconds_left: float, reserve: float, weight: float, weights_left: float, planned: float, trial: float
) -> float:
    """A family's share in stage 2's first round: its part of what is left by weight, never more than
    its ``planned`` share; a plan raised to fit ``trial`` (one trial, :func:`with_one_trial_each`, or
    the leader's first trials, :func:`with_leader_first`) is held to while what is left after the
    reserve allows, as the families before it may have spent their own."""
    share = min(family_share(seconds_left, reserve, weight, weights_left), planned)
    if share < trial <= planned:
        share = min(planned, max(0.0, seconds_left - reserve))
    return share


def skip_family(share: float, predicted_trial: float, first: bool) -> str | None:
    """Why a family is not tuned (its one trial cannot fit its share), or None.

    The first family is always tuned: stage 2 needs one model, and its first trial is the research
    candidate's own configuration.
    """
    if first or predicted_trial <= share:
        return None
    return f"skipped: one trial would take about {predicted_trial:.0f} s, its share is {share:.0f} s"


# A second round gives a family time the first round left only when this much or more is free:
# each round opens the study and logs its trials, a few seconds' work that a sliver would waste.
EXTRA_ROUND_MIN_SECONDS = 5.0


def extra_round(share: float, predicted_trial: float) -> bool:
    """Whether a second-round share is worth tuning: at least one whole trial, and not a sliver."""
    return share >= max(predicted_trial, EXTRA_ROUND_MIN_SECONDS)


def process_started() -> float:
    """When this process started, on the ``time.monotonic()`` clock (the one clock read here)."""
    import psutil

    age = time.time() - psutil.Process().create_time()
    return time.monotonic() - max(0.0, age)
