"""MemoryBudget's kept decodes: which are admitted, how long they stay, and what /metrics counts."""

from __future__ import annotations

import pytest
from PIL import Image

from imgproxy import budget as budget_module
from imgproxy.budget import Deadline, MemoryBudget
from imgproxy.metrics import REGISTRY

MB = 2**20
SIZE = (512, 512)  # 1 MB of RGB at 4 bytes a pixel


def outcomes() -> dict[str, float]:
    return {
        o: REGISTRY.get_sample_value("imgproxy_kept_decodes_total", {"outcome": o}) or 0.0
        for o in ("declined", "kept", "hit", "dropped_used", "dropped_unused")
    }


def render(budget: MemoryBudget, source: str, scale: int = 1) -> bool:
    """What a render does with the budget: look for the decode, else decode and offer it. Reused?"""
    key = f"{source}|1/{scale}"
    entry = budget.find(key, source, SIZE)
    reused = entry is not None
    if entry is None:
        entry = budget.keep(key, source, Image.new("RGB", SIZE), 1)
    budget.release(entry)
    return reused


def test_a_decode_is_kept_from_the_second_render_of_its_source():
    budget = MemoryBudget(64 * MB, 32 * MB)
    before = outcomes()
    assert [render(budget, "a") for _ in range(4)] == [False, False, True, True]
    counted = {o: n - before[o] for o, n in outcomes().items()}
    assert counted == {"declined": 1, "kept": 1, "hit": 2, "dropped_used": 0, "dropped_unused": 0}


def test_a_render_at_another_scale_counts_as_a_second_request():
    budget = MemoryBudget(64 * MB, 32 * MB)
    assert [render(budget, "a", 2), render(budget, "a", 4), render(budget, "a", 4)] == [False, False, True]
    assert [e.key for e in budget.kept.values()] == ["a|1/4"]


def test_distinct_sources_keep_nothing():
    budget = MemoryBudget(64 * MB, 32 * MB)
    assert not any(render(budget, f"new-{n}") for n in range(50))
    assert budget.kept_bytes == 0 and not budget.kept


def test_a_source_asked_again_after_many_others_is_new_again():
    budget = MemoryBudget(64 * MB, 32 * MB)
    render(budget, "a")
    for n in range(budget_module.ASKED_SOURCES):
        render(budget, f"new-{n}")
    render(budget, "a")
    assert budget.kept_bytes == 0


def test_a_decode_is_kept_when_another_render_of_its_source_is_queued():
    budget = MemoryBudget(64 * MB, 32 * MB)
    with budget.expecting("a"):
        with budget.expecting("a"), budget.expecting("b"):  # two of "a" pending, one of "b"
            assert not render(budget, "a") and not render(budget, "b")
            assert [e.key for e in budget.kept.values()] == ["a|1/1"]
        assert render(budget, "a")  # the one that waited
    assert not budget.pending


def test_a_kept_decode_not_reused_for_a_while_goes(monkeypatch):
    budget = MemoryBudget(64 * MB, 32 * MB)
    render(budget, "a")
    render(budget, "a")  # kept, not yet reused
    assert budget.kept
    before = outcomes()
    monkeypatch.setattr(budget_module, "KEPT_IDLE", 0.0)
    with budget.hold(MB, Deadline(10)):  # any render's hold drops idle ones
        pass
    assert budget.kept_bytes == 0 and not budget.kept
    assert outcomes()["dropped_unused"] - before["dropped_unused"] == 1


@pytest.mark.parametrize("entries", [1, 3])
def test_forgetting_counts_each_dropped_decode(entries):
    budget = MemoryBudget(64 * MB, 32 * MB)
    for n in range(entries):
        for _ in range(3):  # kept by the second render, reused by the third
            render(budget, f"s{n}")
    before = outcomes()
    budget.forget_kept()
    assert outcomes()["dropped_used"] - before["dropped_used"] == entries and budget.kept_bytes == 0
