"""The one retrieval module every RAG baseline uses: real MiniLM embeddings and an exact FAISS index."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from deltamem_agents.retrieval import MiniLMRetriever, TextIndex  # noqa: E402


def test_index_search_filter_remove_and_persist(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((7, 5)).astype("float32")
    index = TextIndex(5)
    ids = index.add(vecs, [{"i": i, "even": i % 2 == 0} for i in range(7)])
    assert ids == list(range(7)) and len(index) == 7
    best = index.search(vecs[3] * 2.0, 1)[0]  # cosine: the scale of the query does not matter
    assert best[0] == 3 and best[1] == pytest.approx(1.0, abs=1e-5)
    assert [p["even"] for _, _, p in index.search(vecs[3], 3, where=lambda p: p["even"])] == [True] * 3
    assert index.remove([3]) == 1 and 3 not in [i for i, _, _ in index.search(vecs[3], 7)]
    index.save(tmp_path / "ix")
    again = TextIndex.load(tmp_path / "ix", 5)
    assert [i for i, _, _ in again.search(vecs[5], 6)] == [i for i, _, _ in index.search(vecs[5], 6)]
    with pytest.raises(ValueError, match="dim"):
        TextIndex.load(tmp_path / "ix", 6)
    with pytest.raises(ValueError, match="dim 5"):
        index.add(np.zeros((1, 4), dtype="float32"))


def test_minilm_finds_the_message_about_the_question():
    r = MiniLMRetriever()
    docs = ["We watched a film about penguins.", "My sister Daphne moved to Lisbon last spring.",
            "The printer on floor two is jammed again.", "I had pasta for lunch."]
    assert r.top_k("Where does my sister live now?", docs, 1) == [1]
    assert r.embed(docs).shape == (4, 384) and r.top_k("x", [], 3) == []
