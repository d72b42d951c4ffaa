"""spo.compute: GPU-hours per stage = benchmark runtime x GPUs per job."""

from __future__ import annotations

import pytest

from spo import compute

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def record(path, *seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{s}\t0:00:00\t1\t1\t1\t1\t0\t0\t0\t0\n" for s in seconds))


@pytest.fixture()
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks"
    record(root / "generate/sd15-base/pickapic-val/shard-0.tsv", 3600)
    record(root / "generate/sdxl-base/pickapic-val/shard-0.tsv", 1800, 1800)  # two repeats
    record(root / "score/pickscore/sd15-base/pickapic-val/shard-0.tsv", 720)
    record(root / "tables.tsv", 36)
    return root


def test_gpu_hours_per_stage(benchmarks):
    table = compute.gpu_hours(benchmarks, {"generate": 4, "score": 1, "tables": 0})
    assert table.loc["generate", "jobs"] == 2
    assert table.loc["generate", "runtime_hours"] == pytest.approx(2.0)
    assert table.loc["generate", "gpu_hours"] == pytest.approx(8.0)
    assert table.loc["score", "gpu_hours"] == pytest.approx(0.2)
    assert table.loc["tables", "gpu_hours"] == 0 and table.loc["tables", "jobs"] == 1


def test_gpu_count_per_job_by_callable(benchmarks):
    def gpus(stage, job):
        return 2 if job.startswith("sdxl") else (1 if stage != "tables" else 0)

    table = compute.gpu_hours(benchmarks, gpus)
    assert table.loc["generate", "gpu_hours"] == pytest.approx(1.0 + 2 * 1.0)


def test_missing_or_bad_gpu_count_names_the_stage(benchmarks):
    with pytest.raises(compute.ComputeError, match=r"stage 'tables'.*gpus=\{'tables': N\}"):
        compute.gpu_hours(benchmarks, {"generate": 1, "score": 1})
    with pytest.raises(compute.ComputeError, match="stage 'score'.*got -1"):
        compute.gpu_hours(benchmarks, {"generate": 1, "score": -1, "tables": 0})


def test_bad_records_are_named(tmp_path, benchmarks):
    with pytest.raises(compute.ComputeError, match="does not exist"):
        compute.read_benchmarks(tmp_path / "nowhere")
    (benchmarks / "tables.tsv").write_text("nothing here\n")
    with pytest.raises(compute.ComputeError, match="tables.tsv' has no runtime rows"):
        compute.read_benchmarks(benchmarks)


def test_command_line(benchmarks, capsys):
    assert compute.main([str(benchmarks), "--gpus", "generate=4", "score=1", "tables=0"]) == 0
    out = capsys.readouterr().out
    assert "generate" in out and "8.0000" in out
    with pytest.raises(SystemExit):
        compute.main([str(benchmarks), "--gpus", "generate"])
    assert "must be <stage>=<GPUs per job>" in capsys.readouterr().err
