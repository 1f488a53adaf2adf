#!/usr/bin/env python
"""``detkit serve``'s page in a real browser: Debian's headless Chromium driven by Selenium.

    python tools/serve_page.py MODEL IMAGE --out docs/images/serve_page.png [--conf 0.25] [--width 1500]

starts ``detkit serve MODEL`` on a free local port, opens the page, picks IMAGE in its file input,
waits for the boxes and the JSON, prints what the page drew and saves a screenshot. The README's
picture of the page is made this way, and ``tests/test_serve_page.py`` drives the page with the same
functions and checks what it draws against the API's answer.

The browser is the system's (``apt-get install chromium chromium-driver``): Selenium gets the driver's
path, so Selenium Manager downloads nothing (``SE_OFFLINE=true`` makes sure), and Chromium runs with
the flags that keep it off the network (no background updates, sync, first-run or component fetches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--disable-extensions", "--hide-scrollbars")


def browser_missing() -> str | None:
    """Why the browser cannot run here, or ``None``."""
    import subprocess

    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} not found (apt-get install chromium chromium-driver)"
        try:  # installed but unable to start (missing libraries, wrong architecture...)
            subprocess.run([str(path), "--version"], capture_output=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{path} --version failed: {exc}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the test extra)"
    return None


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 1000):
    """A headless Chromium WebDriver with its own temporary profile, closed afterwards."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="detkit-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def detect_on_page(driver, url: str, image: str | os.PathLike, *, conf: float | None = None,
                   timeout: float = 60.0) -> dict:
    """Open the page at ``url``, set ``conf`` (else the model's default), pick ``image`` and wait for
    the answer. Returns ``response`` (the JSON the page received), ``shown`` (its JSON panel, parsed),
    ``drawn`` (the boxes, colours and labels it drew, in canvas pixels), ``scale`` (canvas / image),
    ``pixels`` (the canvas colour at the middle of each drawn box's four edges) and ``error``."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, "return window.detkitPage && window.detkitPage.model !== null", timeout)
    if conf is not None:
        driver.execute_script("document.getElementById('conf').value = arguments[0];", str(conf))
    driver.find_element(By.ID, "file").send_keys(str(Path(image).resolve()))
    _wait(driver, "return window.detkitPage.response !== null || document.getElementById('error').textContent !== ''",
          timeout)
    return driver.execute_script("""
        const page = window.detkitPage, ctx = document.getElementById('canvas').getContext('2d');
        const hex = (x, y) => '#' + Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))
            .map((v) => v.toString(16).padStart(2, '0')).join('');
        const pixels = page.drawn.map(({box: [x1, y1, x2, y2]}) => {
            const cx = Math.round((x1 + x2) / 2), cy = Math.round((y1 + y2) / 2);
            return [hex(x1, cy), hex(x2 - 1, cy), hex(cx, y1), hex(cx, y2 - 1)];
        });
        return {response: page.response, shown: JSON.parse(document.getElementById('json').textContent || 'null'),
                drawn: page.drawn, scale: page.scale, pixels,
                error: document.getElementById('error').textContent};
    """)


def _wait(driver, script: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not get there within {timeout:.0f} s: {script}")
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serve_page.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--out", required=True, help="screenshot PNG")
    parser.add_argument("--conf", type=float, default=None)
    parser.add_argument("--width", type=int, default=1500)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    problem = browser_missing()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from detkit.serve.launch import ServerProcess

    with ServerProcess(args.model, "--device", "cpu") as server, chromium(args.width, args.height) as driver:
        found = detect_on_page(driver, f"{server.url}/", args.image, conf=args.conf)
        if found["error"]:
            print(f"error: the page says {found['error']}", file=sys.stderr)
            return 1
        driver.save_screenshot(args.out)
    print(json.dumps(found["drawn"], indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
