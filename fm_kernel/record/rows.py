"""The plain values the record hands around — a step record, a query result
— and the named queries over the public views. No DuckDB here: the CLI and
the tests build and read these without opening a history."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PENDING_RUN_STATUSES", "Result", "STEP_LOG_COLUMNS", "StepRecord", "runs_query",
           "step_log_query", "utcnow"]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class StepRecord:
    """One step as it stands at one moment (running, or its final form)."""

    step: int
    branch: str
    parent: int | None
    kernel_id: str
    cell_id: str | None
    execution_count: int | None
    code: str
    status: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    duration_ms: float | None = None
    error_name: str | None = None
    error_value: str | None = None
    traceback: list[str] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None  # {"names": [...], "ids": [...], "changed": [...]}

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["started_at"] = self.started_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StepRecord":
        d = dict(d)
        d["started_at"] = dt.datetime.fromisoformat(d["started_at"])
        if d.get("finished_at"):
            d["finished_at"] = dt.datetime.fromisoformat(d["finished_at"])
        return cls(**d)


@dataclass
class Result:
    """A query result small enough to hold: column names and row tuples."""

    columns: list[str]
    rows: list[tuple]
    truncated: bool = False  # user SQL: more rows than the cap were found

    def to_pandas(self):  # pandas is optional for the kernel itself
        import pandas as pd

        return pd.DataFrame(self.rows, columns=self.columns)

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r)) for r in self.rows]


# -- named queries over the public views ------------------------------------------------
# Plain SELECTs over the spec's views, so that the CLI can also send them to a
# live kernel's endpoint as user SQL (the read-only door) when it holds the file.

PENDING_RUN_STATUSES = ("enqueued", "running", "sleeping", "waiting")
STEP_LOG_COLUMNS = ("step", "branch", "parent", "status", "execution_count", "duration_ms",
                    "started_at", "code", "error_name")


def step_log_query(branch: str | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    """The last ``limit`` steps (of ``branch``), oldest first."""
    where, params = ("WHERE branch = ?", [branch]) if branch else ("", [])
    limit_sql = f" LIMIT {int(limit)}" if limit else ""
    return (f"SELECT * FROM (SELECT {', '.join(STEP_LOG_COLUMNS)} FROM steps {where}"
            f" ORDER BY step DESC{limit_sql}) ORDER BY step", params)


# What `fm runs` and `%fm runs` (text) show of each run: its parent (the
# first 8 characters, as the widgets show ids), how many children it
# started, what a pending run waits in (an enqueued run: its queue; a
# finished run waits in nothing, though its journal holds waits), and
# the first line of its error. Enqueued runs have no start yet: they sort by
# when they were enqueued.
RUNS_SQL = """
SELECT r.run_id, r.flow, r.status, strftime(r.started_at, '%Y-%m-%d %H:%M:%S') AS started_at,
       strftime(r.finished_at, '%Y-%m-%d %H:%M:%S') AS finished_at,
       left(r.parent_run, 8) AS parent,
       (SELECT count(*) FROM runs c WHERE c.parent_run = r.run_id) AS children,
       coalesce((SELECT arg_max(s.name, s.position) FROM run_steps s
                 WHERE s.run_id = r.run_id AND s.status = 'waiting'
                   AND r.status NOT IN ('succeeded', 'failed', 'cancelled')),
                CASE WHEN r.status = 'enqueued' THEN concat('fm.Queue(', r.queue, ')') END)
           AS waiting_in,
       CASE WHEN r.error IS NOT NULL THEN left(concat(r.error->>'type', ': ',
           split_part(r.error->>'message', chr(10), 1)), 80) END AS error
FROM runs r
WHERE ($1 IS NULL OR r.status = $1) AND ($2 IS NULL OR r.flow = $2)
  AND (NOT $3 OR r.error IS NOT NULL)
ORDER BY coalesce(r.started_at, r.enqueued_at) DESC
LIMIT $4
"""


def runs_query(limit: int, status: str | None = None, flow: str | None = None,
               failed: bool = False) -> tuple[str, list]:
    """The runs listing, newest first: SQL and its parameters (``failed``:
    runs that ended with an error: failed, or cancelled by a timeout)."""
    return RUNS_SQL, [status, flow, failed, int(limit)]
