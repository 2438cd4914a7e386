"""lab.bench_leak: recall, memory and the leak of another conversation's state from bench rows."""

from __future__ import annotations

from lab.bench_leak import render, table


def _row(item, backend, gold, pred, donor=None):
    r = {"task": "openset-distance", "cell": "d500", "item_id": item, "backend": backend, "gold": gold,
         "prediction": pred, "score": float(gold.lower() in pred.lower())}
    return r | ({"donor_id": donor} if donor else {})


def test_leak_counts_the_donors_words_and_values():
    rows = [_row("a", "deltamem", "Lisbon", "Lisbon."), _row("a", "deltamem_shuffled", "Lisbon", "Paris.", "b"),
            _row("b", "deltamem", "Ahmed Khan", "Ahmed."), _row("b", "deltamem_shuffled", "Ahmed Khan", "Marie", "c"),
            _row("c", "deltamem", "Marie Curie", "no"), _row("c", "deltamem_shuffled", "Marie Curie", "Lisbon!", "a")]
    ceiling = [_row(i, "fact", g, g) for i, g in (("a", "Lisbon"), ("b", "Ahmed Khan"), ("c", "Marie Curie"))]
    (t,) = table(rows, ceiling)
    assert t["n"] == 3 and t["own"][0] == 1 / 3 and t["other"] == 0.0 and t["ceiling"] == 1.0
    # a borrows nothing of b's "Ahmed Khan"; b says "Marie" (c's word); c says "Lisbon" (a's whole value)
    assert t["leak_word"] == 2 / 3 and t["leak_whole"] == 1 / 3
    assert "| openset-distance | d500 | 3 |" in render([t])
