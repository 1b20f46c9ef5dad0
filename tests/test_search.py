"""The search engine: space, clustering, evolution, data stream, evaluation, both stages, resume after SIGKILL."""

import functools
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import PNG_MAGIC, Failing, launch, rods_case, run_or_kill, small_stage

from networks import Architecture, ArchitectureError, enumerate_topologies, load_architecture, topology_error
from search import (
    AgingEvolution,
    DiceEvaluator,
    PatchStream,
    SearchSettingsError,
    SearchSpace,
    SearchStateError,
    cached_dataset,
    kmeans,
    mutate_ops,
    rng,
)

TESTS = Path(__file__).resolve().parent


def test_space_clusters_partition_the_topologies_reproducibly():
    space = SearchSpace(num_cells=12, min_depth=4, num_clusters=8, seed=3)
    assert len(space.topologies) == 924
    members = [t for c in space.clusters for t in c]
    assert sorted(members) == sorted(space.topologies) and len(members) == len(set(members))
    assert all(space.clusters)
    assert SearchSpace(num_cells=12, min_depth=4, num_clusters=8, seed=3).clusters == space.clusters


def test_kmeans_recovers_separated_groups():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    points = torch.cat([c + 0.5 * torch.randn(30, 2, generator=g, dtype=torch.float64) for c in centres])
    labels = kmeans(points, 3, seed=1)
    for group in range(3):
        assert len(set(labels[30 * group : 30 * (group + 1)].tolist())) == 1
    assert len(set(labels.tolist())) == 3
    assert labels[0] == 0  # clusters are numbered by their first member


def test_topology_mutation_stays_valid_and_in_cluster():
    space = SearchSpace(num_cells=12, min_depth=4, num_clusters=8)
    r = random.Random(0)
    for members in space.clusters:
        for _ in range(20):
            parent = r.choice(members)
            child = space.mutate_topology(r, parent, members)
            assert child in members and child != parent and topology_error(child) is None
            nearest = min(sum(a != b for a, b in zip(parent, t)) for t in members if t != parent)
            assert sum(a != b for a, b in zip(parent, child)) == nearest


def test_op_mutation_changes_one_cell():
    r = random.Random(0)
    parent = ("2D",) * 12
    for _ in range(20):
        child = mutate_ops(r, parent)
        assert sum(a != b for a, b in zip(parent, child)) == 1


def _toy_evolution(seed=0):
    target = ("3D", "2D", "P3D", "3D", "3D", "2D")
    return AgingEvolution(
        "toy",
        population_size=8,
        sample_size=3,
        cycles=60,
        seed=seed,
        random_candidate=lambda r: [r.choice(("2D", "3D", "P3D")) for _ in range(6)],
        mutate=lambda r, p: list(mutate_ops(r, p)),
        fitness=lambda ops: sum(a == b for a, b in zip(ops, target)) / 6,
    )


def test_aging_evolution_climbs_and_resumes_identically():
    full = _toy_evolution()
    best = full.run()
    assert best["fitness"] > max(h["fitness"] for h in full.history[:8])  # better than the random population
    assert len(full.history) == 68 and len(full.population) == 8
    half = _toy_evolution()
    for _ in range(30):
        half.step()
    resumed = _toy_evolution()
    resumed.load_state_dict(json.loads(json.dumps(half.state_dict())))  # through JSON, as in a checkpoint
    resumed.run()
    assert resumed.history == full.history


def test_patch_stream_is_a_function_of_seed_and_iteration():
    from helpers import array_transforms

    preprocessing, augmentation = array_transforms()
    cases = cached_dataset([rods_case(i) for i in range(3)], preprocessing)
    stream = PatchStream(cases, augmentation, batch_size=2, seed=7)
    straight = [b["image"] for b in stream.batches(0, 5)]
    resumed = [b["image"] for b in stream.batches(3, 5)]
    assert len(straight) == 5 and len(resumed) == 2 and all(len(b) == 2 for b in straight)
    assert all(torch.equal(a, b) for a, b in zip(straight[3:], resumed))
    workers = [b["image"] for b in PatchStream(cases, augmentation, batch_size=2, seed=7, num_workers=2).batches(0, 5)]
    assert len(workers) == 5 and all(torch.equal(a, b) for a, b in zip(straight, workers))
    other = [b["image"] for b in PatchStream(cases, augmentation, batch_size=2, seed=8).batches(0, 5)]
    assert len(other) == 5 and not all(torch.equal(a, b) for a, b in zip(straight, other))
    ranks = [PatchStream(cases, augmentation, 2, 7, rank=r, world_size=2).draws(4) for r in range(2)]
    assert ranks == [[16, 17], [18, 19]]  # iteration 4, partitioned by rank


@pytest.mark.parametrize("hold", [0.0, 0.5])
def test_supernet_learning_rate_holds_then_decays_by_a_cosine(hold):
    from search.engine import cosine_schedule

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = cosine_schedule(optimizer, 20, hold_fraction=hold)
    rates = []
    for _ in range(21):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    held = int(hold * 20)
    assert rates[: held + 1] == pytest.approx([0.1] * (held + 1))
    assert all(a > b for a, b in zip(rates[held:20], rates[held + 1 : 21]))  # strictly decreasing after the hold
    assert rates[held + (20 - held) // 2] == pytest.approx(0.05)  # half way through the decay: half the rate
    assert rates[20] == pytest.approx(0.0, abs=1e-12)


def test_dice_evaluator():
    from helpers import array_transforms
    from monai.networks.utils import one_hot

    cases = cached_dataset([rods_case(i) for i in range(2)], array_transforms()[0])
    evaluator = DiceEvaluator(cases, num_classes=3, roi_size=(16, 16, 64), sw_batch_size=1)

    def label_of(window):  # the window is a whole volume: find its label
        return next(label for image, label in evaluator.cases if torch.equal(image[None], window))[None].long()

    def logits(labels):
        return 10.0 * one_hot(labels, 3)

    assert evaluator(lambda w: logits(label_of(w))) == pytest.approx(1.0)
    assert evaluator(lambda w: logits(torch.zeros_like(label_of(w)))) == 0.0
    only_class_1 = lambda w: logits(torch.where(label_of(w) == 1, 1, 0))  # noqa: E731
    assert evaluator(only_class_1) == pytest.approx(0.5)  # mean of Dice 1 (class 1) and 0 (class 2)
    assert evaluator.per_class(only_class_1).shape == (2, 2)


def test_soft_dice_fitness_rates_the_probabilities_where_the_argmax_is_blind(tmp_path):
    """search_fitness soft_dice: the Dice formula on the softmax probabilities. Two predictors with the same argmax
    (no foreground at all) get the same Dice, 0, but different soft Dice, higher for the one nearer the label; a
    confident right prediction gets nearly 1 either way. The setting reaches the evaluator and the fingerprint, and
    an unknown fitness is refused by name."""
    from helpers import array_transforms
    from monai.networks.utils import one_hot

    from search import SearchSettingsError
    from search.dice import dice_per_case, reduce_dice

    cases = cached_dataset([rods_case(i) for i in range(2)], array_transforms()[0])
    hard = DiceEvaluator(cases, num_classes=3, roi_size=(16, 16, 64), sw_batch_size=1)
    soft = DiceEvaluator(cases, num_classes=3, roi_size=(16, 16, 64), sw_batch_size=1, soft=True)

    def label_of(window):
        return next(label for image, label in hard.cases if torch.equal(image[None], window))[None].long()

    def unsure(margin):  # background wins everywhere by ``margin``; the true class is the runner-up
        def predict(window):
            logits = torch.where(one_hot(label_of(window), 3) > 0, 0.0, -4.0)
            logits[:, 0] = margin
            return logits

        return predict

    near, far = unsure(0.5), unsure(3.0)
    assert hard(near) == hard(far) == 0.0
    assert 0 < soft(far) < soft(near) < 1
    truth = one_hot(label_of(hard.cases[0][0][None]), 3)
    expected = reduce_dice(dice_per_case(near(hard.cases[0][0][None]).softmax(1), truth))[0]
    assert soft.per_class(near)[0].mean().item() == pytest.approx(expected, abs=1e-6)
    assert soft(lambda w: 20.0 * one_hot(label_of(w), 3)) == pytest.approx(1.0, abs=1e-6)

    stage = small_stage("fine", tmp_path, topology=Architecture((1, 2, 2, 1)), fitness="soft_dice")
    assert stage.evaluator.soft and stage.fingerprint()["search_fitness"] == "soft_dice"
    provenance = stage.provenance(fitness=0.25)  # an architecture file says which fitness chose it, and its value
    assert provenance["search_fitness"] == "soft_dice" and provenance["fitness"] == 0.25
    plain = small_stage("fine", tmp_path / "plain", topology=Architecture((1, 2, 2, 1)))
    assert not plain.evaluator.soft and "search_fitness" not in plain.fingerprint()  # saved states still resume
    with pytest.raises(SearchSettingsError, match="search setting 'fitness': 'loss' is not one of"):
        small_stage("fine", tmp_path / "bad", topology=Architecture((1, 2, 2, 1)), fitness="loss")


def test_finetuned_fitness_rates_a_trained_copy_of_the_path_and_leaves_the_supernet(tmp_path):
    """search_finetune_steps K: a candidate is rated after K steps of training a copy of its path alone. The copy's
    weights move, the supernet's do not, the same K batches make the same copy, the rating is the copy's Dice, and
    the setting reaches the fingerprint (absent at 0, so saved states resume); a negative K is refused by name."""
    from search import SearchSettingsError

    topology = Architecture((1, 2, 2, 1))
    stage = small_stage("fine", tmp_path, topology=topology, finetune_steps=3)
    supernet = stage.build_supernet([topology.levels], "test")
    arch = Architecture(topology.levels, ("3D", "2D", "P3D", "3D"))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    copy = stage.finetuned(supernet, arch)
    assert not copy.training
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())  # the supernet is not trained
    shared = dict(supernet.path_network(arch).named_parameters())
    moved = [n for n, p in copy.named_parameters() if not torch.equal(p, shared[n])]
    assert moved and len(moved) > len(shared) // 2
    again = dict(stage.finetuned(supernet, arch).named_parameters())
    assert all(torch.equal(p, again[n]) for n, p in copy.named_parameters())  # the same batches for every candidate
    assert stage.supernet_dice(supernet, arch) == pytest.approx(stage.evaluator.dice(copy)[0], abs=1e-6)
    assert stage.fingerprint()["finetune_steps"] == 3 and stage.provenance()["finetune_steps"] == 3
    plain = small_stage("fine", tmp_path / "plain", topology=topology)
    assert "finetune_steps" not in plain.fingerprint()
    with pytest.raises(SearchSettingsError, match="'finetune_steps'"):
        small_stage("fine", tmp_path / "bad", topology=topology, finetune_steps=-1)


def _png(path):
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


def test_both_stages_end_to_end(tmp_path):
    coarse = small_stage("coarse", tmp_path, class_names=("short rod", "long rod"))
    topology = coarse.run()
    history = json.loads((tmp_path / "search_coarse_history.json").read_text())
    for evaluation in history["evaluations"]:  # each class's Dice per candidate, so a class-blind fitness shows
        per_class = evaluation["per_class"]
        assert list(per_class) == ["short rod", "long rod"]
        assert all(d is None or 0 <= d <= 1 for d in per_class.values())
        counted = [d for d in per_class.values() if d is not None]
        assert evaluation["fitness"] == pytest.approx(sum(counted) / len(counted) if counted else 0.0, abs=1e-6)
    scores = [c["score"] for c in history["clusters"]]
    best_cluster = history["best_cluster"]
    assert len(scores) == 3 and scores[best_cluster] == max(scores)
    assert list(topology.levels) in history["cluster_members"][best_cluster]
    assert topology.ops is None and topology_error(topology.levels) is None
    assert load_architecture(tmp_path / "arch_coarse.json") == topology
    assert topology.provenance["cluster"] == best_cluster
    # every evaluated candidate is in the history: cluster samples and every (topology, op sample) of evolution
    evaluated = {(tuple(e["levels"]), tuple(e["ops"])) for e in history["evaluations"]}
    assert len(history["evaluations"]) == len(evaluated) == len(coarse.progress["cache"])
    assert len(history["evolution"]) == 4 + 4
    for record in history["evolution"]:
        for j in range(2):
            assert (tuple(record["candidate"]), coarse.op_sample(record["candidate"], j)) in evaluated
    assert _png(tmp_path / "search_coarse_fitness.png") and _png(tmp_path / "arch_coarse.png")
    assert any((tmp_path / "tensorboard" / "coarse").glob("events.out.tfevents.*"))

    fine = small_stage("fine", tmp_path, topology=tmp_path / "arch_coarse.json")
    arch = fine.run()
    assert arch.levels == topology.levels and arch.ops is not None and len(arch.ops) == 6
    fine_history = json.loads((tmp_path / "search_fine_history.json").read_text())
    assert len(fine_history["evolution"]) == 8
    assert max(r["fitness"] for r in fine_history["evolution"]) == arch.provenance["fitness"]
    assert {tuple(r["candidate"]) for r in fine_history["evolution"]} <= {
        tuple(e["ops"]) for e in fine_history["evaluations"]
    }
    assert _png(tmp_path / "search_fine_fitness.png") and _png(tmp_path / "arch_fine.png")
    assert load_architecture(tmp_path / "arch_fine.json") == arch

    again = small_stage("fine", tmp_path, topology=tmp_path / "arch_coarse.json").run()  # finished: no new work
    assert again == arch


def test_kept_supernets_score_architectures_as_the_search_did(tmp_path):
    """keep_supernets: the weights written after each supernet's training give back the fitness the evolution
    recorded (the same Dice, from a fresh stage object), for the coarse topology fitness and the fine op fitness."""
    coarse_dir, fine_dir = tmp_path / "coarse", tmp_path / "fine"
    small_stage("coarse", coarse_dir, keep_supernets=True).run()
    history = json.loads((coarse_dir / "search_coarse_history.json").read_text())
    assert sorted(p.name for p in (coarse_dir / "supernets").iterdir()) == [f"coarse_cluster{k}.pt" for k in range(3)]
    scorer = small_stage("coarse", coarse_dir, keep_supernets=True)  # a new object: nothing in memory
    for record in history["evolution"][:3]:
        score = scorer.score(Architecture(tuple(record["candidate"]), ("3D",) * 6))
        assert score["cluster"] == history["best_cluster"]
        assert score["topology"] == pytest.approx(record["fitness"], abs=1e-6)
    evaluation = history["evaluations"][0]  # a cluster-score sample: its own ops, its own cluster's supernet
    arch = Architecture(tuple(evaluation["levels"]), tuple(evaluation["ops"]))
    assert scorer.score(arch)["architecture"] == pytest.approx(evaluation["fitness"], abs=1e-6)

    small_stage("fine", fine_dir, topology=coarse_dir / "arch_coarse.json", keep_supernets=True).run()
    fine_history = json.loads((fine_dir / "search_fine_history.json").read_text())
    scorer = small_stage("fine", fine_dir, topology=coarse_dir / "arch_coarse.json", keep_supernets=True)
    levels = tuple(fine_history["topology"])
    for record in fine_history["evolution"][:3]:
        score = scorer.score(Architecture(levels, tuple(record["candidate"])))
        assert score["architecture"] == pytest.approx(record["fitness"], abs=1e-6)
    with pytest.raises(ArchitectureError, match="the fine supernet only holds"):
        scorer.score(Architecture((1, 1, 1, 1, 1, 1), ("3D",) * 6))
    with pytest.raises(SearchStateError, match="keep_supernets true"):
        small_stage("fine", tmp_path / "none", topology=coarse_dir / "arch_coarse.json").score(
            Architecture(levels, ("3D",) * 6)
        )


def test_resume_refuses_other_settings(tmp_path):
    small_stage("fine", tmp_path, topology=Architecture((1, 2, 2, 1))).run()
    with pytest.raises(SearchStateError, match="search_fine_state.pt: saved by a fine search with other settings"):
        small_stage("fine", tmp_path, topology=Architecture((1, 2, 2, 1)), seed=1).run()


@pytest.mark.parametrize("keep", [0, 100, 5000])
def test_truncated_search_state_names_the_reason(tmp_path, keep):
    """A state cut short (a copy interrupted, a full disk outside the bundle) is refused with a reason that is
    never empty (before: "cannot read the saved search state ()")."""
    small_stage("fine", tmp_path, topology=Architecture((1, 2, 2, 1))).run()
    state = tmp_path / "search_fine_state.pt"
    state.write_bytes(state.read_bytes()[:keep])
    with pytest.raises(SearchStateError, match=r"search_fine_state.pt: cannot read the saved search state \(\w+: \S"):
        small_stage("fine", tmp_path, topology=Architecture((1, 2, 2, 1))).run()


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_finished_search_whose_result_was_deleted_is_refused(tmp_path, stage):
    """Before, the coarse stage logged "resuming" and crashed with a TypeError."""
    topology = Architecture((1, 2, 2, 1)) if stage == "fine" else None
    small_stage(stage, tmp_path, topology=topology).run()
    (tmp_path / f"arch_{stage}.json").unlink()
    with pytest.raises(
        SearchStateError, match=f"the {stage} search finished but its result .*arch_{stage}.json is missing"
    ):
        small_stage(stage, tmp_path, topology=topology).run()


def _run(stage, out, kill_when=None, topology=None):
    """Run helpers.py as a real subprocess; with ``kill_when(progress)`` SIGKILL it at its first save after a saved
    state whose progress satisfies it (``run_or_kill``)."""
    state = Path(out) / f"search_{stage.split('_')[0]}_state.pt"  # coarse_finalists: the coarse stage's
    args = [TESTS / "helpers.py", stage, out] + ([topology] if topology else [])
    process = launch(args, TESTS, wait=False, pause_saves=state)
    progress_when = None if kill_when is None else (lambda saved: kill_when(saved["progress"]))
    return run_or_kill(process, progress_when, timeout=300)


def test_coarse_search_resumes_after_sigkill(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run("coarse", reference)
    # killed mid-training of cluster 1, then during evolution, then let finish
    assert not _run("coarse", killed, kill_when=lambda p: p["cluster"] == 1 and p["iteration"] >= 5)
    saved = torch.load(killed / "search_coarse_state.pt", weights_only=True)["progress"]
    assert (saved["cluster"], saved["iteration"]) == (1, 5), "killed at the save after iteration 5 of cluster 1"
    assert list(killed.glob(".search_coarse_state.pt.*.tmp")), "the newer state written but not in place"
    assert not _run("coarse", killed, kill_when=lambda p: p["evolution"] and len(p["evolution"]["history"]) >= 2)
    assert _run("coarse", killed)
    expected = json.loads((reference / "search_coarse_history.json").read_text())
    resumed = json.loads((killed / "search_coarse_history.json").read_text())
    assert load_architecture(killed / "arch_coarse.json") == load_architecture(reference / "arch_coarse.json")
    assert resumed["evolution"] == expected["evolution"]
    assert resumed["clusters"] == expected["clusters"]
    assert not list(killed.glob(".*.tmp"))  # no half-written file left behind


@pytest.fixture
def threads():
    """Set torch's thread count for a test (``threads(n)``) and restore it after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_clusters_trained_in_worker_processes_give_the_same_search(tmp_path, threads):
    """cluster_workers: the clusters' supernets trained in worker processes at once (2 processes of 1 thread for 3
    clusters) give the search of one process with 1 thread, value for value; the workers' state files are removed
    once their clusters are scored, their losses reach TensorBoard, and a cluster a worker already finished is
    taken as it is."""
    threads(1)
    small_stage("coarse", tmp_path / "one").run()
    expected = json.loads((tmp_path / "one" / "search_coarse_history.json").read_text())

    threads(2)
    workers = small_stage("coarse", tmp_path / "workers", cluster_workers=2, show_progress=True)
    assert workers.run() == load_architecture(tmp_path / "one" / "arch_coarse.json")
    history = json.loads((tmp_path / "workers" / "search_coarse_history.json").read_text())
    assert history["clusters"] == expected["clusters"] and history["evolution"] == expected["evolution"]
    assert history["evaluations"] == expected["evaluations"]
    assert not list((tmp_path / "workers").glob("search_coarse_cluster*_state.pt"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (tmp_path / "workers" / "tensorboard" / "coarse").glob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {f"coarse/cluster{k}/loss" for k in range(3)} | {"coarse/fitness"} <= tags, "the workers' losses too"

    threads(1)  # cluster 0 trained here as a worker would, with 1 thread; then the workers take the other two
    resumed = small_stage("coarse", tmp_path / "resumed", cluster_workers=2)
    resumed.train_cluster(0)
    assert (tmp_path / "resumed" / "search_coarse_cluster0_state.pt").is_file()
    threads(2)
    small_stage("coarse", tmp_path / "resumed", cluster_workers=2).run()
    history = json.loads((tmp_path / "resumed" / "search_coarse_history.json").read_text())
    assert history["clusters"] == expected["clusters"] and history["evolution"] == expected["evolution"]


def test_an_error_or_a_death_in_a_worker_process_stops_the_search_with_one_message(tmp_path, threads):
    """The error a worker's training raises is the stage's error, as in one process; a worker that dies (killed, out
    of memory) stops the stage with a line naming the cluster, and a re-run finishes the search."""
    threads(2)
    for workers in (1, 2):
        with pytest.raises(ValueError, match="bad augmentation"):
            small_stage(
                "coarse", tmp_path / str(workers), augmentation=Failing("bad augmentation"), cluster_workers=workers
            ).run()
    with pytest.raises(RuntimeError, match=r"worker process training cluster 0's supernet ended without a result"):
        small_stage("coarse", tmp_path / "died", cluster_workers=2, worker_init=functools.partial(os._exit, 3)).run()
    assert small_stage("coarse", tmp_path / "died", cluster_workers=2).run().levels
    with pytest.raises(SearchSettingsError, match="search setting 'cluster_workers'.*less than the minimum of 1"):
        small_stage("coarse", tmp_path / "none", cluster_workers=0)


def test_killed_search_leaves_no_worker_running_and_resumes_the_workers_training(tmp_path, threads):
    """SIGKILL to the search process alone (as the OOM killer sends it) ends its worker processes too, so none goes on
    writing beside a re-run; the re-run resumes each cluster's training from its worker's state and ends with the
    search of one uninterrupted process."""
    threads(1)
    small_stage("coarse", tmp_path / "one").run()
    expected = json.loads((tmp_path / "one" / "search_coarse_history.json").read_text())
    out = tmp_path / "killed"
    state = out / "search_coarse_cluster0_state.pt"
    process = launch([TESTS / "helpers.py", "coarse_workers", out], TESTS, wait=False, pause_saves=state)
    marker, deadline = process.pause_marker, time.time() + 300
    try:  # cluster 0's worker pauses before each new state: let the first save go, stop at the second
        while not (marker.exists() and state.exists()) and process.poll() is None and time.time() < deadline:
            if marker.exists():
                marker.unlink()
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        workers = _children(process.pid)
        assert len(workers) >= 2, "a worker process per cluster in training"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        ended = time.time() + 30  # the paused worker would wait for ever without the kernel's signal
        while any(_running(pid) for pid in workers) and time.time() < ended:
            time.sleep(0.05)
        assert not any(_running(pid) for pid in workers), "the workers ended with the search process"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        marker.unlink(missing_ok=True)
        marker.parent.rmdir()
    assert torch.load(state, weights_only=True)["progress"]["iteration"] == 5, "killed after the first save"
    assert _run("coarse_workers", out)
    history = json.loads((out / "search_coarse_history.json").read_text())
    assert history["clusters"] == expected["clusters"] and history["evolution"] == expected["evolution"]
    assert not list(out.glob("search_coarse_cluster*_state.pt")) and not list(out.glob(".*.tmp"))


def _children(pid):
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _running(pid):
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_coarse_finalists_are_rated_again_on_one_shared_supernet(tmp_path):
    """With ``finalists``, the evolution runs in every cluster on its own supernet, the fittest distinct topologies of
    each are trained together on one fresh supernet and rated again there, and the best there is the result."""
    topology = small_stage("coarse", tmp_path, finalists=2, keep_supernets=True).run()
    history = json.loads((tmp_path / "search_coarse_history.json").read_text())
    table = history["finalists"]
    clusters = [c["cluster"] for c in history["clusters"] if c["size"]]
    assert sorted({row["cluster"] for row in table}) == clusters, "every trained cluster sends finalists"
    for k in clusters:
        rows = [row for row in table if row["cluster"] == k]
        members = {tuple(t) for t in history["cluster_members"][k]}
        evolved = {
            tuple(h["candidate"]): h["fitness"] for h in history["evolution"] if tuple(h["candidate"]) in members
        }
        assert evolved, f"cluster {k} was evolved on its own supernet"
        assert 1 <= len(rows) <= 2 and all(evolved[tuple(r["levels"])] == r["cluster_fitness"] for r in rows)
        top = sorted(evolved.values(), reverse=True)[: len(rows)]  # the fittest distinct topologies of the cluster
        assert sorted((r["cluster_fitness"] for r in rows), reverse=True) == top
    best = max(table, key=lambda r: r["fitness"])
    assert list(topology.levels) == best["levels"] and topology.provenance["fitness"] == best["fitness"]
    assert topology.provenance["finalists"] == len(table) and topology.provenance["cluster"] == best["cluster"]
    rescored = small_stage("coarse", tmp_path, finalists=2, keep_supernets=True)  # a fresh object: from the file
    shared = rescored.kept_supernet("finalists")
    assert sorted(map(list, shared.topologies)) == sorted(r["levels"] for r in table)
    assert rescored.topology_fitness(shared, best["levels"]) == pytest.approx(best["fitness"], abs=1e-6)


def test_coarse_search_with_finalists_resumes_after_sigkill(tmp_path):
    """Killed in a cluster's evolution and in the finalists' training, the search ends as an uninterrupted one."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run("coarse_finalists", reference)
    in_evolution = lambda p: p["cluster"] == 1 and p.get("evolution") and len(p["evolution"]["history"]) >= 2  # noqa
    assert not _run("coarse_finalists", killed, kill_when=in_evolution)
    assert not _run("coarse_finalists", killed, kill_when=lambda p: p["cluster"] == 3 and p["iteration"] >= 5)
    assert _run("coarse_finalists", killed)
    expected = json.loads((reference / "search_coarse_history.json").read_text())
    resumed = json.loads((killed / "search_coarse_history.json").read_text())
    assert load_architecture(killed / "arch_coarse.json") == load_architecture(reference / "arch_coarse.json")
    assert resumed["finalists"] == expected["finalists"] and resumed["evolution"] == expected["evolution"]
    assert resumed["clusters"] == expected["clusters"]


def test_fine_search_resumes_after_sigkill(tmp_path):
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"format": "c2fnas-arch/1", "levels": [1, 2, 3, 2, 1, 1]}))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _run("fine", reference, topology=topology)
    assert not _run("fine", killed, topology=topology, kill_when=lambda p: p["iteration"] >= 10)
    assert _run("fine", killed, topology=topology)
    assert load_architecture(killed / "arch_fine.json") == load_architecture(reference / "arch_fine.json")
    expected = json.loads((reference / "search_fine_history.json").read_text())
    assert json.loads((killed / "search_fine_history.json").read_text())["evolution"] == expected["evolution"]


def test_rng_is_a_function_of_its_keys():
    assert rng(1, "a", 2).random() == rng(1, "a", 2).random() != rng(1, "a", 3).random()
    assert len(enumerate_topologies(6, min_depth=2, max_depth=3)) == 30


@pytest.mark.slow  # about 2.5 min on 2 cores; make test-slow
def test_fine_search_picks_the_op_the_task_needs(tmp_path):
    """Rods that only context along the third axis separates: the fine stage should choose 3D over 2D."""
    from helpers import array_transforms, rods_data
    from monai.losses import DiceCELoss

    from search import FineSearch, SearchSettings

    preprocessing, augmentation = array_transforms()
    big = dict(shape=(32, 32, 48), rods=4, radius2=6)
    picks, by_count = [], {}
    for seed in range(3):
        settings = SearchSettings(
            output_dir=tmp_path / str(seed),
            ops=("2D", "3D"),
            base_channels=8,
            roi_size=(32, 32, 48),
            batch_size=2,
            sw_batch_size=1,
            learning_rate=0.05,
            population_size=6,
            sample_size=3,
            cycles=8,
            seed=seed,
            checkpoint_interval=0,
            show_progress=False,
        )
        search = FineSearch(
            settings,
            train_data=rods_data(12, **big),
            val_data=rods_data(6, offset=100, **big),
            preprocessing=preprocessing,
            augmentation=augmentation,
            loss_function=DiceCELoss(to_onehot_y=True, softmax=True),  # per-sample Dice suits these volumes
            topology={"format": "c2fnas-arch/1", "levels": [1, 2, 2, 1]},
            iterations=400,
        )
        picks.append(search.run().ops.count("3D"))
        for e in search.progress["evaluations"]:
            by_count.setdefault(e["ops"].count("3D"), []).append(e["fitness"])
    assert sum(picks) >= 9 and sum(p >= 3 for p in picks) >= 2, picks  # 3D in most cells, across seeds
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    many = [f for n, fs in by_count.items() if n >= 3 for f in fs]
    few = [f for n, fs in by_count.items() if n <= 1 for f in fs]
    assert mean(many) > mean(few) + 0.02, (mean(many), mean(few))


def test_fitness_uses_the_first_val_cases_validation_cases(tmp_path):
    """val_cases (the search's evaluation budget) scores candidates on that many validation cases; 0 keeps all."""
    everything = small_stage("fine", tmp_path / "all", topology=Architecture((1, 2, 2, 1)))
    fewer = small_stage("fine", tmp_path / "one", topology=Architecture((1, 2, 2, 1)), val_cases=1)
    assert len(everything.evaluator.cases) == 2 and len(fewer.evaluator.cases) == 1
    assert torch.equal(fewer.evaluator.cases[0][1], everything.evaluator.cases[0][1])
    assert fewer.fingerprint()["data"] != everything.fingerprint()["data"], "another budget cannot resume this state"
    with pytest.raises(ValueError, match="val_cases"):
        small_stage("fine", tmp_path / "bad", topology=Architecture((1, 2, 2, 1)), val_cases=-1)


def test_class_names_must_name_each_foreground_class(tmp_path):
    from search import SearchSettings, SearchSettingsError

    assert SearchSettings(output_dir=tmp_path, out_channels=3).class_names == ("class1", "class2")
    assert SearchSettings(output_dir=tmp_path, out_channels=2, class_names=["organ"]).class_names == ("organ",)
    for wrong in (["organ"], "ab", ["a", 2]):
        with pytest.raises(SearchSettingsError, match="search setting 'class_names'.*the 2 foreground classes"):
            SearchSettings(output_dir=tmp_path, out_channels=3, class_names=wrong)


def test_compute_budget_holds_for_every_candidate(tmp_path):
    """max_gmacs: clusters keep only the topologies whose cheapest ops fit, every op assignment drawn, bred or chosen
    fits, and a budget below the whole space's cheapest architecture is refused before any training."""
    from networks.complexity import window_macs
    from search import SearchSettingsError

    probe = small_stage("coarse", tmp_path / "probe")
    cheapest = sorted(probe.gmacs(probe.cheapest(t)) for t in probe.space.topologies)
    budget = cheapest[len(cheapest) // 3]  # a third of the topologies fit, and not every op assignment on them
    coarse = small_stage("coarse", tmp_path, max_gmacs=budget)
    topology = coarse.run()
    history = json.loads((tmp_path / "search_coarse_history.json").read_text())
    assert history["evaluations"] and all(e["gmacs"] <= budget for e in history["evaluations"])
    for evaluation in history["evaluations"][:3]:  # the recorded cost is the network's
        arch = Architecture(tuple(evaluation["levels"]), tuple(evaluation["ops"]))
        assert evaluation["gmacs"] == window_macs(arch, 1, 3, 4, (16, 16, 64)) / 1e9
    for cluster, members in zip(history["clusters"], coarse.space.clusters):
        fitting = [t for t in members if coarse.gmacs(coarse.cheapest(t)) <= budget]
        assert cluster["size"] == len(fitting) and (cluster["score"] is None) == (not fitting)
    assert coarse.gmacs(coarse.cheapest(topology.levels)) <= budget

    fine = small_stage("fine", tmp_path, topology=tmp_path / "arch_coarse.json", max_gmacs=budget)
    arch = fine.run()
    fine_history = json.loads((tmp_path / "search_fine_history.json").read_text())
    assert all(e["gmacs"] <= budget for e in fine_history["evaluations"])
    assert arch.provenance["gmacs"] <= budget and arch.provenance["max_gmacs"] == budget
    assert fine.gmacs(Architecture(topology.levels, ("3D",) * 6)) > budget, "the budget excludes some ops"

    with pytest.raises(SearchSettingsError, match=r"'max_gmacs' .*: 1e-06 is below the cheapest architecture"):
        small_stage("coarse", tmp_path / "tight", max_gmacs=1e-6).run()
    assert not (tmp_path / "tight" / "search_coarse_state.pt").exists()
