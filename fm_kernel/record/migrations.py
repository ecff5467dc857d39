"""The history schema, as data: migration N is ``MIGRATIONS[N - 1]``.

Tables named ``fm_*`` are the record and are only ever appended to; the
names users query (``steps``, ``outputs``, ``events``, ``branches``) are
views over them. Appending instead of updating keeps the per-cell write to a
single INSERT (a DuckDB statement costs ~0.5 ms here, see docs/benchmarks.md)
and makes "nothing is ever rewritten" true by construction.

Only store.py executes these; never edit a released migration, add one.
"""

from __future__ import annotations

# Each step record is the state of one step at one moment: a long cell gets a
# 'running' record and later its final one; the views keep the latest by seq.
_V1 = r"""
CREATE TABLE fm_meta (key VARCHAR PRIMARY KEY, value VARCHAR);

CREATE TABLE fm_step_records (
    seq             BIGINT NOT NULL,
    step            BIGINT NOT NULL,
    branch          VARCHAR NOT NULL,
    parent          BIGINT,
    kernel_id       VARCHAR,
    cell_id         VARCHAR,
    execution_count INTEGER,
    code            VARCHAR,
    status          VARCHAR NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    duration_ms     DOUBLE,
    error_name      VARCHAR,
    error_value     VARCHAR,
    traceback       JSON,
    outputs         JSON
);

CREATE TABLE fm_events (
    seq     BIGINT NOT NULL,
    "at"    TIMESTAMPTZ NOT NULL,
    kind    VARCHAR NOT NULL,
    step    BIGINT,
    run_id  VARCHAR,
    payload JSON
);

-- A branch row is written when a branch is created and whenever its head is
-- moved without running a cell (rewind, checkout); running a cell on a branch
-- moves its head implicitly through the step record.
CREATE TABLE fm_branch_records (
    seq        BIGINT NOT NULL,
    name       VARCHAR NOT NULL,
    head       BIGINT,
    base       BIGINT,
    "at"       TIMESTAMPTZ NOT NULL
);

CREATE VIEW steps AS
SELECT step, branch, parent, kernel_id, cell_id, execution_count, code, status,
       started_at, finished_at, duration_ms, error_name, error_value,
       CAST(traceback AS VARCHAR[]) AS traceback, seq
FROM fm_step_records
QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1;

CREATE VIEW outputs AS
WITH latest AS (
    SELECT step, outputs FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), rows AS (
    SELECT step, unnest(from_json(outputs,
        '[{"position":"INTEGER","output_type":"VARCHAR","mime":"VARCHAR","content":"VARCHAR","meta":"JSON"}]')) AS o
    FROM latest WHERE outputs IS NOT NULL
)
SELECT step, o.position AS position, o.output_type AS output_type, o.mime AS mime,
       o.content AS content, o.meta AS meta
FROM rows;

CREATE VIEW events AS
SELECT seq, "at", kind, step, run_id, payload FROM fm_events
UNION ALL
SELECT seq, coalesce(finished_at, started_at) AS "at", 'step_' || status AS kind, step,
       NULL AS run_id,
       json_object('branch', branch, 'parent', parent, 'kernel_id', kernel_id,
                   'cell_id', cell_id, 'execution_count', execution_count,
                   'duration_ms', duration_ms, 'error_name', error_name) AS payload
FROM fm_step_records;

CREATE VIEW branches AS
WITH created AS (
    SELECT name, arg_min(base, seq) AS base, min("at") AS created_at
    FROM fm_branch_records GROUP BY name
), moves AS (
    SELECT name, head, seq FROM fm_branch_records
    UNION ALL
    SELECT branch AS name, step AS head, seq FROM fm_step_records
)
SELECT c.name, arg_max(m.head, m.seq) AS head, c.base, c.created_at
FROM created c JOIN moves m USING (name)
GROUP BY c.name, c.base, c.created_at;
"""

# States: a step's final record carries its namespace as parallel lists of
# names and entry ids ({"names": [...], "ids": [...], "changed": [...]}), so
# a cell that changed nothing still costs one INSERT. Entries are stored once,
# by content id, when first seen.
_V2 = r"""
ALTER TABLE fm_step_records ADD COLUMN state JSON;

CREATE TABLE fm_var_entries (
    id          VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    type        VARCHAR,
    size_bytes  BIGINT,
    summary     VARCHAR,
    value       JSON,
    restorable  BOOLEAN,
    reason      VARCHAR,
    entry       JSON NOT NULL
);

CREATE VIEW variables AS
WITH latest AS (
    SELECT step, state FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), pairs AS (
    SELECT step,
           unnest(from_json(state->'names', '["VARCHAR"]')) AS name,
           unnest(from_json(state->'ids', '["VARCHAR"]')) AS id,
           from_json(state->'changed', '["VARCHAR"]') AS changed_names
    FROM latest WHERE state IS NOT NULL
), entries AS (
    SELECT * FROM fm_var_entries QUALIFY row_number() OVER (PARTITION BY id) = 1
)
SELECT p.step, p.name, e.type, e.size_bytes, e.summary, e.value,
       list_contains(p.changed_names, p.name) AS changed, e.restorable, e.reason
FROM pairs p JOIN entries e ON e.id = p.id;
"""

# Flow runs and their journals. Append-only like steps: a run's status
# changes are new rows, views keep the latest by seq.
_V3 = r"""
CREATE TABLE fm_run_records (
    seq              BIGINT NOT NULL,
    run_id           VARCHAR NOT NULL,
    flow             VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,
    args             JSON,
    result           JSON,
    error            JSON,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    forked_from_run  VARCHAR,
    forked_from_step INTEGER
);

CREATE TABLE fm_run_step_records (
    seq          BIGINT NOT NULL,
    run_id       VARCHAR NOT NULL,
    position     INTEGER NOT NULL,
    name         VARCHAR NOT NULL,
    status       VARCHAR NOT NULL,
    attempt      INTEGER,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ,
    duration_ms  DOUBLE,
    result       JSON,
    error        JSON
);

CREATE VIEW runs AS
SELECT run_id, flow, status, args, result, error, started_at, finished_at,
       forked_from_run, forked_from_step
FROM fm_run_records
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1;

CREATE VIEW run_steps AS
SELECT run_id, position, name, status, attempt, started_at, finished_at, duration_ms,
       result, error
FROM fm_run_step_records;
"""

# States deduplicated: most cells leave the set of names and entries as it
# was, so a step record names its state by id and fm_states holds each
# distinct state once, as typed lists. Queries on `variables` then unnest the
# distinct states only (the JSON form parsed every name of every step:
# ~2 s at 100,000 steps, bench/history_scale.py) and can filter by name
# before joining to the steps.
_V4_STATES = r"""
CREATE TABLE fm_states (id VARCHAR NOT NULL, names VARCHAR[] NOT NULL, ids VARCHAR[] NOT NULL);
ALTER TABLE fm_step_records ADD COLUMN state_id VARCHAR;
ALTER TABLE fm_step_records ADD COLUMN changed VARCHAR[];

CREATE TEMP TABLE fm_old_states AS
SELECT DISTINCT md5(CAST(state->'names' AS VARCHAR) || CAST(state->'ids' AS VARCHAR)) AS id,
       from_json(state->'names', '["VARCHAR"]') AS names,
       from_json(state->'ids', '["VARCHAR"]') AS ids
FROM fm_step_records WHERE state IS NOT NULL;
INSERT INTO fm_states SELECT id, any_value(names), any_value(ids) FROM fm_old_states GROUP BY id;
UPDATE fm_step_records
SET state_id = md5(CAST(state->'names' AS VARCHAR) || CAST(state->'ids' AS VARCHAR)),
    changed = from_json(state->'changed', '["VARCHAR"]'),
    state = NULL
WHERE state IS NOT NULL;
DROP TABLE fm_old_states;

CREATE OR REPLACE VIEW variables AS
WITH latest AS (
    SELECT step, state_id, changed FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), state_rows AS (
    SELECT id AS state_id, unnest(names) AS name, unnest(ids) AS entry_id FROM fm_states
), entries AS (
    SELECT * FROM fm_var_entries QUALIFY row_number() OVER (PARTITION BY id) = 1
)
SELECT l.step, r.name, e.type, e.size_bytes, e.summary, e.value,
       coalesce(list_contains(l.changed, r.name), false) AS changed, e.restorable, e.reason
FROM latest l
JOIN state_rows r ON r.state_id = l.state_id
JOIN entries e ON e.id = r.entry_id;
"""

# Flow journals: ``detail`` holds what replay needs beyond the result (a
# sleep's wake time, a wait's deadline, the event a wait consumed).
_V5_FLOWS = r"""
ALTER TABLE fm_run_step_records ADD COLUMN detail JSON;

CREATE OR REPLACE VIEW run_steps AS
SELECT run_id, position, name, status, attempt, started_at, finished_at, duration_ms,
       result, error, detail
FROM fm_run_step_records;
"""

# `tracked`: whether a change of the name's object can be seen at all. An
# object pickle refuses is fingerprinted from the state it exposes (a hash's
# digest, a widget's traits); one that exposes none (a lock, an open file) is
# not tracked. Entries written before this carry no flag: theirs was
# identity-only exactly when they were not restorable.
_V6_TRACKED = r"""
CREATE OR REPLACE VIEW variables AS
WITH latest AS (
    SELECT step, state_id, changed FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), state_rows AS (
    SELECT id AS state_id, unnest(names) AS name, unnest(ids) AS entry_id FROM fm_states
), entries AS (
    SELECT * FROM fm_var_entries QUALIFY row_number() OVER (PARTITION BY id) = 1
)
SELECT l.step, r.name, e.type, e.size_bytes, e.summary, e.value,
       coalesce(list_contains(l.changed, r.name), false) AS changed, e.restorable, e.reason,
       coalesce(TRY_CAST(e.entry->>'tracked' AS BOOLEAN), e.restorable) AS tracked
FROM latest l
JOIN state_rows r ON r.state_id = l.state_id
JOIN entries e ON e.id = r.entry_id;
"""

# Child runs: a run started by a flow body records its parent run and the
# position in the parent's journal that started it.
_V7_CHILD_RUNS = r"""
ALTER TABLE fm_run_records ADD COLUMN parent_run VARCHAR;
ALTER TABLE fm_run_records ADD COLUMN parent_position INTEGER;

CREATE OR REPLACE VIEW runs AS
SELECT run_id, flow, status, args, result, error, started_at, finished_at,
       forked_from_run, forked_from_step, parent_run, parent_position
FROM fm_run_records
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1;
"""

# External tasks (flows/tasks.py): every task event carries the task's
# status after it; one row per task, built from its events.
_V8_TASKS = r"""
CREATE OR REPLACE VIEW tasks AS
WITH ev AS (
    SELECT seq, "at", kind, run_id, payload, payload->>'task_id' AS task_id
    FROM fm_events
    WHERE kind IN ('task_queued', 'task_claimed', 'task_heartbeat', 'task_completed',
                   'task_failed', 'task_expired', 'task_cancelled')
), agg AS (
    SELECT task_id,
           arg_max(payload->>'status', seq) AS status,
           max(TRY_CAST(payload->>'attempt' AS INTEGER)) FILTER (WHERE kind = 'task_claimed') AS attempt,
           arg_max(payload->>'worker', seq) FILTER (WHERE kind = 'task_claimed') AS worker,
           max("at") FILTER (WHERE kind = 'task_claimed') AS claimed_at,
           arg_max(payload->'result', seq) FILTER (WHERE kind = 'task_completed') AS result,
           arg_max(payload->'error', seq) FILTER (WHERE (payload->'error') IS NOT NULL) AS error,
           max("at") AS last_at
    FROM ev GROUP BY task_id
)
SELECT q.task_id, q.run_id, CAST(q.payload->>'position' AS INTEGER) AS position,
       q.payload->>'queue' AS queue, a.status, coalesce(a.attempt, 0) AS attempt, a.worker,
       q.payload->'payload' AS payload, a.result, a.error, q."at" AS created_at, a.claimed_at,
       CASE WHEN a.status IN ('completed', 'failed', 'cancelled') THEN a.last_at END AS finished_at
FROM ev q JOIN agg a USING (task_id)
WHERE q.kind = 'task_queued';
"""

# Run timeouts: the deadline (start + timeout) is recorded with the run when
# it starts, so a run resumed after a kill keeps the original one.
_V9_RUN_DEADLINES = r"""
ALTER TABLE fm_run_records ADD COLUMN deadline TIMESTAMPTZ;

CREATE OR REPLACE VIEW runs AS
SELECT run_id, flow, status, args, result, error, started_at, finished_at,
       forked_from_run, forked_from_step, parent_run, parent_position, deadline
FROM fm_run_records
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1;
"""

# Named events (flows/events.py, sources.py): one row per event stored, with
# where it came from: `http:token`, `http:signature`, `python`,
# `files:<glob>`, `poll:<function>`. The same rows are `event_received` in
# `events`; this view spells out their payload.
_V10_RECEIVED_EVENTS = r"""
CREATE OR REPLACE VIEW received_events AS
SELECT seq, "at", payload->>'name' AS name, payload->>'source' AS source,
       payload->>'delivery_id' AS delivery_id, payload->'data' AS data
FROM fm_events
WHERE kind = 'event_received';
"""

# Queues (flows/queues.py): a run enqueued on an fm.Queue is recorded
# `enqueued` with its queue, when it was enqueued and its priority (NULL on
# a FIFO queue), and started_at NULL until the queue starts it.
_V11_RUN_QUEUES = r"""
ALTER TABLE fm_run_records ADD COLUMN queue VARCHAR;
ALTER TABLE fm_run_records ADD COLUMN enqueued_at TIMESTAMPTZ;
ALTER TABLE fm_run_records ADD COLUMN priority INTEGER;

CREATE OR REPLACE VIEW runs AS
SELECT run_id, flow, status, args, result, error, started_at, finished_at,
       forked_from_run, forked_from_step, parent_run, parent_position, deadline,
       queue, enqueued_at, priority
FROM fm_run_records
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY seq DESC) = 1;
"""

# States as changes (stored_states.py): a row of fm_states whose `base` is
# set holds only the names its state binds differently from that base, a
# state stored whole; `removed` names base names it does not hold. Rows
# written before have no base: each is a whole state, as it always was, so
# nothing is rewritten. `variables` keeps its columns and rows: a state's
# names are its own row's, then its base's that the row neither rebinds nor
# removes (at most two rows a state, however long the history). Each part
# joins `latest` itself (not materialized), so `WHERE step = N` reaches the
# scans of fm_states instead of every state being rebuilt first.
_V12_STATE_CHANGES = r"""
ALTER TABLE fm_states ADD COLUMN base VARCHAR;
ALTER TABLE fm_states ADD COLUMN removed VARCHAR[];

CREATE OR REPLACE VIEW variables AS
WITH latest AS NOT MATERIALIZED (
    SELECT step, state_id, changed FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), own AS (
    SELECT l.step, l.changed, u.name, u.entry_id
    FROM latest l
    JOIN (SELECT id, unnest(names) AS name, unnest(ids) AS entry_id FROM fm_states) u
      ON u.id = l.state_id
), inherited AS (
    SELECT l.step, l.changed, w.name, w.entry_id
    FROM latest l
    JOIN fm_states s ON s.id = l.state_id
    JOIN (SELECT id, unnest(names) AS name, unnest(ids) AS entry_id
          FROM fm_states WHERE base IS NULL) w ON w.id = s.base
    ANTI JOIN (SELECT id, unnest(list_concat(names, coalesce(removed, []))) AS name
               FROM fm_states WHERE base IS NOT NULL) h ON h.id = s.id AND h.name = w.name
), state_rows AS (
    SELECT * FROM own UNION ALL SELECT * FROM inherited
), entries AS (
    SELECT * FROM fm_var_entries QUALIFY row_number() OVER (PARTITION BY id) = 1
)
SELECT r.step, r.name, e.type, e.size_bytes, e.summary, e.value,
       coalesce(list_contains(r.changed, r.name), false) AS changed, e.restorable, e.reason,
       coalesce(TRY_CAST(e.entry->>'tracked' AS BOOLEAN), e.restorable) AS tracked
FROM state_rows r
JOIN entries e ON e.id = r.entry_id;
"""

# The same rows as 12, with the base's names a change leaves alone kept by
# a list_contains on the change's own names and removed names (a handful)
# instead of an anti-join against every change's names unnested: a full scan
# of `variables` at 100,000 steps x 21 names costs ~0.65x migration 12's
# (still ~3x the same states stored whole: the base's rows are rebuilt by a
# join for every change), and `WHERE name =` got faster too
# (docs/benchmarks.md, bench/variables_view.py).
_V13_VARIABLES_SCAN = r"""
CREATE OR REPLACE VIEW variables AS
WITH latest AS NOT MATERIALIZED (
    SELECT step, state_id, changed FROM fm_step_records
    QUALIFY row_number() OVER (PARTITION BY step ORDER BY seq DESC) = 1
), own AS (
    SELECT l.step, l.changed, u.name, u.entry_id
    FROM latest l
    JOIN (SELECT id, unnest(names) AS name, unnest(ids) AS entry_id FROM fm_states) u
      ON u.id = l.state_id
), inherited AS (
    SELECT l.step, l.changed, w.name, w.entry_id
    FROM latest l
    JOIN (SELECT id, base, list_concat(names, coalesce(removed, [])) AS hidden
          FROM fm_states WHERE base IS NOT NULL) s ON s.id = l.state_id
    JOIN (SELECT id, unnest(names) AS name, unnest(ids) AS entry_id
          FROM fm_states WHERE base IS NULL) w ON w.id = s.base
    WHERE NOT list_contains(s.hidden, w.name)
), state_rows AS (
    SELECT * FROM own UNION ALL SELECT * FROM inherited
), entries AS (
    SELECT * FROM fm_var_entries QUALIFY row_number() OVER (PARTITION BY id) = 1
)
SELECT r.step, r.name, e.type, e.size_bytes, e.summary, e.value,
       coalesce(list_contains(r.changed, r.name), false) AS changed, e.restorable, e.reason,
       coalesce(TRY_CAST(e.entry->>'tracked' AS BOOLEAN), e.restorable) AS tracked
FROM state_rows r
JOIN entries e ON e.id = r.entry_id;
"""

MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4_STATES, _V5_FLOWS, _V6_TRACKED, _V7_CHILD_RUNS, _V8_TASKS,
                         _V9_RUN_DEADLINES, _V10_RECEIVED_EVENTS, _V11_RUN_QUEUES,
                         _V12_STATE_CHANGES, _V13_VARIABLES_SCAN]
