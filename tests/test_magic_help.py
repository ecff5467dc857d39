"""`%fm help`, `%fm CMD -h`, `%%sql --help`, `%fm sql`/`%%fmsql`, and Tab
completion after `%fm` — on a real kernel (issue 17: help and completion)."""

from __future__ import annotations

from kernel_driver import Kernel

COMMANDS = ["branches", "checkout", "diff", "export", "fork", "help", "inspect", "log", "resume",
            "rewind", "runs", "show", "sql", "status", "timeline", "undo"]


def _complete(k: Kernel, line: str) -> list[str]:
    k.kc.complete(line, len(line))
    return k.kc.get_shell_msg(timeout=10)["content"]["matches"]


def test_help_lists_every_command_and_each_command_takes_h(history):
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute("x = 1").status == "ok"
        overview = k.execute("%fm").text()
        for name in COMMANDS:
            assert f"%fm {name} " in overview, name
        assert k.execute("%fm help").text() == overview
        for ask in ("%fm help log", "%fm log -h", "%fm log --help"):
            text = k.execute(ask).text()
            assert text.startswith("usage: %fm log") and "--all" in text, (ask, text)
        sql_help = k.execute("%%sql --help\nSELECT 1").text()
        assert sql_help.startswith("usage: %%sql") and "-o NAME" in sql_help, sql_help
        bad = k.execute("%fm help nope")
        assert bad.status == "error" and "`%fm help` lists them" in bad.content["evalue"]

        # %fm sql and %%fmsql answer like %%sql and are not steps themselves
        for code in ("%fm sql SELECT count(*) AS n FROM steps", "%%fmsql\nSELECT count(*) AS n FROM steps"):
            r = k.execute(code)
            assert r.status == "ok" and any(m["msg_type"] in ("display_data", "execute_result")
                                            for m in r.outputs()), code
        steps = k.execute("import fm_kernel as fm\nprint(len(fm.history().steps()))").text()
        assert steps.strip() == "1"  # x = 1 only: help, %fm sql and %%fmsql recorded nothing

        assert _complete(k, "%fm re") == ["resume", "rewind"]
        assert {"main", "1"} <= set(_complete(k, "%fm checkout "))
        assert "1" in _complete(k, "%fm show ")
