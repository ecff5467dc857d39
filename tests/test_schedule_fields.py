"""Six-field cron schedules read the seconds FIRST (``*/10 * * * * *`` is
every 10 s), never silently croniter's seconds-last reading; what is neither
5 nor 6 valid fields is refused in the defining cell, and the kernel goes on."""

from __future__ import annotations

from pathlib import Path

from kernel_driver import Kernel

from fm_kernel.flows.schedule import cron, validate_schedule

T0 = 1_700_000_000.0


def gaps(expr: str, n: int = 4) -> list[float]:
    it = cron(expr, T0)
    slots = [it.get_next(float) for _ in range(n)]
    return [b - a for a, b in zip(slots, slots[1:])]


def test_six_fields_read_seconds_first() -> None:
    assert gaps("*/10 * * * * *") == [10.0, 10.0, 10.0]
    assert gaps("0 */5 * * * *") == [300.0, 300.0, 300.0]  # seconds-last would be hourly-ish
    assert gaps("30 * * * * *") == [60.0, 60.0, 60.0]
    assert cron("30 * * * * *", T0).get_next(float) % 60 == 30
    assert gaps("*/15 * * * *") == [900.0, 900.0, 900.0]  # five fields unchanged


def test_bad_field_counts_and_values_are_refused() -> None:
    for bad in ("* * * *", "* * * * * * *", "61 * * * * *", "* 61 * * *"):
        try:
            validate_schedule(bad, "f")
        except Exception as exc:
            assert "seconds FIRST" in str(exc) and repr(bad) in str(exc)
        else:
            raise AssertionError(f"{bad!r} accepted")


def test_refusal_in_a_kernel_keeps_it_running(tmp_path: Path) -> None:
    with Kernel(env={"FM_HISTORY": str(tmp_path / "h.duckdb")}) as k:
        r = k.execute('import fm_kernel as fm\n@fm.flow(schedule="0 */5 * * * * *")\ndef f(): pass')
        assert r.status == "error" and "seconds FIRST" in r.content["evalue"], r.content
        assert k.execute("print(1 + 1)").text().strip() == "2"
