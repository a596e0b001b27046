"""The report as a person sees it (issue 22): opened in a real headless browser, it must render, show every figure
and log no console error. Debian's ``chromium`` (``.ci/run`` installs it where it is missing)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from carlib.records.record import new_record
from carlib.records.store import ResultsStore
from carlib.studies.report import build_report
from carlib.studies.study_log import log_path, write_log

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="needs chromium: apt-get install -y chromium (.ci/run does)")

# Injected first into <head>: chromium logs every console message at one level, so console.error and uncaught
# errors (a failed resource included) are tagged; their count is left in the DOM.
_CONSOLE = """<script>
window.__errors = 0;
const report = console.error.bind(console);
console.error = (...args) => { window.__errors += 1; report('CARLIB-CONSOLE-ERROR: ' + args.join(' ')); };
window.addEventListener('error', event => console.error(event.message || 'failed to load ' +
  (event.target && event.target.src || '').slice(0, 40)), true);
</script>"""
# Injected before </body>: once the page has loaded, count the images that did not decode, report each on the
# console as an error, and leave the counts in the DOM for --dump-dom.
_PROBE = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0);
  broken.forEach(i => console.error('image did not decode: ' + i.src.slice(0, 40)));
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken', broken.length);
  document.body.setAttribute('data-text', document.body.innerText.trim().length);
  document.body.setAttribute('data-errors', window.__errors);
});
</script>"""


def _open(page: Path, tmp_path: Path) -> tuple[dict[str, int], list[str], Image.Image]:
    """(counts the probe left, the console's errors, a screenshot) of ``page`` in headless chromium."""
    probed = tmp_path / f"probed-{page.name}"
    text = page.read_text()
    text = re.sub(r"<head>|<body>", lambda m: m.group(0) + _CONSOLE, text, count=1)
    probed.write_text(text.replace("</body>", _PROBE + "</body>"))
    common = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=5000", "--window-size=1200,1600"]
    dom = subprocess.run(common + ["--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / f"{page.stem}.png"
    subprocess.run(common + [f"--screenshot={shot}", probed.as_uri()], capture_output=True, timeout=120)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    counts = {k: int(v) for k, v in re.findall(r'data-(\w+)="(\d+)"', body.group(1))} if body else {}
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and
              ("CARLIB-CONSOLE-ERROR" in line or "Uncaught" in line)]
    return counts, errors, Image.open(io.BytesIO(shot.read_bytes())).convert("L")


def _store(tmp_path: Path) -> Path:
    """A sequential LR study of 2 configurations × 5 seeds, recorded without training (with learning curves)."""
    store = ResultsStore(tmp_path / "results")
    for seed in range(5):
        for lr, accuracy in ((1e-5, 0.10 + 0.01 * seed), (3e-3, 0.70 + 0.013 * (seed % 3))):
            history = [{"epoch": e, "accuracy": accuracy * e / 3, "val_accuracy": accuracy * e / 3,
                        "learning_rate": lr} for e in range(4)]
            run_id = f"lr-{lr:g}-{seed}"
            store.write(new_record(run_id=run_id, study="lr_study", config={"lr": lr, "schedule": "cosine", "seed": seed},
                                   started_at=f"2026-12-04T00:00:{seed:02d}", status="ok",
                                   metrics={"test_accuracy_best": accuracy}, history=history,
                                   run_dir=str(store.run_dir(run_id)), finished_at="2026-12-04T00:01:00"))
    write_log(log_path(store.root, "lr_study", "abc"), {
        "study": "lr_study", "design": {"alpha": 0.05, "max_seeds": 8, "min_effect": 0.01}, "grid": {},
        "rounds": [{"seeds": s, "active": [], "beaten": [], "verdict": ""} for s in range(1, 6)],
        "stopped": {"reason": "decisive", "seeds": 5, "runs": 10, "runs_saved": 6, "verdict": ""}})
    return store.root


def test_the_report_renders_every_figure_without_console_errors(tmp_path):
    page = build_report(_store(tmp_path), tmp_path / "report.html")
    html = page.read_text()
    assert "Anytime-valid interval, seed by seed" in html and "Sequential study stopped after 5 seed(s)" in html
    counts, errors, screenshot = _open(page, tmp_path)
    assert errors == [] and counts["errors"] == 0
    assert counts["images"] >= 3 and counts["broken"] == 0  # the summary, the interval path, the learning curves
    assert counts["text"] > 500
    low, high = screenshot.getextrema()
    assert high - low > 100 and screenshot.histogram()[255] < 0.98 * screenshot.width * screenshot.height


def test_the_browser_check_catches_a_figure_that_does_not_decode(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><h1>report</h1><p>" + "text " * 200 +
                      "</p><img src='data:image/png;base64,iVBORw0KGgoAAAAN'></body></html>")
    counts, errors, _ = _open(broken, tmp_path)
    assert counts["broken"] == 1 and counts["errors"] >= 1 and any("image did not decode" in e for e in errors)
