"""What a namespace's names are bound to, and what changed since
(fm_kernel.state.bindings): the entry-table look must say exactly what the
portable look says, whatever happened to the dict in between."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
from hypothesis import given, settings, strategies as st

from fm_kernel.state import bindings
from fm_kernel.state.bindings import Bindings


def truth(before: dict, after: dict) -> tuple[set, set]:
    bound = {k for k, v in after.items() if k not in before or before[k] is not v}
    return bound, set(before) - set(after)


# one step of what code can do to a namespace between two looks
OPS = st.one_of(
    st.tuples(st.just("bind"), st.integers(0, 60)),
    st.tuples(st.just("rebind_same"), st.integers(0, 60)),
    st.tuples(st.just("delete"), st.integers(0, 60)),
    st.tuples(st.just("many"), st.integers(1, 400)),  # enough to rebuild the table
    st.tuples(st.just("int_key"), st.integers(0, 3)),  # a table of general entries
    st.tuples(st.just("clear"), st.just(0)),
)


def apply(ns: dict, op: tuple[str, int], serial: list[int]) -> None:
    kind, n = op
    serial[0] += 1
    if kind == "bind":
        ns[f"v{n}"] = [serial[0]]
    elif kind == "rebind_same" and f"v{n}" in ns:
        ns[f"v{n}"] = ns[f"v{n}"]  # same object: not a rebinding
    elif kind == "delete":
        ns.pop(f"v{n}", None)
    elif kind == "many":
        for i in range(n):
            ns[f"_i{serial[0]}_{i}"] = f"x = {i}"
    elif kind == "int_key":
        ns[n] = object()
    elif kind == "clear":
        ns.clear()


@pytest.mark.parametrize("fast", [True, False], ids=["table", "portable"])
@settings(max_examples=150, deadline=None)
@given(cells=st.lists(st.lists(OPS, max_size=6), min_size=1, max_size=12))
def test_since_says_exactly_what_changed(fast: bool, cells):
    saved = bindings._FAST
    bindings._FAST = fast and saved
    try:
        ns: dict = {f"v{i}": [i] for i in range(30)}
        serial = [0]
        look = Bindings.of(ns)
        for ops in cells:
            before = dict(ns)
            for op in ops:
                apply(ns, op, serial)
            look, bound, unbound = look.since(ns)
            assert (bound, unbound) == truth(before, ns)
            assert look.by_name() == {k: id(v) for k, v in ns.items()}
    finally:
        bindings._FAST = saved


def test_the_table_look_is_used_on_this_interpreter():
    """The fast path must be the one tested above, not a silent fallback."""
    if sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13):
        assert bindings._FAST and bindings.table_look()
    else:
        assert not bindings.table_look()


def test_a_look_holds_no_object_of_the_namespace():
    """Holding the objects would keep alive what a cell deletes (a 10 GB
    array, an open connection) until the next capture."""
    class Big:
        pass

    ns = {"a": Big(), "b": 1}
    gone = weakref.ref(ns["a"])
    look = Bindings.of(ns)
    ns["c"] = Big()
    look, _, _ = look.since(ns)
    del ns["a"]
    gc.collect()
    assert gone() is None
    look, bound, unbound = look.since(ns)
    assert unbound == {"a"} and bound == set()


def test_a_deleted_and_rebound_name_is_bound_not_unbound():
    ns = {f"v{i}": i for i in range(50)}
    look = Bindings.of(ns)
    del ns["v3"]
    ns["v3"] = object()
    _, bound, unbound = look.since(ns)
    assert bound == {"v3"} and unbound == set()
