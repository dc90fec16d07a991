"""Try the workshop kit in a real browser (Debian's headless Chromium) with no network.

    python scripts/browser_check.py            # (make browser-check) screenshots into docs/

Everything runs inside a new, empty network namespace (``unshare -n``: only a loopback
interface, so no request can leave the machine; needs root, as on the course machines):

1. a deck from ``build/slides/`` (``make slides`` first): the title slide, a code slide and a
   figure slide; Chromium's net log must show no http(s) request, and the DOM must show reveal.js
   initialised with exactly one present slide, holding the notebook's title;
2. JupyterLab on 127.0.0.1 opens notebook 00 and runs all its cells (through JupyterLab's own
   "run all" command); the screenshot shows executed cells;
3. the live slideshow (jupyterlab-rise's ``/rise/`` page, what View > Render as Reveal Slideshow, Alt+R
   shows) of the same notebook, if jupyterlab-rise is installed.

It prints what it checked and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
SIZE = "1280,800"


def small_png(src: Path, dst: Path, width: int = 960) -> None:
    """Downscale a screenshot and store it with a 64-colour palette (a few tens of kB)."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


# ----------------------------------------------------------------------------- JupyterLab


async def _cdp(ws_url: str):
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 1024 * 1024)
    counter = 0

    async def call(method: str, **params):
        nonlocal counter
        counter += 1
        conn.write_message(json.dumps({"id": counter, "method": method, "params": params}))
        while True:
            msg = json.loads(await conn.read_message())
            if msg.get("method") == "Network.requestWillBeSent":
                REQUESTS.append(msg["params"]["request"]["url"])
            if msg.get("id") == counter:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    return call


#: Every URL the page asked for (CDP Network.requestWillBeSent), deck and JupyterLab alike.
REQUESTS: list[str] = []


def remote(urls: list[str]) -> list[str]:
    """The URLs that would leave the machine (anything but file:, data:, blob: and loopback)."""
    local = ("file:", "data:", "blob:", "http://127.0.0.1", "ws://127.0.0.1", "about:")
    return sorted({u for u in urls if not u.startswith(local)})


async def _js(call, expr: str):
    res = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
    return res.get("result", {}).get("value")


async def _wait(call, expr: str, seconds: float, what: str):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await _js(call, expr):
            return True
        await asyncio.sleep(0.5)
    raise TimeoutError(what)


async def _shot(call, tmp: Path, out: Path, name: str) -> None:
    shot = await call("Page.captureScreenshot", format="png")
    (tmp / name).write_bytes(base64.b64decode(shot["data"]))
    small_png(tmp / name, out / name)


async def _check_deck(call, deck: Path, out: Path, tmp: Path) -> list[str]:
    """The deck's title, a code slide and a figure slide; one present slide with its title."""
    failures = []
    await call("Page.navigate", url=deck.resolve().as_uri() + "#/0")
    await _wait(call, "!!document.querySelector('.reveal.ready')", 60, "reveal.js did not start")
    await asyncio.sleep(1)
    present = await _js(
        call, "document.querySelectorAll('.reveal .slides section.present:not(.stack)').length"
    )
    title = await _js(
        call, "(document.querySelector('.reveal section.present:not(.stack) h1') || {}).textContent"
    )
    print(f"deck {deck.name}: title {title!r}, present slides: {present}")
    if present != 1:
        failures.append(f"deck: {present} present slides, expected one")
    if not title:
        failures.append("deck: the first slide shows no title")
    await _shot(call, tmp, out, "slides-title.png")
    await _js(call, "Reveal.slide(2, 0)")
    await asyncio.sleep(1)
    await _shot(call, tmp, out, "slides-code.png")
    await _js(call, "Reveal.configure({fragments: false}); Reveal.slide(2, 0)")
    figure = await _js(
        call,
        "(() => { const s = Reveal.getSlides(); const k = s.findIndex(x => x.querySelector("
        "'img')); if (k < 0) return false; const i = Reveal.getIndices(s[k]); "
        "Reveal.slide(i.h, i.v); s[k].querySelector('img').scrollIntoView(); return true; })()",
    )
    await asyncio.sleep(1)
    if figure:
        await _shot(call, tmp, out, "slides-figure.png")
    else:
        failures.append("deck: no slide with a figure")
    return failures


async def _drive(
    port: int, lab_port: int, out: Path, tmp: Path, deck: Path, rise: bool
) -> list[str]:
    pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
    page = next(p for p in pages if p.get("type") == "page")
    call = await _cdp(page["webSocketDebuggerUrl"])
    await call("Page.enable")
    await call("Network.enable")
    await call(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=800,
        deviceScaleFactor=1,
        mobile=False,
    )
    failures = await _check_deck(call, deck, out, tmp)
    n_deck = len(REQUESTS)
    print(f"deck: {n_deck} requests, {len(remote(REQUESTS))} would leave the machine")
    try:
        failures += await _drive_lab(call, lab_port, out, tmp, rise)
    except TimeoutError as err:
        state = await _js(
            call,
            "document.location.href + ' | ' + document.title + ' | app: ' + !!window.jupyterapp",
        )
        failures.append(f"lab: {err} (page: {state})")
    return failures


async def _drive_lab(call, lab_port: int, out: Path, tmp: Path, rise: bool) -> list[str]:
    failures = []
    nb_path = "notebooks/00_setup_and_tour.ipynb"
    await call("Page.navigate", url=f"http://127.0.0.1:{lab_port}/lab")
    await _wait(call, "!!(window.jupyterapp && jupyterapp.shell)", 120, "JupyterLab did not load")
    await _wait(
        call,
        "jupyterapp.commands.hasCommand('docmanager:open')",
        60,
        "JupyterLab's document manager did not start",
    )
    await _js(
        call,
        "(async () => { window.__nb = await jupyterapp.commands.execute('docmanager:open', "
        f"{{path: '{nb_path}', factory: 'Notebook', kernel: {{name: 'python3'}}}}); "
        "await window.__nb.context.ready; await window.__nb.sessionContext.ready; return true; })()",
    )
    current = "window.__nb"
    await _wait(
        call,
        f"!!({current} && {current}.sessionContext.session && {current}.sessionContext.session.kernel)",
        120,
        "JupyterLab did not open notebook 00 with a kernel",
    )
    await _js(call, f"jupyterapp.shell.activateById({current}.id)")
    await _js(call, "jupyterapp.commands.execute('notebook:run-all-cells')")  # View > Run All
    done = (
        f"(() => {{ const nb = {current}.content; const code = nb.widgets.filter("
        "c => c.model.type === 'code'); return code.length > 0 && code.every("
        f"c => c.model.executionCount) && {current}.sessionContext.session.kernel.status "
        "=== 'idle'; })()"
    )
    try:
        await _wait(call, done, 240, "notebook 00 did not finish running")
    except TimeoutError as err:
        failures.append(f"lab: {err}")
    errors = await _js(
        call,
        f"{current}.content.widgets.filter(c => c.model.type === 'code')"
        ".flatMap(c => c.model.sharedModel.outputs || []).filter(o => "
        "o.output_type === 'error').length",
    )
    n_run = await _js(call, f"{current}.content.widgets.filter(c => c.model.executionCount).length")
    print(f"JupyterLab: notebook 00 ran {n_run} code cells, {errors} errors")
    if errors:
        failures.append(f"lab: {errors} cells failed")
    await _js(
        call,
        f"(async () => {{ const nb = {current}.content; const k = nb.widgets."
        "findIndex(c => c.model.sharedModel.source.startsWith('# CHECK')); "
        "nb.activeCellIndex = Math.max(k - 2, 0); "
        "await nb.scrollToCell(nb.widgets[Math.max(k - 2, 0)], 'start'); })()",
    )
    await asyncio.sleep(1.5)
    await _js(  # answer JupyterLab's "get notified about news?" toast: No
        call,
        "[...document.querySelectorAll('.jp-toast-button, button')].filter(b => "
        "b.textContent.trim() === 'No').forEach(b => b.click())",
    )
    await asyncio.sleep(1)
    await _shot(call, tmp, out, "jupyterlab-notebook-00.png")
    if rise:
        await call("Page.navigate", url=f"http://127.0.0.1:{lab_port}/rise/{nb_path}")
        try:
            await _wait(
                call,
                "!!document.querySelector('.reveal .slides section.present')",
                120,
                "the RISE slideshow did not render",
            )
            await asyncio.sleep(3)
            await _shot(call, tmp, out, "jupyterlab-rise-00.png")
            print("RISE: the live slideshow of notebook 00 rendered")
        except TimeoutError as err:
            failures.append(f"rise: {err}")
    return failures


def check_in_browser(out: Path, tmp: Path, python: str, deck: Path) -> list[str]:
    lab_port, cdp_port = 8899, 9333
    rise = (
        subprocess.run([python, "-c", "import jupyterlab_rise"], capture_output=True).returncode
        == 0
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp / "jupyter")}
    lab = subprocess.Popen(
        [
            python,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={lab_port}",
            "--ip=127.0.0.1",
            "--ServerApp.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--allow-root",
            f"--ServerApp.root_dir={REPO}",
        ],
        stdout=open(tmp / "lab.log", "w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    browser = subprocess.Popen(
        [
            CHROMIUM,
            *FLAGS,
            f"--window-size={SIZE}",
            f"--remote-debugging-port={cdp_port}",
            f"--user-data-dir={tmp / 'profile-lab'}",
            f"--log-net-log={tmp / 'lab-netlog.json'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{lab_port}/api", timeout=2)
                urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/version", timeout=2)
                break
            except OSError:
                time.sleep(1)
        failures = asyncio.run(_drive(cdp_port, lab_port, out, tmp, deck, rise))
    finally:
        browser.terminate()
        lab.terminate()
        browser.wait(timeout=30)
        lab.wait(timeout=30)
    leaving = remote(REQUESTS)
    print(
        f"all pages: {len(REQUESTS)} requests, {len(leaving)} would leave the machine; "
        f"jupyterlab-rise installed: {rise}"
    )
    if leaving:
        failures.append(f"requests to the network: {leaving[:3]}")
    if not rise:
        print(
            "RISE: not installed in this environment (pip install jupyterlab-rise; make setup does)"
        )
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--deck", type=Path, default=REPO / "build/slides/05_int8_quantization.slides.html"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--python", default=sys.executable, help="python whose JupyterLab to run")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:  # re-run inside a network namespace with nothing but loopback
        cmd = [
            "unshare",
            "-n",
            sys.executable,
            __file__,
            "--inside",
            "--deck",
            str(args.deck),
            "--out",
            str(args.out),
            "--python",
            args.python,
        ]
        return subprocess.run(cmd).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not args.deck.is_file():
        print(f"no deck at {args.deck}: run `make slides` first")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        failures = check_in_browser(args.out, Path(tmp), args.python, args.deck)
    for f in failures:
        print("FAILED:", f)
    print("browser check:", "passed" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
