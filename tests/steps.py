"""Count the work a function does, not the time it takes: Python lines executed in Wharf's own
modules (``engine/``, ``transforms/``) while it runs, with ``sys.settrace``. A count does not
depend on the machine or its load, so a test can assert how work grows with input size
(linear, not quadratic) where it must never assert wall-clock time."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OURS = (str(ROOT / "engine"), str(ROOT / "transforms"))


def count_steps(fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, int]:
    """``(fn(*args, **kw), lines of our code it executed)``."""
    steps = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "line":
            steps += 1
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename.startswith(OURS) else None

    old = sys.gettrace()
    sys.settrace(calls)
    try:
        result = fn(*args, **kw)
    finally:
        sys.settrace(old)
    return result, steps
