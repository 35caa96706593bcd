"""Screenshot a page of the Prefect UI with headless Chromium (Debian's ``chromium`` package).

    python scripts/screenshot.py http://127.0.0.1:4200/runs/flow-run/<id> --tab Artifacts \
        --expect benchmark-demo --expect demo-shards --out docs/img/prefect-run.png

The UI is a single-page app that draws after its API calls return, so a plain ``chromium
--screenshot`` may catch it half drawn. This drives Chromium over the DevTools protocol (bound to
127.0.0.1): it opens the page, waits until every ``--expect`` text is on it, clicks the ``--tab``
(e.g. the run's Artifacts tab) and waits again, then captures. Exit 1 if the texts never appear.
"""

from __future__ import annotations

import argparse
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

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in CHROMIUMS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """A minimal DevTools-protocol client for one page (requests answered in order, events skipped)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        r = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''", returnByValue=True)
        return r.get("result", {}).get("value") or ""

    def wait_for(self, texts: list[str], timeout_s: float) -> list[str]:
        """Wait until every text is on the page; returns the ones still missing at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = self.text()
            missing = [t for t in texts if t not in body]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.5)

    def click_text(self, label: str) -> bool:
        js = (
            "(() => { const els = Array.from(document.querySelectorAll('[role=tab], button, a, li'));"
            f" const el = els.find(e => e.innerText && e.innerText.trim() === {json.dumps(label)});"
            " if (el) { el.click(); return true; } return false; })()"
        )
        r = self.call("Runtime.evaluate", expression=js, returnByValue=True)
        return bool(r.get("result", {}).get("value"))

    def close(self) -> None:
        self.ws.close()


def screenshot(
    url: str,
    out: str | Path,
    *,
    expect: list[str] = (),
    tab: str | None = None,
    expect_after_tab: list[str] = (),
    width: int = 1600,
    height: int = 1200,
    timeout_s: float = 60,
    chromium: str | None = None,
) -> Path:
    """Capture ``url`` into the PNG ``out``; raises RuntimeError naming the texts that never appeared."""
    exe = find_chromium(chromium)
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="musicinterp-chromium-")
    cmd = [
        exe,
        "--headless=new",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--mute-audio",
        f"--window-size={width},{height}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root (CI containers)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{exe} did not start its DevTools endpoint (exit {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        missing = page.wait_for(list(expect), timeout_s)
        if missing:
            raise RuntimeError(f"{url}: never showed {missing} within {timeout_s:g} s")
        if tab:
            deadline = time.monotonic() + timeout_s
            while not page.click_text(tab):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url}: no tab {tab!r} to click")
                time.sleep(0.5)
            missing = page.wait_for(list(expect_after_tab), timeout_s)
            if missing:
                raise RuntimeError(f"{url}: the {tab!r} tab never showed {missing} within {timeout_s:g} s")
        time.sleep(1.5)  # let charts and fonts settle
        png = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
        return out
    finally:
        if page is not None:
            try:
                page.close()
            except Exception:  # noqa: BLE001 - the browser is going away anyway
                pass
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="a page of the Prefect UI, e.g. http://127.0.0.1:4200/runs/flow-run/<id>")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--expect", action="append", default=[], help="text the page must show before the capture")
    p.add_argument("--tab", help="tab to click before the capture (e.g. Artifacts)")
    p.add_argument("--expect-after-tab", action="append", default=[], help="text the tab must show")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--timeout-s", type=float, default=60)
    p.add_argument("--chromium", help="browser executable (default: chromium on PATH)")
    a = p.parse_args(argv)
    try:
        out = screenshot(
            a.url,
            a.out,
            expect=a.expect,
            tab=a.tab,
            expect_after_tab=a.expect_after_tab,
            width=a.width,
            height=a.height,
            timeout_s=a.timeout_s,
            chromium=a.chromium,
        )
    except (RuntimeError, FileNotFoundError) as e:
        print(f"screenshot failed: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
