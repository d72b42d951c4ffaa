"""train-spm data parallel on two CPU processes (gloo), as `accelerate launch --num_processes 2`
runs it: the ranks read disjoint halves of each global batch and end with identical weights, the
weights of one process training on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(config, models_root, root, out, **kw):
    from spo.spm.stage import train_spm

    torch.set_num_threads(1)
    result = train_spm(config, "tiny-sd15-spm", pairs=root / "pairs/train", val_pairs=root / "pairs/validation",
                       out_dir=out / "model", validation_csv=out / "val.csv", checkpoints=out / "ckpt",
                       models_root=models_root, device="cpu", record_batches=True, **kw)
    return {"batches": result["batches"], "main": result["main"],
            "state": {k: v.detach().clone() for k, v in result["model"].state_dict().items()}}


def _worker(rank, world, port, config, models_root, root, out):
    # What `accelerate launch` sets for each process; Accelerator(cpu=True) then picks gloo.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.save(_train(config, models_root, root, out), out / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_processes_split_batches_and_agree(spm_world, spm_config, tmp_path):
    _, models_root, root = spm_world
    spm_config["spm"]["runs"]["tiny-sd15-spm"].update(steps=4, checkpoint_every=0, val_timesteps=[0])
    single = _train(spm_config, models_root, root, tmp_path / "single")
    mp.spawn(_worker, args=(2, _free_port(), spm_config, models_root, root, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["main"] for r in ranks] == [True, False]
    for step, whole in enumerate(single["batches"]):
        a, b = ranks[0]["batches"][step], ranks[1]["batches"][step]
        assert not set(a) & set(b) and sorted(a + b) == sorted(whole), step
    s0, s1, one = ranks[0]["state"], ranks[1]["state"], single["state"]
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # gradients averaged: the same step everywhere
    # The rescaled per-rank loss makes two half batches take the whole batch's step, up to float
    # summation order (which Adam's first steps amplify where a gradient is near zero): compare
    # the difference with how far training moved the weights.
    from spo.preference.spm_io import from_pickscore
    from spo.spm.stage import resolve_pickscore

    torch.manual_seed(spm_config["spm"]["runs"]["tiny-sd15-spm"]["seed"])  # as train_spm does
    init = from_pickscore(*resolve_pickscore(spm_config, models_root), time_condition=True,
                          device="cpu").model.state_dict()
    norm = lambda d: sum(float(v.float().pow(2).sum()) for v in d.values()) ** 0.5  # noqa: E731
    moved = norm({k: one[k] - init[k] for k in one})
    apart = norm({k: one[k] - s0[k] for k in one})
    print(f"\n|single - init| {moved:.3e}, |single - data parallel| {apart:.3e}")
    assert moved > 0 and apart < 0.05 * moved, (apart, moved)
    assert (tmp_path / "single/val.csv").exists() and (tmp_path / "val.csv").exists()
