"""How often to checkpoint: Young's and Daly's optimal intervals and the expected waste of an interval.

Pure functions, every quantity in seconds:

- ``cost`` (delta): what one checkpoint costs the job, the time it is stopped while being dumped;
- ``mtbf`` (M): the mean time between failures that end the job (here: of its node);
- ``interval`` (tau): the compute time between two checkpoints.

Young (1974): tau = sqrt(2 delta M). Daly (2006, FGCS 22(3)), his higher-order estimate:
tau = sqrt(2 delta M) * [1 + (1/3) sqrt(delta / 2M) + (1/9) (delta / 2M)] - delta for delta < 2M,
else tau = M.

Waste, the first-order model both formulas come from: the fraction of the run time lost is the
checkpoint overhead delta/tau plus, for each failure (1/M of them per unit of time), the work since
the last checkpoint, on average half a period (tau + delta)/2:

    waste(tau) = delta/tau + (tau + delta) / (2M)

Its minimum over tau is Young's interval. The model holds while tau and delta are small against M;
close to M (or above it) the waste it gives is an underestimate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import msgspec

WASTE_MODEL = "waste(tau) = delta/tau + (tau + delta)/(2M)"


def _check(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number above 0, got {value!r}")


def young(cost: float, mtbf: float) -> float:
    """Young's optimal interval: sqrt(2 delta M)."""
    _check(cost=cost, mtbf=mtbf)
    return math.sqrt(2 * cost * mtbf)


def daly(cost: float, mtbf: float) -> float:
    """Daly's higher-order optimal interval; M itself when the checkpoint costs 2M or more."""
    _check(cost=cost, mtbf=mtbf)
    if cost >= 2 * mtbf:
        return mtbf
    ratio = cost / (2 * mtbf)
    return math.sqrt(2 * cost * mtbf) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - cost


def waste(interval: float, cost: float, mtbf: float) -> float:
    """The expected fraction of the run time lost to checkpoints and to rework after failures."""
    _check(interval=interval, cost=cost, mtbf=mtbf)
    return cost / interval + (interval + cost) / (2 * mtbf)


class Option(msgspec.Struct, frozen=True):
    """One interval and what it costs."""

    interval_s: float
    waste: float  # fraction of the run time, 0.05 = 5 %


class Advice(msgspec.Struct, frozen=True):
    cost_s: float
    mtbf_s: float
    current: Option | None
    young: Option
    daly: Option
    cost_at_least_2m: bool  # Daly's formula does not apply: tau = M

    @property
    def suggested_minutes(self) -> int:
        """Daly's interval in whole minutes (what qsub -c interval=N takes), at least 1."""
        return max(1, round(self.daly.interval_s / 60))


def advise(cost_s: float, mtbf_s: float, current_s: float | None = None) -> Advice:
    young_s, daly_s = young(cost_s, mtbf_s), daly(cost_s, mtbf_s)
    return Advice(
        cost_s=cost_s,
        mtbf_s=mtbf_s,
        current=Option(current_s, waste(current_s, cost_s, mtbf_s)) if current_s is not None else None,
        young=Option(young_s, waste(young_s, cost_s, mtbf_s)),
        daly=Option(daly_s, waste(daly_s, cost_s, mtbf_s)),
        cost_at_least_2m=cost_s >= 2 * mtbf_s,
    )


def typical_cost(samples: Sequence[float]) -> float:
    """The checkpoint cost to plan with: the median of measured costs (one slow dump does not count
    for more than it should)."""
    usable = [s for s in samples if math.isfinite(s) and s > 0]
    if not usable:
        raise ValueError("no measured checkpoint cost above 0")
    return float(statistics.median(usable))
