"""Cheap proxies as baselines for the supernet's ranking: do parameters, multiply-adds or a zero-cost score rank
architectures by their stand-alone Dice as well as the search's fitness does?

Reads a search-quality report (``benchmarks/search_quality.py``'s JSON: the architectures and their stand-alone
Dice, and the supernets' Kendall tau against them) and, for the same architectures at the same width and patch,
computes three proxies, none of which trains anything:

- ``parameters``: trainable scalars of the network;
- ``gmacs``: multiply-adds of one window (``networks.window_macs``);
- ``synflow``: SynFlow (Tanaka et al., NeurIPS 2020), the sum over weights of |theta * dR/dtheta| with R the sum
  of the network's output for an all-ones input, every weight replaced by its absolute value, in float64. The
  network's instance norms are replaced by identities for it: an instance norm of a constant input is zero, which
  would make every score zero.

It reports Kendall tau (and Spearman rho) of each proxy against the stand-alone Dice over the random architectures
(the coarse stage's comparison) and over the op assignments on one topology (the fine stage's), beside the
supernets' own, and writes ``proxy_baselines.json`` beside the report.

    .venv/bin/python benchmarks/proxy_baselines.py benchmarks/results/search_quality_tubes/e80_long_supernets/\
search_quality_e80.json [--base_channels 8] [--roi_size 32 32 32] [--in_channels 1] [--out_channels 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402  (its rank correlation, so both use one definition)
from proxies import proxies  # noqa: E402

FORMAT = "c2fnas-proxy-baselines/1"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a search-quality report (search_quality*.json)")
    parser.add_argument("--base_channels", type=int, default=8, help="the width the report trained (CPU profile: 8)")
    parser.add_argument("--roi_size", type=int, nargs=3, default=[32, 32, 32], help="the patch it trained")
    parser.add_argument("--in_channels", type=int, default=1)
    parser.add_argument("--out_channels", type=int, default=3)
    args = parser.parse_args(argv)
    sq.bundle_importable()
    report = json.loads(args.report.read_text())
    figures, archs = report["figures"], report["architectures"]
    found: Dict[str, Any] = {"format": FORMAT, "report": str(args.report), "settings": vars(args) | {"report": None}}
    found["machine"] = sq.machine()
    found["proxies"] = {
        name: proxies(archs[name], args.in_channels, args.out_channels, args.base_channels, args.roi_size)
        for name in [*figures["random"], *figures["ops"]]
    }
    found["correlation"] = {}
    for group, comparison in (("random", "coarse"), ("ops", "fine")):
        names = list(figures[group])
        dice = [figures[group][n] for n in names]
        rows = {
            p: sq.kendall_spearman([found["proxies"][n][p] for n in names], dice) for p in found["proxies"][names[0]]
        }
        supernet = figures["correlation"][comparison]
        if comparison == "coarse":
            taus = [seed["architecture"]["kendall_tau"] for seed in supernet.values()]
        else:
            taus = [seed["kendall_tau"] for seed in supernet.values()]
        rows["supernet (mean over search seeds)"] = {"kendall_tau": statistics.fmean(taus), "points": len(names)}
        found["correlation"][comparison] = rows
    out = args.report.with_name("proxy_baselines.json")
    sq.atomic_json(out, found)
    print(f"# {found['machine']['cpu']}; {args.report}")
    for comparison, rows in found["correlation"].items():
        print(f"\n{comparison} ({'random architectures' if comparison == 'coarse' else 'op assignments'})\n")
        print("| ranked by | Kendall τ | Spearman ρ |\n|---|---|---|")
        for name, row in rows.items():
            tau, rho = ("–" if row.get(k) is None else format(row[k], ".3f") for k in ("kendall_tau", "spearman_rho"))
            print(f"| {name} | {tau} | {rho} |")
    print(f"\nwrote {out}")
    return found


if __name__ == "__main__":
    main()
