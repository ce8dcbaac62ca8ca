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
    ('bind = "nowhere"\n', "key 'bind' must be an IP address"),
    ("bind = 1\n", "key 'bind' must be an IP address"),
    ('curve = "maybe"\n', "key 'curve' must be true or false"),
    ("grants = 1\n", "'grants' must be a table"),
    ('[grants]\nmallory = [0]\n', "key 'mallory' must be an importer name"),
    ('[grants]\nimporter-1 = "some"\n', "'importer-1' must be a list of buffer numbers"),
    ('[grants]\nimporter-1 = [0, "1"]\n', "'importer-1' must be a list of buffer numbers"),
    ("name = 3\n", "key 'name' must be a string"),
    ("[[faults]]\nkind = \"delay\"\nop = [\"map\"]\n", "'op' must be one of"),
    ("[[faults]]\nkind = \"kill\"\ntarget = \"importer-\u00b2\"\n", "'target' must be importer-N"),
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


def test_transport_security_options() -> None:
    assert resolve(None, {}).uses_curve is False
    assert resolve(None, {"transport": "tcp"}).bind_address == "127.0.0.1"
    assert resolve(None, {"transport": "tcp", "bind": "0.0.0.0"}).uses_curve, "beyond loopback: CURVE"
    assert resolve(None, {"transport": "tcp", "bind": "::1"}).uses_curve is False
    assert resolve(None, {"transport": "tcp", "curve": "on"}).uses_curve
    with pytest.raises(OptionError, match=r"beyond loopback: refusing to run without CURVE"):
        resolve(None, {"transport": "tcp", "bind": "10.1.2.3", "curve": "off"})
    with pytest.raises(OptionError, match="bind .* applies to transport tcp only"):
        resolve(None, {"bind": "127.0.0.1"})
    with pytest.raises(OptionError, match="curve applies to transport tcp only"):
        resolve(None, {"curve": "yes"})


def test_grants(tmp_path: Path) -> None:
    sc = tmp_path / "g.toml"
    sc.write_text('importers = 3\nbuffers = 4\n[grants]\nimporter-1 = [2, 0, 2]\nimporter-2 = "all"\n')
    p = resolve(sc, {})
    assert [p.granted(f"importer-{n}") for n in (1, 2, 3)] == [[0, 2], [0, 1, 2, 3], []]
    assert RunParams(buffers=3).granted("importer-9") == [0, 1, 2], "no [grants]: every buffer to everyone"
    sc.write_text('importers = 2\nbuffers = 4\n[grants]\nimporter-1 = [4]\n')
    with pytest.raises(OptionError, match="importer-1 names buffer 4; buffers are 0..3"):
        resolve(sc, {})
    sc.write_text('importers = 2\n[grants]\nimporter-3 = [0]\n')
    with pytest.raises(OptionError, match="importer-3 does not exist"):
        resolve(sc, {})


def test_heaps_larger_than_shared_memory_are_refused_up_front() -> None:
    with pytest.raises(OptionError, match="of shared memory .* /dev/shm has"):
        resolve(None, {"buffers": "4096", "buffer_size": "1GiB"})


def test_cli_paths_that_cannot_be_used_are_one_line_errors(tmp_path: Path, capsys) -> None:
    from deploy.cli import main
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, words in ((["up", "--out", str(afile)], "cannot make the run directory"),
                        (["up", "--out", str(afile / "sub")], "cannot make the run directory"),
                        (["status", str(afile)], "no deploy.json"),
                        (["up", str(tmp_path), "--out", str(tmp_path / "x")], "cannot read the scenario file")):
        assert main(argv) in (2, 3)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
