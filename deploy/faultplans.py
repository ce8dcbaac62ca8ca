"""Fault plans: named sets of faults (and run parameters) that a campaign runs every strategy under.

A plan is a scenario file: `[[faults]]` tables and, if the plan needs them, run parameters with the
same keys as `dmabuf-emu run` (`move_rate = 200`). Its values override the campaign's own run
parameters; its faults replace the campaign's. The shipped plans are `deploy/plans/*.toml`:

    none      no faults
    net       messages delayed (with jitter), duplicated and reordered, both ways
    crash     importer-1 SIGKILLed 0.5 s into the workload and started again 0.5 s later
    rogue     devices that keep writing after unmap / after acknowledging move_notify
    pressure  200 moves per second instead of 20

A user plan is a path to such a file (`--faults none,./plans/slow.toml`); it is named by its
`name` key, else by its file name without `.toml`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import options
from deploy.options import OptionError, RunParams

PLANS_DIR = Path(__file__).resolve().parent / "plans"
SHIPPED_ORDER = ("none", "net", "crash", "rogue", "pressure")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Plan:
    name: str
    path: Path
    description: str
    overrides: dict[str, Any]               # run parameters the plan sets
    faults: tuple[dict[str, Any], ...]      # canonical faults

    def apply(self, base: RunParams) -> RunParams:
        """The base parameters with the plan's values and faults."""
        return dataclasses.replace(base, **self.overrides, faults=self.faults)


def shipped() -> dict[str, Path]:
    found = {p.stem: p for p in PLANS_DIR.glob("*.toml")}
    order = {n: i for i, n in enumerate(SHIPPED_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def load(spec: str) -> Plan:
    """A shipped plan by name, or a plan file by path. OptionError naming the plan otherwise."""
    spec = spec.strip()
    plans = shipped()
    if spec in plans:
        path = plans[spec]
    elif spec.endswith(".toml") or "/" in spec:
        path = Path(spec).expanduser()
    else:
        raise OptionError(f"--faults: no plan named {spec!r} (shipped: {', '.join(plans)}; "
                          f"or give the path of a .toml plan file)")
    data = options.load_scenario(path)
    resolved = options.resolve(path, {})      # checks every value and fault of the file
    name = str(data.get("name", path.stem))
    if not _NAME.match(name):
        raise OptionError(f"{path}: plan name {name!r} must be letters, digits, '.', '_' or '-'")
    overrides = {k: getattr(resolved, k) for k in data if k not in options.SCENARIO_EXTRA_KEYS}
    for key in ("strategy", "seed", "hint_policy"):
        if key in overrides:
            raise OptionError(f"{path}: a plan may not set '{key}': the campaign chooses it")
    return Plan(name, path, str(data.get("description", "")), overrides, resolved.faults)


def load_all(specs: str) -> list[Plan]:
    """`none,net,./my.toml` -> plans, checking that names are unique."""
    names = [s for s in (x.strip() for x in specs.split(",")) if s]
    if not names:
        raise OptionError("--faults: give at least one plan, e.g. --faults none,net")
    if names == ["all"]:
        names = list(shipped())
    plans = [load(n) for n in names]
    seen: dict[str, Path] = {}
    for p in plans:
        if p.name in seen and seen[p.name] != p.path:
            raise OptionError(f"--faults: two plans are named {p.name!r} ({seen[p.name]} and {p.path})")
        seen[p.name] = p.path
    return list({p.name: p for p in plans}.values())
