"""Generated training paraphrases: many, deterministic, train-only, and free of the held-out wording."""

from deltamem_agents.datasets import generate
from deltamem_agents.datasets.paraphrase import BANNED, GRAMMARS, banned, generated
from deltamem_agents.datasets.templates import _RAW, FAMILIES, templates


def test_generated_templates_are_many_deterministic_and_format():
    for fam, parts in GRAMMARS.items():
        for part in parts:
            gen = generated(fam, part)
            assert len(gen) >= 30, (fam, part)
            assert gen == generated(fam, part)
            assert len(set(gen)) == len(gen)
            slots = {"v": "teal", "old": "navy blue", "thing": "colour", "a": "a", "a_old": "a", "who": "sister",
                     "what": "birthday", "event": "haircut", "month": "May"}
            for t in gen:
                text = t.format(**slots)
                assert "{" not in text and (text[0].isupper() or t.startswith("{")) and text[-1] in ".?", t
                assert "teal" in text or part == "q"
                assert ("{old}" in t) <= (part == "u")  # only updates may name the old value


def test_generated_templates_are_train_only_and_avoid_heldout_wording():
    for fam, parts in GRAMMARS.items():
        for part in parts:
            held = [t.text for t in templates(fam, part, "heldout")]
            train = templates(fam, part, "train")
            new = [g for g in generated(fam, part) if g not in _RAW[fam][part][0]]  # a few repeat a hand-written one
            assert len(train) == len(_RAW[fam][part][0]) + len(new) and len(new) >= 30
            for t in train:
                assert t.text not in held
            for t in generated(fam, part):
                assert not banned(fam, t), t
            # the filter does catch the held-out wording it is meant to keep out (whole words, any case)
            assert all(banned(fam, h) for h in held if any(w in h.lower() for w in BANNED[fam]))
    assert banned("favourite", "Quick quiz: name my TOP colour.") and not banned("favourite", "Stop, it's teal.")
    # every banned phrase really is held-out vocabulary of its family (the lists are not arbitrary)
    for fam in GRAMMARS:
        held_text = " ".join(t.text.lower() for p in FAMILIES[fam] for t in templates(fam, p, "heldout"))
        assert all(w in held_text for w in BANNED[fam]), fam


def test_generated_templates_leave_the_heldout_split_exactly_as_without_them(monkeypatch):
    """Held-out episodes draw only from the held-out lists: with no generated templates at all they must be the
    same templates, ids included (so held-out episodes and the results that cite their ids do not move)."""
    from deltamem_agents.datasets import templates as tm

    monkeypatch.setattr(tm, "generated", lambda family, part: [])
    bare = tm._build()
    for fam, parts in FAMILIES.items():
        for part, splits in parts.items():
            assert splits["heldout"] == bare[fam][part]["heldout"], (fam, part)
            assert len(splits["train"]) >= len(bare[fam][part]["train"])


def test_ids_unique_and_heldout_ids_stable():
    ids = [t.id for fam in FAMILIES.values() for part in fam.values() for sp in part.values() for t in sp]
    assert len(ids) == len(set(ids))
    # held-out ids are numbered before the generated ones, so results that cite them stay valid
    assert [t.id for t in templates("favourite", "u", "heldout")] == ["favourite.u11", "favourite.u12"]


def test_training_episodes_use_generated_wordings():
    eps = generate(120, seed=5, split="train", mix={"update": 1.0}, distance_range=(0, 20))
    fav = [e for e in eps if e.meta["family"] == "favourite"]
    gen_u = {t.id for t in templates("favourite", "u", "train")[len(_RAW["favourite"]["u"][0]):]}
    assert fav and sum(e.meta["templates"]["update"] in gen_u for e in fav) >= len(fav) // 2
    held = generate(60, seed=5, split="heldout", mix={"update": 1.0}, distance_range=(0, 20))
    held_ids = {t.id for p in "suq" for t in templates("favourite", p, "heldout")}
    assert all(i in held_ids for e in held if e.meta["family"] == "favourite" for i in e.meta["template_ids"])
