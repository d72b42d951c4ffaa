"""The paper's numbers as data (data/paper/tables.yaml): structure, types, and the transcription
checked cell by cell against the research notes (../shared/PAPER.md §3, §4, §1.6) where present."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from spo.report.paper_numbers import (DEFAULT_PATH, PaperNumbersError, load_paper_numbers,
                                      parse_paper_numbers)

PAPER_MD = Path(__file__).resolve().parents[2].parent / "shared" / "PAPER.md"


@pytest.fixture(scope="module")
def numbers():
    return load_paper_numbers()


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(DEFAULT_PATH.read_text())


def test_every_table_has_rows_columns_floats_and_a_v3_source(numbers):
    assert sorted(numbers.tables) == list(range(1, 10))
    for n, table in numbers.tables.items():
        assert table.rows and table.columns, n
        assert table.source == {"table": n, "version": "v3", "section": "PAPER.md §3"}
        for row in table.rows:
            assert set(row.values) == {c.key for c in table.columns}
            assert all(type(v) is float for v in row.values.values()), (n, row)
    assert numbers.source["version"] == "v3" and numbers.source["arxiv"] == "2406.04314"
    assert numbers.user_study.source["figure"] == 6 and numbers.compute.source["version"] == "v3"


def test_spot_values(numbers):
    t = numbers.tables
    assert t[1].value("spo", "HPSV2") == 31.80 and t[1].value("base", "ImageReward") == 0.5380
    assert t[2].value("base", "ImageReward") == -0.1628 and t[2].value("ddpo", "Aesthetic") == 5.591
    assert t[3].value("spo", "overall") == 55.20
    assert t[4].value("win", "HPSV2") == 11.31
    assert t[6].value("k8", "HPSV2") == 27.62 and t[7].value("j5", "Aesthetic") == 6.423
    assert t[8].value("0-1000", "ImageReward") == -0.4529 and t[9].value("random", "PickScore") == 21.21
    # The shared SPO-SD-1.5 row is the same in Tables 2, 4, 5, 6, 8 and 9, MSPO's in 1 and 7.
    spo = t[2].row("spo").values
    for n, key in ((4, "random"), (5, "spm"), (6, "k4"), (8, "0-750"), (9, "best-worst")):
        assert t[n].row(key).values == spo, n
    assert t[7].row("j4").values == t[1].row("spo").values
    vs_sdxl = numbers.user_study.comparisons[1]
    assert vs_sdxl.key == "spo-vs-sdxl" and vs_sdxl.results["visual_appeal"].win == 76.93
    assert numbers.compute.models["sdxl"].spo_gpu_hours(numbers.compute.num_gpus) == 234.0


def _markdown_table_after(text: str, marker: str) -> list[list[str]]:
    start = text.index(marker)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # drop the header and the |---| line


def _num(cell: str) -> float:
    return float(cell.replace("−", "-"))


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="the research notes ../shared/PAPER.md are not here")
def test_every_table_cell_matches_paper_md(numbers):
    text = PAPER_MD.read_text()
    for n, table in numbers.tables.items():
        md_rows = _markdown_table_after(text, f"**Table {n}.**")
        assert len(md_rows) == len(table.rows), n
        for md, row in zip(md_rows, table.rows):
            assert [_num(c) for c in md[1:]] == [row.values[c.key] for c in table.columns], (n, md, row)


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="the research notes ../shared/PAPER.md are not here")
def test_user_study_and_compute_match_paper_md(numbers):
    text = PAPER_MD.read_text()
    md_rows = _markdown_table_after(text, "Fig. 6 numbers")
    assert len(md_rows) == len(numbers.user_study.comparisons)
    for md, comp in zip(md_rows, numbers.user_study.comparisons):
        for cell, question in zip(md[1:], numbers.user_study.questions):
            r = comp.results[question]
            assert [float(x) for x in cell.split("/")] == [r.win, r.draw, r.loss], (comp.key, question)
    quote = re.search(r"### 1\.6 Compute.*?\n> (.*?)\n", text, re.S).group(1)
    sd15, sdxl = numbers.compute.models["sd15"], numbers.compute.models["sdxl"]
    assert f"take {sd15.spo_finetune_hours:g} and {sdxl.spo_finetune_hours:g} hours" in quote
    assert f"spend {sd15.spm_train_hours:g} and {sdxl.spm_train_hours:g} hours" in quote
    assert f"are {sd15.diffusion_dpo_gpu_hours:g} and {sdxl.diffusion_dpo_gpu_hours:,.0f}" in quote
    assert (f"about {sd15.spo_share_of_diffusion_dpo_percent}% and "
            f"{sdxl.spo_share_of_diffusion_dpo_percent}%") in quote


def test_malformed_entries_are_named(raw):
    bad = copy.deepcopy(raw)
    bad["tables"][5]["rows"][1]["values"]["PickScore"] = 21  # an int: a typo'd number
    with pytest.raises(PaperNumbersError, match=r"tables\[6\]\.rows\[k4\]\.values\.PickScore"):
        parse_paper_numbers(bad)
    bad = copy.deepcopy(raw)
    del bad["tables"][0]["rows"][0]["values"]["HPSV2"]
    with pytest.raises(PaperNumbersError, match=r"tables\[1\]\.rows\[base\]\.values is missing HPSV2"):
        parse_paper_numbers(bad)
    bad = copy.deepcopy(raw)
    bad["tables"][1]["source"]["version"] = "v1"
    with pytest.raises(PaperNumbersError, match="v3"):
        parse_paper_numbers(bad)
    bad = copy.deepcopy(raw)
    bad["user_study"]["comparisons"][0]["results"]["visual_appeal"]["win"] = 68.27
    with pytest.raises(PaperNumbersError, match="not 100"):
        parse_paper_numbers(bad)
    bad = copy.deepcopy(raw)
    bad["compute"]["models"]["sd15"]["spm_train_hours"] = 18.0
    with pytest.raises(PaperNumbersError, match="not the stated"):
        parse_paper_numbers(bad)
