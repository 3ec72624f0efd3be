"""A real 2-process DDP run (gloo on CPU, env:// rendezvous as under torchrun) against one process.

Same global batch, same data order and per-example noise, so the two runs must agree: the parameters of
both ranks are identical, and the loss curve matches the single process to float32 round-off.
(``backbone.class_dropout_prob=0``: in-model dropout draws from each rank's own RNG and cannot match.)
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from train_support import QUICK, free_port, losses, one_thread, run_train  # noqa: F401

SETTINGS = ["backbone.class_dropout_prob=0", "train.batch_size=32", "train.steps=8", "train.warmup_steps=2",
            "train.ckpt_every=4"]


def _rank_main(rank: int, world: int, port: int, run_dir: str, overrides: list[str], out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from archbench.training.config import compose_config, to_container
    from archbench.training.distributed import cleanup, init_distributed
    from archbench.training.loop import Trainer
    from archbench.training.setup import prepare_run

    config = to_container(compose_config([*QUICK, f"run_dir={run_dir}", *overrides]))
    dist = init_distributed("cpu")
    assert dist.world_size == world and torch.distributed.get_backend() == "gloo"
    try:
        trainer = Trainer(config, dist, None, prepare_run(config, dist.rank, dist.world_size))
        trainer.run()
        torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    mp.spawn(_rank_main, args=(2, free_port(), str(ddp_dir), SETTINGS, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    assert run_train(single_dir, *SETTINGS) == 0
    ddp_curve, single_curve = losses(ddp_dir), losses(single_dir)
    assert len(ddp_curve) == len(single_curve) == 8
    assert ddp_curve == pytest.approx(single_curve, rel=1e-5, abs=1e-6)
    from archbench.training.checkpoint import latest_checkpoint, load_checkpoint

    single = load_checkpoint(latest_checkpoint(single_dir))["model"]
    for key in rank0:
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote; both ranks' RNG states are in its checkpoints
    assert len(load_checkpoint(latest_checkpoint(ddp_dir))["ranks"]) == 2


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (4, 2), (3, 1)])
def test_sampler_gives_every_step_the_same_examples_for_any_split(world, accum):
    """Rank r's micro-batches of step s together hold exactly the one-process batch of step s."""
    from archbench.training.data_order import ResumableSampler

    dataset, global_batch = list(range(103)), 24
    single = list(ResumableSampler(dataset, global_batch=global_batch, num_replicas=1, rank=0, seed=5))
    assert len(single) == (103 // global_batch) * global_batch
    micro = global_batch // (world * accum)
    per_rank = [list(ResumableSampler(dataset, global_batch=global_batch, num_replicas=world, rank=r, seed=5))
                for r in range(world)]
    for step in range(len(single) // global_batch):
        merged = sorted(i for ranks in per_rank for i in ranks[step * micro * accum:(step + 1) * micro * accum])
        assert merged == sorted(single[step * global_batch:(step + 1) * global_batch])
    resumed = ResumableSampler(dataset, global_batch=global_batch, num_replicas=world, rank=1, seed=5)
    resumed.set_position(0, 2 * global_batch // world)
    assert list(resumed) == per_rank[1][2 * global_batch // world:]
