"""Resume after SIGTERM on the device the job runs on: how far the resumed LoRA is from an
uninterrupted run's, next to how far two uninterrupted runs are from each other.

    python -m bench.gpu_resume                 # the default device (cuda when there is one)
    CUDA_VISIBLE_DEVICES= python -m bench.gpu_resume --out bench/results/cpu_resume.json

The job is the one of ``tests/spo/test_spo_preemption.py`` (tiny SD-1.5, SPO with the
colourfulness preference, 6 rounds of 4 prompts, a checkpoint every round), run as SLURM runs it:
``python -m spo train`` in a subprocess; the killed run gets SIGTERM once its first checkpoint
exists and is rerun. On the CPU the three LoRAs are bit-identical (the test asserts it); on a GPU,
kernels that accumulate in a data-dependent order can make even the two uninterrupted runs differ,
and then the resumed run can only be as close as those are. Results: ``--out`` (JSON) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METHOD = "tiny-sd15-spo-colorfulness"


def _config(tmp: Path) -> Path:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    train = dict(config["methods"][METHOD]["train"])
    train.update(num_inference_steps=4, timestep_range=[0, 1000], prompts_per_round=4,
                 train_batch_size=8, max_rounds=6, checkpoint_every=1)
    config["methods"][METHOD]["train"] = train
    config["prompt_sets"]["tiny-train"]["source"]["path"] = str(REPO / "data/prompts/tiny_train.tsv")
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _job(config: Path, out: Path, ckpt: Path, models: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spo", "train", "--config", str(config), "--method", METHOD,
           "--checkpoints", str(ckpt), "--models-root", str(models), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(job: subprocess.Popen, what: str) -> str:
    text = job.communicate(timeout=900)[0]
    if job.returncode != 0:
        raise SystemExit(f"{what} failed (exit {job.returncode}):\n{text[-3000:]}")
    return text


def _lora(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def _distance(a: dict, b: dict) -> dict:
    import torch

    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    scale = max(float(a[k].double().abs().max()) for k in a)
    return {"max_abs": diff, "max_abs_over_max_weight": diff / scale if scale else 0.0,
            "identical_tensors": sum(bool(torch.equal(a[k], b[k])) for k in a), "tensors": len(a)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_resume", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "bench/results/gpu_resume.json"))
    args = p.parse_args(argv)
    import torch

    from spo.models.tiny import save_tiny_pipeline

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        save_tiny_pipeline("sd15", tmp / "models" / "pipelines" / "tiny-sd15", seed=1)
        config = _config(tmp)
        times = {}
        for name in ("a", "a2"):
            tic = time.perf_counter()
            _finish(_job(config, tmp / name, tmp / f"c{name}", tmp / "models"), f"run {name}")
            times[name] = time.perf_counter() - tic
        job = _job(config, tmp / "b", tmp / "cb", tmp / "models")
        while not list((tmp / "cb").glob("step-*/MANIFEST.json")) and job.poll() is None:
            time.sleep(0.2)
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=300)
        killed_at = sorted(int(q.name.split("-")[1]) for q in (tmp / "cb").glob("step-*"))
        text = _finish(_job(config, tmp / "b", tmp / "cb", tmp / "models"), "rerun")
        a, a2, b = (_lora(tmp / n) for n in ("a", "a2", "b"))
        res = {"device": device, "torch": torch.__version__, "killed_exit_code": job.returncode,
               "checkpoints_at_kill": killed_at, "resumed": "resuming at round" in text,
               "seconds": times, "straight_vs_straight": _distance(a, a2),
               "straight_vs_resumed": _distance(a, b)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
