"""Young's and Daly's intervals and the waste model: ANCHORS.md's published test vectors, exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mom_checkpoint.batch import interval

MIN = 60.0
HOUR = 3600.0


@pytest.mark.parametrize(
    ("mtbf", "daly_min", "young_min", "places"),
    [
        (24 * HOUR, 116.7, 120.0, 1),
        (6 * HOUR, 56.7, 60.0, 1),
        (15 * MIN, 9.14, 12.25, 2),
    ],
    ids=["M=24h", "M=6h", "M=15min"],
)
def test_anchor_vectors_for_a_5_minute_checkpoint(
    mtbf: float, daly_min: float, young_min: float, places: int
) -> None:
    cost = 5 * MIN
    assert round(interval.daly(cost, mtbf) / MIN, places) == daly_min
    assert round(interval.young(cost, mtbf) / MIN, places) == young_min


def test_daly_is_m_when_the_checkpoint_costs_2m_or_more() -> None:
    assert interval.daly(2 * HOUR, 1 * HOUR) == 1 * HOUR
    assert interval.daly(5 * HOUR, 1 * HOUR) == 1 * HOUR
    assert interval.advise(2 * HOUR, 1 * HOUR).cost_at_least_2m
    assert not interval.advise(1.99 * HOUR, 1 * HOUR).cost_at_least_2m


def test_waste_is_overhead_plus_half_an_interval_of_rework_per_failure() -> None:
    # delta = 5 min, M = 24 h, tau = 10 min: 5/10 + (10 + 5)/(2 * 1440)
    assert interval.waste(10 * MIN, 5 * MIN, 24 * HOUR) == pytest.approx(0.5 + 15 / 2880)
    assert interval.WASTE_MODEL == "waste(tau) = delta/tau + (tau + delta)/(2M)"


@given(
    cost=st.floats(min_value=0.01, max_value=3600.0),
    mtbf=st.floats(min_value=60.0, max_value=1e7),
)
def test_young_minimises_the_first_order_waste_and_daly_is_shorter(cost: float, mtbf: float) -> None:
    tau = interval.young(cost, mtbf)
    best = interval.waste(tau, cost, mtbf)
    for factor in (0.5, 0.9, 0.99, 1.01, 1.1, 2.0):
        assert best <= interval.waste(tau * factor, cost, mtbf) * (1 + 1e-12)
    if cost < 2 * mtbf:
        assert 0 < interval.daly(cost, mtbf) < tau


def test_advice_compares_the_current_interval_with_the_optimum() -> None:
    advice = interval.advise(5 * MIN, 24 * HOUR, 10 * MIN)
    assert advice.current is not None and advice.current.interval_s == 10 * MIN
    assert advice.current.waste > advice.daly.waste > 0
    assert advice.suggested_minutes == 117
    assert interval.advise(1.0, 1000 * HOUR).suggested_minutes == round(interval.daly(1.0, 1000 * HOUR) / 60)
    assert interval.advise(0.01, 0.01).suggested_minutes == 1  # never "interval=0"
    assert interval.advise(5 * MIN, 24 * HOUR).current is None


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_nonsense_inputs_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        interval.young(bad, HOUR)
    with pytest.raises(ValueError, match="above 0"):
        interval.daly(MIN, bad)
    with pytest.raises(ValueError, match="above 0"):
        interval.waste(bad, MIN, HOUR)


def test_typical_cost_is_the_median_of_the_usable_samples() -> None:
    assert interval.typical_cost([3.0, 100.0, 4.0]) == 4.0
    assert interval.typical_cost([2.0, 4.0, 0.0, math.nan]) == 3.0
    with pytest.raises(ValueError, match="no measured"):
        interval.typical_cost([])
