"""JSON in and out for the checker: orjson when installed, the standard library otherwise.

Rules:
- `loads` takes bytes or str and raises ValueError (JSONDecodeError is one) on anything that is
  not JSON; callers count such lines, they never crash on them.
- `dumps` returns bytes without a trailing newline and without spaces, so a streaming writer can
  frame it however it likes.
- orjson is used only because JSON parsing is most of the judge's time (see checker/bench.py);
  the two back-ends must give the same answers on the event histories the services write.
"""

from __future__ import annotations

import json
from typing import Any, Callable

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson as _orjson

    loads: Callable[[bytes | str], Any] = _orjson.loads
    # Keys are always str in what the checker writes, so orjson's default options do.
    dumps: Callable[[Any], bytes] = _orjson.dumps

    BACKEND = "orjson"
except ImportError:  # pragma: no cover
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

    def loads(data: bytes | str) -> Any:
        return json.loads(data)

    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode("utf-8")

    BACKEND = "json"

__all__ = ["loads", "dumps", "BACKEND"]
