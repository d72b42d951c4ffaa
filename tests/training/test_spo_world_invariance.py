"""Issue 17, item 1: one global recipe, trained by 1 and by 2 CPU processes (gloo, as
`accelerate launch --num_processes 2` runs it) on the tiny SD-1.5: the same rounds, the same
optimizer steps, the same prompts per round and the same global batch per step."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

PROMPTS = [f"a {c} {o}" for c in ("red", "blue", "green", "golden") for o in ("car", "bird")]
RECIPE = dict(prompts="p", preference={"name": "colorfulness"}, num_inference_steps=4,
              timestep_range=[0, 1000], k=2, threshold=0.0, prompts_per_round=4,
              train_batch_size=8, grad_accum=1, lr=1e-3, lora_rank=4, lora_init="default",
              epochs=1, max_rounds=2, checkpoint_every=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model_dir, out):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from spo.models.backbone import Backbone
    from spo.preference import build_preference
    from spo.training.lora import lora_state_dict
    from spo.training.settings import TrainSettings
    from spo.training.spo_trainer import train_spo

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    settings = TrainSettings.from_config(RECIPE)
    result = train_spo(Backbone(pipe, 32), StableDiffusionPipeline, PROMPTS,
                       build_preference(settings.preference), settings, out / "lora", out / "ckpt")
    return {"rounds": result["rounds"], "steps": result["steps"], "lora": lora_state_dict(pipe.unet)}


def _worker(rank, world, port, model_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    from pathlib import Path

    torch.save(_train(model_dir, Path(out)), Path(out) / f"rank{rank}.pt")


def _pairs_per_step(log_path) -> dict[int, int]:
    """Pairs back-propagated before each optimizer step, from one process's step log."""
    counts: dict[int, int] = {}
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("loss") is not None:
            counts[entry["step"]] = counts.get(entry["step"], 0) + entry["pairs"]
    return counts


@pytest.mark.slow
def test_one_and_two_processes_train_the_same_recipe(tiny_models, tmp_path):
    from spo.training.settings import TrainSettings
    from spo.training.spo_trainer import round_prompts

    model_dir = str(tiny_models / "pipelines" / "tiny-sd15")
    single = _train(model_dir, tmp_path / "single")
    mp.spawn(_worker, args=(2, _free_port(), model_dir, str(tmp_path / "two")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # 8 prompts, 4 a round (global), max 2 rounds; 4 prompts x 4 trained steps = 16 pairs a round
    # = 2 steps of 8 pairs, whatever the number of processes.
    assert single["rounds"] == ranks[0]["rounds"] == ranks[1]["rounds"] == 2
    assert single["steps"] == ranks[0]["steps"] == ranks[1]["steps"] == 4
    one = _pairs_per_step(tmp_path / "single" / "lora" / "log.jsonl")
    two = _pairs_per_step(tmp_path / "two" / "lora" / "log.jsonl")  # rank 0's log: its half
    assert one == {1: 8, 2: 8, 3: 8, 4: 8}
    assert two == {1: 4, 2: 4, 3: 4, 4: 4}  # x 2 processes = the same 8-pair global step
    # the same prompts each round: rank 0's and rank 1's shares are the one process's round
    settings = TrainSettings.from_config(RECIPE)
    for r in range(2):
        whole = round_prompts(PROMPTS, settings.for_world(1), r, 1, 0)
        halves = [round_prompts(PROMPTS, settings.for_world(2), r, 2, k) for k in range(2)]
        assert halves[0] + halves[1] == whole and len(halves[0]) == 2
    for key in ranks[0]["lora"]:  # gradients averaged: the processes stay in lockstep
        assert torch.equal(ranks[0]["lora"][key], ranks[1]["lora"][key]), key
