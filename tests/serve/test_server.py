"""The serve layer's own seams (the server itself runs in the end-to-end tests)."""

from __future__ import annotations

import time
from pathlib import Path

from canary.serve.server import OffsetClock
from tests.helpers import let_time_pass


def test_offset_clock_moves_when_its_file_changes(tmp_path: Path) -> None:
    """The test seam itself: monotonic time plus the file's seconds, read on each change;
    a missing or unreadable file keeps the last offset."""
    clock_file = tmp_path / "clock"
    clock = OffsetClock(str(clock_file))
    start = time.monotonic()
    assert start <= clock() <= time.monotonic()  # no file: plain monotonic time
    let_time_pass(clock_file, 600)
    assert start + 600 <= clock() <= time.monotonic() + 600
    let_time_pass(clock_file, 1200.5)
    assert start + 1200.5 <= clock() <= time.monotonic() + 1200.5
    clock_file.write_text("not a number")
    assert start + 1200.5 <= clock() <= time.monotonic() + 1200.5
