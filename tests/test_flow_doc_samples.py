"""The opening samples of docs/flows.md and the README, and the schedules
sample of flows.md, run as written: every name they use is defined, a run
goes to its end once its callback is POSTed and (flows.md) its signal sent,
and the schedules sample prints what its comments say. Only the hour-long
sleep is cut to a second; the callback's id is read from the run's journal,
where the system told the URL would have it from."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from kernel_driver import Kernel, check, endpoint_info

ROOT = Path(__file__).resolve().parent.parent


def first_python_block(path: Path) -> str:
    return re.search(r"```python\n(.*?)```", path.read_text(), re.S).group(1)


def run_sample(tmp_path: Path, path: Path, signal: bool) -> dict:
    code = first_python_block(path).replace("fm.sleep(3600)", "fm.sleep(1)")
    code = code.replace("run.result(timeout=None)", "")
    assert "nightly.start(" in code
    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        check(k, code)
        # what the sample's notify() would tell a person, kept for the test
        # the callback's id, as the sample's notify() would pass its URL on
        cb_id = check(k, "import time, json as _j\n"
                         "deadline = time.time() + 30\n"
                         "while time.time() < deadline:\n"
                         "    df = fm.history().sql(\"SELECT result FROM run_steps WHERE run_id = '\""
                         " + run.id + \"' AND name = 'fm.callback'\")\n"
                         "    if len(df): break\n"
                         "    time.sleep(0.1)\n"
                         "v = df.iloc[0, 0]\n"
                         "print((_j.loads(v) if isinstance(v, str) else v)['id'])").strip().splitlines()[-1]
        info = endpoint_info(tmp_path / "h.duckdb")
        url = f"http://127.0.0.1:{info['port']}/callbacks/{cb_id}"
        req = urllib.request.Request(url, data=json.dumps({"ok": True}).encode(), method="POST")
        assert json.loads(urllib.request.urlopen(req, timeout=10).read())["ok"] is True
        if signal:
            check(k, "run.signal('approve', 'yes')")
        out = check(k, "import json as _j\nprint(_j.dumps(run.result(60)))")
    return json.loads(out.strip().splitlines()[-1])


def test_the_flows_doc_opening_sample_runs_to_its_end(tmp_path: Path) -> None:
    assert run_sample(tmp_path, ROOT / "docs" / "flows.md", signal=True) == \
        {"rows": 40, "answer": {"ok": True}, "approved": "yes"}


def test_the_readme_flow_sample_runs_to_its_end(tmp_path: Path) -> None:
    assert run_sample(tmp_path, ROOT / "README.md", signal=False) == \
        {"rows": 40, "answer": {"ok": True}}


def test_the_schedules_overlap_sample_prints_what_it_says(tmp_path: Path) -> None:
    section = (ROOT / "docs" / "flows.md").read_text().split("\n## Schedules: overlap\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    expected = re.findall(r"^print\(.*?# (.*)$", code, re.M)
    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        out = check(k, code, timeout=120).strip().splitlines()
    assert len(expected) == 2 and out[-2:] == expected, (out, expected)
