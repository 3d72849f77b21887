"""Real-browser harness: a throwaway JupyterLab server driven by headless Chromium (Playwright).

Used by tests marked ``@pytest.mark.browser``. Needs Debian's ``chromium`` at /usr/bin/chromium
and the ``playwright`` Python package (never ``playwright install``: the browser is Debian's).

Typical use::

    with jupyter_lab(tmp_path) as lab, chromium_page() as page:
        open_notebook(page, lab.base_url, lab.token, "demo.ipynb")
        run_all(page, timeout=60)
        screenshot(page, "demo")

or the ``lab`` / ``browser_page`` fixtures below (import them into a test module).

How things are detected:

* the server is started with ``--LabApp.expose_app_in_browser=True``, so the page has
  ``window.jupyterapp``; the helpers read the notebook panel, its kernel status and its cell
  models from there (``app.shell.currentWidget``);
* "idle" means: the panel's ``sessionContext.kernelDisplayStatus`` is ``"idle"`` and no cell's
  input prompt shows ``[*]``;
* ``run_all`` executes the ``notebook:run-all-cells`` command and waits for the promise it
  returns, which resolves once every cell has run (or a cell failed);
* ipywidgets 8 puts classes given with ``widget.add_class(...)`` on the view's root DOM node;
  plotly.js attaches the traces to the graph div (``div.js-plotly-plot``) as ``el.data``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"

# JupyterLab user settings for the test server: no autosave (notebooks must never be written
# back), no news/update checks (no network; their toasts would cover the page), and every cell
# kept fully in the DOM (no windowing), so outputs far down the notebook can be queried.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def require_browser() -> None:
    """Skip the calling test unless Playwright and Debian's chromium are installed."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium")


# --------------------------------------------------------------------------------------------
# JupyterLab server
# --------------------------------------------------------------------------------------------


@dataclass
class LabServer:
    base_url: str  # e.g. http://127.0.0.1:38123 (no trailing slash)
    token: str
    root_dir: Path
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        """``{base_url}/{path}`` with the token appended as a query parameter."""
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    for plugin, values in LAB_SETTINGS.items():
        package, name = plugin.rsplit("/", 1)
        path = settings_dir / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _get(url: str, timeout: float = 2.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status


def _stop_server(proc: subprocess.Popen, base_url: str, token: str) -> None:
    """Shut the server down cleanly (it stops its kernels), then kill whatever is left."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        req = urllib.request.Request(f"{base_url}/api/shutdown?token={token}", method="POST")
        with contextlib.suppress(OSError, urllib.error.URLError):
            urllib.request.urlopen(req, timeout=5).close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # Kernels run in their own sessions; a clean shutdown stops them, this is the fallback.
    alive = [c for c in children if c.is_running()]
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def jupyter_lab(root_dir: str | os.PathLike, startup_timeout: float = 90.0) -> Iterator[LabServer]:
    """Run ``jupyter lab`` serving ``root_dir`` on a free local port with a random token.

    Config, runtime, settings and workspaces dirs are fresh temp dirs (the data dir stays the
    default, so the venv's labextensions, widgets and plotly, are found). The server and its
    kernels are always stopped at exit; its log is kept in ``LabServer.log_path`` while running.
    """
    root = Path(root_dir).resolve()
    token = secrets.token_hex(24)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="llmlab-lab-"))
    (tmp / "notary").mkdir()  # notebook trust db and secret, kept out of ~/.local/share/jupyter
    _write_lab_settings(tmp / "settings")
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("JUPYTER_TOKEN", None)
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",
        f"--ServerApp.token={token}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None",
        f"--NotebookNotary.data_dir={tmp / 'notary'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log_path = tmp / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(base_url, token, root, proc, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{server.log()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if _get(server.url("api/status")) == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"jupyter lab not up after {startup_timeout} s:\n{server.log()}")
            time.sleep(0.25)
        yield server
    finally:
        _stop_server(proc, base_url, token)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium_page(viewport: dict | None = None):
    """A fresh headless Chromium (Debian's) page; browser and Playwright are closed at exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport or VIEWPORT)
            yield context.new_page()  # page.console_messages() / page_errors() help debugging
            context.close()
        finally:
            browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LabServer]:
    """One JupyterLab server per test module, serving a fresh temp dir (``lab.root_dir``)."""
    require_browser()
    with jupyter_lab(tmp_path_factory.mktemp("lab")) as server:
        yield server


@pytest.fixture
def browser_page():
    """A headless Chromium page (1400x1000), closed after the test."""
    require_browser()
    with chromium_page() as page:
        yield page


# --------------------------------------------------------------------------------------------
# Notebook driving (all JS goes through window.jupyterapp)
# --------------------------------------------------------------------------------------------

# The notebook panel of the current (focused) document, or null.
_PANEL_JS = """
() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  return w && w.content && w.sessionContext ? w : null;
}
"""

_IDLE_JS = f"""
() => {{
  const panel = ({_PANEL_JS})();
  if (!panel || !panel.sessionContext.session || !panel.sessionContext.session.kernel) return false;
  if (panel.sessionContext.kernelDisplayStatus !== 'idle') return false;
  const prompts = panel.node.querySelectorAll('.jp-InputArea-prompt');
  return ![...prompts].some(p => p.textContent.includes('[*]'));
}}
"""


def open_notebook(page, base_url: str, token: str, relpath: str, timeout: float = 120.0) -> None:
    """Open ``relpath`` (relative to the server root) in JupyterLab and wait for an idle kernel.

    Accepts JupyterLab's kernel chooser if it comes up (a notebook without kernelspec metadata);
    raises at once on any other dialog (e.g. "File Load Error").
    """
    # ?reset: start from an empty workspace, not the tabs an earlier page left open.
    page.goto(f"{base_url}/lab/tree/{relpath}?reset&token={token}", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while True:
        page.wait_for_function(
            f"() => !!window.jupyterapp && (!!document.querySelector('.jp-Dialog') || ({_IDLE_JS})())",
            timeout=max(deadline - time.monotonic(), 1) * 1000,
            polling=200,
        )
        dialog = page.locator(".jp-Dialog")
        if not dialog.count():
            break
        text = dialog.first.inner_text()
        if "Select Kernel" not in text:
            raise RuntimeError(f"JupyterLab dialog while opening {relpath}: {text!r}")
        dialog.locator(".jp-mod-accept").first.click()
        dialog.first.wait_for(state="detached")
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for outputs


def wait_idle(page, timeout: float = 60.0) -> None:
    """Wait until the current notebook's kernel is idle and no cell shows ``[*]``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(_IDLE_JS, timeout=timeout * 1000, polling=200)
    except PlaywrightTimeout as e:
        raise TimeoutError(f"notebook not idle after {timeout} s: {notebook_state(page)}") from e


def notebook_state(page) -> dict:
    """What the helpers see: current widget, kernel status, prompts (for failure messages)."""
    return page.evaluate(
        """() => {
          const app = window.jupyterapp;
          if (!app) return {app: null};
          const w = app.shell.currentWidget;
          const sc = w && w.sessionContext;
          return {
            current: w ? w.id + ' ' + w.title.label : null,
            kernel: sc ? sc.kernelDisplayStatus : null,
            prompts: [...document.querySelectorAll('.jp-NotebookPanel .jp-InputArea-prompt')]
              .map(p => p.textContent),
            dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText),
          };
        }"""
    )


def run_all(page, timeout: float = 120.0) -> bool:
    """Run all cells of the current notebook and wait until they finished and the kernel is idle.

    Returns the command's result: False when a cell failed (JupyterLab then stops the run).
    """
    page.evaluate(
        """() => {
          window.__llmlabRunAll = {done: false, ok: null, error: null};
          window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            ok => { window.__llmlabRunAll.ok = ok; window.__llmlabRunAll.done = true; },
            err => { window.__llmlabRunAll.error = String(err); window.__llmlabRunAll.done = true; });
        }"""
    )
    page.wait_for_function("() => window.__llmlabRunAll.done", timeout=timeout * 1000, polling=250)
    state = page.evaluate("() => window.__llmlabRunAll")
    if state["error"]:
        raise RuntimeError(f"notebook:run-all-cells failed: {state['error']}")
    wait_idle(page, timeout)
    return bool(state["ok"])


def screenshot(page, name: str, *, full_page: bool = False) -> Path:
    """Save ``test-artifacts/{name}.png`` (repo root) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def cells(page):
    """Locator of the notebook's cells, in order."""
    return page.locator(".jp-NotebookPanel .jp-Cell")


def scroll_to(page, selector: str, index: int = 0) -> None:
    """Scroll element ``index`` (-1: the last) matching ``selector`` into view."""
    page.locator(selector).nth(index).scroll_into_view_if_needed()


def scroll_to_cell(page, index: int) -> None:
    """Scroll the notebook so cell ``index`` is in view (e.g. before a screenshot)."""
    page.evaluate(
        f"""() => {{
          const panel = ({_PANEL_JS})();
          const cell = panel.content.widgets[{int(index)}];
          cell.node.scrollIntoView({{block: 'start'}});
        }}"""
    )


def cell_output_text(page, index: int) -> str:
    """The visible text of the outputs of cell ``index`` (counting all cells, markdown too;
    prompts left out; '' for none)."""
    return page.evaluate(
        f"""() => {{
          const panel = ({_PANEL_JS})();
          const cell = panel.content.widgets[{int(index)}];
          if (!cell) return '';
          return [...cell.node.querySelectorAll('.jp-OutputArea-output')]
            .map(el => el.innerText).join('\\n');
        }}"""
    )


def error_outputs(page) -> list[str]:
    """Error outputs of the current notebook (from the cell models), plus any stderr output whose
    text contains a traceback; each as text. Empty when the run was clean."""
    return page.evaluate(
        f"""() => {{
          const panel = ({_PANEL_JS})();
          const found = [];
          for (const cell of panel.content.widgets) {{
            const outputs = cell.model.outputs;
            if (!outputs) continue;
            for (let i = 0; i < outputs.length; i++) {{
              const out = outputs.get(i).toJSON();
              if (out.output_type === 'error') found.push(out.ename + ': ' + out.evalue);
            }}
          }}
          const sel = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]';
          for (const el of panel.node.querySelectorAll(sel)) {{
            if (el.innerText.includes('Traceback')) found.push(el.innerText.slice(0, 2000));
          }}
          return found;
        }}"""
    )


def stderr_outputs(page) -> list[str]:
    """Texts of all stderr outputs (warnings included) in the current notebook."""
    return page.evaluate(
        """() => [...document.querySelectorAll(
          '.jp-NotebookPanel .jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
        )].map(el => el.innerText)"""
    )


def plotly_figures(page) -> list[dict]:
    """Rendered plotly figures in the notebook: ``[{"traces": n, "points": [n per trace]}]``.

    Reads what plotly.js attaches to each ``div.js-plotly-plot`` (plain figures from the plotly
    mimerenderer and ``FigureWidget`` views alike): ``el.data`` for the traces and
    ``el._fullData[i]._length`` for their point counts (``el.data`` may hold numpy columns
    still base64-encoded as ``{dtype, bdata}``; ``_fullData`` has them decoded).
    """
    return page.evaluate(
        """() => [...document.querySelectorAll('.jp-NotebookPanel .js-plotly-plot')].map(el => {
          const data = el.data || [];
          const full = {};
          for (const t of el._fullData || []) full[t.index] = t;
          const len = a => (a && typeof a.length === 'number' ? a.length : null);
          const points = data.map((t, i) => {
            const f = full[i];
            if (f && typeof f._length === 'number') return f._length;
            return len(f && f.x) ?? len(t.x) ?? len(t.y) ?? len(t.values) ?? 0;
          });
          return {traces: data.length, points};
        })"""
    )


def bar_fills(page, title: str) -> list[dict[str, list[str]]]:
    """Rendered fill colours of the bar traces in each notebook figure whose title contains ``title``:
    one ``{trace name: [distinct fills of its SVG bar paths, as "rgb(r, g, b)"]}`` per figure.

    Reads the SVG itself (``g.trace.bars path`` in ``.barlayer``), i.e. what the user sees, and
    names each bar trace from ``el._fullData`` (the bar layer draws bar traces in data order).
    """
    return page.evaluate(
        """title => [...document.querySelectorAll('.jp-NotebookPanel .js-plotly-plot')]
          .filter(el => {
            const t = el._fullLayout && el._fullLayout.title && el._fullLayout.title.text;
            return typeof t === 'string' && t.includes(title);
          })
          .map(el => {
            const names = (el._fullData || []).filter(t => t.type === 'bar' && t.visible !== false).map(t => t.name);
            const out = {};
            el.querySelectorAll('.barlayer g.trace.bars').forEach((g, i) => {
              const fills = new Set();
              g.querySelectorAll('path').forEach(p => { if (p.style.fill) fills.add(p.style.fill); });
              out[names[i] ?? String(i)] = [...fills];
            });
            return out;
          })""",
        title,
    )


def hex_rgb(colour: str) -> str:
    """``"#f28e2b"`` as the browser writes a computed fill: ``"rgb(242, 142, 43)"``."""
    h = colour.lstrip("#")
    return "rgb({}, {}, {})".format(*(int(h[i : i + 2], 16) for i in (0, 2, 4)))


def widget_text(page, css_class: str, index: int = 0) -> str:
    """Text of the widget given ``widget.add_class(css_class)`` (the `index`-th; -1 for the last)."""
    return page.locator(f".jp-NotebookPanel .{css_class}").nth(index).inner_text()


def click_widget(page, css_class: str, index: int = 0) -> None:
    """Click the widget given ``widget.add_class(css_class)`` (the `index`-th; -1 for the last), e.g. a Button."""
    page.locator(f".jp-NotebookPanel .{css_class}").nth(index).click()
