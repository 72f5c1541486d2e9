"""The one digest of a value: 16 hex digits of the sha256 of its canonical JSON (keys sorted, no spaces).

Fingerprints (stages, pipeline steps, the curation scoring settings), the thresholds hash and the names of
registered model configs all use it, so equal values hash equal wherever they are hashed. Values JSON
cannot write (paths, dates) are written as their `str`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]
