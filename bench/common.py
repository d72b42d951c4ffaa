"""Shared helpers of the benchmarks: interleaved A/B timing, CPU peak memory, machine facts, output.

Timing: the two sides of a comparison run in the same process, alternating (A B B A A B ...), so a
load change on the shared machine hits both; each figure is the median of its repetitions and the
ratio is taken of the medians (the median of the per-repetition ratios is reported beside it).

Peak memory on the CPU: torch's profiler records every allocation and free of torch's CPU
allocator (``profile_memory=True``, the ``Allocation`` events of its event tree); the peak is the
running maximum of (bytes allocated - bytes freed) inside the measured block, plus the bytes of the
tensors that were resident before it (the base pipeline, counted once per unique storage). Python
objects and the allocator's own slack are not counted; both sides are counted the same way.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def setup_torch(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()


def sync(device: str | torch.device | None = None) -> None:
    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[int], Any]], reps: int, warmup: int = 1,
                device: str | None = None) -> dict[str, Any]:
    """Time each callable ``reps`` times, alternating the order every repetition.

    Each callable receives the repetition index (warm-up runs get negative indices) and may return
    a value, kept per repetition under ``values``.

    Returns:
        {name: {"times": [...], "median_s": m, "values": [...]}} plus "order".
    """
    names = list(fns)
    out = {n: {"times": [], "values": []} for n in names}
    for w in range(warmup):
        for n in names:
            fns[n](-1 - w)
            sync(device)
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            gc.collect()
            sync(device)
            tic = time.perf_counter()
            value = fns[n](r)
            sync(device)
            out[n]["times"].append(time.perf_counter() - tic)
            out[n]["values"].append(value)
    for n in names:
        out[n]["median_s"] = statistics.median(out[n]["times"])
    return out


def ratio(timed: dict[str, Any], slow: str, fast: str) -> dict[str, float]:
    """Speed-up of ``fast`` over ``slow``: ratio of medians and median of per-repetition ratios."""
    per_rep = [s / f for s, f in zip(timed[slow]["times"], timed[fast]["times"])]
    return {"ratio_of_medians": timed[slow]["median_s"] / timed[fast]["median_s"],
            "median_of_ratios": statistics.median(per_rep)}


def tensor_bytes(objs: Iterable[Any]) -> int:
    """Bytes of the unique storages of every tensor of the given modules / tensors."""
    seen, total = set(), 0
    for obj in objs:
        if obj is None:
            continue
        tensors = (list(obj.parameters()) + list(obj.buffers())) if isinstance(obj, torch.nn.Module) else [obj]
        for t in tensors:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def cpu_peak_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak of (allocated - freed) bytes of torch's CPU allocator while ``fn`` runs, and its result."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.typed[0] == _EventType.Allocation and str(e.typed[1].device).startswith("cpu"):
            events.append((e.start_time_ns, e.typed[1].alloc_size))
    events.sort()
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak, result


def machine() -> dict[str, Any]:
    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = ""
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    import diffusers

    return {"nproc": run(["nproc"]), "cpu_model": model, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "date": run(["date", "-u"]),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": os.getloadavg()}


def write_json(name: str, obj: Any, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def mib(n: float) -> float:
    return n / 2 ** 20


def tiny_models_dir(root: Path, families: Iterable[str] = ("sd15",)) -> Path:
    """``root/pipelines/tiny-<family>`` built with the DAG's seeds (tiny-sd15: 1, tiny-sdxl: 2)."""
    from spo.models.tiny import save_tiny_pipeline

    seeds = {"sd15": 1, "sdxl": 2}
    for family in families:
        target = root / "pipelines" / f"tiny-{family}"
        if not target.exists():
            save_tiny_pipeline(family, target, seed=seeds[family])
    return root
