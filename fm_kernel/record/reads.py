"""The history's reads by name: the step log, one step's record, entries,
branches, HEAD, events. A mixin of Store that needs only its ``query``: no
connection, lock or DuckDB here, so every read is one SELECT over the views
or the append-only tables, and none of them writes."""

from __future__ import annotations

import json
from typing import Any, Sequence

from .rows import PENDING_RUN_STATUSES, Result, StepRecord, step_log_query
from .stored_states import rebuilt


class HistoryReads:
    """Reads shared by every Store; ``query(sql, params) -> Result`` is Store's."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> Result:  # pragma: no cover
        raise NotImplementedError

    def steps(self, branch: str | None = None, limit: int | None = None) -> Result:
        """The step log (columns of ``STEP_LOG_COLUMNS``), oldest first."""
        return self.query(*step_log_query(branch, limit))

    def steps_frame(self, branch: str | None = None):
        """Every column of the steps view as a DataFrame, oldest first."""
        where, params = ("WHERE branch = ?", [branch]) if branch else ("", [])
        return self.query(f"SELECT * EXCLUDE (seq) FROM steps {where} ORDER BY step",
                          params).to_pandas()

    def step_count(self) -> int:
        return self.query("SELECT count(*) FROM steps").rows[0][0]

    def pending_run_count(self) -> int:
        return self.query("SELECT count(*) FROM runs WHERE status IN ("
                          + ", ".join(f"'{s}'" for s in PENDING_RUN_STATUSES) + ")").rows[0][0]

    def branches(self) -> Result:
        """name, head, base, created_at of every branch, oldest first."""
        return self.query("SELECT name, head, base, created_at FROM branches ORDER BY created_at, name")

    def session_steps(self, run_key: str) -> tuple[list[str], list[tuple]]:
        """The kernels that `fm run` started under ``run_key`` (oldest first)
        and their steps as (step, parent, code, status, kernel_id)."""
        kernels = [r[0] for r in self.query(
            "SELECT payload->>'kernel_id' FROM fm_events WHERE kind = 'kernel_started'"
            " AND payload->>'run_key' = ? ORDER BY seq", [run_key]).rows]
        if not kernels:
            return [], []
        rows = self.query(
            "SELECT step, parent, code, status, kernel_id FROM steps"
            " WHERE kernel_id IN (SELECT unnest(?::VARCHAR[]))", [kernels]).rows
        return kernels, rows

    def step(self, step: int) -> StepRecord | None:
        # A join, not a subquery per column: DuckDB ran those as correlated
        # scans of fm_states, ~60 ms at 1,000 steps of 500 names (~5 ms joined),
        # and a timeline click reads a step's record twice. A state stored as
        # a change needs its base too: one more row, looked up by id (a second
        # join made DuckDB hash every state, 10 ms at 10,000 names).
        res = self.query(
            "SELECT r.step, r.branch, r.parent, r.kernel_id, r.cell_id, r.execution_count, r.code,"
            " r.status, r.started_at, r.finished_at, r.duration_ms, r.error_name, r.error_value,"
            " r.traceback::VARCHAR, r.outputs::VARCHAR, r.changed, s.names, s.ids, s.removed, s.base"
            " FROM (SELECT * FROM fm_step_records WHERE step = ? ORDER BY seq DESC LIMIT 1) r"
            " LEFT JOIN fm_states s ON s.id = r.state_id LIMIT 1",
            [step],
        )
        if not res.rows:
            return None
        r = list(res.rows[0])
        changed, names, ids, removed, base = r[15:20]
        r = r[:15]
        r[13] = json.loads(r[13]) if r[13] else None
        r[14] = json.loads(r[14]) if r[14] else []
        if names is None:
            return StepRecord(*r, state=None)
        whole = None if base is None else self.query(
            "SELECT names, ids FROM fm_states WHERE id = ? LIMIT 1", [base]).rows[0]
        names, ids = rebuilt(names, ids, removed, *(whole or (None, None)))
        return StepRecord(*r, state={"names": names, "ids": ids, "changed": changed or []})

    def entries(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Variable entries by id (as written by append_step)."""
        if not ids:
            return {}
        res = self.query(
            "SELECT id, any_value(entry)::VARCHAR FROM fm_var_entries"
            " WHERE id IN (SELECT unnest(?::VARCHAR[])) GROUP BY id", [list(ids)])
        return {i: json.loads(e) for i, e in res.rows}

    def known_entry_ids(self) -> set[str]:
        return {r[0] for r in self.query("SELECT DISTINCT id FROM fm_var_entries").rows}

    def head(self, before_seq: int | None = None) -> tuple[str, int | None] | None:
        """HEAD (branch, step) before ``before_seq``: the later, in seq order, of
        the last cell's final record and the last HEAD-move event. A killed
        cell's record (written by the next kernel) has no finished_at: it
        never moved HEAD. None before anything did."""
        res = self.query(
            "SELECT branch, step FROM ("
            "  SELECT seq, branch, step FROM fm_step_records WHERE finished_at IS NOT NULL"
            "  UNION ALL"
            "  SELECT seq, payload->>'branch', step FROM fm_events"
            "  WHERE kind IN ('rewind', 'checkout', 'resume', 'fork')"
            ") WHERE seq < ? ORDER BY seq DESC LIMIT 1", [before_seq or (1 << 62)])
        return (res.rows[0][0], res.rows[0][1]) if res.rows else None

    def unfinished_steps(self) -> list[StepRecord]:
        """Steps whose latest record says 'running': their kernel died."""
        res = self.query("SELECT step FROM steps WHERE status = 'running' ORDER BY step")
        return [rec for (n,) in res.rows if (rec := self.step(n)) is not None]

    def branch_heads(self) -> dict[str, int | None]:
        """Branch name -> its head step. Read from the ``branches`` view once,
        then kept current by this store's own appends (head_moved): this
        process is the history's one writer, and a HEAD move reads the heads
        every time (~3 ms a query, plus the batch a read moves into DuckDB)."""
        with self._seq_lock:  # not the connection's: appends move heads without it
            cached, version = self._heads, self._heads_version
        if cached is not None and not self.read_only:
            return dict(cached)
        heads = dict(self.query("SELECT name, head FROM branches").rows)
        with self._seq_lock:  # kept only if no head moved while the query ran
            if not self.read_only and version == self._heads_version:
                self._heads = heads
        return dict(heads)

    def _forget_heads(self, forget: bool) -> None:
        if forget:
            with self._seq_lock:
                self._heads, self._heads_version = None, self._heads_version + 1

    def head_moved(self, branch: str, head: int | None, created: bool = False) -> None:
        """A record appended through the step log moved ``branch`` to ``head``
        (a step record, or a branch record when ``created`` may be new), as the
        ``branches`` view would count it: the latest non-null head per branch;
        branches with no branch record are not in it. A new branch is read again."""
        with self._seq_lock:
            self._heads_version += 1
            if self._heads is None:
                return
            if created and branch not in self._heads:
                self._heads = None
            elif head is not None and branch in self._heads:
                self._heads = {**self._heads, branch: head}  # readers hold the old dict

    def last_event(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        marks = ", ".join("?" for _ in kinds)
        res = self.query(
            f"SELECT seq, kind, step, payload FROM fm_events WHERE kind IN ({marks})"
            " ORDER BY seq DESC LIMIT 1",
            list(kinds),
        )
        return res.dicts()[0] if res.rows else None
