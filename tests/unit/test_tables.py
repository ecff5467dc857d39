"""The plain-text tables `%fm log`, `fm log` and `fm sql` print."""

from __future__ import annotations

import datetime as dt

from fm_kernel.tables import cell_text, first_line, format_table, human_bytes


def test_cell_text_renders_each_kind_of_value_on_one_line() -> None:
    assert cell_text(None) == ""
    assert cell_text(12.345) == "12.3"
    assert cell_text(7) == "7"
    when = dt.datetime(2026, 11, 28, 1, 58, 40, 847227, tzinfo=dt.timezone.utc)
    assert cell_text(when) == "2026-11-28 01:58:40"
    assert cell_text("a\nb") == "a ⏎ b"


def test_cell_text_cuts_long_text_to_the_width_with_an_ellipsis() -> None:
    text = cell_text("x" * 100, width=10)
    assert text == "x" * 9 + "…" and len(text) == 10
    assert cell_text("x" * 10, width=10) == "x" * 10


def test_format_table_aligns_columns_to_the_widest_cell() -> None:
    out = format_table(["step", "code"], [(1, "x = 1"), (12, "print('hello')"), (3, None)])
    assert out.splitlines() == [
        "step  code",
        "----  --------------",
        "1     x = 1",
        "12    print('hello')",
        "3",
    ]


def test_format_table_without_rows_is_the_header() -> None:
    assert format_table(["a", "bb"], []) == "a  bb\n-  --"


def test_first_line_is_the_first_non_blank_line_stripped() -> None:
    assert first_line("\n\n   import numpy as np\nx = 1") == "import numpy as np"
    assert first_line("") == "" and first_line(None) == "" and first_line(" \n\t\n") == ""


def test_human_bytes_uses_binary_units() -> None:
    assert human_bytes(None) == "?"
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(5 * 1024 ** 2 + 1024 ** 2 // 2) == "5.5 MiB"
    assert human_bytes(3 * 1024 ** 3) == "3.0 GiB"
    assert human_bytes(2048 * 1024 ** 4) == "2048.0 TiB"
