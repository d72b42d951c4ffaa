"""The paper's tables rebuilt from per-image score files (spo/report/paper_tables.py).

Synthetic score files in the real format (spo.score.SCORE_COLUMNS); no torch. The last test dry-runs
the paper and ablation profiles through Snakemake (slow-ish: it parses the whole workflow).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from spo.io import stable_hash
from spo.report.paper_numbers import load_paper_numbers
from spo.report.paper_tables import (REBUILT_TABLES, PaperTableError, build_paper_tables,
                                     plan_tables)
from spo.score import SCORE_COLUMNS

VERSIONS = {"colorfulness": "colorfulness", "pickscore": "pickscore_v1", "hpsv2.0": "hpsv2.0",
            "hpsv2.1": "hpsv2.1", "aesthetic": "aesthetic_v2_linearMSE",
            "imagereward": "imagereward_v1.0"}
# per method: an offset added to every metric, so every cell has a known mean
OFFSETS = {"base": 0.0, "spo": 1.0, "k2": 2.0}


def make_config(tiny: bool = True) -> dict:
    source = {"tiny": {"seed": 1}} if tiny else {"id": "org/sd15", "revision": "0" * 40}
    return {
        "profile": "tiny" if tiny else "paper",
        "seed": 0,
        "models": {"m": {"family": "sd15", "source": source}},
        "methods": {
            "base": {"model": "m", "paper": {"table": 2, "row": "base"}},
            "spo": {"model": "m", "baseline": "base",
                    "paper": [{"table": 2, "row": "spo"}, {"table": 6, "row": "k4"}]},
            "k2": {"model": "m", "paper": {"table": 6, "row": "k2"}},
            "unused": {"model": "m", "paper": {"table": 2, "row": "spo"}},  # not evaluated
        },
        "prompt_sets": {"ev": {"source": {"path": "ev.tsv"}, "label": "evaluation prompts"},
                        "ab": {"source": {"path": "ab.tsv"}, "images_per_prompt": 1}},
        "evaluate": [{"methods": ["base", "spo"], "prompt_sets": ["ev"]},
                     {"methods": ["spo", "k2"], "prompt_sets": ["ab"]}],
        "metrics": {name: ({} if name == "colorfulness" else
                           {"scorer": {"hpsv2.0": "hpsv2"}.get(name, name)}) for name in VERSIONS},
        "tables": {"bootstrap_samples": 200, "confidence": 0.95, "seed": 0},
        "paper_tables": {"prompt_sets": ["ev", "ab"]},
    }


def write_scores(path: Path, method: str, prompt_set: str, *, prompts: int, images: int,
                 shift: float = 0.0) -> Path:
    rng = np.random.default_rng(abs(hash((method, prompt_set))) % 2**32)
    rows = []
    for metric, version in VERSIONS.items():
        base = {"pickscore": 20.0, "hpsv2.1": 25.0, "hpsv2.0": 27.0, "aesthetic": 5.5}.get(metric, 0.1)
        noise = rng.normal(0.0, 0.5, size=(prompts, images))
        noise -= noise.mean()  # the mean over images is exactly base + offset + shift
        for p in range(prompts):
            for i in range(images):
                rows.append({"method": method, "prompt_set": prompt_set, "shard": 0,
                             "prompt_id": f"p{p:03d}", "image_index": i, "metric": metric,
                             "metric_version": version,
                             "score": base + OFFSETS[method] + shift + noise[p, i],
                             "path": f"/img/{method}/{p}_{i}.png"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=SCORE_COLUMNS).to_parquet(path, index=False)
    return path


@pytest.fixture()
def scores(tmp_path):
    return {(m, ps): write_scores(tmp_path / "scores" / m / f"{ps}.parquet", m, ps,
                                  prompts=12 if ps == "ev" else 8, images=2 if ps == "ev" else 1)
            for m, ps in [("base", "ev"), ("spo", "ev"), ("spo", "ab"), ("k2", "ab")]}


def _cell(frame, row, metric, column="ours"):
    return frame[(frame.row == row) & (frame.metric == metric)][column].iloc[0]


def test_tiny_tables_are_written_with_every_part(tmp_path, scores):
    config = make_config(tiny=True)
    out = build_paper_tables(config, list(scores.values()), tmp_path / "out")
    for n in REBUILT_TABLES:
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "out" / f"table{n}.{ext}").is_file(), (n, ext)
    t2 = out[2]
    assert _cell(t2, "spo", "pickscore") == pytest.approx(21.0)
    assert _cell(t2, "base", "hpsv2.1") == pytest.approx(25.0)
    assert _cell(t2, "spo", "pickscore", "paper") == 21.43
    assert _cell(t2, "spo", "hpsv2.0", "paper") == _cell(t2, "spo", "hpsv2.1", "paper") == 26.45
    assert np.isnan(_cell(t2, "spo", "pickscore", "delta"))  # tiny: never compared with the paper
    low, high = _cell(t2, "spo", "aesthetic", "ci_low"), _cell(t2, "spo", "aesthetic", "ci_high")
    assert low < 6.5 < high
    assert set(t2[t2.row == "ddpo"].status) == {"not run"}
    assert set(t2.metric[t2.status == "ours"]) == set(VERSIONS)  # colourfulness added
    md = (tmp_path / "out" / "table2.md").read_text()
    config_hash = stable_hash(config)
    for text in ("not comparable (tiny profile)", "Colourfulness (analytic)", "HPSv2.0", "HPSv2.1",
                 "most likely HPS v2.1", f"resolved config `{config_hash}`", "profile `tiny`",
                 "prompt set `ev`", "24 images", "`hpsv2.1`", "`pickscore_v1`", "arXiv 2406.04314v3",
                 "Rows not run", "`ddpo`", "| DDPO | — (not run) |"):
        assert text in md, text
    csv = pd.read_csv(tmp_path / "out" / "table2.csv")
    assert set(csv.config_hash) == {config_hash} and set(csv.profile) == {"tiny"}
    assert set(csv.comparable) == {False}
    tex = (tmp_path / "out" / "table2.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\multicolumn{5}{c}{PickScore}" in tex
    assert "not comparable (tiny profile)" in tex
    # Table 6 uses the ablation prompt set (k2 is only evaluated there), the shared SPO row too.
    t6 = out[6]
    assert set(t6.prompt_set[t6.status == "ours"]) == {"ab"}
    assert _cell(t6, "k2", "imagereward") == pytest.approx(2.1)
    assert _cell(t6, "k4", "imagereward") == pytest.approx(1.1)
    assert (tmp_path / "out" / "table6.md").read_text().count("— (not run)") == 1  # k8


def test_a_table_without_rows_in_the_config_shows_only_the_paper(tmp_path, scores):
    out = build_paper_tables(make_config(), list(scores.values()), tmp_path, tables=[7])
    md = (tmp_path / "table7.md").read_text()
    assert "**Not run**" in md and "only the paper's numbers" in md
    assert "| j | PickScore (paper) | HPSV2 (paper) | ImageReward (paper) | Aesthetic (paper) |" in md
    assert "| 4 | 23.06 | 31.80 | 1.0803 | 6.364 |" in md
    assert "ours" not in md.split("\n| j |")[1]
    assert set(out[7].status) == {"not run"} and out[7]["ours"].isna().all()
    tex = (tmp_path / "table7.tex").read_text()
    assert "23.06" in tex and "Not run" in tex


def test_real_models_give_ours_minus_paper(tmp_path, scores):
    out = build_paper_tables(make_config(tiny=False), list(scores.values()), tmp_path, tables=[2])
    t2 = out[2]
    assert _cell(t2, "spo", "pickscore", "delta") == pytest.approx(21.0 - 21.43)
    assert _cell(t2, "base", "imagereward", "delta") == pytest.approx(0.1 - (-0.1628))
    assert np.isnan(_cell(t2, "spo", "colorfulness", "delta"))  # no paper value
    md = (tmp_path / "table2.md").read_text()
    assert "not comparable" not in md and "Δ = ours − paper" in md
    assert "| SPO | spo | 12 | 21.43 | 21.000 | -0.430 |" in md


def test_a_missing_score_file_fails_naming_the_method_and_config_key(tmp_path, scores):
    files = [f for (m, ps), f in scores.items() if m != "k2"]
    with pytest.raises(PaperTableError, match=r"table 6 row 'k2' needs method 'k2' "
                                              r"\(config key 'methods\.k2\.paper'\) on prompt set 'ab'"):
        build_paper_tables(make_config(), files, tmp_path)
    # A score file lacking one metric is no better.
    frame = pd.read_parquet(scores[("k2", "ab")])
    frame[frame.metric != "aesthetic"].to_parquet(scores[("k2", "ab")], index=False)
    with pytest.raises(PaperTableError, match=r"'k2'.*lack metric\(s\) \['aesthetic'\]"):
        build_paper_tables(make_config(), list(scores.values()), tmp_path, tables=[6])
    assert not (tmp_path / "table6.md").exists()


def test_a_changed_score_file_changes_the_table(tmp_path, scores):
    config = make_config(tiny=False)
    before = build_paper_tables(config, list(scores.values()), tmp_path / "a", tables=[2])[2]
    write_scores(scores[("spo", "ev")], "spo", "ev", prompts=12, images=2, shift=0.25)
    after = build_paper_tables(config, list(scores.values()), tmp_path / "b", tables=[2])[2]
    for metric in VERSIONS:
        assert _cell(after, "spo", metric) == pytest.approx(_cell(before, "spo", metric) + 0.25)
        assert _cell(after, "base", metric) == _cell(before, "base", metric)
    assert (tmp_path / "a/table2.md").read_text() != (tmp_path / "b/table2.md").read_text()


def test_plan_errors_name_the_config_key():
    numbers = load_paper_numbers()
    plans = plan_tables(make_config(), numbers)
    assert plans[2].rows["spo"] == "spo" and plans[2].prompt_set == "ev"  # `unused` is not evaluated
    assert plans[6].prompt_set == "ab" and not plans[1].run

    def error(mutate) -> str:
        config = make_config()
        mutate(config)
        with pytest.raises(PaperTableError) as info:
            plan_tables(config, numbers)
        return str(info.value)

    assert "'methods.k2.paper' names row 'k16' of table 6" in error(
        lambda c: c["methods"]["k2"].update(paper={"table": 6, "row": "k16"}))
    assert "names table 3, which is not rebuilt" in error(
        lambda c: c["methods"]["k2"].update(paper={"table": 3, "row": "spo"}))
    assert "names table 12" in error(lambda c: c["methods"]["k2"].update(paper={"table": 12, "row": "x"}))
    assert "'methods.spo.paper' and 'methods.k2.paper' both fill row 'k4'" in error(
        lambda c: c["methods"]["k2"].update(paper={"table": 6, "row": "k4"}))
    assert "table 6: its methods" in error(lambda c: c["evaluate"][1].update(methods=["k2"]))
    assert "lists table 6, but no method fills its rows ['k8']" in error(
        lambda c: c.update(paper_tables={"require": [6]}))


def test_shipped_configs_plan_their_tables(repo_root):
    from spo.config import resolve_config

    numbers = load_paper_numbers()

    def plan(name):
        config = resolve_config(yaml.safe_load((repo_root / "config" / name).read_text()), repo_root)
        return plan_tables(config, numbers)

    tiny = plan("config.yaml")
    assert all(tiny[n].run for n in REBUILT_TABLES)
    assert tiny[2].prompt_set == "tiny-eval" and tiny[2].rows["spo"] == "tiny-sd15-spo"
    assert {tiny[n].prompt_set for n in REBUILT_TABLES} == {"tiny-eval"}
    assert all(len(tiny[n].methods) >= 2 for n in (4, 5, 6, 7, 8, 9))
    ablations = plan("ablations.yaml")
    for n in (4, 5, 6, 7, 8, 9):
        assert None not in ablations[n].rows.values(), n
    assert ablations[7].rows["j4"] == "sdxl-mspo" and ablations[6].rows["k4"] == "sd15-spo"


@pytest.mark.workflow
def test_paper_and_ablation_profiles_plan_every_table(repo_root, tmp_path):
    """`snakemake -n` plans one paper_tables job per table, each reading its rows' score files."""
    for name in ("Snakefile", "workflow", "config", "data"):
        src = repo_root / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for profile in ("paper", "ablations"):
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile",
                               f"config/{profile}.yaml"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-4000:]
        jobs = {}
        for block in re.split(r"\n(?=\[)", text):  # one block per job, as tests/workflow/test_dag.py
            if re.search(r"^(?:local)?rule paper_tables:", block, re.M):
                table = int(block.split("wildcards: table=")[1].split()[0])
                jobs[table] = block
        assert sorted(jobs) == list(REBUILT_TABLES), profile
        for n in REBUILT_TABLES:
            assert f"results/paper_tables/table{n}.md" in jobs[n]
        assert "results/scores/pickscore/sdxl-mspo/pickapic-val/shard-9.parquet" in jobs[7]
        if profile == "ablations":
            for method in ("sdxl-mspo-j1", "sdxl-mspo-j6"):
                assert f"results/scores/hpsv2.1/{method}/pickapic-val/shard-0.parquet" in jobs[7]
            assert "results/scores/aesthetic/sd15-spo-no-step/pickapic-val/shard-3.parquet" in jobs[5]
