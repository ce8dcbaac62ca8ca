"""Every run parameter, declared once: its name, kind and range, default, help, and which services
take it (and under which flag).

From this table are derived: the `dmabuf-emu` flags and the scenario file's keys, and RunParams
(deploy/options.py); the services' flags (runtime/params.py, exporter_svc and importer_svc
__main__) and the argv dmabuf-emu gives them (deploy/launcher.py); the defaults of the exporter
half's config (protocol/exporter/state.py). Data only: the checks that parse a value of each kind
are in runtime/params.py.

Kinds: int and float (a range lo..hi, `open_lo` excluding lo), stall (P,MS: a probability and a
duration in ms, lo < MS <= hi; kept as the text "P,MS", runtime/params.py stall_pair), size (bytes, a multiple of
`multiple`; "64KiB" is accepted), choice, bool, address (an IP address), strategy (a built-in or
installed strategy's name, or a .py file: protocol/strategies/__init__.py).

A parameter with a `table` may also be set per importer: the scenario's table of that name maps
importer names to values (`[importer_kinds]` importer-2 = "static"); the flag (or the key) sets
the value of every importer the table does not name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Param:
    name: str                      # the scenario key and RunParams field; `--name-with-dashes`
    kind: str
    default: Any
    help: str
    metavar: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[str, ...] = ()
    multiple: int = 64
    services: Mapping[str, str] = field(default_factory=dict)   # service ("exporter", "importer") -> its flag
    shown: str | None = None       # the default as --help says it, where the value does not say it
    table: str | None = None       # the scenario table that sets it per importer (see the rules above)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_BOTH = {"exporter": "strategy", "importer": "strategy"}

# What an importer is, for the exporter (protocol/importer.py has what each one does):
# dynamic: invalidate_mappings, unmaps in bounded time; pinned-revocable: pins, and its revoke
# callback stops its DMA before it returns; static: no invalidate_mappings (not revocable).
IMPORTER_KINDS = ("dynamic", "pinned-revocable", "static")

PARAMS: tuple[Param, ...] = (
    Param("strategy", "strategy", "pin", "buffer-move strategy", "NAME|PATH", services=_BOTH),
    Param("importers", "int", 2, "importer processes (devices) to start (the exporter reserves a fence slot for each)",
          "N", 1, 64, services={"exporter": "max-importers"}),
    Param("buffers", "int", 8, "buffers the exporter shares", "N", 1, 4096, services={"exporter": "buffers"}),
    Param("buffer_size", "size", 256 * 1024, "bytes per buffer, e.g. 256KiB", "SIZE", 64, 1 << 30,
          services={"exporter": "buffer-size"}),
    Param("vram_size", "size", None, "bytes of the scarce vram heap", "SIZE", 64, 1 << 32,
          services={"exporter": "vram-size"}, shown="half the buffers"),
    Param("duration", "float", 3.0, "seconds of workload", "S", 0, 86400, open_lo=True),
    Param("seed", "int", 1, "seed of every random choice: the workloads and the fault schedule", "N", 0, 2**63 - 1,
          services={"exporter": "seed", "importer": "seed"}),
    Param("move_rate", "float", 20.0, "moves per second the memory manager tries (0: none)", "R", 0, 10000,
          services={"exporter": "move-rate"}),
    Param("transport", "choice", "ipc", "ipc: unix sockets inside the run directory (mode 0700); tcp: see --bind",
          "KIND", choices=("ipc", "tcp")),
    Param("bind", "address", None, "tcp only: the address the exporter's socket binds; beyond loopback the run "
                                   "uses CURVE with keys made for the run", "ADDR", shown="127.0.0.1"),
    Param("curve", "bool", None, "tcp only: CURVE encryption and authentication of the importers' connections "
                                 "with keys made for the run", "on|off", shown="on when --bind is beyond loopback"),
    Param("hint_policy", "choice", "optimistic", "unmap-hint only: what the unmap reply promises", "POLICY",
          choices=("optimistic", "conservative"), services={"exporter": "hint-policy"}),
    Param("ack_timeout_ms", "float", 250.0, "how long a move waits for acks / move_notify returns", "MS", 1, 600000,
          services={"exporter": "ack-timeout-ms"}),
    Param("fence_timeout_ms", "float", 1000.0, "resv-fence: how long a move waits for fences before forcing them",
          "MS", 1, 600000, services={"exporter": "fence-timeout-ms"}),
    Param("unmap_wait_ms", "float", 1000.0, "revoke+v6-unmap-timeout only: the posted v5/v6 drafts' bound on "
                                            "a revocation's wait for unmaps (1 s), after which they warned and went "
                                            "on with the mapping live; revoke, as merged in 7.1, waits without "
                                            "bound and ignores it", "MS", 1, 600000,
          services={"exporter": "unmap-wait-ms"}),
    Param("importer_kind", "choice", "dynamic", "what kind of importer each device is: dynamic "
                                                "(invalidate_mappings, unmaps in bounded time), pinned-revocable "
                                                "(pins; its revoke callback stops its DMA first) or static (not "
                                                "revocable: pinned at attach, refused by a revoking exporter); "
                                                "a scenario's [importer_kinds] sets it per importer", "KIND",
          choices=IMPORTER_KINDS, services={"importer": "importer-kind"}, table="importer_kinds"),
    Param("reset_grace_ms", "float", 100.0, "resv-fence: after forcing a live device's fences, how long the move "
                                            "waits for it to confirm its engine stopped before it revokes the "
                                            "device and copies", "MS", 1, 600000,
          services={"exporter": "reset-grace-ms"}),
    Param("queue_depth", "int", 2, "DMA jobs each importer keeps in flight", "N", 1, 64,
          services={"importer": "queue-depth"}),
    Param("dma_ms", "float", 6.0, "mean duration of one DMA job", "MS", 0, 60000, open_lo=True,
          services={"importer": "dma-ms", "exporter": "dma-ms"}),
    Param("dma_stall", "stall", None, "a DMA job stalls with probability P for MS milliseconds: its device holds "
                                      "the job (fence unsignalled) before its last chunk (importer_svc/dma.py)",
          "P,MS", 0, 600000, services={"importer": "dma-stall"}, shown="none"),
    Param("think_ms", "float", 1.0, "mean pause between an importer's jobs", "MS", 0, 60000,
          services={"importer": "think-ms", "exporter": "think-ms"}),
    Param("write_ratio", "float", 0.5, "share of DMA jobs that write", "P", 0, 1, services={"importer": "write-ratio"}),
    Param("pin_ratio", "float", 0.0, "share of DMA jobs that pin their buffer first and unpin it after (strategies "
                                     "whose importer table pins: resv-fence and its mutants)", "P", 0, 1,
          services={"importer": "pin-ratio"}),
    Param("lease_ms", "float", 500.0, "heartbeat lease: a silent importer is declared dead after this long (its "
                                      "device stops all DMA 0.8 lease after its last answered request)", "MS",
          10, 600000, services={"exporter": "lease-ms", "importer": "lease-ms"}),
    Param("retry_ms", "float", 100.0, "a request without a reply is sent again after this long", "MS", 1, 600000,
          services={"exporter": "retry-ms", "importer": "retry-ms"}),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}


def default(name: str) -> Any:
    return BY_NAME[name].default


def default_s(name: str) -> float:
    """The default of a parameter in milliseconds (`*_ms`), in seconds."""
    assert name.endswith("_ms"), name
    return BY_NAME[name].default / 1000
