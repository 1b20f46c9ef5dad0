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
            if key in ("plan", "load_keys") and name == "inference.json":
                continue  # inference reads the plan of its weights, not one made from the data, and images only
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


def test_one_version_source():
    """metadata.json's version is the one source: pyproject.toml, the changelog, the release name and every version
    the README and docs name agree with it."""
    import re

    from release import NAME

    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    version = metadata["version"]
    assert re.findall(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M) == [version]
    assert max(metadata["changelog"], key=lambda v: tuple(map(int, v.split(".")))) == version
    changelog = re.findall(r"^## (\d+\.\d+\.\d+)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert changelog[0] == version and set(changelog) == set(metadata["changelog"]), changelog
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(BUNDLE / "docs").glob("*.md")]
    named = {m for doc in docs for m in re.findall(re.escape(NAME) + r"_v(\d+\.\d+\.\d+)\.zip", doc.read_text())}
    assert named <= {version}, f"documents name release zips of versions {sorted(named)}, not {version}"


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("\n## Layout\n") : readme.index("\n## ", readme.index("\n## Layout\n") + 1)]


def test_readme_layout_names_every_module():
    """The README's layout section points at one file per concept, every file it names exists, and every module of
    the packages (networks, search, the bundle's scripts, the benchmarks, the Auto3DSeg template) is named."""
    import re

    section = _layout_section()
    concepts = {"network", "supernet", "architecture rules", "coarse search", "fine search", "plan"}
    concepts |= {"training recipe", "inference runtime", "Dice", "stage chain"}
    rows = dict(re.findall(r"^\| the ([^|(]+?)(?: \([^|]*\))? \| `([^`]+)` \|$", section, flags=re.M))
    assert concepts <= set(rows), sorted(concepts - set(rows))
    for path in rows.values():
        assert (ROOT / path).is_file(), path
    packages = {
        "networks/": ROOT / "networks",
        "search/": ROOT / "search",
        "bundle/scripts/": BUNDLE / "scripts",
        "benchmarks/": ROOT / "benchmarks",
        "auto3dseg/c2fnas/scripts/": ROOT / "auto3dseg" / "c2fnas" / "scripts",
    }
    for name, folder in packages.items():
        row = re.search(r"^\| `" + re.escape(name) + r"`[^|]*\| (.+) \|$", section, flags=re.M)
        assert row, f"no layout row for {name}"
        listed = set(re.findall(r"`([\w]+\.py)`", row.group(1)))
        present = {p.name for p in folder.glob("*.py")}
        assert listed == present, (name, sorted(listed - present), sorted(present - listed))


def test_a_stage_config_alone_names_the_command(tmp_path):
    """Every stage config of the chain (and plan.json), run alone from the bundle root as a model-zoo user would,
    stops at once with one line naming the command with the layers it needs; evaluate.json needs train.json too."""
    from scripts import stage_chain

    names = [layer for stage in stage_chain.STAGES for layer in stage.layers[-1:]] + ["configs/plan.json"]
    assert len(names) == 6
    for name in names:
        done = launch(["-m", "monai.bundle", "run", "--config_file", name], BUNDLE)
        assert done.returncode != 0
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"SettingsError: {name} is a layer over configs/common.json"), last
        assert json.dumps(stage_chain.required_layers(name)) in last, last
        assert "Traceback" not in done.stderr
    last = launch(["-m", "monai.bundle", "run", "--config_file", "configs/evaluate.json"], BUNDLE).stderr.splitlines()
    assert '["configs/common.json", "configs/train.json", "configs/evaluate.json"]' in last[-1]
    files = json.dumps([str(CONFIGS / "common.json"), str(CONFIGS / "evaluate.json")])
    done = launch(["-m", "monai.bundle", "run", "--config_file", files, "--output_dir", str(tmp_path / "out")], BUNDLE)
    assert done.returncode != 0 and "is a layer over configs/train.json" in done.stderr.strip().splitlines()[-1]


def test_the_stage_chain_is_declared_once():
    """The stage chain's commands carry the hand-offs as config ids, and the Makefile, the Auto3DSeg template, the
    tests' runner and both benchmarks name no stage output path or stage config themselves."""
    import re

    from scripts import stage_chain

    argv = stage_chain.command("evaluate", "/b", ["p.json"], {"output_dir": "/o", "max_epochs": 3, "restart": True})
    files = json.loads(argv[argv.index("--config_file") + 1])
    assert files == ["/b/configs/common.json", "/b/configs/train.json", "/b/configs/evaluate.json", "p.json"]
    options = dict(zip(argv[argv.index("--config_file") + 2 :: 2], argv[argv.index("--config_file") + 3 :: 2]))
    assert options == {
        "--arch_file": "@searched_arch_file",
        "--ckpt_file": "@trained_ckpt_file",
        "--output_dir": "/o",
        "--max_epochs": "3",
        "--restart": "True",
    }
    common = json.loads((CONFIGS / "common.json").read_text())
    assert {"searched_arch_file", "trained_ckpt_file"} <= set(common)
    callers = ["Makefile", "benchmarks/performance.py", "benchmarks/search_quality.py", "tests/helpers.py"]
    callers += [str(p.relative_to(ROOT)) for p in (ROOT / "auto3dseg" / "c2fnas" / "scripts").glob("*.py")]
    for caller in callers:
        text = (ROOT / caller).read_text()
        assert not re.search(r"[/'\"](arch_fine\.json|model\.pt)", text), caller  # hand-offs by config id
        assert not re.search(r"['\"/](search_coarse|search_fine|train|evaluate|inference)\.json['\"]", text), caller
