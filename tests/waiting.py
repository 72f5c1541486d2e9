"""The one way tests wait for something: poll a predicate with a deadline, and fail saying what never came.

A predicate may fail the test itself (`assert proc.poll() is None, ...`) when waiting longer is pointless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str | Callable[[], str], interval: float = 0.1
) -> T:
    """Call `predicate()` every `interval` seconds until it returns something true, and return that. After
    `timeout` seconds raise TimeoutError naming `what` (a callable is only called then: a log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what() if callable(what) else what} within {timeout:g} s")
        time.sleep(interval)
