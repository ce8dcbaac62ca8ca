"""A run's lifecycle as its driver runs it: the bound of each step, and what `down` reports.

One declaration for both drivers: the real one (deploy/launcher.py up, wait_ready, down;
deploy/run.py drive) waits these long in wall-clock seconds, the simulated one (sim/driver.py)
in virtual seconds, so that a simulated run gives up exactly where a real one would.

Rules:
- wait_ready polls each importer's status every STATUS_POLL_S until it is ready or running,
  READY_TIMEOUT_S for all of them.
- start goes to the exporter, then to every importer, each answering within START_TIMEOUT_S;
  stop to the importers, then the exporter, within STOP_TIMEOUT_S.
- A restarted importer (a process fault) has RESTART_READY_S to attach its buffers, its status
  polled every RESTART_POLL_S, then gets start like the others.
- The driver wakes at least every DRIVER_POLL_S during the workload (deploy/run.py sleep_until),
  to apply faults and notice deaths.
- down: shutdown over the control socket (importers first, each answering within
  SHUTDOWN_TIMEOUT_S), SIGTERM after half of DOWN_TIMEOUT_S, SIGKILL after the other half,
  whether they are gone checked every GONE_POLL_S;
  a start that failed is taken down with ABORT_DOWN_TIMEOUT_S instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

READY_TIMEOUT_S = 20.0
STATUS_POLL_S = 0.01
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 10.0
RESTART_READY_S = 10.0
RESTART_POLL_S = 0.02
DRIVER_POLL_S = 0.25
DOWN_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 2.0
GONE_POLL_S = 0.02
ABORT_DOWN_TIMEOUT_S = 2.0


@dataclass
class DownReport:
    """What down did to each service (by name) and which segments it unlinked."""

    graceful: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)
    segments_removed: list[str] = field(default_factory=list)
