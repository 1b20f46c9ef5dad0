"""Stage 1 of C2FNAS, the coarse search: the macro topology (which level each cell runs at)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from networks import Architecture, C2FNASSupernet
from networks.c2fnas import ArchLike, as_architecture
from search.evolution import AgingEvolution
from search.settings import SearchSettings, SearchSettingsError, check_setting
from search.space import SearchSpace, random_ops, rng
from search.stage import SearchStage
from search.state import SearchState

__all__ = ["CoarseSearch"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class CoarseSearch(SearchStage):
    """Stage 1, the macro topology.

    Every valid topology of the space is clustered (K-means on one-hot levels). For each cluster a fresh supernet is
    trained on it (each iteration: one topology of the cluster, one op per cell, uniformly) and scored by the mean
    Dice of ``score_samples`` sampled members. Aging evolution then searches the best cluster, the fitness of a
    topology being its Dice averaged over ``op_samples`` op assignments. Writes the best topology (no ops).

    With ``finalists`` F > 0 the search does not bet on one cluster: the evolution runs in every cluster on that
    cluster's supernet, the F fittest distinct topologies of each become finalists, and one fresh supernet trained
    on all finalists together (``finalist_iterations``) rates them again on one shared yardstick; the best there is
    the result. This removes the comparison across supernets that differ in training luck.

    With ``cluster_workers`` W > 1 (one process, not under DDP) the clusters' supernets are trained W at a time in
    worker processes, each with 1/W of this process's threads and its own resumable state file
    (``search_coarse_cluster<k>_state.pt``, removed once the cluster is scored). Each cluster's training is the same
    function of the seed as in one process; on a small CPU two single-threaded trainings side by side do more steps
    per second than one with both threads (``docs/benchmarks.md``). Each worker holds its own copy of the training
    data's cache.

    With a compute budget (``max_gmacs``), a cluster holds only the topologies whose cheapest op assignment fits
    it (a cluster left empty is not trained), and every op assignment drawn fits it too.

    Args:
        settings, train_data, val_data, preprocessing, augmentation, loss_function: as ``SearchStage``.
        num_cells, min_depth, max_depth, num_clusters: the search space (``SearchSpace``).
        cluster_iterations: supernet training iterations per cluster.
        score_samples: sampled members per cluster score; op_samples: op assignments per topology fitness.
        finalists: topologies per cluster rated again on a shared supernet (0: evolve in the best cluster only).
        finalist_iterations: training iterations of the finalists' supernet (0: ``cluster_iterations``).
        cluster_workers: clusters trained at once in worker processes (1: one after another in this process).
        worker_init: called first in each worker process (e.g. the bundle's ``device_tuning``); picklable.
    """

    name = "coarse"

    def __init__(
        self,
        settings: SearchSettings,
        train_data: Sequence[dict],
        val_data: Sequence[dict],
        preprocessing: Callable,
        augmentation: Optional[Callable] = None,
        loss_function: Optional[Callable] = None,
        num_cells: int = 12,
        min_depth: int = 4,
        max_depth: int = 4,
        num_clusters: int = 8,
        cluster_iterations: int = 2000,
        score_samples: int = 8,
        op_samples: int = 3,
        finalists: int = 0,
        finalist_iterations: int = 0,
        cluster_workers: int = 1,
        worker_init: Optional[Callable[[], Any]] = None,
    ):
        super().__init__(settings, train_data, val_data, preprocessing, augmentation, loss_function)
        num_cells = check_setting("num_cells", num_cells, int, minimum=2)
        min_depth = check_setting("min_depth", min_depth, int, minimum=1, maximum=4)
        max_depth = check_setting("max_depth", max_depth, int, minimum=1, maximum=4)
        if min_depth > max_depth:
            raise SearchSettingsError("search settings 'min_depth' and 'max_depth': need min_depth <= max_depth")
        num_clusters = check_setting("num_clusters", num_clusters, int, minimum=1)
        self.cluster_iterations = check_setting("cluster_iterations", cluster_iterations, int, minimum=0)
        self.score_samples = check_setting("score_samples", score_samples, int, minimum=1)
        self.op_samples = check_setting("op_samples", op_samples, int, minimum=1)
        self.finalists = check_setting("finalists", finalists, int, minimum=0)
        self.finalist_iterations = check_setting("finalist_iterations", finalist_iterations, int, minimum=0)
        self.cluster_workers = check_setting("cluster_workers", cluster_workers, int, minimum=1)
        self.worker_init = worker_init
        self.space = SearchSpace(
            num_cells, min_depth=min_depth, max_depth=max_depth, num_clusters=num_clusters, seed=settings.seed
        )

    def fingerprint(self) -> Dict[str, Any]:
        found = {
            **super().fingerprint(),
            "space": self.space.options(),
            "coarse": [self.cluster_iterations, self.score_samples, self.op_samples],
        }
        if self.finalists:  # named only when on, so the states of searches without finalists stay as they were
            found["finalists"] = [self.finalists, self.finalist_iterations or self.cluster_iterations]
        return found

    def op_sample(self, topology: Sequence[int], j: int) -> Tuple[str, ...]:
        """The ``j``-th op assignment of ``topology`` (seeded; within the budget when there is one)."""
        s = self.settings
        r = rng(s.seed, "coarse-ops", tuple(topology), j)
        return self.budgeted_ops(r, topology) if s.max_gmacs > 0 else random_ops(r, len(topology), s.ops)

    def members(self, k: int) -> List[Tuple[int, ...]]:
        """The topologies of cluster ``k`` that the budget admits (all of them without one)."""
        return [t for t in self.space.clusters[k] if self.within_budget(self.cheapest(t))]

    def topology_fitness(
        self, supernet: C2FNASSupernet, topology: Sequence[int], context: Optional[str] = None
    ) -> float:
        """Dice of ``topology`` averaged over ``op_samples`` fixed op assignments: through ``fitness`` (cached and
        recorded) with a ``context``, else ``supernet_dice`` alone (scoring outside the search)."""
        scores = []
        for j in range(self.op_samples):
            arch = Architecture(tuple(topology), self.op_sample(topology, j))
            scores.append(
                self.supernet_dice(supernet, arch) if context is None else self.fitness(supernet, arch, context)
            )
        return sum(scores) / len(scores)

    def score(self, arch: ArchLike) -> Dict[str, float]:
        """How the coarse stage rates ``arch``, from the kept supernet of its topology's cluster (``keep_supernets``):
        ``architecture``, the supernet Dice of ``arch`` with its own ops, and ``topology``, the fitness the evolution
        gives its topology (mean over the ``op_samples`` op assignments)."""
        arch = as_architecture(arch)
        k = self.space.cluster_of(arch.levels)
        supernet = self.kept_supernet(f"cluster{k}")
        return {
            "cluster": k,
            "architecture": self.supernet_dice(supernet, arch),
            "topology": self.topology_fitness(supernet, arch.levels),
        }

    def evolution_in(self, k: int, supernet: C2FNASSupernet) -> AgingEvolution:
        """Aging evolution over the topologies of cluster ``k`` rated by ``supernet`` (``topology_fitness``)."""
        members = self.members(k)
        return self.new_evolution(
            random_candidate=lambda r: r.choice(members),
            mutate=lambda r, parent: self.space.mutate_topology(r, tuple(parent), members),
            fitness=lambda topology: self.topology_fitness(supernet, topology, f"c{k}"),
        )

    def run(self) -> Architecture:
        finished = self.begin(cluster=0, clusters=[], best_cluster=-1, evolutions=[])
        if finished is not None:
            return finished
        tensors = self.state.tensors  # "best_supernet": weights of the best cluster so far; "supernet"...: in training
        self.check_budget(self.space.topologies)
        self.train_clusters_in_workers()
        for k in range(self.progress["cluster"], self.space.num_clusters):
            members = self.members(k)
            if not members:
                self.progress["clusters"].append({"cluster": k, "size": 0, "score": None, "samples": []})
                self.logger.info(f"cluster {k}: no topology within max_gmacs {self.settings.max_gmacs}; not trained")
                self.progress.update({"cluster": k + 1, "iteration": 0})
                self.state.save()
                continue
            supernet = self.build_supernet(members, "cluster", k)
            trained = None if tensors.get("supernet") is not None else self.worker_trained(k)
            if trained is not None:  # trained by a worker process
                supernet.load_state_dict(trained)
            else:
                if tensors.get("supernet") is not None:  # resuming inside this cluster's training or evolution
                    supernet.load_state_dict(tensors["supernet"])
                self.train_supernet(f"cluster{k}", supernet, members, self.cluster_iterations)
            self.keep_supernet(supernet, f"cluster{k}")
            samples = []
            for j in range(self.score_samples):
                topology = rng(self.settings.seed, "score", k, j).choice(members)
                samples.append(self.fitness(supernet, Architecture(topology, self.op_sample(topology, j)), f"c{k}"))
            score = sum(samples) / len(samples)
            if len(self.progress["clusters"]) == k:  # not yet recorded (a resumed evolution has)
                record = {"cluster": k, "size": len(members), "score": score, "samples": samples}
                self.progress["clusters"].append(record)
                self.writer.add_scalar("coarse/cluster_score", score, k)
                self.logger.info(f"cluster {k} ({len(members)} topologies): score {score:.4f}")
            if self.finalists:
                evolution = self.evolution_in(k, supernet)
                self.evolve(evolution)
                ranked = sorted(evolution.history, key=lambda h: (-h["fitness"], h["index"]))
                chosen: List[Dict[str, Any]] = []
                for h in ranked:
                    if len(chosen) < self.finalists and all(c["levels"] != h["candidate"] for c in chosen):
                        chosen.append({"levels": h["candidate"], "fitness": h["fitness"]})
                self.progress["clusters"][k]["finalists"] = chosen
                self.progress["evolutions"].append(evolution.history)
                self.progress["evolution"] = None  # the next cluster's evolution starts afresh
                tensors.clear()
            else:
                best_k = self.progress["best_cluster"]
                best_weights = tensors.get("best_supernet")
                if best_k < 0 or score > self.progress["clusters"][best_k]["score"]:
                    self.progress["best_cluster"] = k
                    best_weights = {n: t.detach().clone() for n, t in supernet.state_dict().items()}
                tensors.clear()
                tensors["best_supernet"] = best_weights
            self.progress.update({"cluster": k + 1, "iteration": 0})
            self.state.save()
            if self.is_main:
                self.worker_state_path(k).unlink(missing_ok=True)  # its weights are in this stage's state now
        if self.is_main:  # also one a kill left between the save and the removal above
            for k in range(self.space.num_clusters):
                self.worker_state_path(k).unlink(missing_ok=True)
        return self.final_round() if self.finalists else self.best_cluster_round()

    # ------------------------------------------------------------------ clusters trained in worker processes
    def worker_state_path(self, k: int) -> Path:
        return self.output_dir / f"search_{self.name}_cluster{k}_state.pt"

    def worker_state(self, k: int) -> SearchState:
        """Cluster ``k``'s own resumable training state (loaded when saved; ``SearchStateError`` when it was saved
        with other settings)."""
        state = SearchState(self.worker_state_path(k), {**self.fingerprint(), "cluster": k}, self.is_main)
        state.reset()
        state.load(self.settings.device)
        return state

    def worker_trained(self, k: int) -> Optional[Dict[str, torch.Tensor]]:
        """The weights of cluster ``k``'s supernet when a worker finished training it, else None."""
        if not self.worker_state_path(k).exists():
            return None
        state = self.worker_state(k)
        return state.tensors["supernet"] if state.progress["done"] else None

    def train_cluster(self, k: int) -> None:
        """Train cluster ``k``'s supernet as ``run`` does, resuming from and saving to its own state file (what a
        worker process runs)."""
        self._state = self.worker_state(k)
        if self.progress["done"]:
            return
        members = self.members(k)
        supernet = self.build_supernet(members, "cluster", k)
        if self.state.tensors.get("supernet") is not None:
            supernet.load_state_dict(self.state.tensors["supernet"])
        self.train_supernet(f"cluster{k}", supernet, members, self.cluster_iterations)
        self.progress["done"] = True
        self.state.tensors = {"supernet": supernet}
        self.state.save()
        if self._writer is not None:
            self._writer.close()

    def train_clusters_in_workers(self) -> None:
        """With ``cluster_workers`` > 1, train the supernets of the clusters still to train in that many worker
        processes at once (at most one per thread of this process), before ``run`` scores them in order. An error in
        a worker stops the stage with that error; finished clusters are kept for a re-run."""
        first = self.progress["cluster"]
        if self.state.tensors.get("supernet") is not None:  # this process was inside cluster ``first``'s training
            first += 1
        pending = [
            k for k in range(first, self.space.num_clusters) if self.members(k) and self.worker_trained(k) is None
        ]
        workers = min(self.cluster_workers, len(pending), torch.get_num_threads())
        if workers < 2 or self.world_size > 1:
            return
        threads = max(1, torch.get_num_threads() // workers)
        self.logger.info(
            f"training the supernets of clusters {pending} in {workers} worker processes, {threads} thread(s) each"
        )
        root = logging.getLogger()  # the workers log as this process does (its first handler's format and stream)
        handler = root.handlers[0] if root.handlers else None
        logs = (
            handler.formatter if handler is not None else None,
            root.level if handler is not None else logging.INFO,
            getattr(handler, "stream", None) is sys.stdout,
        )
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = [pool.submit(_train_cluster, self, k, threads, i == 0, logs) for i, k in enumerate(pending)]
            for k, job in zip(pending, jobs):
                try:
                    job.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        f"{self.output_dir}: the worker process training cluster {k}'s supernet ended without a result "
                        "(killed, or out of memory?); the clusters' training so far is saved there: run the stage "
                        "again to continue"
                    ) from e

    def best_cluster_round(self) -> Architecture:
        """The paper's way: aging evolution in the best-scoring cluster, on its supernet."""
        k = self.progress["best_cluster"]
        members = self.members(k)
        supernet = self.build_supernet(members, "cluster", k)
        supernet.load_state_dict(self.state.tensors["best_supernet"])
        evolution = self.evolution_in(k, supernet)
        best = self.evolve(evolution)
        return self.result(best["candidate"], best["fitness"], k, evolution.history)

    def final_round(self) -> Architecture:
        """Every cluster's finalists trained together on one fresh supernet and rated again on it; the best wins."""
        finalists: List[Tuple[int, ...]] = []
        for c in self.progress["clusters"]:
            for f in c.get("finalists", []):
                if tuple(f["levels"]) not in finalists:
                    finalists.append(tuple(f["levels"]))
        supernet = self.build_supernet(finalists, "finalists")
        if self.state.tensors.get("supernet") is not None:  # resuming inside its training
            supernet.load_state_dict(self.state.tensors["supernet"])
        self.train_supernet("finalists", supernet, finalists, self.finalist_iterations or self.cluster_iterations)
        self.keep_supernet(supernet, "finalists")
        rated = [self.topology_fitness(supernet, t, "finalists") for t in finalists]
        best = max(range(len(finalists)), key=lambda i: (rated[i], -i))
        table = []
        for t, fitness in zip(finalists, rated):
            k = self.space.cluster_of(t)
            own = next(f["fitness"] for f in self.progress["clusters"][k]["finalists"] if tuple(f["levels"]) == t)
            table.append({"levels": list(t), "cluster": k, "cluster_fitness": own, "fitness": fitness})
            self.logger.info(f"finalist {list(t)} (cluster {k}, {own:.4f} there): {fitness:.4f} on the shared supernet")
        history = [h for run in self.progress["evolutions"] for h in run]
        k = self.space.cluster_of(finalists[best])
        return self.result(finalists[best], rated[best], k, history, finalists=table)

    def result(
        self, topology: Sequence[int], fitness: float, k: int, evolution: List[Dict[str, Any]], **more: Any
    ) -> Architecture:
        """Write the result ``topology`` (of cluster ``k``, rated ``fitness``), the history and the pictures."""
        arch = Architecture(
            tuple(topology),
            None,
            self.provenance(
                fitness=fitness,
                search_space=self.space.options(),
                cluster=k,
                cluster_score=self.progress["clusters"][k]["score"],
                cluster_iterations=self.cluster_iterations,
                evaluations=len(self.progress["evaluations"]),
                **({"finalists": len(more["finalists"])} if "finalists" in more else {}),
            ),
        )
        groups = {str(c["cluster"]): c["samples"] for c in self.progress["clusters"] if c["samples"]}
        history = {
            "space": self.space.options(),
            "clusters": self.progress["clusters"],
            "best_cluster": k,
            "cluster_members": [list(map(list, c)) for c in self.space.clusters],
            "evolution": evolution,
            **more,
        }
        return self.finish(arch, history, groups)


def _train_cluster(
    stage: CoarseSearch, k: int, threads: int, progress_bar: bool, logs: Tuple[Optional[logging.Formatter], int, bool]
) -> None:
    """A worker process's job: ``stage.train_cluster(k)`` with ``threads`` threads (a progress bar if asked), logging
    as ``logs`` = (formatter, level, to stdout) says."""
    _end_with_parent()
    torch.set_num_threads(threads)
    formatter, level, to_stdout = logs
    handler = logging.StreamHandler(sys.stdout if to_stdout else sys.stderr)
    handler.setFormatter(formatter or logging.Formatter(logging.BASIC_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if stage.worker_init is not None:
        stage.worker_init()
    stage.progress_bar = stage.progress_bar and progress_bar
    stage.train_cluster(k)


def _end_with_parent() -> None:
    """On Linux, have the kernel kill this process when the process that started it ends (killed too), so that no
    worker goes on training, and writing its state, beside a re-run."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
