"""The strategies: one module each, holding its exporter half and importer half as tables.

Rules of this file:
- A strategy is a module with NAME (lowercase letters, digits and dashes), SUMMARY (one line),
  EXPORTER (an ExporterSpec) and IMPORTER (an ImporterSpec) whose `strategy` is NAME; its
  docstring states its rules, the sentence it models and its hazard.
- `resolve(spec)` is the one way from what a user typed to a strategy, for every command and
  service: the name of a built-in (STRATEGIES), the name of an installed one (an entry point in
  the group `dmabuf_emu.strategies` naming its module), or the path of a .py file.
- Every strategy is checked when it is loaded, built-in ones at import of this package: the
  module's attributes, then both tables (protocol/exporter/moves.py compile_spec,
  protocol/importer.py compile_spec). A broken one raises StrategyError, one line naming the
  file (or entry point), the row and what is wrong, before anything runs it; a file that names a
  guard, step, state or event that does not exist (renamed since it was written) fails as it is
  executed, and the line names the file, the line, the row it is in and the name.
- A strategy has a `SOURCE`: what another process must be given to load the same one (the name
  of a built-in or installed strategy, the absolute path of a file).
- `BASE+MUTATION` names a mutant (protocol/strategies/mutants.py): the strategy BASE (resolved as
  above) with one rule broken; its module also has MUTANT (the rule, its source, what to expect).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.metadata
import importlib.util
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

from protocol.exporter import ExporterSpec, compile_spec as compile_exporter
from protocol.importer import ImporterSpec, compile_spec as compile_importer
from protocol.machine import TableError
from protocol.strategies import (move_notify, move_notify_ack, mutants, pin, resv_fence, revalidate, revoke,
                                 unmap_hint)

ENTRY_POINT_GROUP = "dmabuf_emu.strategies"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")


class StrategyError(ValueError):
    """A strategy that cannot be loaded or would not run: one line saying where and why."""


def check(module: ModuleType, where: str) -> ModuleType:
    """The module, if it is a strategy whose tables can run; StrategyError otherwise."""
    missing = [a for a in ("NAME", "SUMMARY", "EXPORTER", "IMPORTER") if not hasattr(module, a)]
    if missing:
        raise StrategyError(f"{where}: a strategy module defines NAME, SUMMARY, EXPORTER and IMPORTER; "
                            f"this one has no {', '.join(missing)}")
    name = module.NAME
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise StrategyError(f"{where}: NAME must be lowercase letters, digits and dashes, got {name!r}")
    if not isinstance(module.SUMMARY, str) or "\n" in module.SUMMARY:
        raise StrategyError(f"{where}: SUMMARY must be one line of text")
    for half, spec, kind in (("EXPORTER", module.EXPORTER, ExporterSpec), ("IMPORTER", module.IMPORTER, ImporterSpec)):
        if not isinstance(spec, kind):
            raise StrategyError(f"{where}: {half} must be a {kind.__name__}, got {type(spec).__name__}")
        if spec.strategy != name:
            raise StrategyError(f"{where}: {half}.strategy is {spec.strategy!r} but NAME is {name!r}")
    try:
        compile_exporter(module.EXPORTER)
        compile_importer(module.IMPORTER)
    except TableError as err:
        raise StrategyError(f"{where}: {err}") from None
    return module


STRATEGIES: dict[str, ModuleType] = {}
for _m in (pin, unmap_hint, move_notify, move_notify_ack, revalidate, resv_fence, revoke):
    STRATEGIES[_m.NAME] = check(_m, f"protocol/strategies/{Path(_m.__file__).name}")  # type: ignore[arg-type]
    _m.SOURCE = _m.NAME  # type: ignore[attr-defined]

_loaded: dict[str, ModuleType] = {}


def resolve(spec: str) -> ModuleType:
    """The strategy `spec` names: built-in, installed (entry point) or a .py file; checked."""
    if spec in STRATEGIES:
        return STRATEGIES[spec]
    if spec in _loaded:
        return _loaded[spec]
    if looks_like_path(spec):
        module = _load_file(Path(spec))
    elif "+" in spec:
        module = _derive_mutant(spec)
    else:
        module = _load_entry_point(spec)
    _loaded[spec] = _loaded[module.SOURCE] = module
    return module


def get(name: str) -> ModuleType:
    """resolve(), under its old name."""
    return resolve(name)


def installed() -> list[str]:
    """The names of installed strategies (entry points), sorted."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def describe_choices() -> str:
    return f"{', '.join(STRATEGIES)}, a mutant BASE+MUTATION, an installed strategy, or the path of a .py file"


def looks_like_path(spec: str) -> bool:
    """A strategy named by a file rather than by name."""
    return spec.endswith(".py") or "/" in spec or spec.startswith(".")


def _derive_mutant(spec: str) -> ModuleType:
    base, _ = mutants.split(spec)
    try:
        return mutants.derive(spec, resolve(base))
    except mutants.MutantError as exc:
        raise StrategyError(str(exc)) from None
    except TableError as err:
        raise StrategyError(f"mutant {spec} (protocol/strategies/mutants.py): {err}") from None


def _load_entry_point(name: str) -> ModuleType:
    eps = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        near = difflib.get_close_matches(name, list(STRATEGIES) + installed(), n=1)
        raise StrategyError(f"must be one of {describe_choices()}; got {name!r}"
                            + (f" (did you mean {near[0]}?)" if near else ""))
    ep = eps[0]
    where = f"strategy {name} (entry point {ep.value} in {ENTRY_POINT_GROUP})"
    try:
        module = ep.load()
    except Exception as exc:
        raise StrategyError(f"{where}: cannot import it: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, ModuleType):
        raise StrategyError(f"{where}: the entry point must name a module, not {type(module).__name__}")
    check(module, where)
    if module.NAME != name:
        raise StrategyError(f"{where}: the module's NAME is {module.NAME!r}, not {name!r}")
    if name in STRATEGIES:
        raise StrategyError(f"{where}: {name!r} is a built-in strategy's name")
    module.SOURCE = name  # type: ignore[attr-defined]
    return module


def _load_file(path: Path) -> ModuleType:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise StrategyError(f"{path}: no such strategy file")
    if path.suffix != ".py":
        raise StrategyError(f"{path}: a strategy file is a Python module (.py)")
    modname = "dmabuf_emu_strategy_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise StrategyError(f"{path}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module   # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[modname]
        raise StrategyError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        del sys.modules[modname]
        line = _line_in(exc, path)
        row = _row_at(path, int(line)) if line.isdigit() else None
        raise StrategyError(f"{path}:{line}: " + (f"row {row}: " if row else "") + _explain(exc)) from None
    check(module, str(path))
    if module.NAME in STRATEGIES:
        del sys.modules[modname]
        raise StrategyError(f"{path}: NAME {module.NAME!r} is a built-in strategy's name: give yours its own")
    module.SOURCE = str(path)  # type: ignore[attr-defined]
    return module


def _line_in(exc: BaseException, path: Path) -> str:
    """The line of `path` where `exc` was raised (the innermost frame in the file)."""
    line = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path:
            line = str(frame.lineno)
    return line


def _row_at(path: Path, line: int) -> str | None:
    """The key, as written, of the innermost table row (a dict entry) spanning `line` of `path`."""
    try:
        source = path.read_text()
        tree = ast.parse(source)
    except (OSError, SyntaxError, ValueError):
        return None
    best: tuple[int, str] | None = None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if key is None or not isinstance(key, ast.Tuple):
                continue   # a row is keyed (state, event); ** spreads are not rows
            first, last = key.lineno, value.end_lineno or value.lineno
            if first <= line <= last and (best is None or last - first < best[0]):
                best = (last - first, " ".join((ast.get_source_segment(source, key) or "").split()))
    return best[1] if best else None


def _explain(exc: BaseException) -> str:
    obj, name = getattr(exc, "obj", None), getattr(exc, "name", None)
    if isinstance(exc, AttributeError) and isinstance(obj, type) and name and hasattr(obj, "__members__"):
        members = list(obj.__members__)
        near = difflib.get_close_matches(name, members, n=1)
        return (f"{obj.__name__} has no member {name!r}" + (f" (did you mean {near[0]}?)" if near
                                                             else f" (members: {', '.join(members)})"))
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
