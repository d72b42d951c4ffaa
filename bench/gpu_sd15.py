"""GPU benchmark on the real SD-1.5 *architecture* at random weights (no download): SPO update and
round against the official structure, generation against the stock pipeline; bf16, SDPA.

    bash bench/gpu_sd15.sh                       # on a GPU machine: at most ~8 minutes
    .venv/bin/python -m bench.gpu_sd15 --arch tiny --device cpu --dtype float32   # dry run (CPU)

The UNet, VAE and CLIP text encoder are built from the published configs of
``stable-diffusion-v1-5`` (written below), the tokenizer is CLIP's full BPE from open_clip's merges
file; speed does not depend on the weight values. Sizes follow the paper's SD-1.5 recipe per GPU:
512 px (64x64 latents), 20 DDIM steps, CFG 5, eta 1, k 4, [0, 750], 10 prompts per round, 10 pairs
per micro-batch, LoRA rank 4 on to_q/k/v/out. Precision as the official script's policy: frozen
weights in bf16, LoRA parameters in fp32, no autocast; both sides identically (``ours``). The
library as ``spo train`` sets it up today (pipeline weights fp32, autocast only around the loss) is
timed for the update as ``ours_library_fp32_autocast``.

Peak memory (CUDA): the bytes of the side's own models (VAE, text encoder, its UNet, plus the deep
copy for the official side) + (max allocated - allocated) over the side's first two updates (LoRA
gradients, AdamW state, activations). Results: ``bench/results/gpu_sd15.json`` and a Markdown
summary on stdout. Each section is skipped when the time budget (--budget-s) would be exceeded.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, interleaved, machine, mib, ratio, setup_torch, tensor_bytes

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
SD15_TEXT = {  # openai/clip-vit-large-patch14 text tower, as in SD-1.5's text_encoder/config.json
    "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
    "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "projection_dim": 768, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1, "layer_norm_eps": 1e-05,
}
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
                  "num_train_timesteps": 1000}
PROMPTS = ["a photo of a red car on a mountain road", "an oil painting of a lighthouse at dawn",
           "a watercolor of a green forest at sunset", "a cat wearing a tiny hat, studio photo",
           "a futuristic city skyline at night", "a bowl of fruit on a wooden table",
           "a portrait of an old fisherman, dramatic light", "a snowy village in the alps",
           "a golden retriever running on a beach", "an astronaut riding a horse on mars"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}


def build_sd15(device: str, dtype: torch.dtype, arch: str):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch == "tiny":
        from bench.spo_setup import tiny_pipe

        return tiny_pipe("sd15").to(device, dtype)
    from spo.models.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(n_merges=None)  # CLIP's full BPE: SD's tokenizer ids
    with torch.device(device):  # initialise on the device: random init of 1 B parameters on a CPU is slow
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    unet.set_attn_processor(AttnProcessor2_0())  # SDPA (diffusers' default on torch 2; explicit)
    vae.set_attn_processor(AttnProcessor2_0())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def fp32_lora(unet) -> None:
    """The official script's policy for half-precision runs: only the LoRA parameters in fp32."""
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()


@torch.no_grad()
def synthetic_pairs(n: int, backbone, cond, steps: int = 20, eta: float = 1.0, seed: int = 0):
    """n SPO pairs as the sampler makes them: x_t ~ N(0, I) at a trained timestep, win and lose two
    draws of the base model's DDIM(eta) transition from it (shared x_t). One UNet pass."""
    from spo.sampling.ddim import DDIMSchedule, ddim_transition
    from spo.sampling.stepwise import PairBatch

    g = torch.Generator().manual_seed(seed)
    sched = backbone.pipe.scheduler
    sched.set_timesteps(steps)
    grid = sched.timesteps.cpu()
    grid = grid[grid - sched.config.steps_offset <= 750]      # the trained range [0, 750]
    t = grid[torch.randint(0, len(grid), (n,), generator=g)].long()
    side = backbone.latent_side
    xt = torch.randn(n, backbone.latent_channels, side, side, generator=g)
    index = torch.arange(n) % len(cond.cond)
    dev = backbone.device
    eps = backbone.eps(xt.to(dev), t.to(dev), cond.take(index), 5.0)
    mean, std, _ = ddim_transition(DDIMSchedule.from_scheduler(sched, steps), eps, xt.to(dev), t, eta)
    mean, std = mean.float().cpu(), std.float().cpu()
    x_w = mean + std * torch.randn(mean.shape, generator=g)
    x_l = mean + std * torch.randn(mean.shape, generator=g)
    return PairBatch(xt_w=xt, xt_l=xt, x_w=x_w, x_l=x_l, t=t, prompt_index=index,
                     shared=torch.ones(n, dtype=torch.bool))


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def _mem_reset(device):
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _mem_peak_delta(device, before):
    return torch.cuda.max_memory_allocated() - before if device.startswith("cuda") else 0


def _opt_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for st in optimizer.state.values() for v in st.values()
               if torch.is_tensor(v))


def _twins(pipe, s, resolution):
    """Ours and the official side, each on its own deep copy of the clean pipeline, same LoRA."""
    from bench.spo_setup import Official, Ours, copy_lora, perturb_lora

    pipe_ours, pipe_off = copy.deepcopy(pipe), copy.deepcopy(pipe)
    ours = Ours(pipe_ours, s, resolution)
    perturb_lora(pipe_ours.unet, 1e-3)
    fp32_lora(pipe_ours.unet)
    off = Official(pipe_off, s, resolution)   # deep-copies its reference before the LoRA
    copy_lora(pipe_ours.unet, pipe_off.unet)
    fp32_lora(pipe_off.unet)
    return ours, off


def _settings(args):
    from bench.spo_setup import settings

    return settings(k=4, lora_rank=4, lora_init="gaussian", lr=6e-5, prompts_per_round=args.round_prompts,
                    train_batch_size=args.pairs, threshold=0.0, **getattr(args, "extra_settings", {}))


def bench_update(pipe, args, device, dtype, budget) -> dict[str, Any]:
    from bench.spo_setup import Ours, to_official

    s = _settings(args)
    ours, off = _twins(pipe, s, args.resolution)
    cond = ours.backbone.encode(PROMPTS[:max(1, min(len(PROMPTS), args.pairs))])
    out: dict[str, Any] = {"pairs_per_update": args.pairs, "lora_rank": s.lora_rank,
                           "precision": "weights in the run dtype, LoRA fp32, no autocast (the official "
                                        "policy), both sides"}
    n = args.pairs
    while n >= 1:
        try:
            pairs = synthetic_pairs(n, ours.backbone, cond)
            off_pairs = to_official(pairs, cond)
            ours.pipe.unet.train(), off.pipe.unet.train()
            # the first update of each side: same tensors, same LoRA state
            l_ours, l_off = ours.step(pairs, cond), off.step(off_pairs)
            mem = {}
            for name in ("ours", "official"):
                side_obj = ours if name == "ours" else off
                before = _mem_reset(device)
                for _ in range(2):
                    side_obj.step(off_pairs) if name == "official" else side_obj.step(pairs, cond)
                p = side_obj.pipe
                static = tensor_bytes([p.vae, p.text_encoder, p.unet])
                static += tensor_bytes([off.trainer.ref]) if name == "official" else 0
                static += _opt_bytes(ours.optimizer if name == "ours" else off.trainer.optimizer)
                mem[name] = {"peak_bytes": static + _mem_peak_delta(device, before), "static_bytes": static}
                mem[name]["peak_mib"] = mib(mem[name]["peak_bytes"])
            mem["official"]["deep_copied_reference_mib"] = mib(tensor_bytes([off.trainer.ref]))
            timed = interleaved({"official": lambda r: off.step(off_pairs),
                                 "ours": lambda r: ours.step(pairs, cond)},
                                reps=args.reps, warmup=1, device=device)
            out.update(pairs_per_update=n, first_loss_ours=l_ours, first_loss_official=l_off,
                       first_loss_abs_diff=abs(l_ours - l_off),
                       official_s=timed["official"]["median_s"], ours_s=timed["ours"]["median_s"],
                       speedup=ratio(timed, "official", "ours"), memory=mem,
                       memory_ratio_ours_over_official=mem["ours"]["peak_bytes"] / mem["official"]["peak_bytes"],
                       times={k: v["times"] for k, v in timed.items()})
            break
        except torch.cuda.OutOfMemoryError as exc:
            out.setdefault("oom", []).append({"pairs": n, "error": str(exc).splitlines()[0]})
        # out of the except block: the failed step's frames (and tensors) are released now
        import gc

        gc.collect()
        _mem_reset(device)
        n //= 2
    lib_state = copy.deepcopy(ours.pipe.unet.state_dict()) if "ours_s" in out else None
    del ours, off
    _mem_reset(device)
    # The library as `spo train` sets it up today: fp32 weights, autocast around the loss only.
    if (lib_state is not None and device.startswith("cuda") and budget.left() > args.reserve_s
            and getattr(args, "library_policy", True)):
        lib_pipe = copy.deepcopy(pipe).to(torch.float32)
        lib = Ours(lib_pipe, s, args.resolution)
        lib_pipe.unet.load_state_dict({k: v.float() for k, v in lib_state.items()})
        lib_pairs = pairs

        def lib_step(r):
            with torch.autocast("cuda", dtype=dtype):
                return lib.step(lib_pairs, cond)

        try:
            t = interleaved({"lib": lib_step}, reps=args.reps, warmup=1, device=device)
            out["ours_library_fp32_autocast_s"] = t["lib"]["median_s"]
        except torch.cuda.OutOfMemoryError as exc:
            out["ours_library_fp32_autocast_s"] = f"OOM: {str(exc).splitlines()[0]}"
        del lib, lib_pipe
        _mem_reset(device)
    return out


def bench_round(pipe, args, device, budget) -> dict[str, Any]:
    from spo.preference import build_preference

    s = _settings(args)
    ours, off = _twins(pipe, s, args.resolution)
    pref = build_preference(s.preference)
    prompts = (PROMPTS * ((args.round_prompts + len(PROMPTS) - 1) // len(PROMPTS)))[:args.round_prompts]

    def gen(r):
        return torch.Generator().manual_seed(100 + r)

    timed = interleaved({"official": lambda r: off.round(prompts, pref, gen(r)),
                         "ours": lambda r: ours.round(prompts, pref, r + 1)},  # run_round's round r + 1
                        reps=args.round_reps, warmup=1, device=device)
    res = {"prompts_per_round": args.round_prompts, "k": s.k, "train_batch_size": s.train_batch_size,
           "pairs_per_round": timed["ours"]["values"][0]["pairs"],
           "official_s": timed["official"]["median_s"], "ours_s": timed["ours"]["median_s"],
           "speedup": ratio(timed, "official", "ours"), "times": {k: v["times"] for k, v in timed.items()},
           "preference": "colourfulness (analytic; an SPM would add the same scoring cost to both sides)"}
    del ours, off
    _mem_reset(device)
    return res


def bench_generation(pipe, args, device, dtype, budget) -> dict[str, Any]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from spo.models.pipelines import load_method_pipeline

    family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd15"
    stock_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    tmp = Path(tempfile.mkdtemp(prefix=f"{family}-random-"))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        dtype_name = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[dtype]
        config = {"models": {"random": {"family": family, "source": {"path": str(tmp)}}},
                  "methods": {"random-base": {"model": "random"}}}
        ours = load_method_pipeline(config, "random-base", models_root=tmp, dtype=dtype_name, device=device)
        extra = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        stock = stock_class.from_pretrained(str(tmp), torch_dtype=dtype, local_files_only=True, **extra)
        stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
        stock.set_progress_bar_config(disable=True)
        stock = stock.to(device)
        n, bs = args.gen_images, args.gen_batch
        prompts = (PROMPTS * ((n + len(PROMPTS) - 1) // len(PROMPTS)))[:n]

        def call(p):
            images = []
            for start in range(0, n, bs):
                gens = [torch.Generator(device="cpu").manual_seed(1000 + i) for i in range(start, min(n, start + bs))]
                with torch.inference_mode():
                    images += p(prompt=prompts[start:start + bs], generator=gens, num_inference_steps=20,
                                guidance_scale=5.0, eta=0.0, height=args.resolution, width=args.resolution,
                                output_type="pil").images
            return images

        timed = interleaved({"stock": lambda r: call(stock), "ours": lambda r: call(ours)},
                            reps=args.gen_reps, warmup=1, device=device)
        return {"images": n, "batch_size": bs, "resolution": args.resolution, "steps": 20, "cfg": 5.0,
                "stock_images_per_s": n / timed["stock"]["median_s"],
                "ours_images_per_s": n / timed["ours"]["median_s"],
                "ours_over_stock": ratio(timed, "stock", "ours"),
                "times": {k: v["times"] for k, v in timed.items()}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# GPU benchmark: SD-1.5 architecture, random weights ({res['device_name']}, {res['dtype']})", ""]
    u = res.get("update")
    if u and "ours_s" in u:
        lines.append(f"- SPO update, {u['pairs_per_update']} pairs: official {u['official_s'] * 1e3:.0f} ms, ours "
                     f"{u['ours_s'] * 1e3:.0f} ms, speed-up {u['speedup']['ratio_of_medians']:.2f}x (target 1.8x); "
                     f"first-loss |diff| {u['first_loss_abs_diff']:.2e} ({res['dtype']})")
        lines.append(f"- peak memory: official {u['memory']['official']['peak_mib']:.0f} MiB, ours "
                     f"{u['memory']['ours']['peak_mib']:.0f} MiB, ratio {u['memory_ratio_ours_over_official']:.2f} (target 0.6)")
        if "ours_library_fp32_autocast_s" in u:
            v = u["ours_library_fp32_autocast_s"]
            lines.append(f"- ours as `spo train` sets it up (fp32 weights + autocast): "
                         f"{v * 1e3:.0f} ms" if isinstance(v, float) else f"- ours fp32 + autocast: {v}")
    r = res.get("round")
    if r and "ours_s" in r:
        lines.append(f"- SPO round ({r['prompts_per_round']} prompts, k {r['k']}, {r['pairs_per_round']} pairs): "
                     f"official {r['official_s']:.1f} s, ours {r['ours_s']:.1f} s, speed-up "
                     f"{r['speedup']['ratio_of_medians']:.2f}x (target 1.3x)")
    g = res.get("generation")
    if g and "ours_images_per_s" in g:
        lines.append(f"- generation ({g['images']} images, {g['resolution']} px, batch {g['batch_size']}): stock "
                     f"{g['stock_images_per_s']:.2f} images/s, ours {g['ours_images_per_s']:.2f}, ratio "
                     f"{g['ours_over_stock']['ratio_of_medians']:.3f} (target 0.95)")
    for k in ("skipped", "errors"):
        if res.get(k):
            lines.append(f"- {k}: {res[k]}")
    lines.append(f"- total {res['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_sd15", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", choices=("sd15", "tiny"), default="sd15", help="tiny: a CPU dry run of the code")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--resolution", type=int, default=None, help="default 512 (sd15), 32 (tiny)")
    p.add_argument("--pairs", type=int, default=10, help="pairs per update (paper: 10 per GPU)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--round-prompts", type=int, default=10, help="prompts per round (paper: 10 per GPU)")
    p.add_argument("--round-reps", type=int, default=2)
    p.add_argument("--gen-images", type=int, default=16)
    p.add_argument("--gen-batch", type=int, default=8)
    p.add_argument("--gen-reps", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip sections past this")
    p.add_argument("--reserve-s", type=float, default=150.0, help="time kept for later sections")
    p.add_argument("--only", default="update,round,generation")
    p.add_argument("--out", default=str(RESULTS / "gpu_sd15.json"))
    args = p.parse_args(argv)
    args.resolution = args.resolution or (512 if args.arch == "sd15" else 32)
    setup_torch(1 if args.device == "cpu" else 8)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # as the official script (allow_tf32)
        torch.backends.cudnn.allow_tf32 = True
    budget = Budget(args.budget_s)
    dtype = DTYPES[args.dtype]
    res: dict[str, Any] = {"machine": machine(), "arch": args.arch, "dtype": args.dtype,
                           "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                           "args": vars(args), "skipped": [], "errors": {}}
    tic = time.perf_counter()
    pipe = build_sd15(args.device, dtype, args.arch)
    res["build_s"] = time.perf_counter() - tic
    res["params"] = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder")}
    print(f"[gpu] built {args.arch} in {res['build_s']:.0f} s: {res['params']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.only.split(",")]
    order = [s for s in ("update", "generation", "round") if s in sections]
    for name in order:
        if budget.left() < (60 if name != "round" else 120):
            res["skipped"].append(f"{name} (budget)")
            continue
        t0 = time.perf_counter()
        try:
            if name == "update":
                res["update"] = bench_update(pipe, args, args.device, dtype, budget)
            elif name == "round":
                res["round"] = bench_round(pipe, args, args.device, budget)
            else:
                res["generation"] = bench_generation(pipe, args, args.device, dtype, budget)
        except Exception as exc:  # keep the other sections' figures
            res["errors"][name] = f"{type(exc).__name__}: {exc}"
        print(f"[gpu] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        res["elapsed_s"] = time.perf_counter() - budget.start
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    res["elapsed_s"] = time.perf_counter() - budget.start
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = markdown(res)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
