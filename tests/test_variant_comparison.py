"""The rule that judges a search variant against the search as configured (``benchmarks/variant_comparison.py``), on
reports written here with the fields of ``benchmarks/search_quality.py``'s report."""

import json
import math
from pathlib import Path

import pytest

from benchmarks import variant_comparison as vc

RANDOM = {"random00": 0.70, "random01": 0.72}


def write_report(
    folder: Path,
    variant: str = "",
    searched: tuple = (0.70, 0.72, 0.74),
    met: tuple = (),
    coarse_tau: float = 0.1,
    proxy_tau: float = 0.0,
    gmacs: float = 0.28,
    search_s: float = 300.0,
    random: dict = RANDOM,
) -> Path:
    """A finished report under ``folder``: the searched networks' Dice per search seed, the names of the report's
    targets that are met, the coarse τ against one proxy's, every searched network's GMACs and search time."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in vc.TARGETS if n != "coarse_tau_above_every_proxy"]
    figures = {
        "random": random,
        "training_seeds": 3,
        "noise": {"std": 0.02},
        "searched": {str(s): {"dice": d, "search_wall_s": search_s} for s, d in enumerate(searched)},
        "gmacs": {f"searched{s}": gmacs for s in range(len(searched))},
        "proxy_correlation": {"coarse": {"gmacs": {"kendall_tau": proxy_tau}, "synflow": {"kendall_tau": None}}},
        "targets": {n: {"value": coarse_tau if "coarse" in n else 0, "met": n in met} for n in names},
    }
    path = folder / f"search_quality{'@' + variant if variant else ''}.json"
    path.write_text(json.dumps({"settings": {"variant": variant}, "figures": figures}))
    return folder


def test_standard_error_and_targets(tmp_path):
    write_report(tmp_path / "t", met=("moonshot_at_least_best_monai",), coarse_tau=0.1, proxy_tau=0.0)
    write_report(tmp_path / "t", "v", searched=(0.75, 0.77, 0.79), coarse_tau=-0.1, proxy_tau=0.0)
    task = vc.compare_task(tmp_path / "t", "v")
    assert task["difference"] == pytest.approx(0.05)
    assert task["se"] == pytest.approx(math.sqrt(2 * 0.0004 / 3))  # each side's variance 0.0004 over 3 seeds
    assert task["targets"]["configured"]["coarse_tau_above_every_proxy"]  # 0.1 > 0.0; a None proxy τ is skipped
    assert not task["targets"]["variant"]["coarse_tau_above_every_proxy"]
    assert set(task["lost"]) == {"moonshot_at_least_best_monai", "coarse_tau_above_every_proxy"}
    assert not task["holds"] and task["better"]  # a lost target sinks it, whatever the mean


@pytest.mark.parametrize(
    "variant_b, search_s, fewer_gmacs, adopt",
    [
        ((0.70, 0.72, 0.74), 300.0, False, True),  # better on task a, level on task b
        ((0.64, 0.66, 0.68), 300.0, False, False),  # task b lower by more than one SE
        ((0.70, 0.72, 0.74), 700.0, False, False),  # a search over the compute limit
        ((0.70, 0.72, 0.74), 300.0, True, False),  # a budget must also find cheaper networks: these are not
    ],
)
def test_verdict_over_tasks(tmp_path, variant_b, search_s, fewer_gmacs, adopt):
    for task, variant_dice in (("a", (0.75, 0.77, 0.79)), ("b", variant_b)):
        write_report(tmp_path / task)
        write_report(tmp_path / task, "v", searched=variant_dice, search_s=search_s)
    report = vc.main(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--variant", "v", "--search_limit_s", "650"]
        + (["--fewer_gmacs"] if fewer_gmacs else [])
    )
    assert report["verdict"]["adopt"] is adopt


def test_gaining_a_target_is_better(tmp_path):
    write_report(tmp_path / "t")
    write_report(tmp_path / "t", "v", met=("searched_at_or_above_random_q75_in_2_of_3",))
    task = vc.compare_task(tmp_path / "t", "v")
    assert task["difference"] == 0 and task["holds"] and task["better"]


def test_refuses_another_ruler_or_a_missing_report(tmp_path):
    write_report(tmp_path / "t")
    write_report(tmp_path / "t", "v", random={"random00": 0.70, "random01": 0.73})
    with pytest.raises(SystemExit, match=r"^variant_comparison: .*search_quality@v\.json: .*not the same ruler"):
        vc.main([str(tmp_path / "t"), "--variant", "v", "--search_limit_s", "650"])
    with pytest.raises(SystemExit, match=r"^variant_comparison: .*search_quality@w\.json: no such report"):
        vc.main([str(tmp_path / "t"), "--variant", "w", "--search_limit_s", "650"])
    (tmp_path / "t" / "search_quality@x.json").write_text(json.dumps({"settings": {}, "figures": {"random": RANDOM}}))
    with pytest.raises(SystemExit, match=r"search_quality@x\.json: not a finished search-quality report \(no "):
        vc.main([str(tmp_path / "t"), "--variant", "x", "--search_limit_s", "650"])
