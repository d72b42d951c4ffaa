"""GPU benchmark of issue 18 (item 4): the SPO round at the real SD-1.5 (512 px) and SDXL (1024 px)
architectures with random weights (no download), ours (``run_round``) against the official
structure in its precision policy (frozen weights in fp16, LoRA in fp32, reference = deep copy).

    bash bench/gpu_round.sh                      # on one GPU: one command, at most ~8 minutes
    .venv/bin/python -m bench.gpu_round --smoke  # CPU: the same code on the tiny models (~2 min)

Per architecture: the update (``bench.gpu_sd15.bench_update``: official vs ours, same pairs, first
losses, peak CUDA memory), the round (``bench.gpu_sd15.bench_round``: the official sampler and
trainer vs ``spo.training.spo_trainer.run_round``), generation against the stock diffusers pipeline
(``bench.gpu_sd15.bench_generation``) and, last, for SD-1.5, ``train.sampling_merge_lora`` and
``train.compile_unet`` on against the defaults (first round, with the compile, then a steady
round). Both sides use
the same weights dtype (``--dtype``, default fp16: the official policy). SDXL: gradient
checkpointing on both sides (the official SDXL trainer forces it), window tiling "split" on ours so
that both samplers branch at the same 16 steps, VAE in fp32 on both sides (diffusers'
``force_upcast``). Each section is skipped past the time budget; if random fp16 weights give
non-finite values, the section's error is recorded (rerun with ``--dtype bf16``).
Results: ``bench/results/gpu_round.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench import gpu_sd15
from bench.common import RESULTS, machine, setup_torch, sync

# stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/ config.json
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE = {**gpu_sd15.SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT = {**gpu_sd15.SD15_TEXT}  # CLIP ViT-L text tower (SDXL's text_encoder)
SDXL_TEXT_2 = {  # OpenCLIP ViT-bigG text tower (SDXL's text_encoder_2, with projection)
    "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
    "max_position_embeddings": 77, "num_attention_heads": 20, "num_hidden_layers": 32,
    "projection_dim": 1280, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1, "layer_norm_eps": 1e-05,
}
# the released models' parameter counts: what the configs above must rebuild
RELEASED = {"sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
            "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                     "text_encoder_2": 694_659_840}}


def _sdxl_modules(device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        return {"unet": UNet2DConditionModel(**SDXL_UNET), "vae": AutoencoderKL(**SDXL_VAE),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_TEXT)),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2))}


def parameter_counts() -> dict[str, dict[str, int]]:
    """The architectures built on the meta device (no memory): parameter counts per module."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        sd15 = {"unet": UNet2DConditionModel(**gpu_sd15.SD15_UNET), "vae": AutoencoderKL(**gpu_sd15.SD15_VAE),
                "text_encoder": CLIPTextModel(CLIPTextConfig(**gpu_sd15.SD15_TEXT))}
    sdxl = _sdxl_modules("meta")
    return {name: {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()}
            for name, mods in (("sd15", sd15), ("sdxl", sdxl))}


def build(arch: str, device: str, dtype: torch.dtype, tiny: bool):
    """The pipeline of ``arch`` ("sd15" / "sdxl"): the real architecture at random weights, or
    (``tiny``) the tiny model of the family."""
    if tiny:
        from bench.spo_setup import tiny_pipe

        return tiny_pipe(arch).to(device, dtype)
    if arch == "sd15":
        return gpu_sd15.build_sd15(device, dtype, "sd15")
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0

    from spo.models.tiny import tiny_tokenizer

    torch.manual_seed(0)
    mods = _sdxl_modules(device)
    mods["unet"].set_attn_processor(AttnProcessor2_0())
    mods["vae"].set_attn_processor(AttnProcessor2_0())
    pipe = StableDiffusionXLPipeline(**mods, tokenizer=tiny_tokenizer(n_merges=None),
                                     tokenizer_2=tiny_tokenizer(n_merges=None),
                                     scheduler=DDIMScheduler(**gpu_sd15.SD15_SCHEDULER),
                                     force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def bench_keys(pipe, args, device, out: dict[str, Any], save) -> dict[str, Any]:
    """Ours' round with each key of ``--keys`` against the defaults, each on its own copy of the
    pipeline: first round (a compile included) and one steady round each. Fills ``out`` and
    calls ``save`` after each variant (a compile killed by the time limit keeps the others)."""
    from bench.spo_setup import Ours, perturb_lora
    from spo.preference import build_preference

    prompts = (gpu_sd15.PROMPTS * 8)[:args.round_prompts]
    pref = build_preference({"name": "colorfulness"})
    keys = sorted((k for k in args.keys.split(",") if k), key=lambda k: k == "compile_unet")  # compile last
    for name in ["default"] + keys:
        need = 180 if name == "compile_unet" and not args.smoke else 30
        if out and args.budget.left() < need:
            out[name] = "skipped (budget)"
            continue
        args.extra_settings = {**args.base_settings, **({} if name == "default" else {name: True})}
        side = Ours(copy.deepcopy(pipe), gpu_sd15._settings(args), args.resolution)
        perturb_lora(side.pipe.unet, 1e-3)
        gpu_sd15.fp32_lora(side.pipe.unet)
        times = []
        for r in range(2):
            sync(device)
            tic = time.perf_counter()
            side.round(prompts, pref, r + 1)
            sync(device)
            times.append(time.perf_counter() - tic)
        out[name] = {"first_round_s": times[0], "steady_round_s": times[1]}
        del side
        gpu_sd15._mem_reset(device)
        base = out.get("default")
        if name != "default" and isinstance(base, dict):
            v = out[name]
            v["steady_speedup"] = base["steady_round_s"] / v["steady_round_s"]
            saved = base["steady_round_s"] - v["steady_round_s"]
            v["extra_first_round_s"] = v["first_round_s"] - base["first_round_s"]
            v["rounds_to_pay_back"] = v["extra_first_round_s"] / saved if saved > 0 else None
        save()
    args.extra_settings = dict(args.base_settings)
    return out


def _arch_args(arch: str, args) -> None:
    args.resolution = args.smoke_resolution if args.smoke else (1024 if arch == "sdxl" else 512)
    args.pairs = args.sdxl_pairs if arch == "sdxl" else args.sd15_pairs
    args.round_prompts = args.sdxl_prompts if arch == "sdxl" else args.sd15_prompts
    args.gen_images = args.sdxl_gen_images if arch == "sdxl" else args.sd15_gen_images
    args.base_settings = {"window_tiling": "split"} if arch == "sdxl" else {}
    args.extra_settings = dict(args.base_settings)
    args.library_policy = False  # ours and official both in --dtype weights, LoRA fp32


def _build(arch: str, args):
    pipe = build(arch, args.device, gpu_sd15.DTYPES[args.dtype], args.smoke)
    if arch == "sdxl":
        pipe.unet.enable_gradient_checkpointing()  # the official SDXL trainer forces it
        pipe.vae.to(torch.float32)  # diffusers' force_upcast for the SDXL VAE, both sides
    return pipe


def run_arch(arch: str, args, res: dict[str, Any]) -> None:
    device, dtype = args.device, gpu_sd15.DTYPES[args.dtype]
    big = arch == "sdxl" and not args.smoke
    _arch_args(arch, args)
    entry: dict[str, Any] = {"resolution": args.resolution, "pairs_per_update": args.pairs,
                             "prompts_per_round": args.round_prompts}
    res[arch] = entry
    tic = time.perf_counter()
    pipe = _build(arch, args)
    entry["build_s"] = time.perf_counter() - tic
    entry["params"] = {k: sum(p.numel() for p in getattr(pipe, k).parameters())
                       for k in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(pipe, k, None) is not None}
    print(f"[gpu_round] {arch}: built in {entry['build_s']:.0f} s: {entry['params']}", flush=True)
    sections = [s for s in ("update", "round", "generation") if s in args.only]
    for name in sections:
        need = {"update": 40, "round": 60, "generation": 40}[name] * (2 if big else 1)
        if args.budget.left() < need:
            res["skipped"].append(f"{arch} {name} (budget)")
            continue
        t0 = time.perf_counter()
        try:
            if name == "update":
                entry["update"] = gpu_sd15.bench_update(pipe, args, device, dtype, args.budget)
            elif name == "round":
                entry["round"] = gpu_sd15.bench_round(pipe, args, device, args.budget)
            else:
                entry["generation"] = gpu_sd15.bench_generation(pipe, args, device, dtype, args.budget)
        except Exception as exc:  # keep the other sections' figures
            res["errors"][f"{arch} {name}"] = f"{type(exc).__name__}: {exc}"
        print(f"[gpu_round] {arch} {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        res["elapsed_s"] = time.perf_counter() - args.budget.start
        Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    del pipe
    gpu_sd15._mem_reset(device)


def _x(d: dict, *path, fmt="{:.2f}x"):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return "-"
        d = d[p]
    return fmt.format(d) if isinstance(d, (int, float)) else str(d)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# GPU round benchmark ({res['device_name']}, {res['dtype']} weights, LoRA fp32)", "",
             "| arch | update official / ours | update speed-up | peak memory ratio | round official / ours "
             "| round speed-up | generation ours / stock | compile: steady speed-up, extra first round "
             "| merged LoRA sampling: round speed-up |", "|---|---|---|---|---|---|---|---|---|"]
    for arch in ("sd15", "sdxl"):
        e = res.get(arch)
        if not e:
            continue
        u, r, g, k = e.get("update", {}), e.get("round", {}), e.get("generation", {}), e.get("keys", {})
        lines.append(
            f"| {arch} {e['resolution']} px | {_x(u, 'official_s', fmt='{:.3f}')} / {_x(u, 'ours_s', fmt='{:.3f}')} s "
            f"| {_x(u, 'speedup', 'ratio_of_medians')} | {_x(u, 'memory_ratio_ours_over_official', fmt='{:.2f}')} "
            f"| {_x(r, 'official_s', fmt='{:.1f}')} / {_x(r, 'ours_s', fmt='{:.1f}')} s "
            f"| {_x(r, 'speedup', 'ratio_of_medians')} | {_x(g, 'ours_over_stock', 'ratio_of_medians', fmt='{:.3f}')} "
            f"| {_x(k, 'compile_unet', 'steady_speedup')}, {_x(k, 'compile_unet', 'extra_first_round_s', fmt='{:+.0f} s')} "
            f"| {_x(k, 'sampling_merge_lora', 'steady_speedup')} |")
    for key in ("skipped", "errors"):
        if res.get(key):
            lines.append(f"\n- {key}: {res[key]}")
    lines.append(f"\n- total {res.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_round", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, float32: proves the code runs")
    p.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    p.add_argument("--dtype", choices=tuple(gpu_sd15.DTYPES), default=None, help="default fp16 (float32 with --smoke)")
    p.add_argument("--archs", default="sd15,sdxl")
    p.add_argument("--only", default="update,round,generation,keys")
    p.add_argument("--sd15-pairs", type=int, default=10, help="pairs per update (paper: 10 per GPU)")
    p.add_argument("--sdxl-pairs", type=int, default=2)
    p.add_argument("--sd15-prompts", type=int, default=4, help="prompts per round")
    p.add_argument("--sdxl-prompts", type=int, default=1)
    p.add_argument("--smoke-resolution", type=int, default=32)
    p.add_argument("--keys", default=None,
                   help="speed keys timed on ours' round (default compile_unet,sampling_merge_lora; with "
                        "--smoke sampling_merge_lora: inductor compiles for minutes on a CPU)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--round-reps", type=int, default=1)
    p.add_argument("--sd15-gen-images", type=int, default=8)
    p.add_argument("--sdxl-gen-images", type=int, default=4)
    p.add_argument("--gen-batch", type=int, default=4)
    p.add_argument("--gen-reps", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=440.0, help="skip sections past this")
    p.add_argument("--reserve-s", type=float, default=60.0, help="time kept for later sections")
    p.add_argument("--out", default=str(RESULTS / "gpu_round.json"))
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.dtype = args.dtype or ("float32" if args.smoke else "fp16")
    if args.keys is None:
        args.keys = "sampling_merge_lora" if args.smoke else "compile_unet,sampling_merge_lora"
    setup_torch(1 if args.device == "cpu" else 8)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # as the official scripts (allow_tf32)
        torch.backends.cudnn.allow_tf32 = True
    args.budget = gpu_sd15.Budget(args.budget_s)
    res: dict[str, Any] = {"machine": machine(), "dtype": args.dtype, "smoke": args.smoke,
                           "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                           "args": {k: v for k, v in vars(args).items() if k != "budget"},
                           "skipped": [], "errors": {}}
    counts = parameter_counts()
    res["architecture_params"] = counts
    res["architecture_params_match_released"] = counts == RELEASED
    print(f"[gpu_round] parameter counts (meta device): {counts}; released: {counts == RELEASED}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for arch in archs:
        run_arch(arch, args, res)
    # Last, so that a long compile cannot crowd out the other sections: the keys on SD-1.5
    # (compiling the SDXL UNet alone would take much of the budget).
    if "keys" in args.only and "sd15" in archs and args.budget.left() > 60:
        _arch_args("sd15", args)
        pipe = _build("sd15", args)
        t0 = time.perf_counter()
        try:
            bench_keys(pipe, args, args.device, res["sd15"].setdefault("keys", {}),
                       lambda: Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n"))
        except Exception as exc:
            res["errors"]["sd15 keys"] = f"{type(exc).__name__}: {exc}"
        print(f"[gpu_round] sd15 keys: {time.perf_counter() - t0:.0f} s", flush=True)
        del pipe
    elif "keys" in args.only:
        res["skipped"].append("sd15 keys (budget or sd15 not run)")
    res["elapsed_s"] = time.perf_counter() - args.budget.start
    Path(args.out).write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = markdown(res)
    Path(args.out).with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0 if not res["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
