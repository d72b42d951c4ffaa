"""The figures (issue 7) on small synthetic inputs: files written, grid sizes, win / draw / loss
arithmetic by hand, missing-prompt errors, and the trainer's Figure 5 dump."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spo.report.figures import FigureError, MissingImagesError, make_figure
from spo.report.figures_stats import win_draw_loss

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base_config():
    from spo.config import load_config

    return load_config([REPO / "config" / "config.yaml"], root=REPO)


def _png(path: Path, colour, side=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), tuple(colour)).save(path)


def _prompt_set(tmp: Path, name: str, n: int) -> tuple[dict, list[str]]:
    ids = [f"{name}_p{i}" for i in range(n)]
    tsv = tmp / f"{name}.tsv"
    tsv.write_text("prompt_id\tprompt\n" + "".join(f"{i}\tprompt number {i}\n" for i in ids))
    return {"source": {"path": str(tsv)}, "images_per_prompt": 1}, ids


def _shard(tmp: Path, method: str, prompt_set: str, ids, colour=(200, 30, 30)) -> Path:
    folder = tmp / "images" / method / prompt_set / "shard-0"
    rows = []
    for pid in ids:
        _png(folder / f"{pid}_0.png", colour)
        rows.append({"method": method, "prompt_set": prompt_set, "prompt_id": pid,
                     "prompt": f"prompt number {pid}", "image_index": 0, "path": f"{pid}_0.png"})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder


def _config(base, tmp, figures, n_prompts=8, name="fig"):
    config = copy.deepcopy(base)
    spec, ids = _prompt_set(tmp, name, n_prompts)
    config["prompt_sets"][name] = spec
    config["figures"] = figures
    return config, ids


def test_figure2_grid_is_methods_by_prompts(base_config, tmp_path):
    rows = ["tiny-sd15-base", "tiny-sd15-diffusion-dpo", "tiny-sd15-spo"]
    config, ids = _config(base_config, tmp_path, {"figure2": {"prompt_set": "fig", "rows": rows}})
    colours = [(128, 128, 128), (120, 100, 90), (230, 20, 40)]  # grey, dull, vivid
    shards = [_shard(tmp_path, m, "fig", ids, c) for m, c in zip(rows, colours)]
    out = tmp_path / "figures" / "figure2.png"
    data = make_figure(config, "figure2", shards, out)
    assert out.is_file() and (tmp_path / "figures" / "figure2.json").is_file()
    assert data["shape"] == [3, 8]
    assert [c["method"] for c in data["cells"][1]] == ["tiny-sd15-diffusion-dpo"] * 8
    assert [c["prompt_id"] for c in data["cells"][0]] == ids  # file order
    assert data["mean_colorfulness"]["tiny-sd15-base"] < data["mean_colorfulness"]["tiny-sd15-spo"]
    assert Image.open(out).size[0] > Image.open(out).size[1]  # wide: 8 columns, 3 rows


def test_figure11_wraps_one_method_into_rows_of_five(base_config, tmp_path):
    config, ids = _config(base_config, tmp_path, {"figure11": {
        "prompt_set": "fig", "rows": ["tiny-sdxl-mspo-colorfulness"], "columns": 5}}, n_prompts=20)
    shard = _shard(tmp_path, "tiny-sdxl-mspo-colorfulness", "fig", ids)
    data = make_figure(config, "figure11", [shard], tmp_path / "figure11.png")
    assert data["shape"] == [4, 5]
    assert [c["prompt_id"] for c in data["cells"][3]] == ids[15:]


def test_missing_figure_images_name_the_prompts(base_config, tmp_path):
    rows = ["tiny-sd15-base", "tiny-sd15-spo"]
    config, ids = _config(base_config, tmp_path, {"figure2": {"prompt_set": "fig", "rows": rows}})
    shards = [_shard(tmp_path, "tiny-sd15-base", "fig", ids),
              _shard(tmp_path, "tiny-sd15-spo", "fig", ids[:5])]
    with pytest.raises(MissingImagesError) as err:
        make_figure(config, "figure2", shards, tmp_path / "figure2.png")
    message = str(err.value)
    assert "tiny-sd15-spo" in message and "3 of 8" in message
    assert all(pid in message for pid in ids[5:]) and ids[0] not in message
    assert not (tmp_path / "figure2.png").exists()


def test_win_draw_loss_by_hand():
    mine = pd.DataFrame({"prompt_id": ["a", "b", "c", "d"], "image_index": 0,
                         "score": [1.0, 2.0, 3.0, 4.0]})
    theirs = pd.DataFrame({"prompt_id": ["a", "b", "c", "d"], "image_index": 0,
                           "score": [0.0, 2.0, 3.5, 4.05]})
    # Differences +1, 0, -0.5, -0.05. Exact comparison: 1 win, 1 draw, 2 losses.
    exact = win_draw_loss(mine, theirs, 0.0)
    assert (exact["win"], exact["draw"], exact["loss"]) == (1, 1, 2)
    # Pooled sd of the 8 scores is 1.4578, so 0.1 sd = 0.1458: -0.05 becomes a draw.
    r = win_draw_loss(mine, theirs, 0.1)
    assert r["tolerance_abs"] == pytest.approx(0.14578, abs=1e-4)
    assert (r["win"], r["draw"], r["loss"], r["n"]) == (1, 2, 1, 4)
    assert (r["win_pct"], r["draw_pct"], r["loss_pct"]) == (25.0, 50.0, 25.0)
    # Pairs are matched on (prompt_id, image_index): a shuffled opponent gives the same answer.
    assert win_draw_loss(mine, theirs.iloc[::-1], 0.1)["win"] == 1


def _scores(method, values, metric):
    return pd.DataFrame({"method": method, "prompt_set": "tiny-eval", "shard": 0,
                         "prompt_id": [f"p{i}" for i in range(len(values))], "image_index": 0,
                         "metric": metric, "metric_version": metric + "-v", "score": values,
                         "path": "x.png"})


def test_figure6_rates_per_opponent_and_metric(base_config, tmp_path):
    config = copy.deepcopy(base_config)
    config["figures"] = {"figure6": {"prompt_set": "tiny-eval", "method": "tiny-sd15-spo",
                                     "opponents": [{"method": "tiny-sd15-diffusion-dpo", "paper": "diffusion-dpo"},
                                                   {"method": "tiny-sd15-base", "paper": "base"}],
                                     "draw_tolerance": 0.0}}
    files = []
    for method, values in (("tiny-sd15-spo", [3, 3, 3, 3]), ("tiny-sd15-base", [1, 1, 3, 5]),
                           ("tiny-sd15-diffusion-dpo", [2, 2, 2, 2])):
        for metric in ("colorfulness", "pickscore"):
            files.append(tmp_path / f"{method}-{metric}.parquet")
            _scores(method, [float(v) for v in values], metric).to_parquet(files[-1])
    out = tmp_path / "figure6.png"
    data = make_figure(config, "figure6", files, out)
    table = pd.read_csv(tmp_path / "figure6.csv")
    assert out.is_file() and len(table) == 4
    base = table[(table.opponent == "tiny-sd15-base") & (table.metric == "pickscore")].iloc[0]
    assert (base.win, base.draw, base.loss) == (2, 1, 1)
    dpo = table[table.opponent == "tiny-sd15-diffusion-dpo"]
    assert (dpo.win_pct == 100).all()
    assert np.allclose(table.win_pct + table.draw_pct + table.loss_pct, 100)
    assert data["paper_source"]  # the human bars say where they come from


def test_figure5_lays_out_win_over_lose(base_config, tmp_path):
    config = copy.deepcopy(base_config)
    config["figures"] = {"figure5": {"methods": ["tiny-sd15-spo"], "pairs": 2}}
    folder = tmp_path / "train" / "tiny-sd15-spo"
    index = []
    for r in (0, 19):
        for i in range(3):
            entry = {"round": r, "pair": i, "t": 701 - 50 * i, "t_scored": 651, "prompt": "a cat",
                     "score_win": 1.0 + i, "score_lose": 0.5, "win": f"{r}_{i}_w.png", "lose": f"{r}_{i}_l.png"}
            _png(folder / "examples" / entry["win"], (250, 0, 0))
            _png(folder / "examples" / entry["lose"], (90, 90, 90))
            index.append(entry)
    (folder / "examples" / "index.json").write_text(json.dumps(index))
    data = make_figure(config, "figure5", [folder], tmp_path / "figure5.png")
    assert data["shape"] == [2, 4]  # preferred / dispreferred x (2 pairs of round 0 + 2 of round 19)
    assert [e["round"] for e in data["pairs"]["tiny-sd15-spo"]] == [0, 0, 19, 19]
    assert data["win_above_lose"]["tiny-sd15-spo"] == 1.0
    with pytest.raises(FigureError, match="dump_examples"):
        make_figure(config, "figure5", [tmp_path / "train" / "nothing" / "tiny-sd15-spo"],
                    tmp_path / "x.png")


def test_spm_accuracy_training_curves_and_compute(base_config, tmp_path):
    config = copy.deepcopy(base_config)
    config["figures"] = {"spm_accuracy": {}, "training_curves": {}, "compute": {}}
    csv = tmp_path / "validation.csv"
    pd.DataFrame([{"run": "tiny-sd15-spm", "stage": s, "step": st, "t": t, "accuracy": a,
                   "ceiling": c, "pairs": 600}
                  for s, st, a, c in (("init", 0, 0.5, float("nan")), ("final", 300, 0.8, 0.95))
                  for t in (0, 501, 951)]).to_csv(csv, index=False)
    data = make_figure(config, "spm_accuracy", [csv], tmp_path / "spm_accuracy.png")
    assert len(data["rows"]) == 6 and (tmp_path / "spm_accuracy.png").is_file()

    folders = []
    for m in ("tiny-sd15-spo", "tiny-sdxl-mspo-colorfulness"):
        folders.append(tmp_path / "train" / m)
        folders[-1].mkdir(parents=True)
        lines = [{"round": r, "step": 2 * r + j, "loss": 0.69 - 0.01 * r, "ratio_win": 1 + 0.01 * r,
                  "ratio_lose": 1 - 0.01 * r, "score_mean": float(r)} for r in range(5) for j in range(2)]
        (folders[-1] / "log.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    data = make_figure(config, "training_curves", folders, tmp_path / "training_curves.png")
    assert data["per_round_means"]["tiny-sd15-spo"]["score_mean"] == [0.0, 1.0, 2.0, 3.0, 4.0]

    bench = tmp_path / "benchmarks"
    header = "s\th:m:s\tmax_rss\n"
    for rel, seconds in (("train/tiny-sd15-spo.tsv", 900.0), ("train_spm/tiny-sd15-spm.tsv", 1800.0),
                         ("generate/tiny-sd15-base/tiny-eval/shard-0.tsv", 36.0), ("tables.tsv", 5.0)):
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{seconds}\t0:00:00\t1\n")
    gpus = {"train": {"tiny-sd15-spo": 4, "default": 4}, "train_spm": 2, "generate": 1}
    data = make_figure(config, "compute", [], tmp_path / "compute.png", gpus=gpus, benchmarks=bench)
    stages = {s["stage"]: s for s in data["stages"]}
    assert stages["train"]["gpu_hours"] == pytest.approx(1.0)        # 900 s x 4 GPUs
    assert stages["generate"]["gpu_hours"] == pytest.approx(0.01)    # 36 s x 1 GPU
    assert stages["tables"]["gpu_hours"] == 0
    spo = next(m for m in data["methods"] if m["method"] == "tiny-sd15-spo")
    assert spo["gpu_hours"] == pytest.approx(2.0)                    # + 1800 s x 2 GPUs of its SPM
    assert spo["paper_spo_gpu_hours"] == 80 and spo["paper_diffusion_dpo_gpu_hours"] == 384
    md = (tmp_path / "compute.md").read_text()
    assert "| train | 1 | 900.0 |" in md and (tmp_path / "compute.csv").is_file()


def test_disagreement_counts_flipped_labels(base_config, tmp_path):
    from spo.spm.data import encode_png

    import torch

    config = copy.deepcopy(base_config)
    config["figures"] = {"disagreement": {"dataset": "tiny-sd15-pairs", "predictor": "colorfulness",
                                          "examples": 2}}
    vivid = torch.zeros(3, 8, 8)
    vivid[0, :, :4], vivid[2, :, 4:] = 1.0, 1.0
    grey = torch.full((3, 8, 8), 0.5)
    rows = []
    for i, label in enumerate([1.0, 1.0, 0.0, 1.0, 0.5]):  # pair 2 says grey wins: a disagreement
        rows.append({"pair_id": f"q{i}", "prompt_id": f"p{i}", "prompt": "a parrot",
                     "image_0": encode_png(vivid), "image_1": encode_png(grey), "label": label,
                     "examples_per_prompt": 1})
    folder = tmp_path / "pairs" / "tiny-sd15-pairs" / "train"
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "part-0.parquet")
    data = make_figure(config, "disagreement", [folder], tmp_path / "disagreement.png")
    assert data["splits"] == [{"split": "train", "pairs": 4, "disagree": 1, "disagree_pct": 25.0}]
    assert len(data["examples"]) == 1 and data["examples"][0]["pair_id"] == "q2"


def test_unknown_figure_and_config_cross_references(base_config):
    from spo.report.figures import check_figures

    with pytest.raises(FigureError, match="unknown figure"):
        make_figure(base_config, "figure99", [], "x.png")
    assert check_figures(base_config) == []
    bad = copy.deepcopy(base_config)
    bad["figures"]["figure2"]["rows"] = ["tiny-sd15-base", "no-such-method"]
    assert any("no-such-method" in m for m in check_figures(bad))


def test_sampler_dump_examples_leaves_the_pairs_unchanged(tiny_models, tmp_path):
    """train.dump_examples only records decoded x̂0: pairs and scores are the same as without it."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from spo.models.backbone import Backbone
    from spo.preference import build_preference
    from spo.sampling.stepwise import sample_pairs
    from spo.training.settings import TrainSettings
    from spo.training.spo_trainer import write_examples

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15",
                                                   local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    settings = TrainSettings.from_config(dict(
        prompts="p", num_inference_steps=4, timestep_range=[0, 1000], k=2, threshold=0.0,
        dump_examples=3)).sampler()
    runs = [sample_pairs(Backbone(pipe, 32), pipe.scheduler, ["a red car", "a blue bird"],
                         build_preference({"name": "colorfulness"}), settings,
                         torch.Generator().manual_seed(0), dump_examples=d) for d in (0, 3)]
    (plain, s0), (dumped, s3) = runs
    assert torch.equal(plain.x_w, dumped.x_w) and s0["score_mean"] == s3["score_mean"]
    assert s0["examples"] == [] and len(s3["examples"]) == 3
    first = s3["examples"][0]
    assert first["win"].shape == (3, 32, 32) and first["score_win"] >= first["score_lose"]
    write_examples(tmp_path / "examples", {0: s3["examples"]})
    index = json.loads((tmp_path / "examples" / "index.json").read_text())
    assert len(index) == 3 and (tmp_path / "examples" / index[0]["win"]).is_file()
    with pytest.raises(ValueError, match="dump_examples"):
        TrainSettings.from_config({"prompts": "p", "dump_examples": -1})
