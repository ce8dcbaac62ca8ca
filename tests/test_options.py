"""Run parameters: defaults, scenario files, flags, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.options import OptionError, RunParams, resolve


def test_flags_override_the_scenario_which_overrides_defaults(tmp_path: Path) -> None:
    sc = tmp_path / "s.toml"
    sc.write_text('strategy = "resv-fence"\nimporters = 3\nbuffer_size = "64KiB"\nduration = 2\n')
    p = resolve(sc, {"importers": "5", "seed": None})
    assert (p.strategy, p.importers, p.buffer_size, p.duration) == ("resv-fence", 5, 65536, 2.0)
    assert p.seed == RunParams().seed


@pytest.mark.parametrize("text, words", [
    ('importers = "two"\n', "key 'importers' must be an integer"),
    ("importers = 0\n", "key 'importers' must be an integer from 1"),
    ('strategy = "yolo"\n', "key 'strategy' must be one of"),
    ('buffer_size = "12 parsecs"\n', "key 'buffer_size'"),
    ("buffer_size = 100\n", "multiple of 64"),
    ("wat = 1\n", "unknown key 'wat'"),
    ("importers = [1\n", "not valid TOML"),
    ("[faults]\nx = 1\n", "'faults' must be an array of tables"),
    ("[[faults]]\nkind = \"zap\"\n", "unknown fault kind 'zap'"),
    ("[[faults]]\nkind = \"delay\"\nms = \"soon\"\n", "'ms' must be a number"),
    ("[workload]\nx = 1\n", "unknown key 'workload'"),
    ("duration = -1\n", "key 'duration' must be a number > 0"),
    ("write_ratio = 1.5\n", "key 'write_ratio'"),
])
def test_bad_scenario_gets_one_line_naming_the_key(tmp_path: Path, text: str, words: str) -> None:
    sc = tmp_path / "bad.toml"
    sc.write_text(text)
    with pytest.raises(OptionError) as err:
        resolve(sc, {})
    assert words in str(err.value) and "\n" not in str(err.value)
    assert str(sc) in str(err.value)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(OptionError, match="--move-rate must be a number"):
        resolve(None, {"move_rate": "fast"})
    with pytest.raises(OptionError, match="--transport must be one of ipc, tcp"):
        resolve(None, {"transport": "carrier-pigeon"})


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="no such scenario file"):
        resolve(tmp_path / "nope.toml", {})


def test_parameters_that_cannot_work_together() -> None:
    with pytest.raises(OptionError, match="vram_size"):
        resolve(None, {"vram_size": "64KiB", "buffer_size": "256KiB"})
    with pytest.raises(OptionError, match="queue_depth"):
        resolve(None, {"queue_depth": "9", "buffers": "8"})


def test_faults_from_a_scenario_and_from_flags(tmp_path: Path) -> None:
    sc = tmp_path / "f.toml"
    sc.write_text('[[faults]]\nkind = "delay"\ntarget = "exporter"\nop = "move_notify"\nms = 5\n'
                  '[[faults]]\nkind = "kill"\ntarget = "importer-1"\nat = 1\n')
    p = resolve(sc, {})
    assert [f["kind"] for f in p.faults] == ["delay", "kill"]
    assert p.faults[0] == {"kind": "delay", "target": "exporter", "at": 0.0, "for": None, "p": 1.0,
                           "op": "move_notify", "ms": 5.0, "jitter_ms": 0.0}
    flags = resolve(sc, {"faults": ["rogue:ms=30,p=0.5"]})
    assert [f["kind"] for f in flags.faults] == ["rogue"] and flags.faults[0]["p"] == 0.5
    with pytest.raises(OptionError, match="importer-9 does not exist"):
        resolve(None, {"faults": ["kill:target=importer-9,at=1"]})
    with pytest.raises(OptionError, match="not within the run"):
        resolve(None, {"faults": ["kill:at=5"], "duration": "3"})
