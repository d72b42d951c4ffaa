"""Expected results as data: comparison, the lock they were made with, README generated from them."""

import copy

import pytest

from spo import expected


def _data(delta=1.0, acc=0.8):
    return {"format": expected.FORMAT, "version": 1, "command": expected.COMMAND,
            "environment": {"lock_sha256": "x", "cpu": expected.cpu_family(), "python": "3.11",
                            "locked_versions": {"torch": "2.14.1"}},
            "tables": {"tiny-eval": [
                {"method": "spo", "metric": "colorfulness", "mean": 30.0, "ci_low": 29.0, "ci_high": 31.0,
                 "baseline": "base", "delta": delta, "delta_ci_low": 0.5, "delta_ci_high": 1.5},
                {"method": "base", "metric": "colorfulness", "mean": 29.0, "ci_low": 28.0, "ci_high": 30.0,
                 "baseline": None, "delta": None, "delta_ci_low": None, "delta_ci_high": None}]},
            "spm_accuracy": {"spm": [{"run": "spm", "stage": "final", "step": 300.0, "t": 0.0,
                                      "accuracy": acc, "ceiling": 1.0, "pairs": 600.0}]}}


def test_identical_runs_agree_exactly():
    assert expected.compare(_data(), _data(), exact=True) == []


def test_a_drifted_number_is_named_with_what_moved():
    out = expected.compare(_data(1.0), _data(1.0 + 1e-4), exact=True)
    assert out == ["tiny-eval spo colorfulness delta: expected +1 [+0.5, +1.5], got 1.0001"]
    # within tolerance off the lock: half the CI width (0.5 here)
    assert expected.compare(_data(1.0), _data(1.3), exact=False) == []
    assert len(expected.compare(_data(1.0), _data(1.6), exact=False)) == 1


def test_spm_accuracy_is_compared():
    assert expected.compare(_data(acc=0.8), _data(acc=0.84), exact=False) == []
    out = expected.compare(_data(acc=0.8), _data(acc=0.9), exact=False)
    assert out and "spm spm final t=0 accuracy: expected 0.8, got 0.9" in out[0]


def test_spm_rows_of_each_stage_are_compared_with_their_own_stage():
    """A run validates before ("init") and after ("final") training at the same t: each row is
    matched on (stage, step, t), never on t alone (which once compared init with final)."""
    data = _data(acc=0.8)
    init = dict(data["spm_accuracy"]["spm"][0], stage="init", step=0.0, accuracy=0.7)
    data["spm_accuracy"]["spm"].insert(0, init)
    assert expected.compare(data, copy.deepcopy(data), exact=True) == []
    moved = copy.deepcopy(data)
    moved["spm_accuracy"]["spm"][0]["accuracy"] = 0.71
    assert expected.compare(data, moved, exact=True) == [
        "spm spm init t=0 accuracy: expected 0.7, got 0.71"]


def test_a_missing_row_is_a_difference():
    run = _data()
    run["tables"]["tiny-eval"] = run["tables"]["tiny-eval"][1:]
    assert expected.compare(_data(), run, exact=True) == ["tiny-eval spo colorfulness: missing from the run"]


def test_lock_changes_name_each_package(monkeypatch):
    monkeypatch.setattr(expected, "_locked", lambda: {"torch": "2.15.0", "numpy": "2.4.6"})
    assert expected.lock_changes(_data()) == ["numpy: absent -> 2.4.6", "torch: 2.14.1 -> 2.15.0"]


def test_the_committed_expected_results_belong_to_todays_lock(repo_root):
    from spo.environment import lock_sha256

    data = expected.load(repo_root / expected.DEFAULT_FILE)
    assert data["environment"]["lock_sha256"] == lock_sha256(), (
        "requirements.lock changed since the expected results were made; what moved:\n  "
        + "\n  ".join(expected.lock_changes(data))
        + f"\nrerun the tiny DAG and `{expected.COMMAND}`, then `python -m spo.expected readme`")


def test_readme_numbers_are_the_expected_results(repo_root):
    data = expected.load(repo_root / expected.DEFAULT_FILE)
    block = expected.readme_block((repo_root / "README.md").read_text())
    assert block is not None, "README.md lost its generated expected-results block"
    assert block == expected.render_readme(data), (
        "README.md's tiny-profile numbers differ from data/expected-results/tiny.json: "
        "regenerate them with `python -m spo.expected readme`")


def test_render_shows_each_delta_with_its_ci():
    text = expected.render_readme(_data())
    assert "| spo | base | +1.00 [+0.50, +1.50] |" in text
    assert "| final | 0.80 |" in text and "| ceiling | 1.00 |" in text
    assert text.startswith(expected.README_BEGIN) and text.endswith(expected.README_END)


def test_a_file_that_is_not_expected_results_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "other"}')
    with pytest.raises(expected.ExpectedResultsError, match="rewrite it with"):
        expected.load(path)
    with pytest.raises(expected.ExpectedResultsError, match="do not exist"):
        expected.load(tmp_path / "missing.json")
