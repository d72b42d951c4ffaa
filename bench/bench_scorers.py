"""Each scorer's throughput on the tiny profile's checkpoints (CPU): images/s, model loaded once.

Every metric of ``config/config.yaml`` is built once through the same path as the score stage
(``resolve_weights`` + ``build_scorer``, tiny weights written by ``save_tiny_weights`` with the
DAG's seeds), then scores the same 1024 images (the 64 of the tiny SD-1.5 base shard, 32 px PIL
images, 16 times) in the metric's configured batch size, ``reps`` times; the median is reported,
and the load time apart.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, tiny_models_dir


def _images(n: int = 64, repeat: int = 16):
    """The tiny SD-1.5 base images of the tiny-eval shard (the generation benchmark's shard)."""
    from bench.bench_generate import _config, _generate, _jobs
    from spo.models.pipelines import load_method_pipeline

    config = _config()
    models_root = tiny_models_dir(RESULTS / "cache" / "models", ("sd15",))
    pipe = load_method_pipeline(config, "tiny-sd15-base", models_root=models_root)
    jobs = _jobs(config)[:n]
    images = _generate(pipe, config, "tiny-sd15-base", jobs)
    return images * repeat, [p for _, p, _ in jobs] * repeat, config


def _tiny_weights(config, metric: str, root: Path) -> Path:
    from spo.metrics.tiny import save_tiny_weights

    spec = config["metrics"][metric]
    folder = root / metric
    seeds = [w["tiny"].get("seed", 0) for w in (spec.get("weights") or {}).values() if "tiny" in w]
    if seeds and not folder.exists():
        save_tiny_weights(spec.get("scorer", metric), folder, seed=seeds[0])
    return folder


def run(quick: bool = True) -> dict[str, Any]:
    from spo.metrics import build_scorer, resolve_weights

    images, prompts, config = _images()
    root = RESULTS / "cache" / "models" / "metrics"
    reps = 5 if quick else 9
    rows = []
    for metric, spec in config["metrics"].items():
        folder = _tiny_weights(config, metric, root)
        tic = time.perf_counter()
        weights = resolve_weights(spec, tiny_root=str(folder))
        scorer = build_scorer(spec.get("scorer", metric), spec, device="cpu",
                              dtype=spec.get("dtype", "float32"), weights=weights)
        load_s = time.perf_counter() - tic
        size = spec.get("batch_size", 16)
        scorer(images[:size], prompts[:size])  # warm-up
        times = []
        for _ in range(reps):
            tic = time.perf_counter()
            for start in range(0, len(images), size):
                scorer(images[start:start + size], prompts[start:start + size])
            times.append(time.perf_counter() - tic)
        med = statistics.median(times)
        rows.append({"metric": metric, "scorer": spec.get("scorer", metric), "version": scorer.version,
                     "batch_size": size, "images": len(images), "load_s": load_s,
                     "median_s": med, "images_per_s": len(images) / med, "times": times})
        del scorer
    return {"what": "scorer throughput on tiny checkpoints, 32 px images, CPU, model loaded once",
            "scorers": rows}
