"""Run the CPU benchmarks and write JSON results plus a Markdown summary.

    .venv/bin/python -m bench.run --quick          # about 3-4 minutes on 2 CPU cores
    .venv/bin/python -m bench.run                  # more repetitions and sizes
    .venv/bin/python -m bench.run --only spo,dag --dag-run /path/to/finished/run

Writes ``bench/results/<part>.json`` (spo, generate, scorers, dag, machine) and
``bench/results/summary.md``. The GPU counterpart is ``bench/gpu_sd15.sh`` (not run here).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, setup_torch, write_json

PARTS = ("spo", "generate", "scorers", "dag")
TARGETS = {"update": 1.8, "round": 1.3, "memory": 0.6, "generation": 0.95, "dag_s": 600.0}


def _ok(flag: bool) -> str:
    return "met" if flag else "**not met**"


def summary(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"# Benchmark summary ({'quick' if results['quick'] else 'full'})", "",
             f"Machine: {m['nproc']} CPU cores ({m['cpu_model']}), torch {m['torch']}, diffusers "
             f"{m['diffusers']}, {m['torch_threads']} torch thread; date {m['date']}; load average "
             f"at start {m['loadavg_start'][0]:.2f}, at end {results.get('loadavg_end', [0])[0]:.2f}. "
             f"Total {results.get('elapsed_s', 0):.0f} s.", ""]
    spo = results.get("spo")
    if spo:
        lines += ["## SPO training update and round (tiny SD-1.5, CPU, float32)", "",
                  "| measurement | official structure | ours | ours / official | target |",
                  "|---|---|---|---|---|"]
        for u in spo["update"]:
            sp = u["speedup"]["ratio_of_medians"]
            lines.append(f"| update, {u['pairs_per_update']} pairs: time | {u['official_s'] * 1e3:.0f} ms "
                         f"| {u['ours_s'] * 1e3:.0f} ms | {sp:.2f}x throughput (median of ratios "
                         f"{u['speedup']['median_of_ratios']:.2f}) | >= {TARGETS['update']}x: {_ok(sp >= TARGETS['update'])} |")
            lines.append(f"| update, {u['pairs_per_update']} pairs: loss max abs diff over "
                         f"{len(u['loss_ours'])} steps | | | {u['loss_max_abs_diff']:.1e} | <= 1e-5: "
                         f"{_ok(u['loss_equal_1e-5'])} |")
            mo, mu = u["memory"]["official"], u["memory"]["ours"]
            lines.append(f"| update, {u['pairs_per_update']} pairs: peak memory | {mo['peak_mib']:.1f} MiB "
                         f"(deep copy {mo['deep_copied_reference_mib']:.1f}) | {mu['peak_mib']:.1f} MiB "
                         f"| {u['memory_ratio_ours_over_official']:.2f} | <= {TARGETS['memory']}: "
                         f"{_ok(u['memory_ratio_ours_over_official'] <= TARGETS['memory'])} |")
        r = spo["round"]
        sp = r["speedup"]["ratio_of_medians"]
        lines.append(f"| round ({r['prompts_per_round']} prompts, k {r['k']}, {r['pairs_per_round']} pairs): "
                     f"time | {r['official_s']:.2f} s | {r['ours_s']:.2f} s | {sp:.2f}x (median of ratios "
                     f"{r['speedup']['median_of_ratios']:.2f}) | >= {TARGETS['round']}x: {_ok(sp >= TARGETS['round'])} |")
        ph = r["phases_median_s"]
        lines.append(f"| round: sampling phase (sample, decode, score) | {ph['official']['sample_s']:.2f} s | "
                     f"{ph['ours']['sample_s']:.2f} s | {r['sampling_speedup']:.2f}x | |")
        lines.append(f"| round: training phase ({r['pairs_per_round'] // r['train_batch_size']} updates) | "
                     f"{ph['official']['train_s']:.2f} s | {ph['ours']['train_s']:.2f} s | "
                     f"{r['training_speedup']:.2f}x | |")
        for name, k in r.get("keys", {}).items():
            lines.append(f"| round, {name} (off by default) | {r['official_s']:.2f} s | {k['round_s']:.2f} s | "
                         f"{k['speedup_vs_official']['ratio_of_medians']:.2f}x (median of ratios "
                         f"{k['speedup_vs_official']['median_of_ratios']:.2f}; vs ours default "
                         f"{k['speedup_vs_ours_default']['median_of_ratios']:.2f}) | |")
        c = spo.get("compile")
        if c:
            lines.append(f"| round, train.compile_unet (first round {c['first_round_s']['compiled']:.0f} s vs "
                         f"{c['first_round_s']['eager']:.1f} s eager) | {c['round_median_s']['eager']:.2f} s (eager) | "
                         f"{c['round_median_s']['compiled']:.2f} s | {c['speedup']:.2f}x steady | |")
        lines.append(f"| round: peak memory | {r['memory']['official']['peak_mib']:.1f} MiB | "
                     f"{r['memory']['ours']['peak_mib']:.1f} MiB | {r['memory_ratio_ours_over_official']:.2f} "
                     f"| <= {TARGETS['memory']}: {_ok(r['memory_ratio_ours_over_official'] <= TARGETS['memory'])} |")
        lines += ["", "Peak memory: torch CPU allocator, allocated minus freed inside (trainer set-up + "
                  "the work), plus the resident pipeline (bench/common.py).", ""]
    gen = results.get("generate")
    if gen:
        lines += ["## Generation (one tiny-eval shard: 64 images, 20 DDIM steps, 32 px, CPU)", "",
                  "| method | stock images/s | ours images/s | ours / stock | identical images | target |",
                  "|---|---|---|---|---|---|"]
        for g in gen["methods"]:
            lines.append(f"| {g['method']}{' (LoRA)' if g['lora'] else ''} | {g['stock_images_per_s']:.1f} | "
                         f"{g['ours_images_per_s']:.1f} | {g['ours_over_stock']:.3f} (median of ratios "
                         f"{g['ours_over_stock_median_of_ratios']:.3f}) | {g['identical_images']} | >= "
                         f"{TARGETS['generation']}: {_ok(g['ours_over_stock'] >= TARGETS['generation'])} |")
            if "ours_e2e_images_per_s" in g:
                lines.append(f"| {g['method']}, end to end (load + sample + PNG; ours = generate_shard) | "
                             f"{g['stock_e2e_images_per_s']:.1f} | {g['ours_e2e_images_per_s']:.1f} | "
                             f"{g['ours_over_stock_e2e']:.3f} | | (information) |")
        lines.append("")
    sc = results.get("scorers")
    if sc:
        lines += ["## Scorers (tiny checkpoints, 32 px, CPU, model loaded once)", "",
                  "| metric | version | batch | images/s | load s |", "|---|---|---|---|---|"]
        for s in sc["scorers"]:
            lines.append(f"| {s['metric']} | {s['version']} | {s['batch_size']} | {s['images_per_s']:.0f} | "
                         f"{s['load_s']:.2f} |")
        lines.append("")
    dag = results.get("dag")
    if dag and "skipped" not in dag:
        wall = dag.get("wall_clock_s", float("nan"))
        lines += ["## Tiny DAG (read from a finished run)", "",
                  f"Run: `{dag['run_dir']}`, {dag['jobs']} jobs on {dag['cores']} cores.", "",
                  f"- wall-clock: {wall:.0f} s ({wall / 60:.1f} min); target <= 10 min: "
                  f"{_ok(wall <= TARGETS['dag_s'])}",
                  f"- critical path: {dag['critical_path_s']:.0f} s: "
                  + " -> ".join(f"{c['job']} ({c['s']:.0f} s)" for c in dag["critical_path"]),
                  f"- job-seconds {dag['total_job_s']:.0f} s (CPU {dag['total_cpu_s']:.0f} s); bound "
                  f"max(critical path, job-seconds / cores) = {dag['lower_bound_s']:.0f} s",
                  "- by rule (jobs, job-seconds): " + ", ".join(
                      f"{k} {v['jobs']} / {v['s']:.0f} s" for k, v in sorted(
                          dag["by_rule"].items(), key=lambda kv: -kv[1]["s"]))]
        if "metadata_check" in dag:
            lines.append(f"- derived dependency structure equals Snakemake's recorded inputs: "
                         f"{dag['metadata_check']['match']}")
        if "startup" in dag:
            lines.append(f"- one job process's imports: {dag['startup']['wall_s']:.1f} s wall, "
                         f"{dag['startup']['cpu_s']:.1f} s CPU (x {dag['jobs']} jobs)")
        lines.append("")
    elif dag:
        lines += ["## Tiny DAG", "", dag["skipped"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (~4 min)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {PARTS}")
    parser.add_argument("--dag-run", default=None, help="a Snakemake directory with a finished run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; allowed: {', '.join(PARTS)}")
    setup_torch(args.threads)
    out = Path(args.out)
    tic = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick, "machine": machine()}
    write_json("machine", results["machine"], out)
    for part in parts:
        t0 = time.perf_counter()
        print(f"[bench] {part} ...", flush=True)
        if part == "spo":
            from bench import bench_spo
            results[part] = bench_spo.run(args.quick)
        elif part == "generate":
            from bench import bench_generate
            results[part] = bench_generate.run(args.quick)
        elif part == "scorers":
            from bench import bench_scorers
            results[part] = bench_scorers.run(args.quick)
        else:
            from bench import bench_dag
            results[part] = bench_dag.run(args.dag_run)
            if "skipped" not in results[part]:
                results[part]["startup"] = bench_dag.startup_cost()
        results[part]["elapsed_s"] = time.perf_counter() - t0
        write_json(part, results[part], out)
        print(f"[bench] {part}: {results[part]['elapsed_s']:.0f} s", flush=True)
    results["elapsed_s"] = time.perf_counter() - tic
    results["loadavg_end"] = os.getloadavg()
    text = summary(results)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
