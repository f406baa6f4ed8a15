"""``make check-ui``: what a user sees in MLflow's UI and in the Snakemake report, checked in a real browser.

Runs the tiny test study (``config/test.yaml``: three studies, one run shared by two of them) into a temporary
folder, starts ``mlflow ui`` on 127.0.0.1 (a free port) on its store, and loads in headless Chromium (Debian's
``chromium``): the runs list of the ``pretrain`` experiment, each study's view (its filter in the URL), one run's
page, and the study's ``report.html`` (landing page, a table, a figure), then the committed
``results/report.html``. Each page's DOM is checked for what must be there and a screenshot saved under
``--out``. Exits 1 listing what failed.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
NAVIGATE = """<script>
// check-ui: open the result named in the URL's #fragment, as a click in the report's menu would.
window.addEventListener("load", () => setTimeout(() => {
  const path = decodeURIComponent(location.hash.slice(1));
  if (!path || !results[path]) return;
  const png = path.endsWith(".png");
  app.setView({content: png ? "img" : "html", contentPath: results[path].data_uri, resultPath: path});
  setTimeout(() => {
    const img = document.querySelector("img[src^='data:image/png']");
    const mark = document.createElement("div");
    mark.id = "check-ui";
    mark.dataset.imageWidth = img ? String(img.naturalWidth) : "none";
    document.body.appendChild(mark);
  }, 1500);
}, 500));
</script>"""


class Checks:
    """Collects failed checks; prints each check as it is made."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, condition: bool, what: str) -> None:
        print(f"  {'ok  ' if condition else 'FAIL'} {what}")
        if not condition:
            self.failed.append(what)


def text_of(dom: str) -> str:
    """The visible text of a DOM dump, whitespace collapsed."""
    dom = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


class Browser:
    """Headless Chromium: a DOM dump (after scripts and data requests settle) and a screenshot of a URL."""

    def __init__(self, out: Path, profile: Path):
        self.out, self.profile = out, profile
        self.command = shutil.which("chromium") or shutil.which("chromium-browser")
        if self.command is None:
            raise SystemExit("check-ui: chromium not found (apt-get install chromium)")

    def _run(self, url: str, size: str, *flags: str) -> subprocess.CompletedProcess:
        command = [
            self.command,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            f"--window-size={size}",
            "--virtual-time-budget=20000",
            *flags,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    def page(self, url: str, name: str, size: str = "1920,1000") -> str:
        """The DOM of ``url``; its screenshot goes to ``<out>/<name>.png``."""
        dom = self._run(url, size, "--dump-dom").stdout
        self._run(url, size, f"--screenshot={self.out / (name + '.png')}")
        (self.out / f"{name}.html").write_text(dom)
        return dom


def ui_duration(ms: int) -> str:
    """A duration as MLflow's UI writes it (its ``Utils.formatDuration``)."""
    for limit, unit, scale in ((6e4, "s", 1e3), (36e5, "min", 6e4), (864e5, "h", 36e5)):
        if ms < limit:
            return f"{ms}ms" if ms < 500 else f"{ms / scale:.1f}{unit}"
    return f"{ms / 864e5:.1f}d"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_study(work: Path) -> float:
    """Run the tiny test study and its report into ``work``; returns the seconds it took."""
    started = time.monotonic()
    snakemake = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work)]
    snakemake += ["--configfile", str(ROOT / "config" / "test.yaml"), "--config", f"data_dir={ROOT / 'data'}"]
    for extra in (["--cores", "2"], ["--report", str(work / "results" / "report.html")]):
        result = subprocess.run(snakemake + extra, capture_output=True, text=True, env=ENV, timeout=1800)
        if result.returncode != 0:
            raise SystemExit(f"check-ui: the test study failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def start_ui(db: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1:port, in its own process group; returns once it answers."""
    command = [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"check-ui: mlflow ui exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    raise SystemExit("check-ui: mlflow ui did not answer within 300 s")


def check_mlflow(browser: Browser, base: str, uri: str, check: Checks) -> None:
    from mlflow.tracking import MlflowClient

    from fedbt.tracking import runs_view, study_scopes

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pretrain")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}

    print("runs list of the pretrain experiment")
    text = text_of(browser.page(runs_view(experiment.experiment_id, base=base), "mlflow-runs"))
    check("Training runs" in text and "Traces 0" not in text, "opens on the runs list (mlflow.experimentKind)")
    check(f" {len(runs)} matching run" in text, f"{len(runs)} runs listed")
    for name, run in runs.items():
        duration = ui_duration(run.info.end_time - run.info.start_time)
        check(name in text, f"run {name} listed")
        check(f" {duration} " in text, f"{name}: its duration {duration} shown")
        corpus = next(i.dataset for i in run.inputs.dataset_inputs if i.dataset.name.startswith("corpus-"))
        check(f"{corpus.name} ({corpus.digest})" in text, f"{name}: dataset {corpus.name} ({corpus.digest}) shown")
    check(text.count(" fedbt ") >= len(runs), "Source column: fedbt")

    for scope in study_scopes(experiment.tags):
        print(f"study view {scope.name}")
        members = [n for n, r in runs.items() if r.data.tags.get(f"study.{scope.name}") == "yes"]
        view = runs_view(experiment.experiment_id, scope.name, base=base)
        text = text_of(browser.page(view, f"mlflow-study-{scope.name}"))
        check(f" {len(members)} matching run" in text, f"{scope.name}: {len(members)} runs ({', '.join(members)})")
        for name in runs:
            check((name in text) == (name in members), f"{scope.name}: {name} {'in' if name in members else 'not'}")

    shared = next(r for r in runs.values() if "," in r.data.tags.get("studies", ""))
    print(f"run page {shared.info.run_name}")
    page = f"{base}/#/experiments/{experiment.experiment_id}/runs/{shared.info.run_id}"
    text = text_of(browser.page(page, "mlflow-run", size="1920,1400"))
    check("Status Finished" in text, "status Finished")
    tags = shared.data.tags
    members = [key for key in tags if key.startswith("study.")]
    for key in ("study", "variant", "method", "data", "seed", "scenario", "studies", *members):
        check(f"{key} : {tags[key]}" in text, f"tag {key} : {tags[key]}")
    check(f"Created by {tags['mlflow.user']}" in text, f"Created by {tags['mlflow.user']} (mlflow.user)")
    check(tags["mlflow.source.git.commit"][:7] in text, f"git commit {tags['mlflow.source.git.commit'][:7]} in Source")
    check("Logged models (1)" in text, "its model is listed")


def report_results(path: Path) -> dict:
    """The ``results`` object a Snakemake report embeds (path -> entry with its data URI)."""
    match = re.search(r"var results = (\{.*?\});\s*\n", path.read_text(), flags=re.S)
    return json.loads(match.group(1)) if match else {}


def check_report(browser: Browser, report: Path, name: str, work: Path, check: Checks) -> None:
    print(f"report {name}: {report}")
    results = report_results(report)
    tables = sorted(p for p in results if "/tables/" in p)
    inline = [p for p in tables if p.endswith(".html")]
    figures = sorted(p for p in results if p.endswith(".png"))
    check(bool(tables) and bool(figures), f"{len(tables)} tables, {len(figures)} figures embedded")
    text = text_of(browser.page(report.as_uri(), f"{name}-report"))
    check("Snakemake Report" in text and "Figures" in text and "Tables" in text, "menu with Figures and Tables")
    navigable = work / f"{name}-report-navigable.html"
    page, _, tail = report.read_text().rpartition("</body>")  # the last one: scripts in the page hold others
    navigable.write_text(page + NAVIGATE + "</body>" + tail)

    if inline:
        table = inline[0]
        dom = browser.page(f"{navigable.as_uri()}#{table}", f"{name}-report-table")
        check("<iframe" in dom and "data:text/html" in dom, f"{table} shown inline")
        source = base64.b64decode(results[table]["data_uri"].split(",", 1)[1]).decode()
        rows = source.count("<tr>") - 1
        check("<table>" in source and rows >= 1, f"{table}: an HTML table with {rows} rows")
    else:  # a report built before the tables had an HTML form: they are downloads only
        print(f"  note: no HTML tables in this report (only {', '.join(Path(t).name for t in tables[:3])}, ...);")
        print("        `make reproduce` rebuilds it with tables shown inline")

    if figures:
        figure = next((f for f in figures if "pareto" in f), figures[0])
        dom = browser.page(f"{navigable.as_uri()}#{figure}", f"{name}-report-figure")
        found = re.search(r'data-image-width="(\w+)"', dom)
        width = int(found.group(1)) if found and found.group(1).isdigit() else 0
        check(width > 0, f"{figure} drawn ({width} px wide)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("CHECK_UI_OUT", "/tmp/fedbt-check-ui"), help="screenshots")
    parser.add_argument("--work", help="folder of an earlier check's study run to reuse (default: run it afresh)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    check = Checks()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedbt-check-ui-") as tmp:
        work = Path(args.work or tmp)
        if not (work / "results" / "report.html").is_file():
            print(f"test study and its report: {run_study(work):.0f} s")
        browser = Browser(out, work / "chromium-profile")
        port = free_port()
        server = start_ui(work / "results" / "mlflow.db", port, out / "mlflow-ui.log")
        try:
            check_mlflow(browser, f"http://127.0.0.1:{port}", f"sqlite:///{work / 'results' / 'mlflow.db'}", check)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        check_report(browser, work / "results" / "report.html", "study", work, check)
        check_report(browser, ROOT / "results" / "report.html", "committed", work, check)
    print(f"check-ui: {time.monotonic() - started:.0f} s; screenshots in {out}")
    if check.failed:
        print("FAILED:\n  " + "\n  ".join(check.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
