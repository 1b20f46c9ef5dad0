"""The project's structure: one module identity per package, configs that define each setting once, errors matched
by class."""

import json
import os
from pathlib import Path

import pytest
from helpers import BUNDLE, CONFIGS, TINY_PROFILE, launch

ROOT = BUNDLE.parent
BASE_LAYERS = ["common.json", "train.json", "inference.json", "search_coarse.json", "search_fine.json"]
OVERRIDES = ["evaluate.json", "multi_gpu_train.json", "multi_gpu_evaluate.json", "multi_gpu_search.json"]
PROFILES = [CONFIGS / "cpu_profile.json", TINY_PROFILE]


def test_packages_import_under_one_name(tmp_path):
    """`import networks, search` works from any directory, and the bundle's `scripts` use those same modules: an
    architecture made by one is accepted by the other, and no second copy (`scripts.networks`) exists."""
    done = launch(["-c", "import networks, search; print(networks.__file__); print(search.__file__)"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / "networks" / "__init__.py"), str(ROOT / "search" / "__init__.py")]
    code = (
        "import sys, scripts.handlers, networks, search\n"
        "net = networks.C2FNASNet(networks.default_architecture(), 1, 3, 4)\n"
        "assert not [m for m in sys.modules if m.startswith(('scripts.networks', 'scripts.search'))]\n"
        "print(type(net).__module__, scripts.handlers.dice_report is search.dice_report)"
    )
    done = launch(["-c", code], BUNDLE)  # as model-zoo runs a bundle: from its root
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["networks.c2fnas", "True"]


def test_no_symlinks_and_tests_leave_the_import_path_alone():
    links = [p for top in ["networks", "search", "bundle", "tests", "benchmarks"] for p in (ROOT / top).rglob("*")]
    assert not [p for p in links if p.is_symlink()]
    needle = "sys." + "path"
    assert not [p.name for p in (ROOT / "tests").glob("*.py") if needle in p.read_text()]


def _ids(config, prefix=""):
    """Flattened ids of a config (``a#b`` for nested dicts), without MONAI's ``+`` merge prefix."""
    ids = set()
    for key, value in config.items():
        key = key.lstrip("+")
        ids.add(prefix + key)
        if isinstance(value, dict):
            ids |= _ids(value, prefix + key + "#")
    return ids


def test_each_setting_is_defined_once():
    """The base layers (common.json and the stage configs merged over it) define disjoint ids; evaluate.json and the
    multi_gpu overrides replace or add components for their stage; the profiles only set settings that a base layer
    defines (a misspelt id in a profile fails here)."""
    top = {name: set(json.loads((CONFIGS / name).read_text())) for name in BASE_LAYERS}
    defined = {}
    for name, keys in top.items():
        for key in keys:
            if key in ("run",) and name != "common.json":
                continue  # each stage's own workflow entry
            if key == "plan" and name == "inference.json":
                continue  # inference reads the plan of its weights, not one made from the data
            assert key.lstrip("+") not in defined or key.startswith("+"), (key, name, defined.get(key))
            defined.setdefault(key.lstrip("+"), name)
    everything = set().union(*(_ids(json.loads((CONFIGS / n).read_text())) for n in BASE_LAYERS))
    for profile in PROFILES:
        unknown = set(json.loads(Path(profile).read_text())) - everything
        assert not unknown, f"{profile.name} sets ids no config defines: {sorted(unknown)}"
    for name in OVERRIDES:
        config = json.loads((CONFIGS / name).read_text())
        settings = {k for k, v in config.items() if not isinstance(v, (dict, list)) and "#" not in k}
        assert settings <= everything | {"device"}, (name, settings - everything)


def test_bad_input_errors_are_recognised_by_class():
    from scripts.errors import DatasetError, input_error

    from networks import ArchitectureError
    from search import SearchSettingsError, SearchStateError

    for error in [DatasetError("d"), ArchitectureError("a"), SearchStateError("s"), SearchSettingsError("x")]:
        try:
            try:
                raise error
            except Exception as inner:
                raise RuntimeError("wrapped by the config machinery") from inner
        except RuntimeError as outer:
            assert input_error(outer) is error
    impostor = type("DatasetError", (ValueError,), {})  # same name, another class: not a bad-input error
    assert input_error(impostor("x")) is None


def test_search_settings_are_checked_where_they_are_consumed(tmp_path):
    from search import CoarseSearch, SearchSettings, SearchSettingsError

    with pytest.raises(SearchSettingsError, match=r"search setting 'cycles' \(config or --cycles override\): 'six'"):
        SearchSettings(output_dir=tmp_path, cycles="six")
    with pytest.raises(SearchSettingsError, match="tournament cannot be larger than the population"):
        SearchSettings(output_dir=tmp_path, population_size=2, sample_size=3)
    settings = SearchSettings(output_dir=tmp_path)
    data = [{"image": 0, "label": 0}]
    with pytest.raises(SearchSettingsError, match="search setting 'cluster_iterations'.*less than the minimum of 0"):
        CoarseSearch(settings, data, data, preprocessing=lambda x: x, cluster_iterations=-1)
    assert os.listdir(tmp_path) == []  # nothing written
