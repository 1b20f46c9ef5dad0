"""The ignite engine that trains a supernet by single-path sampling, with progress, stats and TensorBoard handlers."""

from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterator, Optional

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import StatsHandler, TensorBoardStatsHandler

from networks import Architecture
from networks.precision import CPUBFloat16
from search.distributed import average_gradients

__all__ = ["cosine_schedule", "create_supernet_trainer", "run_trainer"]


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_iterations: int, hold_fraction: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The optimizer's learning rate for the first ``hold_fraction`` of ``total_iterations`` steps, then cosine
    decay to zero over the rest."""
    total = max(1, total_iterations)
    hold = min(int(hold_fraction * total), total - 1)

    def factor(i: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(max(i - hold, 0), total - hold) / (total - hold)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def create_supernet_trainer(
    supernet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample_architecture: Optional[Callable[[int], Architecture]],
    device: torch.device,
    amp: bool = False,
    cpu_bf16: bool = False,
) -> Engine:
    """An ignite ``Engine`` whose step trains the single path ``sample_architecture(iteration)`` (0-based).

    ``supernet`` is a ``C2FNASSupernet``, or one path of it on its own (a ``C2FNASNet``) when
    ``sample_architecture`` is None; batches are dicts with ``image`` ``(B, C, *S)`` and ``label`` ``(B, 1, *S)``.
    Under DDP every rank samples the same path and the gradients are averaged over ranks before the update, so the
    weights stay identical on all ranks. ``amp``: float16 with gradient scaling on CUDA;
    ``cpu_bf16``: the forward pass in bfloat16 on the CPU (``networks.precision``). The step output is
    ``{"loss": float, "lr": float}``.
    """
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    precision = CPUBFloat16(cpu_bf16)

    def step(engine: Engine, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        arch = () if sample_architecture is None else (sample_architecture(engine.state.iteration - 1),)
        supernet.train()
        image = batch["image"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=use_amp):
            loss = loss_function(precision.forward(supernet, image, *arch), label)
        scaler.scale(loss).backward()
        average_gradients(supernet)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        return {"loss": loss.item(), "lr": lr}

    return Engine(step)


def run_trainer(
    engine: Engine,
    batches: Iterator[dict],
    start_iteration: int,
    total_iterations: int,
    name: str,
    checkpoint: Optional[Callable[[int], None]] = None,
    checkpoint_interval: int = 0,
    summary_writer: Optional[object] = None,
    log_interval: int = 10,
    show_progress: bool = True,
    progress_bar: bool = True,
) -> None:
    """Run ``engine`` over iterations ``start_iteration .. total_iterations - 1`` (``batches`` starts at the first).

    ``checkpoint(iterations_done)`` is called every ``checkpoint_interval`` iterations and at the end. Handlers
    (progress bar unless ``progress_bar`` is off, a ``StatsHandler`` logging to ``name``, TensorBoard loss and lr)
    are attached when ``show_progress`` is set (rank 0 under DDP).
    """
    if start_iteration >= total_iterations:
        return
    if show_progress and progress_bar:
        ProgressBar(desc=name, persist=True).attach(engine, output_transform=lambda out: {"loss": out["loss"]})
    if show_progress:
        StatsHandler(
            name=name,
            iteration_log=lambda _engine, iteration: iteration % log_interval == 0,
            epoch_log=False,
            output_transform=lambda out: {"loss": out["loss"]},
        ).attach(engine)
        if summary_writer is not None:
            TensorBoardStatsHandler(
                summary_writer=summary_writer,
                iteration_log=True,
                epoch_log=False,
                output_transform=lambda out: {f"{name}/loss": out["loss"], f"{name}/lr": out["lr"]},
            ).attach(engine)
    if checkpoint is not None:

        def periodic(e: Engine) -> None:
            if e.state.iteration < total_iterations:  # the last one is saved on COMPLETED
                checkpoint(e.state.iteration)

        if checkpoint_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=checkpoint_interval), periodic)
        engine.add_event_handler(Events.COMPLETED, lambda e: checkpoint(e.state.iteration))
    if start_iteration > 0:
        engine.load_state_dict({"iteration": start_iteration, "epoch_length": total_iterations, "max_epochs": 1})
    logging.getLogger(name).info(f"training iterations {start_iteration} to {total_iterations}")
    engine.run(batches, max_epochs=1, epoch_length=total_iterations)
