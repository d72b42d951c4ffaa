"""Table 3 (GenEval): the shipped prompts, the layout writer on synthetic shards, and the summary of a
synthetic results.jsonl checked against numbers worked out by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from spo.report import geneval as g

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "data/prompts/geneval/evaluation_metadata.jsonl"


def test_shipped_metadata_is_the_pinned_file_with_553_prompts():
    rows = g.read_metadata(METADATA)  # checks the sha256
    assert len(rows) == g.N_PROMPTS == 553
    assert {r["tag"] for r in rows} == set(g.TASKS)
    assert (REPO / "data/prompts/geneval/LICENSE").read_text().startswith("MIT License")


def test_prompt_tsvs_are_the_metadata_prompts_keyed_by_line_index():
    from spo.prompts import read_prompt_tsv

    rows = g.read_metadata(METADATA)
    full = read_prompt_tsv(REPO / "data/prompts/geneval.tsv")
    assert list(full.prompt_id) == [f"{i:05d}" for i in range(553)]
    assert list(full.prompt) == [r["prompt"] for r in rows]
    tiny = read_prompt_tsv(REPO / "data/prompts/geneval_tiny.tsv")
    assert [rows[int(i)]["tag"] for i in tiny.prompt_id] == list(g.TASKS)  # one prompt per task
    assert all(rows[int(i)]["prompt"] == p for i, p in zip(tiny.prompt_id, tiny.prompt))


def test_a_changed_metadata_file_is_refused(tmp_path):
    bad = tmp_path / "evaluation_metadata.jsonl"
    bad.write_text(METADATA.read_text().replace("bench", "bench!", 1))
    with pytest.raises(g.GenEvalError, match="checksum mismatch"):
        g.read_metadata(bad)


def _fake_shard(folder: Path, prompts: dict[str, str], per_prompt: int, shard: int = 0) -> Path:
    """A generation shard as spo.generate writes it: <pid>_<i>.png + manifest.parquet."""
    from spo.generate import MANIFEST_COLUMNS

    folder.mkdir(parents=True)
    rows = []
    for pid, text in prompts.items():
        for i in range(per_prompt):
            name = f"{pid}_{i}.png"
            Image.new("RGB", (8, 8), (int(pid) % 256, 10 * i, 7)).save(folder / name)
            rows.append({"method": "m", "model": "tiny", "prompt_set": "geneval", "shard": shard,
                         "prompt_id": pid, "prompt": text, "image_index": i, "seed": 100 + i,
                         "path": name, "num_inference_steps": 20, "guidance_scale": 5.0,
                         "eta": 0.0, "height": 8, "width": 8, "dtype": "float32",
                         "config_hash": "x"})
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_parquet(folder / "manifest.parquet", index=False)
    return folder


def test_layout_writer_produces_genevals_folder_layout(tmp_path):
    meta = g.read_metadata(METADATA)
    shards = [_fake_shard(tmp_path / "shard-0", {"00000": meta[0]["prompt"],
                                                 "00080": meta[80]["prompt"]}, 4),
              _fake_shard(tmp_path / "shard-1", {"00453": meta[453]["prompt"]}, 4, shard=1)]
    out = tmp_path / "layout"
    table = g.write_layout(shards, meta, out, images_per_prompt=4)

    assert sorted(p.name for p in out.iterdir()) == ["00000", "00080", "00453", "provenance.json"]
    for index in (0, 80, 453):
        folder = out / f"{index:05d}"
        # GenEval's evaluate_images.py reads it with json.load; diffusers_generate.py writes json.dump.
        assert (folder / "metadata.jsonl").read_text() == json.dumps(meta[index])
        assert sorted(p.name for p in (folder / "samples").iterdir()) == [
            "0000.png", "0001.png", "0002.png", "0003.png"]
        src = tmp_path / ("shard-1" if index == 453 else "shard-0")
        for i in range(4):
            assert ((folder / "samples" / f"{i:04d}.png").read_bytes()
                    == (src / f"{index:05d}_{i}.png").read_bytes())
    assert len(table) == 12 and set(table.tag) == {"single_object", "two_object", "color_attr"}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["stage"] == "geneval-layout" and prov["resolved"]["images"] == 12
    assert not list(tmp_path.glob(".layout.*"))  # the atomic temporary is gone


def test_layout_writer_refuses_mismatched_prompts_and_counts(tmp_path):
    meta = g.read_metadata(METADATA)
    wrong_text = _fake_shard(tmp_path / "a", {"00000": "a photo of something else"}, 4)
    with pytest.raises(g.GenEvalError, match="GenEval metadata"):
        g.write_layout([wrong_text], meta, tmp_path / "out-a")
    three = _fake_shard(tmp_path / "b", {"00001": meta[1]["prompt"]}, 3)
    with pytest.raises(g.GenEvalError, match="has 3 images, expected 4"):
        g.write_layout([three], meta, tmp_path / "out-b", images_per_prompt=4)
    not_index = _fake_shard(tmp_path / "c", {"99999": "x"}, 1)
    with pytest.raises(g.GenEvalError, match="not a line index"):
        g.write_layout([not_index], meta, tmp_path / "out-c")
    assert not (tmp_path / "out-a").exists() and not (tmp_path / "out-b").exists()


def _results_line(tag: str, prompt: str, correct: bool, sample: int) -> dict:
    """One line as GenEval's evaluate_images.py writes it (the keys the summary reads and more)."""
    metadata = {"tag": tag, "include": [{"class": "x", "count": 1}], "prompt": prompt}
    return {"filename": f"out/{prompt}/samples/{sample:04d}.png", "tag": tag, "prompt": prompt,
            "correct": correct, "reason": "" if correct else "expected x>=1, found 0",
            "metadata": json.dumps(metadata), "details": "{}"}


def _write_results(path: Path, spec: dict[str, list[list[bool]]]) -> Path:
    lines = [_results_line(tag, f"{tag} prompt {p}", ok, s)
             for tag, prompts in spec.items()
             for p, samples in enumerate(prompts) for s, ok in enumerate(samples)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_summary_matches_a_hand_computed_example(tmp_path):
    # counting first: summary_scores.py keeps the order in which tags appear.
    results = _write_results(tmp_path / "results.jsonl", {
        "counting": [[True, False, False, False], [False, False, False, False]],  # 1/8
        "single_object": [[True, True, True, True], [True, True, True, False]],  # 7/8
        "position": [[False, False, True, True]],                                 # 2/4
    })
    summary = g.summarise_results(g.read_results(results))
    assert summary["images"] == 20 and summary["prompts"] == 5
    assert list(summary["tasks"]) == ["counting", "single_object", "position"]
    assert summary["tasks"] == {"counting": 0.125, "single_object": 0.875, "position": 0.5}
    assert summary["overall"] == pytest.approx((0.125 + 0.875 + 0.5) / 3)  # mean over tasks
    assert summary["correct_images"] == pytest.approx(10 / 20)             # not the overall
    assert summary["correct_prompts"] == pytest.approx(4 / 5)               # any image correct


def test_table3_says_missing_or_imported_per_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = {tag: [[True, True, False, False]] for tag in g.TASKS}  # 50 % everywhere
    full["colors"] = [[True, True, True, True]]                     # 100 %
    _write_results(Path(g.results_path("with")), full)
    table, markdown = g.build_table3(["with", "without"], {"with": "Ours"}, expected_images=24,
                                     layouts={"without": "results/geneval/without/images"},
                                     settings={"steps": 20})
    row = table.set_index("method").loc["with"]
    assert row["status"] == "imported"
    assert row["Colors"] == 100.0 and row["Counting"] == 50.0
    assert row["Overall"] == pytest.approx(100 * (5 * 0.5 + 1.0) / 6)
    assert table.set_index("method").loc["without", "status"] == "missing"
    assert "GenEval not run for without: put results.jsonl at results/geneval/without/results.jsonl" in markdown
    assert "| Ours | imported | 50.00 | 50.00 | 50.00 | 100.00 | 50.00 | 50.00 | 58.33 |" in markdown
    assert "| SPO | 97.81 |" in markdown  # the paper's rows, labelled as the paper's

    table, _ = g.build_table3(["with"], {}, expected_images=553 * 4, layouts={})
    assert table["status"].iloc[0] == "imported (incomplete)"


def test_results_that_are_not_genevals_are_refused(tmp_path):
    bad = tmp_path / "results.jsonl"
    bad.write_text(json.dumps({"filename": "a.png", "score": 1}) + "\n")
    with pytest.raises(g.GenEvalError, match="lacks the keys"):
        g.read_results(bad)


def test_cli_writes_table3_with_the_not_run_message(tmp_path, monkeypatch):
    """`python -m spo geneval-table` on the tiny config, nothing imported: csv + md, no failure."""
    import shutil

    from spo.__main__ import main

    shutil.copytree(REPO / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["geneval-table", "--config", str(REPO / "config/config.yaml"),
                 "--out", "results/tables/table3_geneval"]) == 0
    md = Path("results/tables/table3_geneval.md").read_text()
    assert "GenEval not run for tiny-sdxl-base: put results.jsonl at " \
           "results/geneval/tiny-sdxl-base/results.jsonl" in md
    assert "24 prompts" in md and "images per prompt 2" in md
    csv = pd.read_csv("results/tables/table3_geneval.csv")
    assert list(csv.status) == ["missing", "missing"]


@pytest.mark.workflow
def test_tiny_dag_writes_the_layout_and_scores_it_with_the_world_detector(tiny_dag_local):
    """The tiny DAG wrote each GenEval method's layout (the 24 held-out captions x 2 samples, at
    Table 3's 50 steps), scored it with the tiny world's detector into GenEval's results.jsonl
    format (one line per image and attribute), and Table 3 imported it."""
    from spo.config import load_config
    from spo.world.detect import ATTRIBUTES

    work, _ = tiny_dag_local
    config = load_config([work / "config/config.yaml"], root=work)
    spec = config["geneval"]
    meta = g.read_metadata(work / spec["metadata"]["path"], spec["metadata"]["sha256"])
    for method in spec["methods"]:
        layout = work / g.LAYOUT_PATTERN.format(method=method)
        folders = sorted(p for p in layout.iterdir() if p.is_dir())
        assert [p.name for p in folders] == [f"{i:05d}" for i in range(24)]
        for folder in folders:
            assert json.loads((folder / "metadata.jsonl").read_text()) == meta[int(folder.name)]
            assert len(list((folder / "samples").glob("[0-9][0-9][0-9][0-9].png"))) == 2
        provenance = json.loads((layout / "provenance.json").read_text())
        assert provenance["resolved"]["num_inference_steps"] == 50
        results = g.read_results(work / g.results_path(method))
        assert len(results) == 24 * 2 * len(ATTRIBUTES)
        assert set(results["tag"]) == set(ATTRIBUTES)
    table = pd.read_csv(work / "results/tables/table3_geneval.csv").set_index("method")
    assert set(table["status"]) == {"imported"}
    md = (work / "results/tables/table3_geneval.md").read_text()
    assert "steps 50" in md and "tiny world's analytic detector" in md
