"""The Snakemake HTML report of the tiny DAG, opened in headless Chromium.

`snakemake --report results/report.html` on the tiny DAG's results (the session's one run, the
`tiny_dag_local` fixture), then Debian's `chromium` driven by playwright (pointed at the system
browser: playwright's own browser download is never used). Checks: the page loads without console
errors, every table the config produces is in the report and its HTML view shows a <table>, every
image in the report renders (non-zero natural size), a screenshot of one figure (the Figure 2 grid
of tiny-world scenes) as rendered is not blank, and screenshots are saved (path printed).

Without chromium or playwright the test skips with the reason, except in CI (CI=true), where
it fails: .ci/run installs chromium (apt-get) and playwright comes with the `test` extra.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow

IMAGE_MIMES = {"image/png", "image/jpeg", "image/svg+xml"}


def _missing(reason: str):
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI=true: the report's browser test must run in CI)")
    pytest.skip(reason)


def chromium_executable() -> str | None:
    for name in (os.environ.get("SPO_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


# The <img> that shows result `path` (JS expression). The report has small icons of its own, also
# data: URIs, so "the first data: image" may be one of them: match the result's exact source.
SHOWN_IMAGE = ("[...document.querySelectorAll('#app img')]"
               ".find(i => i.getAttribute('src') === results[path].data_uri)")


@pytest.fixture(scope="module")
def report(tiny_dag_local) -> Path:
    """results/report.html of the tiny DAG's run, and how long Snakemake took to write it."""
    work, _ = tiny_dag_local
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", "results/report.html"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise AssertionError(f"snakemake --report failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    path = work / "results/report.html"
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB) written in {seconds:.1f} s")
    return path


def expected_tables(work: Path) -> dict[str, set[str]]:
    """{table: its files in the report}: every scored prompt set's summary table (CSV, Markdown
    and its HTML view), Table 3 (GenEval) when `geneval.enabled`, and every paper-vs-ours table
    the DAG wrote under results/paper_tables/."""
    from spo.config import evaluated_prompt_sets, load_config

    config = load_config([work / "config/config.yaml"], root=work)
    names = list(evaluated_prompt_sets(config, scored=True))
    if (config.get("geneval") or {}).get("enabled"):
        names.append("table3_geneval")
    tables = {name: {f"results/tables/{name}.csv", f"results/tables/{name}.md",
                     f"results/report/tables/{name}.html"} for name in names}
    for csv in sorted((work / "results/paper_tables").glob("*.csv")):
        tables[f"paper {csv.stem}"] = {f"results/paper_tables/{csv.stem}.csv",
                                       f"results/paper_tables/{csv.stem}.md",
                                       f"results/report/paper_tables/{csv.stem}.html"}
    return tables


def expected_figures(work: Path) -> set[str]:
    """One PNG per `figures.<name>` of the config, and every image the DAG wrote there."""
    from spo.config import load_config

    config = load_config([work / "config/config.yaml"], root=work)
    figures = {f"results/figures/{name}.png" for name in (config.get("figures") or {})}
    if (work / "results/figures").is_dir():
        figures |= {str(p.relative_to(work)) for p in (work / "results/figures").rglob("*")
                    if p.suffix in (".png", ".svg", ".jpg")}
    return figures


def test_report_opens_in_headless_chromium(report, tmp_path_factory):
    executable = chromium_executable()
    if executable is None:
        _missing("no chromium on PATH (Debian: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")

    work = report.parents[1]
    tables = expected_tables(work)
    shot_dir = Path(os.environ.get("SPO_REPORT_SCREENSHOTS") or tmp_path_factory.mktemp("report"))
    start = time.perf_counter()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.goto(report.as_uri(), wait_until="load")
        # The report is a React app: wait until it replaced the loading screen with its menu.
        page.wait_for_function("document.querySelector('#app') && "
                               "document.querySelector('#app').innerText.includes('Workflow')",
                               timeout=60_000)
        page.screenshot(path=str(shot_dir / "report-home.png"), full_page=True)

        results = page.evaluate("results")          # {path: {mime_type, data_uri, ...}}
        categories = page.evaluate("categories")    # {category: {subcategory: [path, ...]}}
        # Every table the config produces is in the report, under Tables > <its subcategory>.
        wanted = set().union(*tables.values())
        assert wanted <= set(results), sorted(wanted - set(results))
        listed = {p for sub in categories.get("Tables", {}).values() for p in sub}
        assert wanted <= listed, sorted(wanted - listed)

        # Open the tables as a reader does: the menu entry (named "Results" when the report has a
        # single category), then each subcategory's result list and each result's info panel.
        def menu_item(label):  # an entry of the report's side menu (not text of the description)
            return page.locator("li > a.transition-all").filter(
                has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first

        menu_item("Results" if len(categories) == 1 else "Tables").click()
        shown = 0
        for sub, paths in categories["Tables"].items():
            page.evaluate("([c, s]) => app.setView({navbarMode: 'subcategory', category: c, "
                          "subcategory: s})", ["Tables", sub])
            page.locator("table.table-auto tbody tr").first.wait_for(timeout=10_000)
            for path in paths:
                page.evaluate("path => app.showResultInfo(path)", path)
                page.get_by_text(path, exact=True).first.wait_for(timeout=10_000)
                shown += 1
        assert shown == len(listed)
        page.screenshot(path=str(shot_dir / "report-tables.png"), full_page=True)

        # Each table's HTML view renders a <table> with a row per result row (inside the iframe the
        # report shows HTML results in).
        n_tables = 0
        for name, files in tables.items():
            html = next(f for f in sorted(files) if f.endswith(".html"))
            page.evaluate("path => app.showResultInfo(path)", html)
            page.evaluate("""path => app.setView({content: "html", contentPath: results[path].data_uri,
                                                  resultPath: path})""", html)
            frame_el = page.wait_for_selector("iframe", timeout=10_000)
            frame = frame_el.content_frame()
            frame.wait_for_selector("table", timeout=10_000)
            rows = frame.locator("table tbody tr").count()
            assert rows >= 1, f"{html}: empty table"
            n_tables += 1
        page.screenshot(path=str(shot_dir / "report-table-view.png"), full_page=True)

        # Every image in the report decodes and renders.
        images = sorted(p for p, r in results.items() if r["mime_type"] in IMAGE_MIMES)
        for path in images:
            page.evaluate("""path => app.setView({content: "img", contentPath: results[path].data_uri,
                                                  resultPath: path})""", path)
            size = page.wait_for_function(
                f"""path => {{ const img = {SHOWN_IMAGE};
                              return img && img.complete && img.naturalWidth > 0
                                     ? [img.naturalWidth, img.naturalHeight] : null; }}""",
                arg=path, timeout=10_000).json_value()
            assert size[0] > 0 and size[1] > 0, path
        # ...and every figure the DAG wrote under results/figures/ is among them.
        figures = expected_figures(work)
        assert figures <= set(images), sorted(figures - set(images))
        if images:
            page.screenshot(path=str(shot_dir / "report-image.png"), full_page=True)

        # One figure as a reader sees it in the browser: the Figure 2 grid of tiny-world scenes.
        # A screenshot of the rendered <img> must not be blank: real contrast and many colours.
        grid = next(p for p in images if p.endswith("figures/figure2.png"))
        page.evaluate("""path => app.setView({content: "img", contentPath: results[path].data_uri,
                                              resultPath: path})""", grid)
        page.wait_for_function(f"""path => {{ const img = {SHOWN_IMAGE};
                                             if (img && img.complete) img.id = "figure-under-test";
                                             return img && img.complete; }}""",
                               arg=grid, timeout=10_000)
        element = page.wait_for_selector("#figure-under-test", timeout=10_000)
        shot = shot_dir / "figure2-rendered.png"
        element.screenshot(path=str(shot))
        import numpy as np
        from PIL import Image

        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
        colours = len(np.unique(pixels.reshape(-1, 3).astype(int) // 16, axis=0))
        print(f"figure2 as rendered: {pixels.shape[1]}x{pixels.shape[0]} px, std {pixels.std():.1f}, "
              f"{colours} colour bins ({shot})")
        assert pixels.shape[0] > 100 and pixels.std() > 20 and colours > 30, (pixels.std(), colours)

        # Run-time statistics (every rule's benchmark record) render as charts, from the menu.
        page.evaluate("app.setView({navbarMode: 'menu'})")
        menu_item("Statistics").click()
        page.wait_for_selector("#runtimes .vega-embed, #runtimes canvas, #runtimes svg",
                               timeout=20_000)
        page.screenshot(path=str(shot_dir / "report-statistics.png"), full_page=True)
        browser.close()
    seconds = time.perf_counter() - start
    assert not errors, errors
    print(f"browser check: {len(results)} results ({shown} listed under Tables), {n_tables} "
          f"table views, {len(images)} images, "
          f"{seconds:.1f} s; screenshots in {shot_dir}")
