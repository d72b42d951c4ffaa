"""Expected results as data: the tiny DAG's headline numbers, committed, compared, and rendered.

``python -m spo expected-results --config config/config.yaml --out data/expected-results/tiny.json``
reads a finished tiny run (``results/tables/<prompt set>.csv`` and every SPM's
``results/spm/<run>/validation.csv``) and writes every mean, paired difference and CI of the
evaluation table and the SPM accuracy by t, with the environment that made them (the lock's hash,
the CPU). The workflow test compares a fresh run with the file (``compare``): **exact** (to the
six significant digits the CSV keeps) when the lock and the CPU family are the same, otherwise
within ``TOLERANCE`` (stated there), printing each difference. README's tables of the tiny
profile are rendered from the file (``render_readme``) between marker lines; a test fails when
the README and the file disagree.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

FORMAT, VERSION = "spo-expected-results", 1
DEFAULT_FILE = "data/expected-results/tiny.json"
COMMAND = f"python -m spo expected-results --config config/config.yaml --out {DEFAULT_FILE}"
# Off the lock or on another CPU family, a number may move within the run-to-run spread of an
# environment change (measured: a transformers minor release moved SPO's Δ by 0.4 of its CI's
# width): a mean or Δ must stay within half its expected CI's width, an SPM accuracy within 0.05.
TOLERANCE = {"ci_fraction": 0.5, "accuracy": 0.05}
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
README_BEGIN = "<!-- expected-results: begin (generated: python -m spo.expected readme) -->"
README_END = "<!-- expected-results: end -->"


class ExpectedResultsError(ValueError):
    """The expected-results file is missing, malformed, or a run differs from it."""


def cpu_family() -> dict[str, Any]:
    """What decides floating-point results on a CPU: architecture, vendor and SIMD extensions."""
    info = {"machine": platform.machine(), "vendor": None, "model": None, "isa": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and info["vendor"] is None:
            info["vendor"] = value.strip()
        elif key == "model name" and info["model"] is None:
            info["model"] = value.strip()
        elif key == "flags" and not info["isa"]:
            flags = set(value.split())
            info["isa"] = [f for f in ISA_FLAGS if f in flags]
    return info


def same_family(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("machine", "vendor", "isa"))


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def collect(results_root: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a finished run under ``results_root`` (the ``results/`` folder)."""
    import pandas as pd

    from spo.config import evaluated_prompt_sets
    from spo.tables import table_method_order
    from spo.environment import lock_sha256
    from spo.io import _git_commit, stable_hash

    from spo import layout

    def under_root(path: str) -> Path:  # spo.layout's path of a results file, under results_root
        return Path(results_root) / Path(path).relative_to(layout.RESULTS)

    tables = {}
    for prompt_set in evaluated_prompt_sets(config, scored=True):
        path = under_root(layout.table_file(prompt_set, "csv"))
        if not path.is_file():
            raise ExpectedResultsError(f"'{path}' does not exist: run the DAG first "
                                       f"(`snakemake --cores all`)")
        frame = pd.read_csv(path)
        rows = []
        for r in frame.itertuples(index=False):
            rows.append({"method": r.method, "metric": r.metric, "mean": _num(r.mean),
                         "ci_low": _num(r.ci_low), "ci_high": _num(r.ci_high),
                         "baseline": r.baseline if isinstance(r.baseline, str) else None,
                         "delta": _num(r.delta), "delta_ci_low": _num(r.delta_ci_low),
                         "delta_ci_high": _num(r.delta_ci_high),
                         "runs": int(getattr(r, "runs", 1))})
        tables[prompt_set] = sorted(rows, key=lambda r: (r["method"], r["metric"]))
    spm = {}
    for run in sorted(((config.get("spm") or {}).get("runs") or {})):
        path = under_root(layout.spm_validation_csv(run))
        if not path.is_file():
            raise ExpectedResultsError(f"'{path}' does not exist: run the DAG first")
        frame = pd.read_csv(path)
        spm[run] = [{k: (v if isinstance(v, str) else _num(v)) for k, v in row.items()}
                    for row in frame.to_dict("records")]
    return {"format": FORMAT, "version": VERSION, "command": COMMAND,
            "environment": {"lock_sha256": lock_sha256(), "cpu": cpu_family(),
                            "python": platform.python_version(), "locked_versions": _locked()},
            "config_hash": stable_hash(config), "git_commit": _git_commit(),
            "method_order": table_method_order(config), "tables": tables, "spm_accuracy": spm}


def _locked() -> dict[str, str]:
    from spo.environment import lock_path, read_lock

    return read_lock(lock_path()) if lock_path().is_file() else {}


def lock_changes(expected: dict[str, Any]) -> list[str]:
    """What moved between the lock that made ``expected`` and today's lock, one line a package."""
    old = expected["environment"].get("locked_versions") or {}
    new = _locked()
    return [f"{name}: {old.get(name) or 'absent'} -> {new.get(name) or 'absent'}"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def write(results_root: str | Path, config: dict[str, Any], out: str | Path) -> dict[str, Any]:
    from spo.io import write_json_atomic

    data = collect(results_root, config)
    write_json_atomic(out, data)
    return data


def load(path: str | Path = DEFAULT_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ExpectedResultsError(f"expected results '{path}' do not exist; write them from a "
                                   f"finished run with `{COMMAND}`")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ExpectedResultsError(f"'{path}' is not an expected-results file (format "
                                   f"{data.get('format')!r}); rewrite it with `{COMMAND}`")
    return data


def _close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol


def _same6(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return float(f"{a:.6g}") == float(f"{b:.6g}")


def compare(expected: dict[str, Any], actual: dict[str, Any], *, exact: bool) -> list[str]:
    """Every difference of ``actual`` from ``expected`` as one line each ([] when they agree).

    ``exact``: values must agree to six significant digits; otherwise within ``TOLERANCE``.
    """
    out = []
    for prompt_set, rows in expected["tables"].items():
        have = {(r["method"], r["metric"]): r for r in actual["tables"].get(prompt_set, [])}
        for row in rows:
            key = (row["method"], row["metric"])
            got = have.get(key)
            if got is None:
                out.append(f"{prompt_set} {key[0]} {key[1]}: missing from the run")
                continue
            for value, low, high in (("mean", "ci_low", "ci_high"),
                                     ("delta", "delta_ci_low", "delta_ci_high")):
                want = row[value]
                if want is None and got[value] is None:
                    continue
                half = (row[high] - row[low]) / 2 if None not in (row[high], row[low]) else 0.0
                ok = (_same6(want, got[value]) if exact
                      else _close(want, got[value], TOLERANCE["ci_fraction"] * 2 * half))
                if not ok:
                    out.append(f"{prompt_set} {key[0]} {key[1]} {value}: expected {want:+.6g} "
                               f"[{row[low]:+.6g}, {row[high]:+.6g}], got {got[value]}")
    for run, rows in expected["spm_accuracy"].items():
        # A run validates at several points (stage "init" before training, "final" after): a row
        # is one (stage, step, t), never t alone.
        def key(r):
            return (r.get("stage"), r.get("step"), r["t"])

        have = {key(r): r for r in actual["spm_accuracy"].get(run, [])}
        for row in rows:
            got = have.get(key(row))
            for col, want in row.items():
                if col == "t" or not isinstance(want, float):
                    continue
                value = None if got is None else got.get(col)
                ok = (_same6(want, value) if exact
                      else _close(want, value, TOLERANCE["accuracy"]))
                if not ok:
                    out.append(f"spm {run} {row.get('stage')} t={row['t']:g} {col}: expected {want:.6g}, got {value}")
    return out


def exact_comparison_applies(expected: dict[str, Any]) -> tuple[bool, str]:
    """(True, why) when this machine and install should reproduce ``expected`` bit for bit."""
    from spo.environment import check_install, lock_sha256

    env = expected["environment"]
    if env.get("lock_sha256") != lock_sha256():
        return False, "the lock differs from the one that made the expected results"
    if check_install():
        return False, "this install differs from the lock"
    if not same_family(env.get("cpu", {}), cpu_family()):
        return False, f"another CPU family ({cpu_family()} vs {env.get('cpu')})"
    return True, "same lock, same install, same CPU family"


# The README's view of the expected results: these metrics' paired differences (when present).
README_METRICS = (("colorfulness", "Δ colourfulness"), ("adherence", "Δ adherence"),
                  ("pickscore", "Δ tiny PickScore"))
README_BASE_METRICS = ("adherence", "adherence-background", "adherence-colour", "adherence-shape",
                       "adherence-size", "colorfulness")
# The paper's claims as the tiny profile's rows measure them: (claim, paper's reading, rows).
README_CLAIMS = (
    ("SPM vs SPM without step condition vs PickScore (Table 5)", "SPM > no step > PickScore",
     ("tiny-sd15-spo", "tiny-sd15-spo-no-step", "tiny-sd15-spo-pickscore")),
    ("k candidates, 2 / 4 / 8 (Table 6)", "4 best", ("tiny-sd15-spo-k2", "tiny-sd15-spo", "tiny-sd15-spo-k8")),
    ("MSPO window j, 1 / 2 / 4 (Table 7)", "4 best (SDXL)",
     ("tiny-sdxl-mspo-j1", "tiny-sdxl-mspo-colorfulness", "tiny-sdxl-mspo-j4")),
    ("timestep range [0, 750] / [0, 1000] / [250, 750] (Table 8)", "[0, 750] best, [0, 1000] worst",
     ("tiny-sd15-spo", "tiny-sd15-spo-t0-1000", "tiny-sd15-spo-t250-750")),
    ("next x_t random / winner (Table 4)", "random best", ("tiny-sd15-spo", "tiny-sd15-spo-next-win")),
    ("pair best & worst / random (Table 9)", "best & worst better", ("tiny-sd15-spo", "tiny-sd15-spo-random-pair")),
    ("SPO vs the baselines (Table 2)", "SPO > Diffusion-DPO, DDPO, D3PO",
     ("tiny-sd15-spo", "tiny-sd15-diffusion-dpo", "tiny-sd15-ddpo", "tiny-sd15-d3po")),
)


def _ci(d: float, lo: float, hi: float) -> str:
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def render_readme(data: dict[str, Any], prompt_set: str = "tiny-eval") -> str:
    """The README block: paired differences per trained method, base models' scores, SPM accuracy."""
    rows = data["tables"].get(prompt_set, [])
    by = {(r["method"], r["metric"]): r for r in rows}
    present = {r["method"] for r in rows}
    methods = [m for m in data.get("method_order", []) if m in present]
    methods += sorted(present - set(methods))
    metrics = [(m, label) for m, label in README_METRICS if any(k[1] == m for k in by)]
    env = data["environment"]
    lines = [README_BEGIN, "",
             f"Made by `{data['command']}` from a clean run (`snakemake --cores all`) at commit "
             f"`{(data.get('git_commit') or 'unknown')[:10]}`, environment `requirements.lock` "
             f"{(env.get('lock_sha256') or 'unlocked')[:12]}, {env['cpu'].get('model') or env['cpu']['machine']}. "
             f"Held-out prompts (`{prompt_set}`), paired difference to the base model, 95 % "
             f"bootstrap CI over prompts; a pooled row averages independent runs of one recipe "
             f"(other seeds, each run's row above it) and its CI (Student's t, Welch-Satterthwaite) counts "
             f"their run-to-run variation as well as the prompts'.", "",
             "| method | baseline | " + " | ".join(label for _, label in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for method in methods:
        cells = [by.get((method, m)) for m, _ in metrics]
        if not any(c and c["delta"] is not None for c in cells):
            continue
        base = next(c["baseline"] for c in cells if c and c["baseline"])
        runs = max(c.get("runs", 1) for c in cells if c)
        label = f"{method} (**{runs} runs pooled**)" if runs > 1 else method
        lines.append(f"| {label} | {base} | " + " | ".join(
            _ci(c["delta"], c["delta_ci_low"], c["delta_ci_high"]) if c and c["delta"] is not None
            else "-" for c in cells) + " |")
    claims = [(c, p, [m for m in ms if (m, "colorfulness") in by]) for c, p, ms in README_CLAIMS]
    claims = [(c, p, ms) for c, p, ms in claims if len(ms) >= 2]
    if claims:
        lines += ["", "The paper's ablation claims in miniature (Δ colourfulness of each row, same recipe "
                      "otherwise):", "", "| claim | paper | tiny rows: Δ colourfulness |", "|---|---|---|"]
        for claim, paper, ms in claims:
            cells = "; ".join(f"`{m}` {by[(m, 'colorfulness')]['delta']:+.2f}" for m in ms)
            lines.append(f"| {claim} | {paper} | {cells} |")
    bases = [m for m in methods if not any(by.get((m, k)) and by[(m, k)]["delta"] is not None
                                           for k, _ in README_METRICS)]
    base_metrics = [m for m in README_BASE_METRICS if any((b, m) in by for b in bases)]
    if bases and base_metrics:
        lines += ["", "Rows without a baseline: the base models and the LoRA-transfer rows (mean [95 % CI]):", "",
                  "| model | " + " | ".join(base_metrics) + " |", "|---|" + "---|" * len(base_metrics)]
        for b in bases:
            lines.append(f"| {b} | " + " | ".join(
                f"{by[(b, m)]['mean']:.2f} [{by[(b, m)]['ci_low']:.2f}, {by[(b, m)]['ci_high']:.2f}]"
                if (b, m) in by else "-" for m in base_metrics) + " |")
    for run, acc in data["spm_accuracy"].items():
        stages = list(dict.fromkeys(r["stage"] for r in acc))
        ts = list(dict.fromkeys(r["t"] for r in acc))
        cell = {(r["stage"], r["t"]): r for r in acc}
        lines += ["", f"SPM `{run}`: pairwise accuracy on held-out pairs of the base model by t "
                      f"(ceiling: the preference itself applied to the x̂0 images):", "",
                  "| | " + " | ".join(f"t = {t:g}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        for stage in stages:
            lines.append(f"| {stage} | " + " | ".join(f"{cell[(stage, t)]['accuracy']:.2f}" for t in ts) + " |")
        lines.append("| ceiling | " + " | ".join(f"{cell[(stages[0], t)]['ceiling']:.2f}" for t in ts) + " |")
    return "\n".join(lines + ["", README_END])


def readme_block(readme_text: str) -> str | None:
    start, end = readme_text.find(README_BEGIN), readme_text.find(README_END)
    if start < 0 or end < start:
        return None
    return readme_text[start:end + len(README_END)]


def update_readme(readme: str | Path = "README.md", path: str | Path = DEFAULT_FILE) -> bool:
    """Rewrite README's generated block from the expected-results file; True when it changed."""
    from spo.io import write_text_atomic

    readme = Path(readme)
    text = readme.read_text()
    old = readme_block(text)
    if old is None:
        raise ExpectedResultsError(f"'{readme}' has no block between '{README_BEGIN}' and "
                                   f"'{README_END}'; add the two lines where the table belongs")
    new = render_readme(load(path))
    if new == old:
        return False
    write_text_atomic(readme, text.replace(old, new))
    return True


if __name__ == "__main__":  # python -m spo.expected readme
    import sys

    if sys.argv[1:] != ["readme"]:
        sys.exit("usage: python -m spo.expected readme   (rewrites README.md's generated block)")
    print("README.md updated" if update_readme() else "README.md already matches")
