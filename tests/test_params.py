"""Every run parameter is declared once (protocol/params.py): the flags, the scenario keys,
RunParams, the services' flags and the argv they are given all come from that declaration."""

from __future__ import annotations

import argparse
import dataclasses

from deploy import launcher
from deploy.options import OPTIONS, RunParams, resolve
from protocol.exporter import ExporterConfig
from protocol.params import PARAMS, default_s
from runtime.params import add_service_flags, service_argv


def test_run_params_flags_and_keys_are_the_declaration() -> None:
    assert [o.key for o in OPTIONS] == [p.name for p in PARAMS]
    fields = {f.name: f.default for f in dataclasses.fields(RunParams)}
    assert fields == {**{p.name: p.default for p in PARAMS}, "faults": (), "grants": None, "importer_kinds": None}


def test_what_the_launcher_gives_a_service_parses_back_to_the_run_parameters(tmp_path) -> None:
    params = resolve(None, {"strategy": "resv-fence", "importers": "3", "buffers": "6", "buffer_size": "64KiB",
                            "vram_size": "128KiB", "seed": "9", "move_rate": "7.5", "hint_policy": "conservative",
                            "ack_timeout_ms": "20", "fence_timeout_ms": "30", "queue_depth": "3", "dma_ms": "2",
                            "think_ms": "0", "write_ratio": "0.25", "lease_ms": "900", "retry_ms": "40"})
    for service, argv in (("exporter", launcher._exporter_argv(params, tmp_path, "r", "ipc://e", "ipc://c")),
                          ("importer", launcher._importer_argv(params, tmp_path, 1, "ipc://e", "ipc://c", 0))):
        parser = argparse.ArgumentParser()
        add_service_flags(parser, service)
        ours = [p for p in PARAMS if service in p.services]
        flags = {"--" + p.services[service] for p in ours}
        given = [a for i, a in enumerate(argv) if a in flags or (i and argv[i - 1] in flags)]
        parsed = vars(parser.parse_args(given))
        assert parsed == {p.name: getattr(params, p.name) for p in ours}, service
        assert given == service_argv(params.as_dict(), service)
    assert {"duration", "transport", "bind", "curve"} == {p.name for p in PARAMS if not p.services}


def test_the_exporter_config_defaults_are_the_declared_ones() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(ExporterConfig)}
    assert fields["ack_timeout_s"] == default_s("ack_timeout_ms") == RunParams().ack_timeout_ms / 1000
    assert fields["fence_timeout_s"] == default_s("fence_timeout_ms")
    assert fields["lease_s"] == default_s("lease_ms") and fields["hint_policy"] == RunParams().hint_policy
