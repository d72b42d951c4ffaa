"""A training job killed by SLURM's SIGTERM resumes, on rerun, to the uninterrupted run's LoRA.

Runs `python -m spo train` as SLURM would (a subprocess), sends SIGTERM once the first
checkpoint exists, checks the job exits with the preemption code after writing a checkpoint,
reruns it, and compares the final LoRA with an uninterrupted run's, bit for bit. The jobs run on
the CPU also on a GPU machine: CUDA kernels do not promise the same bits twice, and on an H200 two
uninterrupted runs of this job differ by 11 % of the largest LoRA weight (``bench/gpu_resume.py``,
BENCHMARKS.md); what is checked here is what the checkpoint restores, which does not depend on the
device.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from spo.checkpoint import PREEMPTED_EXIT_CODE


def _config(repo_root, tmp_path, models_root, random_init):
    from spo.config import load_config

    config = random_init(load_config([repo_root / "config/config.yaml"], root=repo_root))
    train = dict(config["methods"]["tiny-sd15-spo-colorfulness"]["train"])
    train.update(num_inference_steps=4, timestep_range=[0, 1000], prompts_per_round=4,
                 train_batch_size=8, max_rounds=6, checkpoint_every=1)
    config["methods"]["tiny-sd15-spo-colorfulness"]["train"] = train
    config["prompt_sets"]["tiny-train"]["source"]["path"] = str(repo_root / "data/prompts/tiny_train.tsv")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config, out, ckpt, models_root, **popen):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "spo", "train", "--config", str(config), "--method",
           "tiny-sd15-spo-colorfulness", "--checkpoints", str(ckpt), "--models-root",
           str(models_root), "--threads", "1", "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_matches(repo_root, tiny_models, tmp_path, random_init):
    from safetensors.torch import load_file

    config = _config(repo_root, tmp_path, tiny_models, random_init)
    straight = _train(config, tmp_path / "a", tmp_path / "ca", tiny_models)
    out_a = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, out_a[-3000:]

    job = _train(config, tmp_path / "b", tmp_path / "cb", tiny_models)
    deadline = time.time() + 300
    while not list((tmp_path / "cb").glob("step-*/MANIFEST.json")) and job.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    out_b = job.communicate(timeout=300)[0]
    assert job.returncode == PREEMPTED_EXIT_CODE, out_b[-3000:]
    assert not (tmp_path / "b").exists()  # no half-written output
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "cb").glob("step-*"))
    assert steps and steps[-1] < 6, steps  # it stopped midway

    rerun = _train(config, tmp_path / "b", tmp_path / "cb", tiny_models)
    out_c = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out_c[-3000:]
    assert "resuming at round" in out_c
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
