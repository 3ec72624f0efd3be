"""The training loop shared by every backbone: one recipe, one objective, one data order.

Exactness is a design goal, not an accident:

* per-example t / noise / flips come from per-example seeds (``train_noise``), and the data order from a
  world-size-independent sampler (``train_data``), so N processes with global batch B follow one process
  with batch B, and gradient accumulation only changes how the batch is cut;
* a checkpoint holds everything a step depends on (weights, EMA, optimiser, LR schedule, step, data
  position, every rank's RNG states, the unlogged loss sums), so a resumed run logs the same losses as an
  uninterrupted one;
* a non-finite loss or gradient stops the run before the optimiser step, and a checkpoint is written
  only from finite weights, so the last checkpoint on disk is always a good one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from archbench.console.machine import load_1m
from archbench.console.threads import ThreadTuner
from archbench.data.captions import decode_captions, first_captions, model_conditions
from archbench.data.catalog import class_names
from archbench.sampling.grid import generate, grid_columns, grid_labels, save_grid
from archbench.training import checkpoint as ckpt
from archbench.training.config import backbone_options
from archbench.training.distributed import DistInfo, all_reduce_mean, any_rank, barrier, gather_objects
from archbench.training.init_from import backbone_family, read_source
from archbench.training.log import MetricsLog, peak_memory_mb
from archbench.training.noise import example_losses
from archbench.training.resume_config import check_resume_config, record_config
from archbench.training.rng_state import capture_rng, restore_rng
from archbench.training.run_lock import run_dir_lock
from archbench.training.schema import run_config
from archbench.training.setup import autocast_context, build_run, find_resume, prepare_run, seed_everything
from archbench.training.trackers import check_logger, open_tracker

log = logging.getLogger("archbench.train")

class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight; the run stopped without saving it."""


@dataclass
class TrainResult:
    """How a run ended: the last completed step, the signal that stopped it (None = finished) and the
    newest checkpoint."""

    run_dir: Path
    step: int
    signum: int | None
    checkpoint: Path | None
    dataset: str = ""
    grid: tuple | None = None  # (samples in [-1, 1], labels or None, cfg scale) of the last sample grid


def _params_finite(model: nn.Module) -> bool:
    peaks = [p.detach().abs().amax() for p in model.parameters() if p.numel()]
    return bool(torch.isfinite(torch.stack(peaks)).all()) if peaks else True


class Trainer:
    """Steps, logs and saves one run. The caller checked the config and prepared ``run_dir`` once
    (:func:`~archbench.training.setup.prepare_run`); the parts come from :func:`~archbench.training.setup.build_run`."""

    def __init__(self, config: dict[str, Any], dist: DistInfo, stop: Any = None, run_dir: Path | None = None) -> None:
        self.config = config
        self.c = c = run_config(config)  # typed view; ``config`` stays the record
        self.dist = dist
        self.stop = stop
        self.device = dist.device
        self.run_dir = Path(run_dir if run_dir is not None else c.run_dir)
        check_logger(c.train.logger)
        # the checkpoint to resume from is read and checked before any time goes into data and model
        self.resume_from, resume_state = find_resume(self.run_dir, c.train.resume)
        self.config_changes: dict[str, Any] = {}
        if resume_state is not None:
            ckpt.check_backbone(resume_state, *backbone_options(config), self.resume_from)
            saved = ckpt.checkpoint_config(resume_state)
            # a fine-tune's source checksum was filled when it started; the resumed run keeps that record
            config["train"]["init_from_sha256"] = saved.get("train", {}).get("init_from_sha256")
            self.config_changes = check_resume_config(saved, config, self.resume_from)
        # a new run from trained weights (train.init_from): read now, so a bad source fails before the data loads
        init_weights = None
        if resume_state is None and c.train.init_from:
            init_weights = read_source(c.train.init_from, backbone_family(config))
            config["train"]["init_from_sha256"] = init_weights.sha256

        self.accum = c.train.grad_accum
        self.global_batch = c.train.batch_size
        self.micro_batch = self.global_batch // (dist.world_size * self.accum)
        self.total_steps = c.train.steps
        self.seed = c.seed
        self.autocast = autocast_context(c.train.precision, self.device)
        # CPU threads: measured on the first steps (threads=auto) or fixed; announced once by the main rank.
        self.threads = ThreadTuner(c.threads, announce=log.info if dist.is_main else log.debug)
        if self.device.type == "cuda":  # as DiT: TF32 matmuls/convolutions on Ampere and newer
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        parts = build_run(c, dist, self.micro_batch, init_weights)
        del init_weights  # the source's tensors: the model holds its own copy now
        self.dataset, self.model, self.objective, self.ema = parts.dataset, parts.model, parts.objective, parts.ema
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        self.loader, self.sampler, self.loader_generator = parts.loader, parts.sampler, parts.loader_generator
        self.train_model = parts.train_model
        self.conditional = bool(getattr(self.model, "conditional", False))  # class labels or captions
        self.steps_per_epoch = self.sampler.steps_per_epoch

        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.loss_sum = 0.0  # rank-local losses since the last log row
        self.loss_count = 0
        self.step_seconds = 0.0
        self.train_seconds = 0.0  # all finished steps, across resumes: the study's wall-clock axis
        self.last_checkpoint: Path | None = None
        self.last_grid: tuple | None = None
        if resume_state is not None:
            self._load(resume_state, self.resume_from)
        else:
            seed_everything(self.seed + 1_000_003 * (dist.rank + 1))  # per-rank stream for in-model dropout

        if dist.is_main:
            resumed = self.step if self.resume_from is not None else None
            record_config(self.run_dir, config, resumed, self.config_changes)
            if parts.init is not None:
                parts.init.write(self.run_dir)
            tracker = open_tracker(
                c.train.logger, self.run_dir, start_step=self.step, config=config, project=c.train.project
            )
            self.metrics = MetricsLog(self.run_dir, start_step=self.step, tracker=tracker)

    def _load(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ckpt.CheckpointError(f"checkpoint {path} does not match this model: {first}") from None
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        data = state["data"]
        self.epoch, self.step_in_epoch = int(data["epoch"]), int(data["step_in_epoch"])
        if int(data["global_batch"]) != self.global_batch or int(data["seed"]) != self.seed:
            log.warning("resuming with a different global batch or seed: the data order will differ from the original")
            self.step_in_epoch = min(self.step_in_epoch, self.steps_per_epoch)
        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            log.warning(
                "checkpoint was written by %d rank(s), this run has %d: in-model dropout streams restart",
                len(ranks),
                self.dist.world_size,
            )
        mine = ranks[self.dist.rank] if self.dist.rank < len(ranks) else ranks[0]
        restore_rng(mine["rng"])
        if len(ranks) == self.dist.world_size:
            self.loss_sum, self.loss_count = float(mine["loss_sum"]), int(mine["loss_count"])
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

    # ----- the loop ------------------------------------------------------------------------------------------
    def _stop_requested(self) -> bool:
        return bool(self.stop) if self.stop is not None else False

    def _train_step(self, batches: Any) -> tuple[float, float, float, bool]:
        """One optimiser step; returns (local loss, grad norm, lr used, stop requested on any rank)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            index, x, y = next(batches)
            x = x.to(self.device, non_blocking=True)
            kwargs = {"y": y.to(self.device, non_blocking=True)} if self.conditional else {}
            last = micro == self.accum - 1
            no_sync = getattr(self.train_model, "no_sync", None)
            sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
            with sync:
                with self.autocast:
                    losses = example_losses(
                        self.objective, self.train_model, x, index, seed=self.seed, step=self.step,
                        random_flip=self.c.data.random_flip, model_kwargs=kwargs,
                    )
                loss = losses["loss"].float().mean()
                (loss / self.accum).backward()
            loss_sum += loss.detach()
        max_norm = self.c.train.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_value, norm_value = torch.stack([loss_sum / self.accum, grad_norm.float()]).tolist()
        bad = not (math.isfinite(loss_value) and math.isfinite(norm_value))
        flags = torch.tensor([float(bad), float(self._stop_requested())], device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if flags[0].item() > 0:
            raise NonFiniteLossError(self._nonfinite_message(f"loss {loss_value:.4g}, grad norm {norm_value:.4g}"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        return loss_value, norm_value, lr, bool(flags[1].item() > 0)

    def _nonfinite_message(self, what: str) -> str:
        kept = f"last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        return (
            f"non-finite training signal at step {self.step + 1} ({what}); stopped without saving it; {kept}. "
            "Lower train.lr, set train.grad_clip, or check the data"
        )

    def run(self) -> TrainResult:
        """Train to ``train.steps`` (or until a signal); always leaves a checkpoint of the last finished step."""
        c = self.c
        if self.step >= self.total_steps:
            log.info("nothing to do: step %d >= train.steps=%d", self.step, self.total_steps)
            return self._finish(None)
        log.info(
            "training %s on %s for %d steps (global batch %d = %d rank(s) x %d accumulation x %d, device %s)",
            c.backbone["name"],
            c.data.name,
            self.total_steps,
            self.global_batch,
            self.dist.world_size,
            self.accum,
            self.micro_batch,
            self.device,
        )
        progress = self._progress_bar()
        try:
            signum = self._loop(progress)
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once, and say which checkpoint is kept
            if self.dist.is_main:
                self.metrics.close()
            raise KeyboardInterrupt(self._kept_message()) from None
        except BaseException:
            if self.dist.is_main:
                self.metrics.close()
            raise
        finally:
            progress.close()
        if signum is None:
            signum = self._late_stop()
        if self.last_checkpoint != ckpt.checkpoint_path(self.run_dir, self.step):
            self._save()
        if signum is None:
            if not c.train.sample_every or self.step % c.train.sample_every:
                self._sample_grid()
        elif self.dist.is_main:
            log.warning("stopped by signal %s at step %d; checkpoint %s", signum, self.step, self.last_checkpoint)
        return self._finish(signum)

    def _kept_message(self) -> str:
        kept = ckpt.latest_checkpoint(self.run_dir)  # whole files only: writes are atomic and finish first
        if kept is None:
            return f"stopped at step {self.step}; no checkpoint was written yet"
        return f"stopped at step {self.step}; the last checkpoint kept is {kept}"

    def _late_stop(self) -> int | None:
        """A signal that came after the last step's stop check (while its row or checkpoint was written): the
        run is complete, but whoever sent it wants the process to end, not to draw the final grid and carry on
        (a study worker whose study died must not go on to evaluate)."""
        if not any_rank(self._stop_requested(), self.device):
            return None
        return getattr(self.stop, "signum", None)

    def _loop(self, progress: Any) -> int | None:
        """Epochs of steps until done; returns the signal that stopped the run early, or None."""
        while self.step < self.total_steps:
            if self.step_in_epoch >= self.steps_per_epoch:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.sampler.set_position(self.epoch, self.step_in_epoch * self.global_batch // self.dist.world_size)
            self.loader_generator.manual_seed(self.seed * 100_003 + self.epoch)
            batches = iter(self.loader)
            while self.step < self.total_steps and self.step_in_epoch < self.steps_per_epoch:
                self.threads.before()
                started = time.perf_counter()
                try:
                    loss, grad_norm, lr, stop = self._train_step(batches)
                except RuntimeError as exc:
                    if isinstance(exc, NonFiniteLossError) or self.dist.enabled or not self._stop_requested():
                        raise
                    # Ctrl-C also reaches DataLoader workers, which exit: stop before this step, saving.
                    self._save()
                    return getattr(self.stop, "signum", None)
                elapsed = time.perf_counter() - started
                self.threads.after(elapsed)
                self.step_seconds += elapsed
                self.train_seconds += elapsed
                self.step += 1
                self.step_in_epoch += 1
                self.loss_sum += loss
                self.loss_count += 1
                progress.update(1)
                self._after_step(lr, grad_norm, progress)
                if stop:
                    if self.last_checkpoint != ckpt.checkpoint_path(self.run_dir, self.step):
                        self._save()
                    return getattr(self.stop, "signum", None)
        return None

    def _after_step(self, lr: float, grad_norm: float, progress: Any) -> None:
        """Periodic work: a metrics row, a sample grid, a checkpoint."""
        c = self.c
        on_interval = self.step % c.train.log_every == 0
        if on_interval or self.step == self.total_steps:
            # A last, off-interval row keeps its sums, so a later resume still logs whole intervals.
            self._log_row(lr, grad_norm, progress, reset=on_interval)
        if c.train.sample_every and self.step % c.train.sample_every == 0:
            self._sample_grid()
        if c.train.ckpt_every and self.step % c.train.ckpt_every == 0:
            self._save()

    def _finish(self, signum: int | None) -> TrainResult:
        if self.dist.is_main:
            self.metrics.close()
        barrier()
        return TrainResult(
            run_dir=self.run_dir, step=self.step, signum=signum, checkpoint=self.last_checkpoint,
            dataset=self.c.data.name, grid=self.last_grid,
        )

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        enabled = self.dist.is_main and self.c.train.progress
        return tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.c.backbone["name"],
            unit="step",
            dynamic_ncols=True,
            disable=not enabled,
        )

    def _log_row(self, lr: float, grad_norm: float, progress: Any, reset: bool = True) -> None:
        mean = torch.tensor([self.loss_sum / max(1, self.loss_count)], dtype=torch.float64, device=self.device)
        loss = float(all_reduce_mean(mean).item())
        steps, seconds = self.loss_count, max(self.step_seconds, 1e-9)
        if reset:
            self.loss_sum, self.loss_count, self.step_seconds = 0.0, 0, 0.0
        if not self.dist.is_main:
            return
        row = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "img_per_s": steps * self.global_batch / seconds,
            "it_per_s": steps / seconds,
            "epoch": self.epoch,
            "train_s": self.train_seconds,
            "peak_mem_mb": peak_memory_mb(self.device),
            "load_1m": load_1m(),  # what else the machine ran meanwhile: a study's wall-clock depends on it
        }
        self.metrics.write(row)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if progress.disable:
            log.info(
                "step %d/%d loss %.4f lr %.2e %.1f img/s",
                self.step,
                self.total_steps,
                loss,
                lr,
                row["img_per_s"],
            )

    def _sample_grid(self) -> Path | None:
        if not self.dist.is_main:
            return None
        s, d = self.c.sample, self.c.data
        n = s.num_samples
        num_classes = int(getattr(self.ema.model, "num_classes", 0) or 0)
        labels = grid_labels(n, num_classes)
        captions, conditions = None, labels
        if getattr(self.ema.model, "captioned", False):  # the first training examples' captions
            labels = first_captions(self.dataset, n)
            captions, conditions = decode_captions(d.name, labels), model_conditions(self.dataset, labels)
        cfg_scale = s.cfg_scale if s.grid_cfg_scale is None else s.grid_cfg_scale
        if cfg_scale != 1.0 and getattr(self.ema.model, "null_class", None) is None:
            cfg_scale = 1.0  # unconditional, or no class dropout: nothing to guide with
        try:
            samples = generate(
                self.ema.model,
                self.objective,
                num_samples=n,
                shape=(d.channels, d.image_size, d.image_size),
                labels=conditions,
                sampler=s.sampler,
                steps=s.steps,
                cfg_scale=cfg_scale,
                guide_channels=s.guide_channels,
                seed=s.seed,
                batch_size=min(n, 256),
                device=self.device,
            )
        except ValueError as exc:  # a diverged preview: say so and keep training (the run itself is finite)
            log.warning("no sample grid at step %d: %s", self.step, exc)
            return None
        self.last_grid = (samples.detach().cpu(), labels, cfg_scale)
        titled = labels if captions is None else None  # a caption goes under its image, not above a column
        path = save_grid(samples, self.run_dir / "samples" / f"step_{self.step:07d}.png", grid_columns(n, num_classes),
                         labels=titled, class_names=class_names(d.name), captions=captions)
        log.info("sample grid (EMA weights): %s", path)
        self.metrics.image("samples", path, self.step)
        return path

    def _save(self) -> Path:
        """Checkpoint the state after ``self.step`` (every rank takes part: RNG states are gathered)."""
        if not _params_finite(self.model):
            raise NonFiniteLossError(self._nonfinite_message("weights became non-finite"))
        rank_state = {"rng": capture_rng(), "loss_sum": self.loss_sum, "loss_count": self.loss_count}
        ranks = gather_objects(rank_state)
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        if self.dist.is_main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "data": {
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "global_batch": self.global_batch,
                    "seed": self.seed,
                },
                "ranks": ranks,
                "train_seconds": self.train_seconds,
                "config": json.dumps(self.config),
            }
            try:
                ckpt.save_checkpoint(state, path)
            except ckpt.CheckpointSaveError as exc:
                last = self.last_checkpoint or ckpt.latest_checkpoint(self.run_dir)
                raise ckpt.CheckpointSaveError(
                    f"{exc}; the last good checkpoint is {last or 'none (no checkpoint was written yet)'}"
                ) from None
            ckpt.prune_checkpoints(self.run_dir, self.c.train.keep_last)
        barrier()
        self.last_checkpoint = path
        return path


def train(config: dict[str, Any], dist: DistInfo, stop: Any = None, run_dir: Path | None = None) -> TrainResult:
    """Train from a resolved config dict (see ``archbench.training.config.compose_config``).

    ``run_dir``: the folder :func:`~archbench.training.setup.prepare_run` returned, when the caller already checked
    the config and prepared it (the command does, to log into it); otherwise both happen here, once. The run_dir is
    locked for the whole run (one writer per run_dir; see :mod:`archbench.training.run_lock`).
    """
    if run_dir is None:
        run_dir = prepare_run(config, dist.rank, dist.world_size)
    with run_dir_lock(run_dir, enabled=dist.is_main):
        return Trainer(config, dist, stop, run_dir).run()
