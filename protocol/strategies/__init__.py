"""The strategies: one module each, holding its exporter half and importer half as tables.

`STRATEGIES` maps the command-line name to the module; every module has NAME, SUMMARY,
EXPORTER (an ExporterSpec) and IMPORTER (an ImporterSpec), and its docstring states its rules,
the sentence it models and its hazard.
"""

from __future__ import annotations

from types import ModuleType

from protocol.strategies import move_notify, move_notify_ack, pin, resv_fence, revalidate, unmap_hint

STRATEGIES: dict[str, ModuleType] = {
    m.NAME: m for m in (pin, unmap_hint, move_notify, move_notify_ack, revalidate, resv_fence)
}


def get(name: str) -> ModuleType:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy '{name}' (choose from: {', '.join(STRATEGIES)})") from None
