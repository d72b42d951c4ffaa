"""SPO training update and full SPO round: ours against the official structure (tiny SD-1.5, CPU).

Update: one micro-batch of real sampled pairs (forward, loss, backward, clip, AdamW step), both
sides starting from the same LoRA (seeded non-zero B so the loss is not ln 2) and applying the same
sequence of updates; the losses are asserted equal to 1e-5 at every repetition.
Round: the tiny profile's round (32 prompts, k 4, 20 DDIM steps, [0, 750], CFG 5, eta 1,
micro-batches of 64 pairs), colourfulness as the preference on both sides.
Peak memory: ``bench.common.cpu_peak_bytes`` over (trainer set-up + the measured work), plus the
bytes of the pipeline resident before it; the set-up includes the official deep copy.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.common import cpu_peak_bytes, interleaved, mib, ratio, tensor_bytes
from bench.spo_setup import (Official, Ours, copy_lora, perturb_lora, sampled_pairs, settings,
                             tiny_pipe, to_official, twin_pipes)

RESOLUTION = 32  # the tiny profile's generation.resolution


def _prompts(n: int) -> list[str]:
    from spo.prompts import load_prompt_set

    from bench.common import REPO

    frame = load_prompt_set({"source": {"path": "data/prompts/tiny_train.tsv"}}, REPO)
    texts = list(frame["prompt"])
    return [texts[i % len(texts)] for i in range(n)]


def _pipe_bytes(pipe) -> int:
    return tensor_bytes([pipe.unet, pipe.vae, pipe.text_encoder])


def bench_update(batch_size: int, reps: int, lora_scale: float = 0.02) -> dict[str, Any]:
    s = settings(train_batch_size=batch_size)
    pipe_ours, pipe_off = twin_pipes("sd15")
    n_prompts = max(1, -(-batch_size // 16))  # 16 trained transitions per prompt
    data = sampled_pairs(pipe_ours, s, _prompts(n_prompts), RESOLUTION)
    batch = data.pairs.select(torch.arange(batch_size))
    off_batch = to_official(batch, data.cond)
    ours = Ours(pipe_ours, s, RESOLUTION)
    perturb_lora(pipe_ours.unet, lora_scale)
    off = Official(pipe_off, s, RESOLUTION)
    copy_lora(pipe_ours.unet, pipe_off.unet)
    pipe_ours.unet.train(), pipe_off.unet.train()
    timed = interleaved({"official": lambda r: off.step(off_batch),
                         "ours": lambda r: ours.step(batch, data.cond)}, reps=reps, warmup=1)
    diffs = [abs(a - b) for a, b in zip(timed["ours"]["values"], timed["official"]["values"])]
    first = timed["ours"]["values"][0]
    assert max(diffs) < 1e-5, f"losses differ by {max(diffs):.3g} (> 1e-5)"
    assert abs(first - 0.6931471805599453) > 1e-4, "the LoRA is a no-op: loss = ln 2"

    mem = {name: update_memory(name, s, batch, off_batch, data.cond, lora_scale)
           for name in ("official", "ours")}
    return {
        "what": "SPO training update (forward, loss, backward, clip, AdamW step) on one micro-batch",
        "model": "tiny SD-1.5 (spo.models.tiny, seed 1), 32 px (4x4 latents), float32",
        "pairs_per_update": batch_size, "lora_rank": s.lora_rank,
        "official_s": timed["official"]["median_s"], "ours_s": timed["ours"]["median_s"],
        "official_pairs_per_s": batch_size / timed["official"]["median_s"],
        "ours_pairs_per_s": batch_size / timed["ours"]["median_s"],
        "speedup": ratio(timed, "official", "ours"),
        "loss_ours": timed["ours"]["values"], "loss_official": timed["official"]["values"],
        "loss_max_abs_diff": max(diffs), "loss_equal_1e-5": max(diffs) < 1e-5,
        "memory": mem,
        "memory_ratio_ours_over_official": mem["ours"]["peak_bytes"] / mem["official"]["peak_bytes"],
        "times": {k: v["times"] for k, v in timed.items() if k != "order"},
    }


def update_memory(which: str, s, batch, off_batch, cond, lora_scale: float) -> dict[str, Any]:
    """Peak bytes of (set-up + 2 updates) on a fresh pipeline, plus the resident pipeline."""
    pipe = tiny_pipe("sd15")
    resident = _pipe_bytes(pipe) + tensor_bytes([batch.xt_w, batch.x_w, batch.x_l, cond.cond,
                                                 cond.uncond, off_batch.prompt_embeds])
    holder = {}

    def work():
        if which == "ours":
            t = Ours(pipe, s, RESOLUTION)
            perturb_lora(pipe.unet, lora_scale)
            pipe.unet.train()
            losses = [t.step(batch, cond) for _ in range(2)]
        else:
            t = Official(pipe, s, RESOLUTION)
            perturb_lora(pipe.unet, lora_scale)
            pipe.unet.train()
            losses = [t.step(off_batch) for _ in range(2)]
        holder["t"] = t
        return losses

    peak, _ = cpu_peak_bytes(work)
    t = holder["t"]
    ref = t.trainer.ref if which == "official" else None
    opt_state = sum(v.numel() * v.element_size() for st in (t.optimizer if which == "ours" else t.trainer.optimizer).state.values()
                    for v in st.values() if torch.is_tensor(v))
    return {"peak_bytes": resident + peak, "peak_mib": mib(resident + peak),
            "resident_before_mib": mib(resident), "peak_during_mib": mib(peak),
            "deep_copied_reference_mib": mib(tensor_bytes([ref])) if ref is not None else 0.0,
            "optimizer_state_mib": mib(opt_state)}


# Sides of the round comparison beside ``ours`` (the defaults): ours with one speed key on
# (spo.training.round_speed; each changes the last bits, so each is off by default).
KEY_SIDES = {"ours+sampling_merge_lora": {"sampling_merge_lora": True},
             "ours+channels_last": {"channels_last": True}}


def bench_round(prompts_per_round: int, reps: int, keys: bool = True) -> dict[str, Any]:
    """Official structure vs ``run_round`` (the trainer's own round function), interleaved; with
    ``keys``, also ``run_round`` with each speed key of ``KEY_SIDES`` on its own pipeline."""
    from spo.preference import build_preference

    s = settings(prompts_per_round=prompts_per_round)
    pipe_ours, pipe_off = twin_pipes("sd15")
    ours = Ours(pipe_ours, s, RESOLUTION)
    off = Official(pipe_off, s, RESOLUTION)
    copy_lora(pipe_ours.unet, pipe_off.unet)
    pref = build_preference(s.preference)
    prompts = _prompts(prompts_per_round)
    sides = {}
    for name, extra in (KEY_SIDES.items() if keys else ()):
        pipe = tiny_pipe("sd15")
        sides[name] = Ours(pipe, settings(prompts_per_round=prompts_per_round, **extra), RESOLUTION)
        copy_lora(pipe_ours.unet, pipe.unet)

    def gen(r):
        return torch.Generator().manual_seed(1000 + r)

    # ours: run_round's round r + 1 (its draws are seeded by the round; warm-up is round 0)
    fns = {"official": lambda r: off.round(prompts, pref, gen(r)),
           "ours": lambda r: ours.round(prompts, pref, r + 1)}
    fns.update({name: (lambda r, side=side: side.round(prompts, pref, r + 1)) for name, side in sides.items()})
    timed = interleaved(fns, reps=reps, warmup=1)
    pairs = timed["ours"]["values"][0]["pairs"]
    import statistics

    names = [n for n in fns]
    phases = {side: {ph: statistics.median(v[ph] for v in timed[side]["values"]) for ph in ("sample_s", "train_s")}
              for side in names}
    # If only the training phase differed, the round speed-up would be (S + T_off) / (S + T_ours);
    # the update's speed-up caps it at 1 / ((1 - f) + f / update_speedup), f = official train share.
    f = phases["official"]["train_s"] / (phases["official"]["sample_s"] + phases["official"]["train_s"])
    mem = {name: round_memory(name, s, prompts) for name in ("official", "ours")}
    return {
        "what": "full SPO round: sample k candidates per trained step, decode, score, then the updates; "
                "ours = spo.training.spo_trainer.run_round",
        "model": "tiny SD-1.5, 32 px, float32; preference: colourfulness (analytic) on both sides",
        "prompts_per_round": prompts_per_round, "k": s.k, "num_inference_steps": s.num_inference_steps,
        "timestep_range": list(s.timestep_range), "train_batch_size": s.train_batch_size,
        "pairs_per_round": pairs,
        "pairs_per_round_official": timed["official"]["values"][0]["pairs"],
        "official_s": timed["official"]["median_s"], "ours_s": timed["ours"]["median_s"],
        "speedup": ratio(timed, "official", "ours"),
        "keys": {name: {"round_s": timed[name]["median_s"], "speedup_vs_official": ratio(timed, "official", name),
                        "speedup_vs_ours_default": ratio(timed, "ours", name),
                        "sampling_speedup_vs_ours_default": phases["ours"]["sample_s"] / phases[name]["sample_s"]}
                 for name in sides},
        "phases_median_s": phases, "official_train_share": f,
        "sampling_speedup": phases["official"]["sample_s"] / phases["ours"]["sample_s"],
        "training_speedup": phases["official"]["train_s"] / phases["ours"]["train_s"],
        "memory": mem,
        "memory_ratio_ours_over_official": mem["ours"]["peak_bytes"] / mem["official"]["peak_bytes"],
        "times": {k: v["times"] for k, v in timed.items() if k != "order"},
    }


def bench_compile(prompts_per_round: int, rounds: int) -> dict[str, Any]:
    """``train.compile_unet`` on and off, each on its own pipeline: the first round (compile time
    included) and the median of the next ``rounds`` (alternating sides)."""
    import statistics
    import time

    from spo.preference import build_preference

    pref, prompts = build_preference({"name": "colorfulness"}), _prompts(prompts_per_round)
    sides = {name: Ours(tiny_pipe("sd15"), settings(prompts_per_round=prompts_per_round, compile_unet=on),
                        RESOLUTION) for name, on in (("eager", False), ("compiled", True))}
    first, steady = {}, {n: [] for n in sides}
    for name, side in sides.items():
        tic = time.perf_counter()
        side.round(prompts, pref, 0)
        first[name] = time.perf_counter() - tic
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            tic = time.perf_counter()
            sides[name].round(prompts, pref, r + 1)
            steady[name].append(time.perf_counter() - tic)
    med = {n: statistics.median(v) for n, v in steady.items()}
    saved = med["eager"] - med["compiled"]
    return {"what": "train.compile_unet (torch.compile of the UNet, inductor, CPU)",
            "first_round_s": first, "round_median_s": med, "rounds": steady,
            "speedup": med["eager"] / med["compiled"],
            "compile_overhead_s": first["compiled"] - first["eager"],
            "rounds_to_pay_back": (first["compiled"] - first["eager"]) / saved if saved > 0 else None}


def round_memory(which: str, s, prompts) -> dict[str, Any]:
    from spo.preference import build_preference

    pipe = tiny_pipe("sd15")
    resident = _pipe_bytes(pipe)
    pref = build_preference(s.preference)

    def work():
        if which == "ours":
            return Ours(pipe, s, RESOLUTION).round(prompts, pref, 7)
        return Official(pipe, s, RESOLUTION).round(prompts, pref, torch.Generator().manual_seed(7))

    peak, _ = cpu_peak_bytes(work)
    return {"peak_bytes": resident + peak, "peak_mib": mib(resident + peak),
            "resident_before_mib": mib(resident), "peak_during_mib": mib(peak)}


def run(quick: bool = True) -> dict[str, Any]:
    update_sizes = [64] if quick else [10, 64]
    out = {"update": [bench_update(b, reps=7 if quick else 15) for b in update_sizes]}
    out["round"] = bench_round(32, reps=3 if quick else 5)
    if not quick:
        out["compile"] = bench_compile(32, rounds=4)
    return out
