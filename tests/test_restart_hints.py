"""After a clean restart the namespace is empty: the first cell says that
HEAD's state is recorded and `%fm resume` brings it back, a NameError for a
name that state had says the same, and the notice comes before the cell's
own output (issue 17: 'Restarts and notices')."""

from __future__ import annotations

from kernel_driver import Kernel


def _streams(r) -> list[tuple[str, str]]:
    return [(m["content"]["name"], m["content"]["text"]) for m in r.iopub if m["msg_type"] == "stream"]


def test_a_restart_says_the_state_is_recorded_and_names_the_way_back(history):
    env = {"FM_HISTORY": str(history)}
    with Kernel(env=env) as k:
        assert k.execute("total = 41\nrows = [1, 2]").status == "ok"
    with Kernel(env=env) as k:
        first = k.execute("print('cell output')")
        streams = _streams(first)
        text = "".join(s for _, s in streams)
        assert "state after step 1" in text and "`%fm resume`" in text, streams
        assert text.index("%fm resume") < text.index("cell output"), streams  # notice first
        r = k.execute("total + 1")
        assert r.status == "error"
        assert "`total` was in the state after step 1" in r.text(), _streams(r)
        unknown = k.execute("never_defined")
        assert unknown.status == "error" and "flowmetal" not in unknown.text()
        assert k.execute("%fm resume").status == "ok"
        again = k.execute("print(total + 1)")
        assert again.text().strip() == "42"
    # an unclean end restores by itself: no hint to resume
    with Kernel(env=env) as k:
        k.execute("x = 1")
        k.kill9()
    with Kernel(env=env) as k:
        r = k.execute("print(x)")
        assert r.status == "ok" and "brings it back" not in r.text(), r.text()
