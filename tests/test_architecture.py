"""The c2fnas-arch/1 file, the topology rules, wiring and the enumeration of the topology space."""

import itertools
import json
import os

import pytest

from networks import (
    DEFAULT_ARCHITECTURE_FILE,
    Architecture,
    ArchitectureError,
    default_architecture,
    enumerate_topologies,
    load_architecture,
    save_architecture,
    topology_error,
    topology_wiring,
)

DEFAULT_LEVELS = [1, 1, 2, 2, 3, 4, 3, 3, 2, 1, 1, 1]
DEFAULT_OPS = ["2D", "P3D", "3D", "3D", "3D", "2D", "3D", "3D", "P3D", "3D", "2D", "3D"]


def brute_force_topologies(num_cells, num_levels=4):
    """Independent count: every sequence of steps in {-1, 0, +1}, filtered by the rules written out plainly."""
    found = []
    for steps in itertools.product((-1, 0, 1), repeat=num_cells):
        levels = list(itertools.accumulate(steps, initial=1))[1:]
        if min(levels) < 1 or max(levels) > num_levels or levels[-1] != 1:
            continue
        first_up = next((i for i, s in enumerate(steps) if s < 0), num_cells)
        if any(s > 0 for s in steps[first_up:]):
            continue
        found.append(tuple(levels))
    return found


def test_enumeration_matches_brute_force():
    brute = brute_force_topologies(12)
    assert sorted(brute) == enumerate_topologies(12)
    assert len(brute) == 1486  # the design's reference count
    deep = [t for t in brute if max(t) == 4]
    assert enumerate_topologies(12, min_depth=4) == sorted(deep)
    assert len(deep) == 924
    for cells in (4, 7, 9):
        assert enumerate_topologies(cells) == sorted(brute_force_topologies(cells))
    shallow = enumerate_topologies(9, min_depth=2, max_depth=3)
    assert shallow == sorted(t for t in brute_force_topologies(9) if 2 <= max(t) <= 3)


def test_every_enumerated_topology_is_valid():
    for topology in enumerate_topologies(12):
        assert topology_error(topology) is None
        assert len(topology_wiring(topology)) == 12


def test_wiring_of_default_architecture():
    wiring = topology_wiring(DEFAULT_LEVELS)
    assert [w.transition for w in wiring] == [
        "same", "same", "down", "same", "down", "down", "up", "same", "up", "up", "same", "same"
    ]  # fmt: skip
    # up cells take the encoder cell at their level; others cell i-2 at the same level (stem = output 0)
    assert [w.second for w in wiring] == [-1, 0, -1, -1, -1, -1, 5, -1, 4, 2, -1, 10]


def test_default_architecture_file():
    arch = default_architecture()
    assert list(arch.levels) == DEFAULT_LEVELS and list(arch.ops) == DEFAULT_OPS
    assert arch.provenance["name"] == "C2FNAS-Panc"


def test_save_load_roundtrip(tmp_path):
    arch = Architecture(DEFAULT_LEVELS, DEFAULT_OPS, {"stage": "fine", "seed": 3})
    path = save_architecture(arch, tmp_path / "sub" / "arch.json")
    text = path.read_text()
    assert text.startswith('{\n    "format": "c2fnas-arch/1"')  # 4-space indent
    loaded = load_architecture(path)
    assert loaded == arch and loaded.provenance == {"stage": "fine", "seed": 3}
    assert load_architecture(save_architecture(Architecture((1, 2, 1)), tmp_path / "t.json")).ops is None


def test_failed_save_keeps_previous_file(tmp_path):
    path = save_architecture(default_architecture(), tmp_path / "arch.json")
    before = path.read_bytes()
    with pytest.raises(ArchitectureError):
        save_architecture({"format": "c2fnas-arch/1", "levels": [1, 3, 1]}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["arch.json"]  # no temporary file left behind


def _doc(**changes):
    doc = {"format": "c2fnas-arch/1", "levels": list(DEFAULT_LEVELS), "ops": list(DEFAULT_OPS)}
    doc.update(changes)
    return json.dumps(doc)


INVALID = {
    "wrong_length": (_doc(ops=DEFAULT_OPS[:-1]), "wrong length: 12 levels but 11 ops"),
    "two_level_step": (_doc(levels=[1, 1, 2, 4, 3, 3, 3, 3, 2, 1, 1, 1]), "2 levels from cell 3 (level 2)"),
    "first_cell_two_levels": (_doc(levels=[3, 2, 1], ops=["2D"] * 3), "2 levels from the stem"),
    "not_ending_at_level_1": (_doc(levels=[1, 1, 2, 2, 3, 4, 3, 3, 2, 2, 2, 2]), "it must end at level 1"),
    "not_u_shaped": (_doc(levels=[1, 2, 3, 2, 3, 4, 3, 2, 2, 1, 1, 1]), "not U-shaped: cell 5 steps down"),
    "level_out_of_range": (_doc(levels=[1, 2, 3, 4, 5, 4, 3, 2, 1, 1, 1, 1]), "5 is greater than the maximum of 4"),
    "unknown_op": (_doc(ops=["4D"] + DEFAULT_OPS[1:]), "'4D' is not one of ['2D', '3D', 'P3D'] (at ops/0)"),
    "wrong_format": (_doc(format="dints/1"), "'c2fnas-arch/1' was expected"),
    "missing_levels": (json.dumps({"format": "c2fnas-arch/1"}), "'levels' is a required property"),
    "pickled_numpy": ('{"node_a": [[1, 0]], "arch_code_a": 3}', "'format' is a required property"),
    "extra_key": (_doc(node_a=[1]), "Additional properties are not allowed ('node_a' was unexpected)"),
    "not_json": ('{"format": "c2fnas-arch/1", "levels": [1, 1,', "not JSON"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_architecture_file_is_rejected_with_one_clear_message(tmp_path, case):
    text, expected = INVALID[case]
    path = tmp_path / f"{case}.json"
    path.write_text(text)
    with pytest.raises(ArchitectureError) as info:
        load_architecture(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ArchitectureError, match="missing.json: cannot read architecture file"):
        load_architecture(tmp_path / "missing.json")


def test_shipped_file_is_valid_json_with_four_space_indent():
    text = DEFAULT_ARCHITECTURE_FILE.read_text()
    assert json.loads(text)["format"] == "c2fnas-arch/1"
    assert '\n    "levels"' in text
