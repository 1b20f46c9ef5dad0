"""Search quality: does the C2FNAS search find better networks than random picks from its own space?

Every network here is trained and scored by the bundle's own ``python -m monai.bundle run`` configs (``train.json``
then ``evaluate.json``, one fixed budget: the profile's), on the same train/validation split (``split_seed`` 0):

1. ``search``: the coarse and fine search (``search_coarse.json``, ``search_fine.json``) with seeds 0..S-1, keeping
   their supernets (``keep_supernets``);
2. ``fitness``: the supernet Dice the search gives N architectures drawn uniformly from the space (topology uniform
   over the valid topologies, one op per cell uniformly; the coarse supernets of every seed, the architecture with
   its own ops and the topology as the evolution scores it) and M op assignments drawn on seed 0's searched
   topology (seed 0's fine supernet: the fine stage's space); ``proxies``: their parameters, multiply-adds and
   SynFlow, rankers that train nothing;
3. ``train``: every network trained alone with training seeds 0..T-1: the N random architectures, the M op
   assignments, the S searched ones, C2FNAS-Panc at the profile's width, MONAI's ``UNet`` and ``SegResNet``
   (network override of ``train.json``) for the training wall time of seed 0's searched network (epochs from the
   epoch and validation times of short real trainings of all three). Each is also scored on never-seen cases of the
   task's generator (``--heldout``).

A network's stand-alone Dice (the ruler) is its mean over the T training seeds, on the held-out cases where there
are some, else on validation; the noise floor is the pooled standard deviation over seeds. The report gives each
searched result's percentile among the random architectures, Kendall tau and Spearman rho of supernet fitness and
of each proxy against the ruler, random search at equal compute (random architectures trained in a random order
until the search's wall time plus its network's training is spent, the best by its one training's validation Dice,
scored by the ruler; mean over orders), Dice against multiply-adds with the Pareto front, the targets and the wall
time of every part; it writes ``search_quality.json`` and three pictures.

Finished parts are kept with the inputs they depend on (configs, overrides, the digest of the code they run, the
task's generator, the CPU model), by default in the repository (``benchmarks/results/search_quality/<cpu>/
<profile>/<task>``): running the benchmark again, here or on another machine of the same kind, reuses those whose
inputs are unchanged, so a killed run continues and a change to ``search/`` re-runs only the search and what depends
on it.

    .venv/bin/python benchmarks/search_quality.py [--task brain_mr] [--dataset_dir DIR] [--profile JSON] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the generated tasks come as benchmarks.tasks, as in the tests
    sys.path.insert(0, str(ROOT))
from benchmarks.tasks import heldout_dataset  # noqa: E402
from benchmarks.tasks import TASKS, bundle_importable  # noqa: E402
from benchmarks.tasks import dataset as task_dataset  # noqa: E402

BUNDLE = ROOT / "bundle"
CONFIGS = BUNDLE / "configs"
FORMAT = "c2fnas-search-quality/1"
# the code each kind of part runs: a change there re-runs the part
TRAIN_CODE = ["networks", "bundle/scripts", "search/dice.py"]
SEARCH_CODE = ["networks", "search", "bundle/scripts"]
BASELINES = {  # MONAI's hand-designed networks at the profile's width, as train.json network overrides
    "unet": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": "@in_channels",
        "out_channels": "@num_classes",
        "channels": "$[@base_channels * 2 ** i for i in range(5)]",
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
    },
    "segresnet": {
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "init_filters": "@base_channels",
        "in_channels": "@in_channels",
        "out_channels": "@num_classes",
        "norm": "$('GROUP', {'num_groups': min(8, @base_channels)})",
    },
}


def stage_chain():
    """The bundle's stage chain (``scripts.stage_chain``): every part runs the bundle's stages through it."""
    bundle_importable()
    from scripts import stage_chain as chain

    return chain


def cpu_info() -> Dict[str, str]:
    """The first CPU's fields of ``/proc/cpuinfo`` (``model name``, ``cpu family``, ``model``, ``flags``...); empty
    where there is none (not Linux)."""
    info: Dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def machine() -> Dict[str, Any]:
    """CPU model, its ``cpu_id`` (``f<family>m<model>``: the model name alone may not tell two generations apart,
    every AMD EPYC), ``slug`` (both, for folder names), usable cores, Python and torch versions."""
    import torch

    info = cpu_info()
    model = info.get("model name") or platform.processor() or platform.machine()
    cpu_id = f"f{info.get('cpu family', '?')}m{info.get('model', '?')}"
    slug = re.sub(r"[^a-z0-9]+", "_", f"{model} {cpu_id}".lower()).strip("_")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"cpu": model, "cpu_id": cpu_id, "slug": slug, "cores": cores}
    return {**found, "python": platform.python_version(), "torch": torch.__version__}


def read_records(records_dir: Path) -> Iterator[tuple]:
    """``(part name, record)`` of every record in ``records_dir`` (none where it does not exist), by name."""
    for path in sorted(records_dir.glob("*.json")) if records_dir.is_dir() else ():
        yield path.stem, json.loads(path.read_text())


def record_kinds(records_dir: Path) -> Dict[str, int]:
    """How many of ``records_dir``'s records ran on each CPU kind (``machine`` slug); a record that names none is
    left out."""
    kinds: Dict[str, int] = {}
    for _, record in read_records(records_dir):
        kind = record.get("machine") if isinstance(record, dict) and "key" in record else None
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def home_kind(records_dir: Path, slug: str) -> str:
    """The CPU kind whose seconds ``records_dir``'s report counts in: the kind most of its records ran on, else (no
    record) ``slug``, this machine's."""
    kinds = record_kinds(records_dir)
    return max(sorted(kinds), key=lambda k: kinds[k]) if kinds else slug


def total_wall(wall_s: Any) -> float:
    """A part's wall time in seconds: ``wall_s`` itself, or the sum of its stages (a search: coarse and fine)."""
    return float(sum(wall_s.values())) if isinstance(wall_s, dict) else float(wall_s)


def speed_factors(records_dir: Path, home: str) -> Dict[str, Dict[str, Any]]:
    """For each CPU kind other than ``home`` that re-ran parts recorded on ``home`` and reproduced them exactly
    (``reproductions`` in a record, ``Bench.part``): ``factor``, the ``home`` seconds per second of that kind (the
    sum of the records' wall times over the sum of the reproductions'), and the ``parts`` it comes from. A record
    that names no machine counts as ``home``'s."""
    pairs: Dict[str, List[tuple]] = {}
    for name, record in read_records(records_dir):
        # a record that names no machine (made before records did) was made on its folder's kind, as home_seconds
        if (
            not isinstance(record, dict)
            or record.get("machine", home) != home
            or "wall_s" not in record.get("result", {})
        ):
            continue
        for again in record.get("reproductions", []):
            if again["machine"] != home:
                pairs.setdefault(again["machine"], []).append((name, total_wall(record["result"]["wall_s"]), again))
    return {
        kind: {
            "factor": sum(h for _, h, _ in found) / sum(a["wall_s"] for _, _, a in found),
            "parts": {name: {"home_s": h, "this_s": a["wall_s"], "finished": a["finished"]} for name, h, a in found},
        }
        for kind, found in pairs.items()
    }


def other_kinds(records_dir: Path, slug: str) -> List[str]:
    """The CPU kinds (``machine`` slugs) that ``records_dir``'s records ran on, where none ran on ``slug``; empty
    where a record ran on ``slug``, none says, or there are none. Records are keyed by the CPU's model name, which
    two generations can share (every AMD EPYC), so this guards a folder named on the command line."""
    kinds = record_kinds(records_dir)
    return [] if slug in kinds else sorted(kinds)


def generator_key(task: str) -> Dict[str, str]:
    """What a generated task's records depend on in place of its folder: its name and the digest of the code that
    generates it (``embedded``: the bundle's own generator), so they hold on another checkout or machine."""
    generator = ["bundle/scripts/data.py"] + ([] if task == "embedded" else ["benchmarks/tasks.py"])
    return {"task": task, "generator": code_digest(generator)}


def code_digest(paths: Sequence[str], root: Path = ROOT) -> str:
    """sha1 over what the .py and .json files under ``paths`` (relative to ``root``) compute: a Python file's syntax
    tree without its docstrings (so comments, docstrings and formatting do not count), a JSON file's content."""
    h = hashlib.sha1()
    for rel in paths:
        top = root / rel
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.suffix in (".py", ".json"))
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(_computed(f).encode())
    return h.hexdigest()[:16]


def _computed(path: Path) -> str:
    """``path``'s content up to what cannot change a result: the syntax tree less docstrings, or canonical JSON."""
    text = path.read_text()
    if path.suffix == ".json":
        return json.dumps(json.loads(text), sort_keys=True)
    tree = ast.parse(text, filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def atomic_json(path: Path, obj: Any) -> None:
    from networks.fileio import atomic_write_json

    atomic_write_json(path, obj)


class Bench:
    """Runs the bundle's configs as subprocesses and keeps each finished part with the inputs it depends on."""

    def __init__(
        self,
        work_dir: Path,
        dataset_dir: Optional[Path],
        profile: Path,
        reuse: bool,
        max_epochs: Optional[int] = None,
        records_dir: Optional[Path] = None,
        dataset_key: Optional[Any] = None,
    ):
        """Parts run in ``work_dir/runs`` and are recorded in ``records_dir`` (default ``work_dir/parts``). A record
        depends on ``dataset_key`` (default: the dataset's path), so records of a generated dataset, keyed by what
        generates it, hold on another checkout or machine of the same kind."""
        self.work_dir, self.dataset_dir, self.profile, self.reuse = work_dir, dataset_dir, profile, reuse
        # config files merged after the profile that change only the search (``--search_layers``), and the name of
        # that search variant: the parts that depend on the search's result carry it ("@<variant>"), the others
        # (random architectures, C2FNAS-Panc) are shared by every variant
        self.search_layers: List[Path] = []
        self.variant = ""
        self.records_dir = records_dir or work_dir / "parts"
        self.dataset_key = str(dataset_dir) if dataset_key is None else dataset_key
        # the stand-alone training budget: the profile's, or max_epochs (its trainings, report and pictures then
        # carry the tag "_e<max_epochs>", so they sit beside the profile-budget ones and share the searches)
        self.max_epochs = max_epochs
        self.tag = "" if max_epochs is None else f"_e{max_epochs}"
        self.machine = machine()
        # the CPU kind whose seconds the report counts in, and the measured speed of the other kinds against it
        self.home = home_kind(self.records_dir, self.machine["slug"])
        self._speed: Optional[Dict[str, Dict[str, Any]]] = None  # read from the records once, again after a change
        self.reused: List[str] = []
        self.ran_on: Dict[str, Dict[str, Optional[str]]] = {}  # part -> the machine (slug) and date it ran on
        self.carried: List[str] = []  # parts carried over a code change (``part``)
        self.converted: List[str] = []  # parts whose wall time counts in home seconds here (``in_home_time``)
        # trainings are also scored on these never-seen cases when set (``train_part``): (folder, what makes them)
        self.heldout: Optional[tuple] = None
        self.reproduced: Dict[str, Optional[str]] = {}  # group -> the part that reproduced its record, or None
        self.twins: List[str] = []  # trainings recorded from another name's record with the same inputs (``part``)
        self._names_by_key: Optional[Dict[str, str]] = None  # record key -> part name, read once (``twin``)

    def use_search_layers(self, layers: Sequence[Path]) -> None:
        """Merge ``layers`` after the profile in every stage and name the parts that depend on the search after them
        (``@<stems>``). Raises ValueError, before any work, where a layer is missing or changes what the trainings
        or evaluations merge (their configs without the ids only the search reads): a variant changes the search
        only, so that the random architectures' and C2FNAS-Panc's trainings are shared with the search as
        configured."""
        missing = [str(f) for f in layers if not Path(f).is_file()]
        if missing:
            raise ValueError(f"{', '.join(missing)}: do not exist")
        before = [config_inputs(self.config_files(stage), drop_search=True) for stage in ("train", "evaluate")]
        self.search_layers, self.variant = [Path(f) for f in layers], variant_name(layers)
        after = [config_inputs(self.config_files(stage), drop_search=True) for stage in ("train", "evaluate")]
        if before != after:
            changed = sorted({k for b, a in zip(before, after) for k in {*b, *a} if b.get(k) != a.get(k)})
            self.search_layers, self.variant = [], ""
            raise ValueError(
                f"{', '.join(map(str, layers))}: changes the training, not only the search ({', '.join(changed)}); "
                "use --profile"
            )

    def config_files(self, stage: str, extra: Sequence[Path] = ()) -> List[str]:
        """The configs stage ``stage`` of the bundle's chain merges, with the profile and ``extra`` last."""
        return stage_chain().config_files(stage, BUNDLE, [self.profile, *self.search_layers, *extra])

    def overrides(self, output_dir: Path, **more: Any) -> Dict[str, Any]:
        found = {"bundle_root": str(BUNDLE), "output_dir": str(output_dir)}
        if self.dataset_dir is not None:
            found["dataset_dir"] = str(self.dataset_dir)
        return {**found, **more}

    def bundle_run(self, log: Path, stage: str, overrides: Dict[str, Any], extra: Sequence[Path] = ()) -> float:
        """Stage ``stage`` of the bundle's chain (``python -m monai.bundle run``, its hand-offs, then ``overrides``)
        from the bundle folder; returns its wall time. Its output goes to ``log``; a failure raises naming the log
        and its last line. The time spent so far is kept beside the log every few seconds, so a resumed search
        (killed, then run again) counts all of it."""
        argv = stage_chain().command(stage, BUNDLE, [self.profile, *self.search_layers, *extra], overrides)
        argv += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
        log.parent.mkdir(parents=True, exist_ok=True)
        elapsed_file = log.with_suffix(".elapsed")
        before = float(elapsed_file.read_text()) if elapsed_file.exists() else 0.0
        # this checkout's packages (networks, search), whose digest keys the records, not an installed copy's
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        with open(log, "a") as f:
            process = subprocess.Popen(argv, cwd=BUNDLE, stdout=f, stderr=subprocess.STDOUT, env=env)
            while process.poll() is None:
                time.sleep(1)
                if time.perf_counter() - start > 5:
                    elapsed_file.write_text(str(before + time.perf_counter() - start))
        wall = before + time.perf_counter() - start
        elapsed_file.write_text(str(wall))
        if process.returncode != 0:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            raise RuntimeError(f"{' '.join(argv[:4])} failed (exit {process.returncode}); see {log}: {lines[-1:]}")
        return wall

    def with_context(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """A part's inputs as its record keeps them: with the CPU model and the dataset's key added."""
        return {**inputs, "cpu": self.machine["cpu"], "dataset_dir": self.dataset_key}

    def key(self, inputs: Dict[str, Any]) -> str:
        """The key of a part's record: sha1 of its inputs ``with_context``."""
        return hashlib.sha1(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()

    def recorded(self, name: str, inputs: Dict[str, Any]) -> bool:
        """Whether part ``name`` has a record for ``inputs`` (``part`` would reuse it)."""
        record_file = self.records_dir / f"{name}.json"
        key = self.key(self.with_context(inputs))
        return self.reuse and record_file.exists() and json.loads(record_file.read_text()).get("key") == key

    @property
    def speed(self) -> Dict[str, Dict[str, Any]]:
        """``speed_factors`` of this bench's records against its ``home`` kind."""
        if self._speed is None:
            self._speed = speed_factors(self.records_dir, self.home)
        return self._speed

    def home_seconds(self, name: str, seconds: float) -> float:
        """``seconds`` that part ``name`` took on the kind it ran on, in seconds of the ``home`` kind. Raises
        RuntimeError where that kind has no measured speed (``speed_factors``)."""
        kind = self.ran_on.get(name, {}).get("machine")
        if kind is None or kind == self.home:
            return seconds
        if kind not in self.speed:
            raise RuntimeError(
                f"{name} ran on {kind}, whose speed against {self.home} (the records' kind) was never measured: run "
                f"benchmarks/search_quality.py on {kind} with --other_kind, which times a recorded training first"
            )
        return seconds * self.speed[kind]["factor"]

    def in_home_time(self, name: str, result: Dict[str, Any]) -> Dict[str, Any]:
        """Part ``name``'s ``result`` with its ``wall_s`` (seconds, or seconds per stage) in ``home`` seconds
        (``home_seconds``); where it ran on another kind, what it took there is kept as ``measured_wall_s``."""
        wall = result["wall_s"]
        home = {k: self.home_seconds(name, v) for k, v in wall.items()} if isinstance(wall, dict) else None
        home = self.home_seconds(name, wall) if home is None else home
        if home == wall:
            return result
        self.converted.append(name)
        return {**result, "wall_s": home, "measured_wall_s": wall, "ran_on": self.ran_on[name]["machine"]}

    def twin(self, name: str, key: str) -> Optional[str]:
        """The part recorded under another name with the same ``key`` (the same inputs: a search variant that finds
        the architecture the search as configured found, trained with the same seed), or None."""
        if self._names_by_key is None:
            self._names_by_key = {}
            for stem, record in read_records(self.records_dir):
                record_key = record.get("key") if isinstance(record, dict) else None
                if record_key is not None:
                    self._names_by_key.setdefault(record_key, stem)
        found = self._names_by_key.get(key)
        return found if found != name else None

    def part(
        self,
        name: str,
        inputs: Dict[str, Any],
        run: Callable[[Path], Dict[str, Any]],
        resumable: bool = False,
        group: Optional[str] = None,
        force: bool = False,
        same: Optional[Callable[[Dict[str, Any], Dict[str, Any]], bool]] = None,
    ):
        """The result of part ``name``: reused from ``parts/<name>.json`` when its ``inputs`` are unchanged, else
        ``run(folder)``. A part that did not finish restarts in an empty folder, unless it is ``resumable`` (a
        search: the bundle resumes it from its saved state) and was started with the same inputs.

        Carrying records over a change: parts of one ``group`` (one network's training seeds) whose records differ
        from their inputs only in ``CARRIED`` (the code's digest, the data generator's, the merged configs: changes
        that need not change what a training computes, such as a report added to the evaluation) are kept when the
        first of them, run again, reproduces its record exactly (every Dice to 1e-6): the change did not change what
        that training computes. The others are then re-keyed without running, each noting the reproduction
        (``carried_over``). If the reproduction differs, every part of the group runs again. ``same(old, new)``
        decides what reproduces (default: every Dice, ``_same_dice``; a search: ``_same_search``). ``force`` runs the
        part even where its record holds (to remake its run folder: a search's supernets; to time this machine
        against the records' kind). A forced run of a recorded part must reproduce it (``same``): the record keeps
        its result and the run is added to its ``reproductions`` (machine, date, wall time), from which
        ``speed_factors`` measures another kind's speed; where it does not reproduce, RuntimeError, the record kept.

        A training (a part with a ``group``) with no record of its own whose inputs equal another record's is that
        record's computation: its record is written from that one, naming it (``same_inputs_as``), and nothing
        runs."""
        inputs = self.with_context(inputs)
        key = self.key(inputs)
        record_file = self.records_dir / f"{name}.json"
        folder = self.work_dir / "runs" / name
        stale, previous = None, None
        record = json.loads(record_file.read_text()) if self.reuse and record_file.exists() else None
        if record is not None and force:
            previous = record if record.get("key") == key else None
        if record is not None and not force:
            if record.get("key") == key:
                self.reused.append(name)
                self.ran_on[name] = {k: record.get(k) for k in ("machine", "finished")}
                return record["result"]
            if group is not None and _differs_only_in(record.get("inputs", {}), inputs, CARRIED):
                stale = record
        twin = self.twin(name, key) if self.reuse and not force and group is not None else None
        if twin is not None:
            record = json.loads((self.records_dir / f"{twin}.json").read_text())
            ran_on = {k: record.get(k) for k in ("machine", "finished")}
            twin_record = {"key": key, "inputs": inputs, "result": record["result"], **ran_on, "same_inputs_as": twin}
            atomic_json(record_file, twin_record)
            self.twins.append(name)
            self.ran_on[name] = ran_on
            return record["result"]
        if stale is not None and self.reproduced.get(group):
            previous = {k: _short(stale["inputs"].get(k)) for k in CARRIED}
            carried = {"from": previous, "verified_by": self.reproduced[group]}
            ran_on = {k: stale.get(k) for k in ("machine", "finished")}
            atomic_json(
                record_file,
                {"key": key, "inputs": inputs, "result": stale["result"], **ran_on, "carried_over": carried},
            )
            self.carried.append(name)
            self.ran_on[name] = ran_on
            return stale["result"]
        started = folder / ".benchmark_key"
        if folder.exists() and (force or not (resumable and started.exists() and started.read_text() == key)):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        started.write_text(key)
        result = run(folder)
        if previous is not None:
            return self._reproduced(name, previous, result, same or _same_dice)
        self.ran_on[name] = {"machine": self.machine["slug"], "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record = {"key": key, "inputs": inputs, "result": result, **self.ran_on[name]}
        if stale is not None and group not in self.reproduced:
            reproduced = (same or _same_dice)(stale["result"], result)
            self.reproduced[group] = name if reproduced else None
            record["reproduces_previous_record"] = reproduced
        atomic_json(record_file, record)
        if self._names_by_key is not None:
            self._names_by_key.setdefault(key, name)
        return result

    def _reproduced(self, name: str, record: Dict[str, Any], result: Dict[str, Any], same: Callable) -> Dict[str, Any]:
        """Part ``name``'s ``record`` with this forced run's ``result`` added to its ``reproductions``, where it
        reproduces the record (``same``); its result stays the record's."""
        here = self.machine["slug"]
        if not same(record["result"], result):
            raise RuntimeError(
                f"{name}: run again on {here}, it did not reproduce its record (from {record.get('machine')}), which "
                f"is kept; results of this machine cannot continue those records: run with --no_reuse"
            )
        finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        again = {"machine": here, "finished": finished, "wall_s": total_wall(result.get("wall_s", 0.0))}
        record = {**record, "reproductions": [*record.get("reproductions", []), again]}
        atomic_json(self.records_dir / f"{name}.json", record)
        self._speed = None
        self.ran_on[name] = {k: record.get(k) for k in ("machine", "finished")}
        return record["result"]


CARRIED = ("code", "dataset_dir", "configs")  # inputs a record may be carried over between (Bench.part)


def _short(value: Any) -> Any:
    """A carried input as a carried-over record names it: a string as it is, anything else (merged configs) by the
    sha1 of its JSON."""
    if value is None or isinstance(value, str):
        return value
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _differs_only_in(old: Dict[str, Any], new: Dict[str, Any], keys: Sequence[str]) -> bool:
    def rest(d: Dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in d.items() if k not in keys}, sort_keys=True, default=str)

    return bool(old) and rest(old) == rest(new)


def _same_dice(old: Dict[str, Any], new: Dict[str, Any], tolerance: float = 1e-6) -> bool:
    """Whether two training results hold the same Dice (mean and every class, and so on the held-out cases where
    both were scored there) to ``tolerance``."""
    if "heldout" in old and "heldout" in new and not _same_dice(old["heldout"], new["heldout"], tolerance):
        return False
    pairs = [(old.get("dice"), new.get("dice"))]
    pairs += [(old.get("per_class", {}).get(c), v) for c, v in new.get("per_class", {}).items()]
    return set(old.get("per_class", {})) == set(new.get("per_class", {})) and all(
        (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tolerance) for a, b in pairs
    )


def _same_search(old: Dict[str, Any], new: Dict[str, Any], tolerance: float = 1e-6) -> bool:
    """Whether two searches found the same architecture with the same fitness in both stages (to ``tolerance``)."""

    def found(result: Dict[str, Any]) -> tuple:
        arch = result["arch"]
        fine, coarse = arch.get("provenance", {}), arch.get("provenance", {}).get("topology_provenance", {})
        return tuple(arch["levels"]), tuple(arch["ops"]), fine.get("fitness"), coarse.get("fitness")

    (*a, fine_a, coarse_a), (*b, fine_b, coarse_b) = found(old), found(new)
    close = all(
        x is not None and y is not None and abs(x - y) <= tolerance for x, y in ((fine_a, fine_b), (coarse_a, coarse_b))
    )
    return a == b and close


def config_inputs(files: Sequence[Path], drop_search: bool = False) -> Dict[str, Any]:
    """The merged config of ``files`` (as ``monai.bundle run`` merges them), the part's configuration input. With
    ``drop_search``, without the ids only the search reads (the search stage configs' own ids and those referenced
    only from them or from ``search_settings``/``searcher``), so that changing a search budget in a profile does not
    re-run the trainings."""
    from monai.bundle import ConfigParser

    merged = ConfigParser.load_config_files([str(f) for f in files])
    if not drop_search:
        return merged
    search_ids = {"search_settings", "searcher"}
    for stage in ("search_coarse", "search_fine"):
        for layer in stage_chain().stage(stage).layers:
            search_ids |= {k.lstrip("+") for k in json.loads((BUNDLE / layer).read_text())} - {"run"}
    while True:
        readers = {k: {r for r, v in merged.items() if r != k and f"@{k}" in json.dumps(v)} for k in merged}
        more = {k for k, users in readers.items() if k not in search_ids and users and users <= search_ids}
        if not more:
            break
        search_ids |= more
    return {k: v for k, v in merged.items() if k not in search_ids}


def parsed(files: Sequence[Path], overrides: Dict[str, Any]):
    """The bundle's merged config, parsed in this process (as ``monai.bundle run`` merges it)."""
    from monai.bundle import ConfigParser

    bundle_importable()
    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
    for key, value in overrides.items():
        parser[key] = value
    return parser


# ---------------------------------------------------------------------------------------------------- parts


def variant_name(layers: Sequence[Path]) -> str:
    """What the parts and the report of a search variant with config ``layers`` carry after their name (``@<stems>``;
    empty for the search as configured)."""
    return "@" + "+".join(Path(f).stem for f in layers) if layers else ""


def search_name(bench: Bench, seed: int) -> str:
    """The part name of search ``seed`` (of the bench's variant); its run folder is ``work_dir/runs/<name>``."""
    return f"search{bench.variant}_seed{seed}"


def search_part(bench: Bench, seed: int, force: bool = False) -> Dict[str, Any]:
    """Coarse and fine search with ``seed``, keeping their supernets (in ``work_dir/runs/search[@variant]_seed<seed>``);
    ``force``: run it even where its record holds, to remake the supernets the record does not keep. Over a change to
    the code or configs, seed 0 runs again and the other seeds' records are kept if it finds the same architecture
    with the same fitness (``Bench.part``)."""
    coarse, fine = bench.config_files("search_coarse"), bench.config_files("search_fine")

    def run(folder: Path) -> Dict[str, Any]:
        overrides = bench.overrides(folder, seed=seed, keep_supernets=True)
        wall_coarse = bench.bundle_run(folder / "coarse.log", "search_coarse", overrides)
        wall_fine = bench.bundle_run(folder / "fine.log", "search_fine", overrides)
        found = parsed(fine, overrides).get_parsed_content("searched_arch_file")  # the chain's hand-off
        arch = json.loads(Path(found).read_text())
        return {"seed": seed, "arch": arch, "wall_s": {"coarse": wall_coarse, "fine": wall_fine}}

    inputs = {"configs": [config_inputs(coarse), config_inputs(fine)], "seed": seed, "code": code_digest(SEARCH_CODE)}
    return bench.part(
        search_name(bench, seed),
        inputs,
        run,
        resumable=True,
        force=force,
        group=f"search{bench.variant}",
        same=_same_search,
    )


def train_name(bench: Bench, name: str) -> str:
    """The part name of training ``name`` (``<network>[@variant]_seed<t>``) at the bench's budget."""
    return f"train_{name}{bench.tag}"


def train_part(
    bench: Bench,
    name: str,
    arch: Optional[dict],
    seed: int = 0,
    extra: Sequence[Path] = (),
    force: bool = False,
    **budget: Any,
) -> Dict[str, Any]:
    """Train one network alone with ``train.json`` (``arch`` for C2FNAS, or a network override in ``extra``) and
    evaluate its best checkpoint with ``evaluate.json``; the Dice is ``eval/dice_per_class.json``. ``force``: run it
    even where its record holds, which it must then reproduce (``Bench.part``)."""
    from networks import DEFAULT_ARCHITECTURE_FILE, Architecture, save_architecture

    train, evaluate = bench.config_files("train", extra), bench.config_files("evaluate", extra)
    if bench.max_epochs is not None:
        budget = {"max_epochs": bench.max_epochs, **budget}

    def run(folder: Path) -> Dict[str, Any]:
        overrides = bench.overrides(folder, seed=seed, **budget)
        overrides["arch_file"] = str(DEFAULT_ARCHITECTURE_FILE)  # unused by a network override in extra
        if arch is not None:
            arch_file = folder / "architecture.json"
            save_architecture(Architecture(tuple(arch["levels"]), tuple(arch["ops"])), arch_file)
            overrides["arch_file"] = str(arch_file)
        wall_train = bench.bundle_run(folder / "train.log", "train", overrides, extra)
        wall_eval = bench.bundle_run(folder / "evaluate.log", "evaluate", overrides, extra)  # the trained weights
        report = json.loads((folder / "eval" / "dice_per_class.json").read_text())
        result = {"dice": report["mean_dice"], "per_class": report["per_class"], "wall_s": wall_train + wall_eval}
        if bench.heldout is not None:  # the same weights on never-seen cases, every one of them scored
            weights = parsed(evaluate, overrides).get_parsed_content("trained_ckpt_file")  # the chain's hand-off
            scored = {**overrides, "output_dir": str(folder / "heldout"), "ckpt_file": str(weights)}
            scored.update({"dataset_dir": str(bench.heldout[0]), "val_fraction": 1.0, "max_cases": 0})  # all cases
            bench.bundle_run(folder / "heldout.log", "evaluate", scored, extra)
            report = json.loads((folder / "heldout" / "eval" / "dice_per_class.json").read_text())
            per_case = per_case_dice(folder / "heldout" / "eval" / "val_mean_dice_raw.csv", list(report["per_class"]))
            expected = len(json.loads((bench.heldout[0] / "dataset.json").read_text())["training"])
            if len(per_case) != expected:
                raise RuntimeError(f"{folder / 'heldout'}: {len(per_case)} held-out cases scored, not all {expected}")
            result["heldout"] = {"dice": report["mean_dice"], "per_class": report["per_class"], "per_case": per_case}
        return result

    configs = [config_inputs(train, drop_search=True), config_inputs(evaluate, drop_search=True)]
    inputs = {"configs": configs, "arch": arch, "seed": seed, "budget": budget}
    if bench.heldout is not None:
        inputs["heldout"] = bench.heldout[1]
    group = re.sub(r"_seed\d+$", "", f"train_{name}") + bench.tag  # one network's seeds
    inputs["code"] = code_digest(TRAIN_CODE)
    return bench.part(train_name(bench, name), inputs, run, group=group, force=force)


def case_name(path: str) -> str:
    """A case's name from its image (or label) file: the file name without its extensions."""
    return Path(path).name.split(".")[0]


def per_case_dice(raw_csv: Path, class_names: Sequence[str]) -> Dict[str, Dict[str, Optional[float]]]:
    """``case -> class -> Dice`` (None where the class is in neither label nor prediction) from the evaluation's
    ``val_mean_dice_raw.csv`` (MONAI's ``MetricsSaver``: a file name, then one column per class, then the mean)."""
    rows = raw_csv.read_text().splitlines()[1:]
    cases: Dict[str, Dict[str, Optional[float]]] = {}
    for row in rows:
        name, *values = row.split(",")
        dice = [None if v.strip() == "nan" else float(v) for v in values[: len(class_names)]]
        cases[case_name(name)] = dict(zip(class_names, dice))
    return cases


def sample_architectures(bench: Bench, n: int, m: int, topology: Sequence[int], seed: int) -> Dict[str, dict]:
    """``n`` architectures uniform over the search space and ``m`` distinct op assignments uniform on ``topology``."""
    from networks import Architecture, enumerate_topologies
    from search.space import random_ops

    parser = parsed(bench.config_files("search_coarse"), {"bundle_root": str(BUNDLE)})
    cells, low, high = (parser.get_parsed_content(k) for k in ("num_cells", "min_depth", "max_depth"))
    ops = parser.get_parsed_content("search_settings").ops
    topologies = enumerate_topologies(cells, 4, low, high)
    r = random.Random(f"search-quality:{seed}:space")
    found = {f"random{i:02d}": Architecture(r.choice(topologies), random_ops(r, cells, ops)) for i in range(n)}
    r = random.Random(f"search-quality:{seed}:ops")
    assignments: List[tuple] = []
    while len(assignments) < min(m, len(ops) ** len(topology)):
        candidate = random_ops(r, len(topology), ops)
        if candidate not in assignments:
            assignments.append(candidate)
    found.update({f"ops{i:02d}": Architecture(tuple(topology), a) for i, a in enumerate(assignments)})
    return {name: arch.to_dict() for name, arch in found.items()}


def supernets_kept(bench: Bench, seed: int, fine: bool) -> bool:
    """Whether search ``seed``'s run folder holds the supernets of every trained cluster (and, with ``fine``, the
    fine stage's), where the search configs put them (``keep_supernets``)."""
    overrides = bench.overrides(bench.work_dir / "runs" / search_name(bench, seed), seed=seed)
    coarse = parsed(bench.config_files("search_coarse"), overrides).get_parsed_content("searcher")
    files = [coarse.supernet_file(f"cluster{k}") for k in range(coarse.space.num_clusters) if coarse.members(k)]
    if not all(f.is_file() for f in files):
        return False  # (and the fine stage's configs could not be read without the coarse stage's result)
    if fine:
        searcher = parsed(bench.config_files("search_fine"), overrides).get_parsed_content("searcher")
        return searcher.supernet_file("ops").is_file()
    return True


def in_coarse_space(searcher: Any, levels: Sequence[int]) -> bool:
    """Whether the coarse ``searcher``'s cluster supernets hold topology ``levels``: all topologies of the space,
    less those whose cheapest op assignment a compute budget (``max_gmacs``) rules out (``CoarseSearch.members``)."""
    levels = tuple(levels)
    return levels in searcher.members(searcher.space.cluster_of(levels))


def fitness_part(bench: Bench, searches: Dict[str, Dict[str, Any]], archs: Dict[str, dict]) -> Dict[str, Any]:
    """Supernet fitness of ``archs``: ``coarse`` from each search seed's coarse supernets (the random architectures
    and the searched ones), ``fine`` from seed 0's fine supernet (the op assignments and seed 0's searched one).
    Records keep the searches' results, not their supernets: where this part has no record and a search's supernets
    are not in this work dir (another machine, a cleaned scratch), that search runs again and must give its record's
    architecture. Under a compute budget, random architectures whose topology the budget rules out have no supernet
    to be scored on and no coarse fitness (``in_coarse_space``)."""
    from networks import Architecture

    seeds = [int(s) for s in searches]
    coarse_archs = {n: a for n, a in archs.items() if not n.startswith("ops")}

    def run(folder: Path) -> Dict[str, Any]:
        start, found = time.perf_counter(), {"coarse": {}, "fine": {}}
        for seed in seeds:
            overrides = bench.overrides(bench.work_dir / "runs" / search_name(bench, seed), seed=seed)
            coarse = parsed(bench.config_files("search_coarse"), overrides)
            searcher = coarse.get_parsed_content("searcher")
            found["coarse"][str(seed)] = {
                name: searcher.score(Architecture(tuple(arch["levels"]), tuple(arch["ops"])))
                for name, arch in coarse_archs.items()
                if in_coarse_space(searcher, arch["levels"])
            }
            if seed == seeds[0]:
                fine = parsed(bench.config_files("search_fine"), overrides)
                searcher = fine.get_parsed_content("searcher")
                found["fine"] = {
                    name: searcher.score(Architecture(tuple(arch["levels"]), tuple(arch["ops"])))
                    for name, arch in archs.items()
                    if name.startswith("ops") or name == f"searched{seed}"
                }
        found["wall_s"] = time.perf_counter() - start
        return found

    inputs = {"archs": archs, "seeds": seeds, "code": code_digest(SEARCH_CODE)}
    inputs["searches"] = [
        json.loads((bench.records_dir / f"{search_name(bench, s)}.json").read_text())["key"] for s in seeds
    ]
    if not bench.recorded(f"fitness{bench.variant}", inputs):
        for seed in seeds:
            if not supernets_kept(bench, seed, fine=seed == seeds[0]):
                search_part(bench, seed, force=True)  # must reproduce its record (``Bench.part``)
    return bench.part(f"fitness{bench.variant}", inputs, run)


def time_reference(bench: Bench, name: str = "panc_seed0") -> Optional[Dict[str, Any]]:
    """This machine's speed against the records' kind (``Bench.speed``), measured where it is not of that kind and
    was never measured: network ``name`` (C2FNAS-Panc, training seed 0, which every search variant shares) is
    trained again and must reproduce its record exactly (``Bench.part``), so this machine computes what the records'
    kind did and only its seconds differ. None where this machine is of the records' kind."""
    here = bench.machine["slug"]
    if here == bench.home:
        return None
    if here not in bench.speed:
        train_part(bench, name, None, 0, force=True)
    if here not in bench.speed:
        raise RuntimeError(
            f"{bench.records_dir}: no record of {train_name(bench, name)} with this code and these configs, so "
            f"{here}'s speed against {bench.home} (the records' kind) cannot be measured"
        )
    return bench.speed[here]


CALIBRATION_EPOCHS, CALIBRATION_INTERVAL = 6, 3  # epochs 2, 4 and 5 are training alone; 3 and 6 also validate
# a reference (MONAI's networks) trained within this fraction of the searched network's wall time counts as equal time
EQUAL_TIME_TOLERANCE = 0.10
CALIBRATION_STEPS = 40  # optimizer steps per calibration epoch (a profile's epoch may be 10 steps: too short to time)
_EPOCH_LINE = re.compile(
    r"(SupervisedTrainer|SupervisedEvaluator) - INFO - (Epoch\[(\d+)\] Complete|Engine run finished)\. "
    r"Time taken: (\d+):(\d+):([\d.]+)"
)


def epoch_seconds(log: Path) -> Dict[str, float]:
    """``{"epoch": s, "validation": s}`` from a ``train.json`` run's ignite log: the median training epoch without
    a validation (the first left out: warm-up; an epoch that validated has the evaluator's line too) and the median
    validation run."""
    epochs: Dict[int, float] = {}
    validated, validations = set(), []
    for engine, what, epoch, h, m, sec in _EPOCH_LINE.findall(log.read_text()):
        seconds = int(h) * 3600 + int(m) * 60 + float(sec)
        if engine == "SupervisedEvaluator":
            validations += [seconds] if what.startswith("Engine") else []
            validated |= {int(epoch)} if epoch else set()
        elif what.startswith("Epoch"):
            epochs[int(epoch)] = seconds
    plain = [t for k, t in epochs.items() if k > 1 and k not in validated]
    if not plain or not validations:
        raise RuntimeError(f"{log}: no training epoch or validation time found in the ignite log")
    return {"epoch": statistics.median(plain), "validation": statistics.median(validations)}


def baseline_config(bench: Bench, name: str) -> Path:
    """A config file that replaces ``network_def`` by MONAI's network ``name`` (``BASELINES``)."""
    config = bench.work_dir / "configs" / f"{name}.json"
    atomic_json(config, {"network_def": BASELINES[name]})
    return config


def equal_time_budget(budget: Dict[str, int], epochs: float) -> Dict[str, int]:
    """The budget (``max_epochs``, ``val_interval``) for ``epochs``: ``budget``'s number of validations where a
    whole number of intervals comes within 2 % of it, else the fewest validations more or less (at most 2) that do,
    else the nearest; so the epochs need not move in steps of a whole validation interval."""
    validations = max(1, budget["max_epochs"] // budget["val_interval"])
    best = min(
        (off, 0 if off else abs(v - validations), abs(every * v - epochs), every, v)
        for v in range(max(1, validations - 2), validations + 3)
        for every in {max(1, math.floor(epochs / v)), max(1, math.ceil(epochs / v))}
        for off in [abs(every * v - epochs) > 0.02 * epochs]
    )
    return {"max_epochs": best[3] * best[4], "val_interval": best[3]}


def calibration_part(bench: Bench, searched: dict) -> Dict[str, Any]:
    """For each of MONAI's networks, the epochs and validation interval that give it the training wall time of the
    searched network at the profile's budget. Each network (the searched one included) is trained for a few epochs
    of ``CALIBRATION_STEPS`` steps by the real ``train.json`` pipeline (data loading, augmentation and validation
    included), its step time scaled to the profile's epoch; with ``V`` validations (the profile's count, kept) a
    budget of ``n`` epochs takes ``n * epoch + V * validation``."""
    from networks import Architecture, save_architecture

    def run(folder: Path) -> Dict[str, Any]:
        budget = parsed(bench.config_files("train"), {"bundle_root": str(BUNDLE)})
        epochs, interval = budget.get_parsed_content("max_epochs"), budget.get_parsed_content("val_interval")
        steps = budget.get_parsed_content("iterations_per_epoch")
        epochs = bench.max_epochs or epochs
        validations = epochs // interval
        short = {"max_epochs": CALIBRATION_EPOCHS, "val_interval": CALIBRATION_INTERVAL}
        short["iterations_per_epoch"] = CALIBRATION_STEPS
        arch_file = save_architecture(
            Architecture(tuple(searched["levels"]), tuple(searched["ops"])), folder / "architecture.json"
        )
        timed = {}
        for name in ("searched", *BASELINES):
            extra = [] if name == "searched" else [baseline_config(bench, name)]
            overrides = bench.overrides(folder / name, **short)
            overrides["arch_file"] = str(arch_file)  # unused by a network override in extra
            log = folder / name / "train.log"
            bench.bundle_run(log, "train", overrides, extra)
            timed[name] = epoch_seconds(log)
            timed[name]["step"] = timed[name]["epoch"] / CALIBRATION_STEPS
            timed[name]["epoch"] = timed[name]["step"] * steps  # the profile's epoch
        target = epochs * timed["searched"]["epoch"] + validations * timed["searched"]["validation"]
        found: Dict[str, Any] = {"searched": {**timed["searched"], "max_epochs": epochs, "val_interval": interval}}
        for name in BASELINES:
            t = timed[name]
            n = max(validations, round((target - validations * t["validation"]) / t["epoch"]))
            every = max(1, n // max(1, validations))
            ratio = t["epoch"] / timed["searched"]["epoch"]
            found[name] = {
                **t,
                "epoch_time_ratio": ratio,
                "max_epochs": every * max(1, validations),
                "val_interval": every,
            }
        return found

    configs = config_inputs(bench.config_files("train"), drop_search=True)
    inputs = {"configs": configs, "arch": searched, "baselines": BASELINES, "code": code_digest(TRAIN_CODE)}
    inputs["method"] = f"short real trainings, {CALIBRATION_EPOCHS} epochs of {CALIBRATION_STEPS} steps"
    inputs["max_epochs"] = bench.max_epochs
    return bench.part(f"calibration{bench.variant}{bench.tag}", inputs, run)


# ---------------------------------------------------------------------------------------------------- cost, proxies


def window_gmacs(bench: Bench, arch: Optional[dict], extra: Sequence[Path] = ()) -> float:
    """Multiply-adds (1e9) of one window (the plan's ``roi_size``, batch 1) of the network ``train.json`` builds for
    ``arch`` (C2FNAS; None: the configs' default, C2FNAS-Panc) or the network override in ``extra``, counted on the
    meta device."""
    from networks import DEFAULT_ARCHITECTURE_FILE, Architecture, save_architecture
    from networks.complexity import count_macs

    folder = bench.work_dir / "cost"
    arch_file = DEFAULT_ARCHITECTURE_FILE
    if arch is not None:
        arch_file = folder / "architecture.json"
        save_architecture(Architecture(tuple(arch["levels"]), tuple(arch["ops"])), arch_file)
    parser = parsed(bench.config_files("train", extra), bench.overrides(folder, arch_file=str(arch_file)))
    roi, channels = parser.get_parsed_content("roi_size"), parser.get_parsed_content("in_channels")
    return count_macs(parser.get_parsed_content("network_def"), (1, channels, *roi)) / 1e9


def pareto_front(points: Sequence[tuple]) -> List[int]:
    """Indices of the ``(cost, value)`` points no other point beats (lower or equal cost and higher value, or
    lower cost and equal value), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: List[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def proxies_part(bench: Bench, archs: Dict[str, dict]) -> Dict[str, Any]:
    """Parameters, multiply-adds per window and SynFlow (``benchmarks/proxies.py``) of every C2FNAS architecture in
    ``archs``, at the width, window and channels ``train.json`` trains them with: cheap rankers, no training."""
    from benchmarks.proxies import proxies

    parser = parsed(bench.config_files("train"), bench.overrides(bench.work_dir / "cost"))
    shape = {k: parser.get_parsed_content(k) for k in ("in_channels", "num_classes", "base_channels", "roi_size")}

    def run(folder: Path) -> Dict[str, Any]:
        found = {
            name: proxies(arch, shape["in_channels"], shape["num_classes"], shape["base_channels"], shape["roi_size"])
            for name, arch in archs.items()
        }
        return {"shape": shape, "proxies": found}

    inputs = {"archs": archs, "shape": shape, "code": code_digest(["networks", "benchmarks/proxies.py"])}
    return bench.part(f"proxies{bench.variant}", inputs, run)


# ---------------------------------------------------------------------------------------------------- analysis


def kendall_spearman(x: Sequence[float], y: Sequence[float]) -> Dict[str, Optional[float]]:
    """Kendall tau-b and Spearman rho (scipy); None where undefined (fewer than 2 points, or a constant side)."""
    from scipy import stats

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"kendall_tau": None, "spearman_rho": None, "points": len(x)}
    return {
        "kendall_tau": float(stats.kendalltau(x, y).statistic),
        "spearman_rho": float(stats.spearmanr(x, y).statistic),
        "points": len(x),
    }


def percentile(values: Sequence[float], score: float) -> float:
    """Percentage of ``values`` below ``score``, ties counted half (scipy's ``percentileofscore``, kind 'mean')."""
    from scipy import stats

    return float(stats.percentileofscore(values, score, kind="mean"))


def random_search(
    select: Sequence[float], outcome: Sequence[float], cost: Sequence[float], budget: float, orders: int, seed: int
) -> dict:
    """Random search at equal compute: architectures trained in a random order while the spent ``cost`` stays
    within ``budget`` (at least one), the one with the best ``select`` (what a random search sees: one training's
    validation Dice) kept and scored by its ``outcome`` (the ruler); mean and spread over ``orders`` orders."""
    r = random.Random(f"search-quality:{seed}:random-search")
    best, counts = [], []
    for _ in range(orders):
        order = list(range(len(select)))
        r.shuffle(order)
        spent, chosen = 0.0, []
        for i in order:
            if chosen and spent + cost[i] > budget:
                break
            spent += cost[i]
            chosen.append(i)
        best.append(outcome[max(chosen, key=lambda i: select[i])])
        counts.append(len(chosen))
    return {
        "budget_s": budget,
        "dice_mean": statistics.fmean(best),
        "dice_std": statistics.pstdev(best),
        "architectures_trained_mean": statistics.fmean(counts),
        "orders": orders,
    }


def ruler(result: Dict[str, Any]) -> float:
    """The Dice a training is ranked by: on the held-out cases where it was scored there, else on validation."""
    return result["heldout"]["dice"] if "heldout" in result else result["dice"]


def standalone(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One network's trainings (one per training seed) summed up: each seed's ruler Dice, their mean and standard
    deviation, the mean per class and on validation, and what a random search would see of it (its first seed's
    validation Dice and wall time)."""
    dice = [ruler(r) for r in runs]
    classes = list((runs[0]["heldout"] if "heldout" in runs[0] else runs[0])["per_class"])
    per_class = {
        c: statistics.fmean(((r["heldout"] if "heldout" in r else r)["per_class"][c] or 0.0) for r in runs)
        for c in classes
    }
    return {
        "per_seed": dice,
        "mean": statistics.fmean(dice),
        "std": statistics.stdev(dice) if len(dice) > 1 else 0.0,
        "per_class": per_class,
        "validation_mean": statistics.fmean(r["dice"] for r in runs),
        "first_seed": {"validation": runs[0]["dice"], "wall_s": runs[0]["wall_s"]},
        "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
    }


def ruler_reliability(runs: Sequence[Sequence[float]], target: float = 0.8) -> Dict[str, Optional[float]]:
    """How much of the spread among networks' seed-mean Dice is real. ``runs``: each network's Dice per training seed
    (the same number T of seeds each). The spread of the means is the networks' true spread plus the training noise
    over T (one-way random effects): ``var(means) = var_true + noise**2 / T``. Returns ``noise`` (pooled std over
    seeds), ``spread`` (std of the means), ``true_spread`` (std of the networks' true Dice, 0 where the noise
    explains it all), ``reliability`` (``var_true / var(means)``: the part of the ruler's ranking that is not
    training luck), ``tau_ceiling`` (the Kendall tau against the ruler that a ranker who knew every network's true
    Dice would score on average, ``2/pi * asin(sqrt(reliability))`` where true Dice and noise are normal: no
    supernet, proxy or search can be shown to rank better than that with this ruler) and ``seeds_for_target`` (the T
    at which the reliability would reach ``target``; None where no spread is left to measure)."""
    seeds = len(runs[0])
    means = [statistics.fmean(r) for r in runs]
    noise_var = statistics.fmean(statistics.variance(r) for r in runs)
    spread_var = statistics.variance(means)
    true_var = max(0.0, spread_var - noise_var / seeds)
    reliability = true_var / spread_var if spread_var > 0 else None
    needed = math.ceil(round(noise_var * target / (true_var * (1 - target)), 6)) if true_var > 0 else None
    return {
        "seeds": seeds,
        "noise": math.sqrt(noise_var),
        "spread": math.sqrt(spread_var),
        "true_spread": math.sqrt(true_var),
        "reliability": reliability,
        "tau_ceiling": None if reliability is None else 2 / math.pi * math.asin(math.sqrt(reliability)),
        "target": target,
        "seeds_for_target": needed,
    }


def analyse(found: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """Every figure of the report from the parts' results. Each network's stand-alone Dice is the mean over its
    training seeds (``standalone``); the noise floor is their pooled standard deviation over every network."""
    train, searches, fitness = found["train"], found["search"], found["fitness"]
    seeds = [int(s) for s in searches]
    nets = {n: standalone([train[f"{n}_seed{t}"] for t in range(args.training_seeds)]) for n in found["networks"]}
    noise_floor = math.sqrt(statistics.fmean(v["std"] ** 2 for v in nets.values()))
    random_names = sorted(n for n in nets if n.startswith("random"))
    ops_names = sorted(n for n in nets if n.startswith("ops"))
    random_dice = [nets[n]["mean"] for n in random_names]
    q75 = statistics.quantiles(random_dice, n=4, method="inclusive")[2]

    searched = {}
    for s in seeds:
        net = nets[f"searched{s}"]
        search_wall = sum(searches[str(s)]["wall_s"].values())
        budget = search_wall + net["first_seed"]["wall_s"]
        select = [nets[n]["first_seed"]["validation"] for n in random_names]
        cost = [nets[n]["first_seed"]["wall_s"] for n in random_names]
        rs = random_search(select, random_dice, cost, budget, args.orders, s)
        searched[str(s)] = {
            "arch": searches[str(s)]["arch"],
            "dice": net["mean"],
            "per_class": net["per_class"],
            "percentile_among_random": percentile(random_dice, net["mean"]),
            "at_or_above_random_q75": net["mean"] >= q75,
            "search_wall_s": search_wall,
            "random_search_equal_compute": rs,
            "margin_over_random_search": net["mean"] - rs["dice_mean"],
            "margin_in_noise_floors": (net["mean"] - rs["dice_mean"]) / noise_floor if noise_floor > 0 else None,
        }

    # the coarse stage is judged on the random architectures its supernets hold: under a compute budget, those the
    # budget admits (``fitness_part``); the proxies are judged on the same ones
    scored = [n for n in random_names if all(n in fitness["coarse"][str(s)] for s in seeds)]
    scored_dice = [nets[n]["mean"] for n in scored]
    correlation: Dict[str, Any] = {"coarse": {}, "fine": {}}
    for s in seeds:
        scores = fitness["coarse"][str(s)]
        correlation["coarse"][str(s)] = {
            "architecture": kendall_spearman([scores[n]["architecture"] for n in scored], scored_dice),
            "topology": kendall_spearman([scores[n]["topology"] for n in scored], scored_dice),
        }
    ops_dice = [nets[n]["mean"] for n in ops_names]
    if ops_names:  # none in a search variant's run (``--ops 0``): the fine stage is not measured there
        correlation["fine"]["0"] = kendall_spearman([fitness["fine"][n]["architecture"] for n in ops_names], ops_dice)
    taus = [correlation["coarse"][str(s)]["architecture"]["kendall_tau"] for s in seeds]
    coarse_tau = statistics.fmean(taus) if all(t is not None for t in taus) else None
    fine_tau = correlation["fine"]["0"]["kendall_tau"] if ops_names else None
    values = found["proxies"]["proxies"]
    stages = [("coarse", scored, scored_dice)] + ([("fine", ops_names, ops_dice)] if ops_names else [])
    proxy_tau = {
        stage: {p: kendall_spearman([values[n][p] for n in names], dice) for p in ("parameters", "gmacs", "synflow")}
        for stage, names, dice in stages
    }

    searched_dice = [v["dice"] for v in searched.values()]
    best_baseline = max(nets[n]["mean"] for n in BASELINES)
    # equal training wall time, as measured: each reference's mean wall time over seed 0's searched network's
    wall_ratio = {n: nets[n]["wall_s_mean"] / nets["searched0"]["wall_s_mean"] for n in BASELINES}
    equal_time = all(abs(r - 1) <= EQUAL_TIME_TOLERANCE for r in wall_ratio.values())
    figures = {
        "ruler": "held-out" if "heldout" in train[f"{found['networks'][0]}_seed0"] else "validation",
        "training_seeds": args.training_seeds,
        "networks": nets,
        "random": {n: nets[n]["mean"] for n in random_names},
        "random_q75": q75,
        "random_mean": statistics.fmean(random_dice),
        "random_best": max(random_dice),
        "ops": {n: nets[n]["mean"] for n in ops_names},
        "noise": {"std": noise_floor, "per_network_std": {n: v["std"] for n, v in nets.items()}},
        "ruler_reliability": {
            group: ruler_reliability([nets[n]["per_seed"] for n in names])
            for group, names in (("random", random_names), ("ops", ops_names))
            if names
        },
        "searched": searched,
        "searched_spread": {
            "mean": statistics.fmean(searched_dice),
            "std": statistics.stdev(searched_dice) if len(searched_dice) > 1 else 0.0,
            "min": min(searched_dice),
            "max": max(searched_dice),
            "distinct_architectures": len(
                {json.dumps(v["arch"]["levels"]) + json.dumps(v["arch"]["ops"]) for v in searched.values()}
            ),
        },
        "correlation": correlation,
        "coarse_scored": {"random": scored, "outside_space": sorted(set(random_names) - set(scored))},
        "proxy_correlation": proxy_tau,
        "baselines": {n: nets[n] for n in ("panc", *BASELINES)},
        "baseline_epochs": found["baseline_epochs"],
        "baseline_wall_ratio": wall_ratio,
        "gmacs": found["gmacs"],
        "search_wall_s_mean": statistics.fmean(v["search_wall_s"] for v in searched.values()),
    }

    def beats_proxies(tau: Optional[float], stage: str) -> bool:
        others = [c["kendall_tau"] for c in proxy_tau[stage].values() if c["kendall_tau"] is not None]
        return tau is not None and all(tau > t for t in others)

    above = sum(v["at_or_above_random_q75"] for v in searched.values())
    beats_rs = sum(v["margin_over_random_search"] > noise_floor for v in searched.values())
    # "met": None where the run does not measure the target (no op assignments: the fine stage)
    coarse_beats = beats_proxies(coarse_tau, "coarse")
    fine_beats = beats_proxies(fine_tau, "fine") if ops_names else None
    figures["targets"] = {
        "fine_kendall_tau_ge_0.5": {
            "value": fine_tau,
            "met": (fine_tau is not None and fine_tau >= 0.5) if ops_names else None,
        },
        "coarse_kendall_tau_ge_0.4": {"value": coarse_tau, "met": coarse_tau is not None and coarse_tau >= 0.4},
        "supernet_tau_above_every_proxy": {
            "value": f"coarse {coarse_beats}, fine {'not measured' if fine_beats is None else fine_beats}",
            "met": None if fine_beats is None else coarse_beats and fine_beats,
        },
        "searched_at_or_above_random_q75_in_2_of_3": {"value": f"{above} of {len(seeds)}", "met": above >= 2},
        "searched_beats_random_search_by_noise_floor": {"value": f"{beats_rs} of {len(seeds)}", "met": beats_rs >= 2},
        # not judged where a reference's training took other than the searched network's time (the calibration's
        # short runs misjudge a step time by up to 30 % on these machines)
        "moonshot_at_least_best_monai": {
            "value": statistics.fmean(searched_dice) - best_baseline,
            "met": statistics.fmean(searched_dice) >= best_baseline if equal_time else None,
            "wall_ratio": wall_ratio,
        },
    }
    return figures


# ---------------------------------------------------------------------------------------------------- pictures


def plot(report: Dict[str, Any], work_dir: Path) -> List[Path]:
    """``fitness_vs_standalone.png``, ``searched_vs_random.png`` and ``dice_vs_gmacs.png`` (the Pareto front)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from networks.fileio import atomic_write

    f, fitness = report["figures"], report["fitness"]
    nets, tag = f["networks"], report["settings"].get("tag", "")
    label = f"stand-alone {f['ruler']} Dice, mean of {f['training_seeds']} training seeds"
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    scored = f["coarse_scored"]["random"]
    for s, scores in fitness["coarse"].items():
        x = [scores[n]["architecture"] for n in scored]
        y, err = [nets[n]["mean"] for n in scored], [nets[n]["std"] for n in scored]
        axes[0].errorbar(x, y, yerr=err, fmt="o", alpha=0.7, capsize=2, label=f"coarse supernets, seed {s}")
    tau = f["correlation"]["coarse"]["0"]["architecture"]["kendall_tau"]
    within = f" ({len(scored)} of {len(f['random'])} in its space)" if len(scored) < len(f["random"]) else ""
    axes[0].set(title=f"coarse stage: random architectures{within} (tau seed 0: {_fmt(tau)})", ylabel=label)
    axes[0].set_xlabel("supernet fitness (validation Dice, inherited weights)")
    axes[0].legend(fontsize=8)
    ops_names = sorted(f["ops"])
    if ops_names:
        x = [fitness["fine"][n]["architecture"] for n in ops_names]
        axes[1].errorbar(x, [nets[n]["mean"] for n in ops_names], yerr=[nets[n]["std"] for n in ops_names], fmt="o")
    if "searched0" in fitness["fine"]:
        axes[1].scatter(
            [fitness["fine"]["searched0"]["architecture"]],
            [nets["searched0"]["mean"]],
            marker="*",
            s=200,
            color="tab:red",
            label="searched (seed 0)",
        )
        axes[1].legend(fontsize=8)
    fine = f["correlation"]["fine"]
    axes[1].set_title(
        f"fine stage: op assignments (tau: {_fmt(fine['0']['kendall_tau'])})"
        if fine
        else "fine stage: no op assignments in this run"
    )
    axes[1].set(xlabel="supernet fitness (validation Dice, inherited weights)", ylabel=label)
    fig.tight_layout()
    paths.append(_save(fig, work_dir / f"fitness_vs_standalone{tag}.png", atomic_write))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rj = random.Random(0)
    random_dice = list(f["random"].values())
    ax.scatter(
        [rj.uniform(-0.15, 0.15) for _ in random_dice], random_dice, color="tab:gray", label="random architectures"
    )
    ax.axhline(f["random_q75"], color="tab:gray", ls="--", lw=1, label="75th percentile of random")
    for i, (s, v) in enumerate(f["searched"].items()):
        std = [nets[f"searched{s}"]["std"]]
        ax.errorbar([1 + 0.1 * (i - 1)], [v["dice"]], yerr=std, fmt="*", ms=12, capsize=3, label=f"searched, seed {s}")
        rs = v["random_search_equal_compute"]
        ax.errorbar([2 + 0.1 * (i - 1)], [rs["dice_mean"]], yerr=[rs["dice_std"]], fmt="o", capsize=4)
    for j, name in enumerate(f["baselines"]):
        ax.errorbar([3 + 0.15 * (j - 1)], [nets[name]["mean"]], yerr=[nets[name]["std"]], fmt="D", label=name)
    ax.set_xticks([0, 1, 2, 3], ["random", "searched\n(seeds)", "random search\n(equal compute)", "references"])
    ax.set_ylabel(label)
    ax.set_title(f"searched against random architectures (noise floor {f['noise']['std']:.4f})")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(_save(fig, work_dir / f"searched_vs_random{tag}.png", atomic_write))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    names = list(nets)
    points = [(f["gmacs"][n], nets[n]["mean"]) for n in names]
    colours = {"random": "tab:gray", "ops": "tab:olive", "searched": "tab:red"}
    for name, (cost, dice) in zip(names, points):
        colour = next((c for k, c in colours.items() if name.startswith(k)), "tab:blue")
        ax.errorbar(cost, dice, yerr=nets[name]["std"], fmt="o", color=colour, capsize=2)
        if not name.startswith(("random", "ops")):
            ax.annotate(name, (cost, dice), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="GMACs per window", ylabel=label, title="Dice against compute (grey: random, olive: op assignments)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, work_dir / f"dice_vs_gmacs{tag}.png", atomic_write))
    plt.close(fig)
    return paths


def _save(fig, path: Path, atomic_write) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", type=Path, default=None, help="MSD-layout dataset (default: embedded)")
    parser.add_argument(
        "--task",
        choices=["embedded", *TASKS],
        default="embedded",
        help="a generated task (benchmarks/tasks.py): tubes (harder), prostate_mr, kidney_ct, brain_mr (real anatomy)",
    )
    parser.add_argument("--profile", type=Path, default=CONFIGS / "cpu_profile.json", help="budget profile")
    parser.add_argument("--work_dir", type=Path, default=None, help="default: runs/search_quality[_<task>]")
    parser.add_argument(
        "--records_dir",
        type=Path,
        default=None,
        help="where finished parts are kept and reused (default: benchmarks/results/search_quality/<cpu>/<profile>/"
        "<task>, committed; at --quick or with --dataset_dir: <work_dir>/parts)",
    )
    parser.add_argument(
        "--other_kind",
        action="store_true",
        help="continue records that ran on another CPU kind (refused by default: random search and the equal-time "
        "references budget wall time): a recorded training runs again first and must reproduce its record exactly; "
        "its time against the record's converts this machine's wall times into the records' kind's seconds",
    )
    parser.add_argument(
        "--search_layers",
        default="",
        help="comma-separated config files merged after the profile that change only the search (a search variant, "
        "e.g. benchmarks/recipes/finalists.json): its parts are named after it, the random architectures are shared",
    )
    parser.add_argument("--seeds", type=int, default=3, help="S: search seeds")
    parser.add_argument("--random", type=int, default=12, help="N: architectures drawn from the whole space")
    parser.add_argument(
        "--ops",
        type=int,
        default=None,
        help="M: op assignments drawn on seed 0's topology, the fine stage's ranking (default 6; 0 with "
        "--search_layers: a variant is judged by what it finds, and the search as configured measures the fine stage)",
    )
    parser.add_argument("--training_seeds", type=int, default=3, help="T: training seeds of every network (its mean)")
    parser.add_argument(
        "--heldout",
        type=int,
        default=None,
        help="score every training on this many never-seen generated cases, the ruler (default 20; 0 with "
        "--dataset_dir: no generator, the ruler is the validation Dice)",
    )
    parser.add_argument("--orders", type=int, default=2000, help="random orders of random search")
    parser.add_argument(
        "--max_epochs", type=int, default=None, help="stand-alone training budget (default: the profile's)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="S=2, N=4, M=3 (a variant: 0), T=2: a check that it all runs"
    )
    parser.add_argument("--no_reuse", action="store_true", help="re-run every part")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line with its defaults resolved (``--quick``, ``--ops``, ``--heldout``); one error naming the
    option where a value cannot work, before any work."""
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.random, args.training_seeds = 2, 4, 2
    if args.ops is None:
        args.ops = 0 if args.search_layers.strip() else 3 if args.quick else 6
    if args.heldout is None:
        args.heldout = 0 if args.dataset_dir is not None else 4 if args.quick else 20
    if args.seeds < 1 or args.random < 2 or 0 < args.ops < 2 or args.training_seeds < 2 or args.heldout < 0:
        parser.error("need --seeds >= 1, --random >= 2, --ops 0 or >= 2, --training_seeds >= 2 and --heldout >= 0")
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max_epochs {args.max_epochs}: need at least 1")
    for what, path in (("--profile", args.profile), ("--dataset_dir", args.dataset_dir)):
        if path is not None and not path.exists():
            parser.error(f"{what} {path}: does not exist")
    if args.task != "embedded" and args.dataset_dir is not None:
        parser.error("--task generates its own data; leave out --dataset_dir")
    if args.heldout and args.dataset_dir is not None:
        parser.error("--heldout needs a generated task (its generator draws the never-seen cases); not --dataset_dir")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    args = parse_args(parser, argv)
    args.profile = args.profile.resolve()
    default_dir = ROOT / "runs" / ("search_quality" if args.task == "embedded" else f"search_quality_{args.task}")
    work_dir = (args.work_dir or default_dir).resolve()
    m = machine()
    if args.records_dir is None:
        local = args.quick or args.dataset_dir is not None
        committed = ROOT / "benchmarks" / "results" / "search_quality" / m["slug"] / args.profile.stem / args.task
        args.records_dir = work_dir / "parts" if local else committed
    records_dir = args.records_dir.resolve()
    others = other_kinds(records_dir, m["slug"])
    if others and not args.other_kind:
        parser.error(
            f"--records_dir {records_dir}: its records ran on {', '.join(others)}, not on this CPU kind ({m['slug']}); "
            "random search and the equal-time references budget wall time, so one report would mix machines. Use "
            "this kind's folder, or pass --other_kind to continue them here: a recorded training then runs again, "
            "must reproduce its record exactly, and times this machine against theirs"
        )
    if args.dataset_dir is not None:
        dataset_dir, dataset_key = args.dataset_dir.resolve(), str(args.dataset_dir.resolve())
    else:
        dataset_dir = None if args.task == "embedded" else task_dataset(args.task, work_dir / "data" / args.task)
        dataset_key = generator_key(args.task)
    bench = Bench(work_dir, dataset_dir, args.profile, not args.no_reuse, args.max_epochs, records_dir, dataset_key)
    layers = [Path(f.strip()).resolve() for f in args.search_layers.split(",") if f.strip()]
    if layers:
        try:
            bench.use_search_layers(layers)
        except ValueError as e:
            parser.error(f"--search_layers: {e}")
    if args.heldout:
        heldout = heldout_dataset(args.task, work_dir / "data", args.heldout)
        bench.heldout = (heldout, {"cases": args.heldout, "seed": 1})
    print(
        f"# {m['cpu']} ({m['cpu_id']}), {m['cores']} cores, torch {m['torch']}; profile {args.profile.name}; "
        f"task {args.task}; work_dir {work_dir}; records {records_dir}",
        flush=True,
    )
    start = time.perf_counter()
    if bench.home != m["slug"]:  # wall times are counted in the records' kind's seconds
        speed = time_reference(bench)
        print(
            f"# records of {bench.home}: this machine's wall times count {speed['factor']:.3f}× in its seconds "
            f"(measured by reproducing {', '.join(speed['parts'])})",
            flush=True,
        )
    found: Dict[str, Any] = {"search": {}, "train": {}}

    def step(what: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        t = time.perf_counter()
        result = fn()
        detail = f", Dice {result['dice']:.4f} (ruler {ruler(result):.4f})" if "dice" in result else ""
        print(f"[{time.perf_counter() - start:7.0f} s] {what}: {time.perf_counter() - t:.0f} s{detail}", flush=True)
        return result

    seeds = list(range(args.seeds))
    for s in seeds:
        found["search"][str(s)] = step(f"search seed {s}", lambda: search_part(bench, s))
    archs = sample_architectures(bench, args.random, args.ops, found["search"]["0"]["arch"]["levels"], seed=0)
    archs.update({f"searched{s}": found["search"][str(s)]["arch"] for s in seeds})
    archs = {n: {"levels": a["levels"], "ops": a["ops"]} for n, a in archs.items()}
    found["fitness"] = step("supernet fitness", lambda: fitness_part(bench, found["search"], archs))
    found["proxies"] = step("cheap proxies", lambda: proxies_part(bench, archs))
    # MONAI's networks for the wall time of seed 0's searched network: epochs from short real trainings
    found["baseline_epochs"] = step("epoch-time calibration", lambda: calibration_part(bench, archs["searched0"]))
    networks: Dict[str, tuple] = {n: (a, [], {}) for n, a in archs.items()}  # name -> (arch, extra, budget)
    networks["panc"] = (None, [], {})  # the configs' default architecture
    # equal time as measured: seed 0 of the searched network, then of each reference at the calibrated budget; a
    # reference whose training took more than EQUAL_TIME_TOLERANCE more or less time gets its epochs scaled once by
    # the ratio (not more: this machine's speed drifts between runs by 10-20 %, so a second probe chases noise)
    searched = f"searched0{bench.variant}_seed0"
    trained = {searched: step(f"train {searched}", lambda: train_part(bench, searched, archs["searched0"], 0))}
    target_s = bench.home_seconds(train_name(bench, searched), trained[searched]["wall_s"])
    for name in BASELINES:
        epochs = found["baseline_epochs"][name]
        budget = {"max_epochs": epochs["max_epochs"], "val_interval": epochs["val_interval"]}
        extra = [baseline_config(bench, name)]
        probe = f"{name}{bench.variant}_calibrated_seed0"
        wall_s = step(f"train {probe}", lambda: train_part(bench, probe, None, 0, extra, **budget))["wall_s"]
        wall_s = bench.home_seconds(train_name(bench, probe), wall_s)
        epochs["measured_wall_ratio"] = wall_s / target_s
        if abs(wall_s / target_s - 1) > EQUAL_TIME_TOLERANCE:
            budget = equal_time_budget(budget, budget["max_epochs"] * target_s / wall_s)
            epochs["corrected"] = budget
        networks[name] = (None, extra, budget)
    found["networks"] = list(networks)
    # every network's first seed, then every network's second... so that a stopped run has ranked all of them once
    shared = [n for n in networks if n.startswith("random") or n == "panc"]  # the same in every search variant
    part_names = {}
    for t in range(args.training_seeds):
        for name, (arch, extra, budget) in networks.items():
            part = f"{name}{'' if name in shared else bench.variant}_seed{t}"
            part_names[f"{name}_seed{t}"] = train_name(bench, part)
            if part in trained:  # seed 0 of the searched network, trained above
                found["train"][f"{name}_seed{t}"] = trained[part]
                continue
            found["train"][f"{name}_seed{t}"] = step(
                f"train {part}", lambda: train_part(bench, part, arch, t, extra, **budget)
            )
    found["gmacs"] = {name: window_gmacs(bench, arch, extra) for name, (arch, extra, _) in networks.items()}
    # every wall time in the records' kind's seconds, with the speed measured by the end of the run
    found["search"] = {s: bench.in_home_time(search_name(bench, int(s)), r) for s, r in found["search"].items()}
    found["fitness"] = bench.in_home_time(f"fitness{bench.variant}", found["fitness"])
    found["train"] = {n: bench.in_home_time(part_names[n], r) for n, r in found["train"].items()}

    report = {
        "format": FORMAT,
        "machine": m,
        "settings": {
            "profile": str(args.profile),
            "dataset_dir": str(dataset_dir or BUNDLE / "data" / "synthetic"),
            "dataset_key": dataset_key,
            "task": args.task,
            "seeds": args.seeds,
            "random": args.random,
            "ops": args.ops,
            "training_seeds": args.training_seeds,
            "heldout": args.heldout,
            "quick": args.quick,
            "max_epochs": args.max_epochs,
            "search_layers": [str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in layers],
            "variant": bench.variant,
            "tag": bench.variant + bench.tag,
        },
        "architectures": archs,
        "search": found["search"],
        "fitness": found["fitness"],
        "train": found["train"],
        "wall_s": {
            "search": sum(sum(v["wall_s"].values()) for v in found["search"].values()),
            "fitness": found["fitness"]["wall_s"],
            "train": sum(v["wall_s"] for v in found["train"].values()),
            "this_run": time.perf_counter() - start,
        },
        "reused_parts": bench.reused,
        "carried_parts": bench.carried,
        "twin_parts": bench.twins,
        "parts_ran_on": bench.ran_on,
        "time": {  # the kind whose seconds every wall time above counts in, and how the others were converted
            "seconds_of": bench.home,
            "speed": bench.speed,
            "converted_parts": sorted(bench.converted),
        },
    }
    report["figures"] = analyse(found, args)
    out_dirs = [work_dir] + ([] if records_dir.is_relative_to(work_dir) else [records_dir])  # committed: there too
    for out in out_dirs:
        report["pictures"] = [str(p.relative_to(out)) for p in plot(report, out)]
        atomic_json(out / f"search_quality{bench.variant}{bench.tag}.json", report)
    print_report(report)
    return report


def print_report(report: Dict[str, Any]) -> None:
    """The figures as the Markdown tables of the search-quality documentation."""
    f, m = report["figures"], report["machine"]
    nets = f["networks"]
    print(
        f"\n{m['cpu']} ({m.get('cpu_id', '?')}), {m['cores']} cores, torch {m['torch']}; task "
        f"{report['settings'].get('task')}; ruler: {f['ruler']} Dice, mean of {f['training_seeds']} training seeds; "
        f"noise floor (pooled std over seeds) {f['noise']['std']:.4f}"
    )
    print(
        "\n| seed | searched architecture (levels; ops) | stand-alone Dice (per class) | percentile among random "
        "| random search at equal compute | search wall time |\n|---|---|---|---|---|---|"
    )
    for s, v in f["searched"].items():
        rs = v["random_search_equal_compute"]
        classes = ", ".join(f"{c} {d:.3f}" for c, d in v["per_class"].items())
        print(
            f"| {s} | `{','.join(map(str, v['arch']['levels']))}`; `{','.join(v['arch']['ops'])}` | "
            f"**{v['dice']:.4f}** ± {nets[f'searched{s}']['std']:.4f} ({classes}) | "
            f"{v['percentile_among_random']:.0f} | {rs['dice_mean']:.4f} ± {rs['dice_std']:.4f} "
            f"({rs['architectures_trained_mean']:.1f} architectures in {rs['budget_s']:.0f} s) "
            f"| {v['search_wall_s']:.0f} s |"
        )
    print(
        "\n| network | each seed | mean ± std | validation mean | GMACs | wall time (mean) |\n|---|---|---|---|---|---|"
    )
    for name, v in nets.items():
        epochs = f["baseline_epochs"].get(name) if name in BASELINES else None
        if epochs and "corrected" in epochs:
            note = (
                f" ({epochs['corrected']['max_epochs']} epochs: {epochs['max_epochs']} by the calibration took "
                f"{epochs['measured_wall_ratio']:.2f} of the searched network's time)"
            )
        else:
            note = f" ({epochs['max_epochs']} epochs)" if epochs else ""
        print(
            f"| {name}{note} | {', '.join(f'{d:.4f}' for d in v['per_seed'])} | **{v['mean']:.4f}** ± {v['std']:.4f} "
            f"| {v['validation_mean']:.4f} | {f['gmacs'][name]:.2f} | {v['wall_s_mean']:.0f} s |"
        )
    random_dice = sorted(f["random"].values())
    print(
        f"\nrandom architectures ({len(random_dice)}): mean {f['random_mean']:.4f}, min {random_dice[0]:.4f}, "
        f"75th percentile {f['random_q75']:.4f}, best {f['random_best']:.4f}"
    )
    for group, r in f["ruler_reliability"].items():
        print(
            f"{group}: spread of the seed means {r['spread']:.4f} (std), of which real {r['true_spread']:.4f}; "
            f"ruler reliability {_fmt(r['reliability'])} with {r['seeds']} seeds "
            f"({r['seeds_for_target'] if r['seeds_for_target'] is not None else 'no'} seeds for {r['target']}); "
            f"a perfect ranker's Kendall τ against it: {_fmt(r.get('tau_ceiling'))}"
        )
    spread = f["searched_spread"]
    print(
        f"searched over seeds: mean {spread['mean']:.4f}, std {spread['std']:.4f}, range {spread['min']:.4f}-"
        f"{spread['max']:.4f}, {spread['distinct_architectures']} distinct architectures"
    )
    outside = f["coarse_scored"]["outside_space"]
    if outside:
        print(
            f"coarse τ and its proxies over the {len(f['random']) - len(outside)} random architectures in the "
            f"supernets' space; outside it (the compute budget rules their topology out): {', '.join(outside)}"
        )
    print("\n| ranked by (against the stand-alone Dice) | Kendall τ | Spearman ρ | points |\n|---|---|---|---|")
    for s, c in f["correlation"]["coarse"].items():
        for kind, label in (("architecture", "its own ops"), ("topology", "topology fitness")):
            print(
                f"| coarse supernets, seed {s}, {label} | {_fmt(c[kind]['kendall_tau'])} | "
                f"{_fmt(c[kind]['spearman_rho'])} | {c[kind]['points']} |"
            )
    for c in f["correlation"]["fine"].values():
        print(f"| fine supernet, seed 0 | {_fmt(c['kendall_tau'])} | {_fmt(c['spearman_rho'])} | {c['points']} |")
    for stage, rows in f["proxy_correlation"].items():
        for proxy, c in rows.items():
            print(
                f"| {proxy} ({'random architectures' if stage == 'coarse' else 'op assignments'}) | "
                f"{_fmt(c['kendall_tau'])} | {_fmt(c['spearman_rho'])} | {c['points']} |"
            )
    print("\n| target | value | |\n|---|---|---|")
    for name, target in f["targets"].items():
        value = target["value"] if isinstance(target["value"], str) else _fmt(target["value"])
        judged = {True: "met", False: "missed", None: "not measured in this run"}[target["met"]]
        if "wall_ratio" in target:
            ratios = ", ".join(f"{n} {r:.2f}" for n, r in target["wall_ratio"].items())
            value += f" (training wall time over the searched network's: {ratios})"
            if target["met"] is None:
                judged = f"not judged: a reference's wall time is off by more than {EQUAL_TIME_TOLERANCE:.0%}"
        print(f"| {name} | {value} | {judged} |")
    w = report["wall_s"]
    print(
        f"\nwall time: search {w['search']:.0f} s, fitness {w['fitness']:.0f} s, training {w['train']:.0f} s, "
        f"in all {w['search'] + w['fitness'] + w['train']:.0f} s; this run {w['this_run']:.0f} s "
        f"(reused parts: {len(report['reused_parts'])}; trainings recorded from another part with the same inputs: "
        f"{', '.join(report.get('twin_parts', [])) or 'none'})"
    )
    machines: Dict[str, int] = {}
    for ran in report.get("parts_ran_on", {}).values():
        machines[ran.get("machine") or "not recorded"] = machines.get(ran.get("machine") or "not recorded", 0) + 1
    print("parts by the machine they ran on: " + ", ".join(f"{m} {n}" for m, n in sorted(machines.items())))
    time_of = report.get("time", {})
    for kind, speed in time_of.get("speed", {}).items():
        print(
            f"wall times in seconds of {time_of['seconds_of']}: those of {kind} count {speed['factor']:.3f}× (its "
            f"reproductions of {', '.join(speed['parts'])}; converted here: {len(time_of['converted_parts'])} parts)"
        )


if __name__ == "__main__":
    main()
