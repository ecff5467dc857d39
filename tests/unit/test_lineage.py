"""Which branch each step is on (record/lineage.py), on graphs built by hand:
the shapes a real kernel makes rarely or only in older histories."""

from __future__ import annotations

from fm_kernel.record.lineage import Graph, bases, lines, shown
from fm_kernel.tables import step_log_table


def graph(steps: list[tuple[int, int | None, str, bool]], heads: dict[str, int | None],
          recorded_bases: dict[str, int | None] | None = None) -> Graph:
    """steps as (step, parent, ran on, finished)."""
    return Graph(parent={s: p for s, p, _, _ in steps}, ran_on={s: b for s, _, b, _ in steps},
                 finished={s: f for s, _, _, f in steps},
                 heads=heads, bases=recorded_bases or {n: None for n in heads},
                 created={n: "" for n in heads}, session_seqs=[0], session_at=[""], head=None)


def test_a_rewound_chain_no_branch_names_is_named_after_its_last_step() -> None:
    # an older history: rewind to 2 left 3..4 without a main@4 branch
    g = graph([(1, None, "main", True), (2, 1, "main", True), (3, 2, "main", True),
               (4, 3, "main", True), (5, 2, "main", True)], {"main": 5})
    assert lines(g, ("main", 5)) == {1: "main", 2: "main", 3: "main@4", 4: "main@4", 5: "main"}
    assert bases(g, lines(g, ("main", 5))) == {"main": None}


def test_a_cell_that_never_finished_is_on_its_parents_branch_and_in_its_log() -> None:
    g = graph([(1, None, "main", True), (2, 1, "main", False), (3, 1, "main", True)], {"main": 3})
    line = lines(g, ("main", 3))
    assert line[2] == "main"
    assert [s for s, _ in shown(g, line, 3, every=False)] == [1, 2, 3]
    # a finished step off the ancestry is not HEAD's: it is left to --all
    g = graph([(1, None, "main", True), (2, 1, "main", True), (3, 1, "main", True)],
              {"main": 3, "main@2": 2})
    assert [s for s, _ in shown(g, lines(g, ("main", 3)), 3, every=False)] == [1, 3]


def test_a_step_two_tips_reach_goes_to_the_tip_that_ran_on_its_branch() -> None:
    # main 1..5; exp forked at 3 (6); main rewound to 1 left main@5
    g = graph([(1, None, "main", True), (2, 1, "main", True), (3, 2, "main", True),
               (4, 3, "main", True), (5, 4, "main", True), (6, 3, "exp", True)],
              {"main": 1, "exp": 6, "main@5": 5}, {"main": None, "exp": 3, "main@5": 5})
    line = lines(g, ("main", 1))
    assert [line[s] for s in range(1, 7)] == ["main", "main@5", "main@5", "main@5", "main@5", "exp"]
    assert bases(g, line) == {"main": None, "exp": 3, "main@5": 1}


def test_heads_branch_follows_head_not_the_branch_record() -> None:
    # the record still says main's head is 3; the kernel's HEAD moved to 2
    g = graph([(1, None, "main", True), (2, 1, "main", True), (3, 2, "main", True)], {"main": 3})
    assert lines(g, ("main", 1))[3] == "main@3"


def test_session_lines_mark_where_a_new_kernel_session_began() -> None:
    rows = [(1, "main", None, "ok", 1, 2.0, "a = 1"), (2, "main", 1, "ok", 2, 2.0, "b = 2"),
            (3, "main", 2, "error", 1, 2.0, "1/0")]
    text = step_log_table(rows, head=3, sessions=[(1, "t1"), (1, "t1"), (2, "t2")])
    assert text.splitlines()[2:] == [
        "1     main            ok      [1]  2 ms      a = 1",
        "2     main    1       ok      [2]  2 ms      b = 2",
        "-- kernel session 2, started t2 --",
        "*3    main    2       error   [1]  2 ms      1/0",
    ]
    later = step_log_table(rows[2:], head=3, sessions=[(2, "t2")]).splitlines()
    assert later[2] == "-- kernel session 2, started t2 --"  # the first row's session named


def test_a_long_history_is_walked_as_a_few_runs(tmp_path) -> None:
    """1,000 steps, a rewind to 500 (main@1000 keeps the old tip), 10 new
    steps: the graph DuckDB hands over has a node per run, not per step, and
    the log and branches read off it are those of the step-by-step rules."""
    import datetime as dt

    from fm_kernel.record.lineage import branch_table, step_log
    from fm_kernel.record.rows import StepRecord
    from fm_kernel.record.store import Store

    now = dt.datetime.now(dt.timezone.utc)

    def rec(step: int, parent: int | None) -> StepRecord:
        return StepRecord(step=step, branch="main", parent=parent, kernel_id="k", cell_id=None,
                          execution_count=step, code=f"x = {step}", status="ok",
                          started_at=now, finished_at=now, duration_ms=1.0)

    store = Store.open(tmp_path / "h.duckdb")
    store.append_steps([rec(s, s - 1 or None) for s in range(1, 1001)])
    store.append_branch("main@1000", 1000, 1000)  # what a rewind does (state/navigate.py)
    store.append_branch("main", 500, None)
    store.append_event("rewind", step=500, payload={"branch": "main"})
    store.append_steps([rec(1001, 500), *[rec(s, s - 1) for s in range(1002, 1011)]])
    g = Graph.load(store.query, 1010)
    assert sorted(g.parent) == [500, 1000, 1010]  # 1..500, 501..1000, 1001..1010
    log = step_log(store.query, ("main", 1010), limit=12)
    assert [(r[0], r[1], r[2]) for r in log.rows] == \
        [(499, "main", 498), (500, "main", 499)] + [(s, "main", s - 1 if s > 1001 else 500)
                                                      for s in range(1001, 1011)]
    assert log.total == 1010
    every = step_log(store.query, ("main", 1010), every=True, limit=None)
    assert len(every.rows) == 1010 and every.rows[700][1] == "main@1000"
    rows, current = branch_table(store.query, ("main", 1010))
    assert current == "main" and {r[0]: r[2] for r in rows} == {"main": None, "main@1000": 500}
    store.close()
