"""Data parallelism on two CPU processes (gloo), as `accelerate launch --num_processes 2` runs it."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

PROMPTS = [f"a {c} {o}" for c in ("red", "blue", "green", "golden") for o in ("car", "bird")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs(m: int):
    from spo.sampling.stepwise import PairBatch

    g = torch.Generator().manual_seed(3)
    xt = torch.randn(m, 4, 4, 4, generator=g)
    return PairBatch(xt_w=xt, xt_l=xt, x_w=torch.randn(m, 4, 4, 4, generator=g),
                     x_l=torch.randn(m, 4, 4, 4, generator=g), t=torch.full((m,), 501),
                     prompt_index=torch.arange(m) % 4, shared=torch.ones(m, dtype=torch.bool))


def _one_update(model_dir, rank: int, world: int):
    """One SGD step on this rank's share of 8 fixed pairs; returns the LoRA state."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from spo.models.backbone import Backbone
    from spo.sampling.ddim import DDIMSchedule
    from spo.training.lora import attach_lora, lora_state_dict
    from spo.training.settings import TrainSettings
    from spo.training.spo_trainer import average_gradients, pair_loss

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    params = attach_lora(pipe.unet, rank=4, init="default")
    with torch.no_grad():
        for i, (name, p) in enumerate(pipe.unet.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(i))
    # SGD: the step is the gradient itself, which is what data parallelism must reproduce (Adam's
    # first step is lr * sign(g) and would amplify float noise in near-zero gradients).
    opt = torch.optim.SGD(params, lr=1.0)
    settings = TrainSettings.from_config({"prompts": "p", "clamp_eps": None})
    backbone = Backbone(pipe, 32)
    pipe.scheduler.set_timesteps(20)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 20)
    pairs = _pairs(8)
    share = 8 // world
    mine = pairs.select(torch.arange(rank * share, (rank + 1) * share))
    loss = pair_loss(backbone, schedule, mine, backbone.encode(PROMPTS[:4]), settings)["loss"]
    loss.backward()
    average_gradients(params, world)
    opt.step()
    return lora_state_dict(pipe.unet)


def _worker(rank, world, port, model_dir, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        state = _one_update(model_dir, rank, world)
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_update_like_one_with_the_same_global_batch(tiny_models, tmp_path):
    model_dir = str(tiny_models / "pipelines" / "tiny-sd15")
    single = _one_update(model_dir, 0, 1)
    mp.spawn(_worker, args=(2, _free_port(), model_dir, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # the ranks stay in lockstep
        assert torch.allclose(ranks[0][key], value, atol=1e-6), key  # = one process, 8 pairs
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in single.items() if "lora_B" in k)
