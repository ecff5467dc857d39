"""A state derived from the last one (Manifest.derive, layered.py) is the
state a full rebuild gives, in the same order, with the same indexes, and
costs what changed: its overlay over the shared base stays bounded."""

from __future__ import annotations

import random

from fm_kernel.state.layered import Layered, limit
from fm_kernel.state.manifest import Manifest, VarEntry, entry_id


def _entry(name: str, rng: random.Random) -> VarEntry:
    ref = f"g{rng.randrange(40)}" if rng.random() < 0.8 else ""
    return VarEntry(name=name, type="int", size_bytes=28, summary="1", value=rng.randrange(5),
                    ref=ref, fp=f"fp{rng.randrange(1000)}")


def _groups_as_sets(groups) -> dict[str, set[str]]:
    return {ref: set(ns) for ref, ns in groups.items()}


def _edits(rng: random.Random, names: list[str]) -> tuple[dict[str, VarEntry], set[str]]:
    pool = names + [f"n{rng.randrange(400)}" for _ in range(3)]
    updates = {n: _entry(n, rng) for n in rng.sample(pool, rng.randrange(0, 6))}
    deleted = set(rng.sample(names, min(len(names), rng.randrange(0, 3))))
    return updates, deleted


def test_derive_equals_a_full_rebuild_over_random_edits() -> None:
    rng = random.Random(14)
    plain = {f"n{i}": _entry(f"n{i}", rng) for i in range(300)}
    m = Manifest(plain)
    m.groups(), m.signature(), m.entry_ids()  # indexes present: derive carries them
    for _ in range(600):
        updates, deleted = _edits(rng, list(plain))
        m = m.derive(updates, deleted)
        for n in deleted:
            plain.pop(n, None)
        plain.update(updates)
        full = Manifest(plain)
        assert m.names() == full.names()  # dict order: a name set again keeps its place
        assert all(m[n] is plain[n] for n in plain) and len(m) == len(plain)
        assert m.signature() == full.signature()
        assert list(m.entry_ids().items()) == list(full.entry_ids().items())
        assert _groups_as_sets(m.groups()) == _groups_as_sets(full.groups())
        assert m._entries.overlay_size() <= limit(len(m))


def test_a_small_cell_shares_the_base_and_a_fold_bounds_the_overlay() -> None:
    base = Layered((f"v{i}", i) for i in range(10_000))
    m = base.derive({"v0": -1})
    assert m.shares_base(base) and m.overlay_size() == 1 and m["v0"] == -1 and base["v0"] == 0
    for i in range(1, 1000):  # each derive adds a name: the overlay grows to the limit, then folds
        m = m.derive({f"w{i}": i})
        assert m.overlay_size() <= limit(len(m))
    assert not m.shares_base(base)
    assert list(m)[:2] == ["v0", "v1"] and list(m)[-1] == "w999" and m["v0"] == -1


def test_a_name_deleted_and_set_again_goes_last() -> None:
    m = Layered({"a": 1, "b": 2, "c": 3}).derive({}, ["a"]).derive({"a": 4})
    assert list(m.items()) == [("b", 2), ("c", 3), ("a", 4)]
    m = m.derive({}, ["a"])
    assert "a" not in m and list(m) == ["b", "c"] and len(m) == 2
    assert dict(m.derive({"b": 5})) == {"b": 5, "c": 3}


def test_entry_ids_of_untouched_names_are_carried() -> None:
    rng = random.Random(1)
    m = Manifest({f"n{i}": _entry(f"n{i}", rng) for i in range(50)})
    ids = m.entry_ids()
    e = _entry("n3", rng)
    d = m.derive({"n3": e}, set())
    assert d.entry_ids()["n3"] == entry_id(e) and d.entry_ids()["n4"] is ids["n4"]
