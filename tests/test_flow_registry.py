"""The flows package in process, no kernel: the FlowRegistry (defining flows
with no kernel, configure with a real Store, forget), the import rules of
fm_kernel/flows/ (no private names across modules, no cycles), and the
background threads logging what they catch."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLOWS = Path(__file__).resolve().parent.parent / "fm_kernel" / "flows"


def run_py(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_flow_defined_with_no_kernel_registers_and_runs_once_configured(tmp_path: Path) -> None:
    out = run_py(f"""
import fm_kernel as fm
from fm_kernel import flows
from fm_kernel.record.store import Store

@fm.step
def double(x):
    return 2 * x

@fm.flow
def job(x):
    return double(x) + 1

reg = flows.registry()
assert reg.flows == {{"job": job}}, reg.flows
try:
    job(1)
except fm.FlowmetalError as exc:
    print("refused:", exc)
store = Store.open({str(tmp_path / "h.duckdb")!r})
flows.configure(store)
assert job(20) == 41
run = job.start(1)
assert run.result(10) == 3
print(sorted(fm.runs().status))
print(store.query("SELECT count(*) FROM run_steps WHERE status = 'ok'").rows)
reg.forget("job")
assert "job" not in reg.flows
reg.close()
store.close()
""")
    assert out.returncode == 0, out.stderr
    assert "refused: flows have no history here" in out.stdout
    assert "['succeeded', 'succeeded']" in out.stdout and "[(2,)]" in out.stdout


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module imported from, name) for every ``from X import name`` in path."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            found.extend((mod, a.name) for a in node.names)
    return found


def test_no_flows_module_imports_a_private_name_and_there_is_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in sorted(FLOWS.glob("*.py")):
        graph[path.stem] = set()
        for mod, name in _imports(path):
            assert not name.startswith("_") or name == "__future__", \
                f"{path.name} imports the private name {name} from {mod}"
            if mod.startswith(".") and not mod.startswith(".."):
                graph[path.stem].add(mod[1:] or name)
    order: list[str] = []

    def visit(m: str, stack: tuple[str, ...]) -> None:
        assert m not in stack, f"import cycle in fm_kernel/flows: {' -> '.join(stack + (m,))}"
        if m in order or m not in graph:
            return
        for dep in graph[m] - {"__init__"}:
            visit(dep, stack + (m,))
        order.append(m)

    for m in graph:
        if m != "__init__":
            visit(m, ())
    for path in FLOWS.glob("*.py"):
        assert len(path.read_text().splitlines()) < 500, path


def test_scheduler_logs_a_failed_start_with_its_traceback(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("croniter")
    from fm_kernel.flows.journal import Journal
    from fm_kernel.flows.schedule import Scheduler
    from fm_kernel.record.store import Store

    class Broken:  # what the scheduler needs of a Flow; its start fails as a full disk would
        name, schedule, overlap = "broken", "* * * * * *", "skip"

        def busy(self) -> bool:
            return False

        def start(self, run_id=None):
            raise OSError("disk full")

    store = Store.open(tmp_path / "h.duckdb")
    j = Journal(store)
    sched = Scheduler(lambda: j)
    with caplog.at_level(logging.ERROR, logger="fm_kernel.flows.schedule"):
        sched.add(Broken())
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
        sched.stop()
    j.close()
    store.close()
    assert caplog.records, "the failed start was swallowed"
    rec = caplog.records[0]
    assert "broken" in rec.getMessage() and rec.exc_info and "disk full" in str(rec.exc_info[1])


def test_journal_checkpointer_logs_a_failed_checkpoint(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from fm_kernel.flows.journal import Journal
    from fm_kernel.record.store import Store

    store = Store.open(tmp_path / "h.duckdb")
    j = Journal(store, checkpoint_interval=0.05)
    # DuckDB itself refuses the next checkpoint
    store.execute("ALTER TABLE fm_events RENAME TO fm_events_away")
    with caplog.at_level(logging.ERROR, logger="fm_kernel.flows.journal"):
        j.event("probe", None, {})
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    assert caplog.records and "fm_events" in str(caplog.records[0].exc_info[1])
    store.execute("ALTER TABLE fm_events_away RENAME TO fm_events")
    j.close()  # the record kept in the log goes in now
    assert store.query("SELECT count(*) FROM fm_events WHERE kind = 'probe'").rows == [(1,)]
    store.close()


def test_the_flow_docs_say_what_users_write_and_what_the_code_does() -> None:
    from fm_kernel.flows.journal import CHECKPOINT_INTERVAL

    docs = FLOWS.parent.parent / "docs"
    flows_md = (docs / "flows.md").read_text()
    assert "import fm_kernel.flows as fm" not in flows_md
    assert "import fm_kernel as fm" in flows_md
    bench = (docs / "bench-flows.md").read_text()
    assert f"{CHECKPOINT_INTERVAL} s" in bench and "~50 ms" not in bench


def test_a_slot_fired_twice_starts_one_run(tmp_path: Path) -> None:
    """A missed slot's catch-up run starts once however often its flow is
    registered and however often the slot fires (a second firing of one slot
    was seen under load: the flow registered again between the catch-up
    run's start and the record of its slot)."""
    out = run_py(f"""
import time
import fm_kernel as fm
from fm_kernel import flows
from fm_kernel.flows.runs import resume_pending
from fm_kernel.record.store import Store

store = Store.open({str(tmp_path / "h.duckdb")!r})
flows.configure(store)
reg = flows.registry()
reg.journal.record_slot("hourly", time.time() - 3 * 3600 - 60, None)  # three slots missed
reg.journal.flush()
resume_pending()  # what the kernel does once the namespace is back
for _ in range(3):  # a restore, then the defining cell run again, twice
    @fm.flow(schedule="0 * * * *")
    def hourly():
        return 1
slot = time.time() // 3600 * 3600
while hourly.busy():  # the catch-up run first (runs queue for a worker): else an overlap skip
    time.sleep(0.01)
a = reg.scheduler.fire(hourly, slot)
b = reg.scheduler.fire(hourly, slot)
assert a.id == b.id, (a.id, b.id)
time.sleep(1.5)
reg.journal.flush()
print(store.query("SELECT count(*) FROM runs WHERE flow = 'hourly'").rows[0][0])
reg.close()
store.close()
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1", out.stdout
