"""The timers a strategy declares: each a name and its length, a sum of run parameters.

Rules of this file:
- A strategy declares its timers beside its tables, in its ExporterSpec: `timers={"grace":
  "2 * dma_ms"}`, name -> length in milliseconds, written as arithmetic (numbers, + - * /,
  parentheses) over the numeric run parameters of protocol/params.py, named as the scenario file
  names them. The table starts one with `start_timer("grace")`, cancels it with
  `cancel_timer("grace")`, and says what its firing does in rows keyed `timer_fired("grace")`
  (protocol/exporter/table.py).
- The notify timer is one of them: NOTIFY = "notify", of length NOTIFY_LENGTH unless the strategy
  declares its own; its steps are START_NOTIFY_TIMER and CANCEL_NOTIFY_TIMER and it fires
  NOTIFY_TIMEOUT (the names every shipped table has used).
- `check` is run at load: a name that is not lowercase letters, digits, dashes or underscores, a
  length that is not such arithmetic, names a parameter that does not exist or is not a number,
  or is not positive with the parameters' defaults: TimerError, one line naming the timer.
  `length_s` evaluates a length with a run's parameters; a length that is not positive there
  raises TimerError too (the run is refused before it starts).
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
from typing import Mapping

from protocol.params import PARAMS

NOTIFY = "notify"
NOTIFY_LENGTH = "ack_timeout_ms"
# The run parameters a length may name: the numeric ones.
LENGTH_PARAMS: tuple[str, ...] = tuple(p.name for p in PARAMS if p.kind in ("int", "float"))
DEFAULTS: dict[str, float] = {p.name: p.default for p in PARAMS if p.name in LENGTH_PARAMS}
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


class TimerError(ValueError):
    """A timer declaration that cannot run: one line naming the timer and what is wrong."""


def declared(timers: Mapping[str, str]) -> dict[str, str]:
    """The strategy's timers with the notify timer's default length where it declares none."""
    return {NOTIFY: NOTIFY_LENGTH, **timers}


def check(timers: object) -> dict[str, str]:
    """The declared timers (with notify), if each can run; TimerError naming the first that cannot."""
    if not isinstance(timers, Mapping):
        raise TimerError(f"timers must be a dict of name -> length, got {type(timers).__name__}")
    out = declared(timers)
    for name, length in out.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TimerError(f"timer {name!r}: a name is lowercase letters, digits, '-' and '_'")
        ms = length_ms(name, length, DEFAULTS)
        if not ms > 0:
            raise TimerError(f"timer {name} = {length!r}: the length must be positive, is {ms:g} ms "
                             f"with the default parameters")
    return out


def length_ms(name: str, length: object, values: Mapping[str, float]) -> float:
    """The length of timer `name` in milliseconds with these run parameters."""
    if not isinstance(length, str):
        raise TimerError(f"timer {name}: the length must be a string such as \"2 * dma_ms\", got {length!r}")
    try:
        body = _parsed(length.strip())
    except SyntaxError:
        raise TimerError(f"timer {name} = {length!r}: not arithmetic over run parameters "
                         f"(numbers, + - * /, parentheses)") from None
    return _eval(name, length, body, values)


@functools.lru_cache(maxsize=1024)   # the simulator's exporter evaluates the same lengths at every schedule
def _parsed(text: str) -> ast.AST:
    """The expression's tree (only read: _eval never changes it)."""
    return ast.parse(text, mode="eval").body


def length_s(name: str, length: str, values: Mapping[str, float]) -> float:
    """The length in seconds; TimerError if it is not positive with these values."""
    ms = length_ms(name, length, {**DEFAULTS, **values})
    if not ms > 0:
        raise TimerError(f"timer {name} = {length!r}: the length must be positive, is {ms:g} ms with this "
                         f"run's parameters")
    return ms / 1000


def _eval(name: str, length: str, node: ast.AST, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in LENGTH_PARAMS:
            near = difflib.get_close_matches(node.id, LENGTH_PARAMS, n=1)
            raise TimerError(f"timer {name} = {length!r}: unknown run parameter {node.id!r}"
                             + (f" (did you mean {near[0]}?)" if near else
                                f" (numeric parameters: {', '.join(LENGTH_PARAMS)})"))
        value = values.get(node.id)
        return float(value) if value is not None else float(DEFAULTS.get(node.id) or 0)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(name, length, node.left, values), _eval(name, length, node.right, values)
        if isinstance(node.op, ast.Div) and right == 0:
            raise TimerError(f"timer {name} = {length!r}: division by zero")
        return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(name, length, node.operand, values)
        return -v if isinstance(node.op, ast.USub) else v
    raise TimerError(f"timer {name} = {length!r}: not arithmetic over run parameters "
                     f"(numbers, + - * /, parentheses)")
