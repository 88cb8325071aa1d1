"""util.PageBudget: the one cadence at which mapped pages are given back (reader.compare per
bytes compared, writer.meta per items written, writer.incremental per directories read)."""
from __future__ import annotations

from mkerofs.util import PageBudget


def test_drops_once_per_budget_spent():
    calls = []
    budget = PageBudget(3, lambda: calls.append("a"), lambda: calls.append("b"))
    for _ in range(7):
        budget.spend()
    assert calls == ["a", "b", "a", "b"]        # after the 3rd and the 6th unit


def test_a_large_spend_drops_once_and_starts_afresh():
    calls = []
    budget = PageBudget(100, lambda: calls.append(1))
    budget.spend(250)
    assert calls == [1]
    budget.spend(99)
    assert calls == [1]
    budget.spend(1)
    assert calls == [1, 1]


def test_no_drops_is_a_counter_only():
    budget = PageBudget(2)
    for _ in range(5):
        budget.spend()
    assert budget.left == 1
