"""Helpers for the viewer tests: a training subprocess, a headless Chromium and a small CDP client.

Everything here talks to 127.0.0.1 only, waits with a deadline, and stops what it starts:
``TrainingProcess`` and ``HeadlessChromium`` are context managers that kill their whole process
group on exit. The Chrome DevTools Protocol (CDP) client uses the synchronous client of the
``websockets`` package, which viser already depends on.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np
from PIL import Image
from websockets.sync.client import connect

LOCALHOST = "127.0.0.1"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], Optional[T]], timeout_s: float, describe: Callable[[], str], poll_s: float = 0.5
) -> T:
    """Poll ``condition`` until it returns something other than None/False; fail after ``timeout_s``.

    ``describe`` is called only on failure and supplies the context of the error message (for
    example the tail of a subprocess log).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s: {describe()}")
        time.sleep(poll_s)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` without any proxy (the tests talk to 127.0.0.1 only); returns (status, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return response.status, response.read()


def _terminate_group(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``process``, wait up to ``grace_s``, then SIGKILL what is left.

    The group also holds the leader's children (data-loader workers, Chromium's helpers), which
    may outlive it; the final SIGKILL reaches them too.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the whole group is gone already
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=grace_s)


def _log_tail(path: Path, num_chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log written)"
    return text[-num_chars:]


@dataclass
class TrainingProcess:
    """``ns-train`` running in its own process group, its output captured in ``log_path``."""

    arguments: Sequence[str]
    """Arguments after ``ns-train`` (method name first)."""
    log_path: Path
    """File receiving the subprocess's stdout and stderr."""
    process: Optional[subprocess.Popen] = field(default=None, init=False)

    def __enter__(self) -> "TrainingProcess":
        command = [sys.executable, "-m", "nerfstudio.scripts.train", *self.arguments]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        return self

    def __exit__(self, *exc_info) -> None:
        assert self.process is not None
        _terminate_group(self.process)
        self._log.close()

    def describe(self) -> str:
        """Exit status (if any) and the tail of the log, for failure messages."""
        assert self.process is not None
        status = self.process.poll()
        state = "still running" if status is None else f"exited with status {status}"
        return f"ns-train {state}; last output:\n{_log_tail(self.log_path)}"

    def wait_for_http(self, url: str, timeout_s: float) -> bytes:
        """Wait until ``url`` answers 200; fail early, with the log tail, if ns-train dies."""

        def page() -> Optional[bytes]:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"ns-train stopped before serving {url}: {self.describe()}")
            try:
                status, body = http_get(url)
            except OSError:
                return None
            return body if status == 200 else None

        return wait_until(page, timeout_s, lambda: f"{url} never answered 200; {self.describe()}")


def find_chromium() -> Optional[str]:
    """Path of a Chromium/Chrome executable (env ``CHROMIUM`` first), or None."""
    candidates = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in candidates:
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


# Headless Chromium as root in a container (hence --no-sandbox), and no network beyond 127.0.0.1:
# no proxy, and every host name resolves to nothing, so the viewer page's third-party tags (an
# analytics script, the nerfstudio logo) fail at once instead of leaving the machine. WebGL, which
# the three.js viewer needs, runs on SwiftShader, Chromium's CPU rasteriser: headless Chromium 156
# picks it by itself, the two flags pin it (also where a GPU exists) and keep it allowed where newer
# versions stop falling back to it.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-proxy-server",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class CdpSession:
    """A Chrome DevTools Protocol connection to one page target."""

    def __init__(self, websocket_url: str) -> None:
        address = urllib.parse.urlsplit(websocket_url)
        # A socket of our own: the client then never routes 127.0.0.1 through an HTTP(S)_PROXY.
        sock = socket.create_connection((address.hostname, address.port), timeout=10)
        self._socket = connect(websocket_url, sock=sock, max_size=None, open_timeout=10)
        self._next_id = 0

    def close(self) -> None:
        self._socket.close()

    def send(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict:
        """Call ``method`` and return its result, skipping the events that arrive meanwhile."""
        self._next_id += 1
        message_id = self._next_id
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"CDP {method} gave no answer within {timeout_s:.0f} s")
            reply = json.loads(self._socket.recv(timeout=remaining))
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise RuntimeError(f"CDP {method} failed: {reply['error']}")
            return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (awaiting it if it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page raised evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> Image.Image:
        """The page as the browser composites it (canvas and HTML panels together)."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


@dataclass
class HeadlessChromium:
    """Headless Chromium with a DevTools endpoint on 127.0.0.1; ``page`` is a CDP session on its tab."""

    executable: str
    profile_dir: Path
    """Fresh user-data directory (Chromium writes its DevTools port there)."""
    window_size: tuple[int, int] = (1280, 800)
    """Browser window (width, height) in CSS pixels."""
    startup_timeout_s: float = 30.0
    """How long Chromium may take to open its DevTools endpoint."""
    process: Optional[subprocess.Popen] = field(default=None, init=False)
    page: Optional[CdpSession] = field(default=None, init=False)

    def __enter__(self) -> "HeadlessChromium":
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self.profile_dir.parent / "chromium.log"
        self._log = self._log_path.open("wb")
        width, height = self.window_size
        command = [
            self.executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            port = wait_until(self._devtools_port, self.startup_timeout_s, self.describe, poll_s=0.2)
            targets = json.loads(http_get(f"http://{LOCALHOST}:{port}/json/list")[1])
            page_target = next(target for target in targets if target["type"] == "page")
            self.page = CdpSession(page_target["webSocketDebuggerUrl"])
            self.page.send("Page.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.page is not None:
            self.page.close()
        if self.process is not None:
            _terminate_group(self.process, grace_s=5.0)
        self._log.close()

    def _devtools_port(self) -> Optional[int]:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"chromium exited at start-up: {self.describe()}")
        port_file = self.profile_dir / "DevToolsActivePort"
        lines = port_file.read_text().split() if port_file.exists() else []
        return int(lines[0]) if lines else None

    def describe(self) -> str:
        """Exit status (if any) and the tail of Chromium's log, for failure messages."""
        assert self.process is not None
        status = self.process.poll()
        state = "running" if status is None else f"exited with status {status}"
        return f"chromium {state}; last output:\n{_log_tail(self._log_path)}"


def click_button(page: CdpSession, label: str) -> None:
    """Click the one visible button whose text is ``label`` (a DOM click, as React handles a user's)."""
    clicked = page.evaluate(
        f"""(() => {{
            const buttons = [...document.querySelectorAll('button')]
                .filter(b => b.innerText.trim() === {json.dumps(label)} && b.offsetParent !== null);
            if (buttons.length !== 1) return buttons.length;
            buttons[0].click();
            return true;
        }})()"""
    )
    if clicked is not True:
        raise LookupError(f"expected one visible button labelled {label!r}, found {clicked}")


def type_into_number_input(page: CdpSession, current_value: str, new_value: str) -> None:
    """Replace the text of the one GUI number input showing ``current_value`` (Mantine NumberInput)."""
    found = page.evaluate(
        f"""(() => {{
            const inputs = [...document.querySelectorAll('input.mantine-NumberInput-input')]
                .filter(i => i.value === {json.dumps(current_value)});
            if (inputs.length !== 1) return inputs.length;
            inputs[0].focus();
            inputs[0].select();
            return true;
        }})()"""
    )
    if found is not True:
        raise LookupError(f"expected one number input showing {current_value!r}, found {found}")
    page.send("Input.insertText", text=new_value)  # real key input, so React sees a user edit
    page.evaluate("document.activeElement.blur()")


def scroll_wheel(page: CdpSession, x: float, y: float, notches: int, delta_y: float = 500.0) -> None:
    """Turn the mouse wheel over (x, y); positive ``delta_y`` zooms the viewer's camera out."""
    for _ in range(notches):
        page.send("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=delta_y)
        time.sleep(0.1)


def visible_canvas_points(page: CdpSession, spacing: int = 8) -> np.ndarray:
    """(N, 2) integer (x, y) grid points, in CSS pixels, where a canvas is the topmost element.

    These are the pixels of the 3D view that no HTML panel covers.
    """
    points = page.evaluate(
        f"""(() => {{
            const points = [];
            for (let y = {spacing / 2}; y < window.innerHeight; y += {spacing})
                for (let x = {spacing / 2}; x < window.innerWidth; x += {spacing}) {{
                    const element = document.elementFromPoint(x, y);
                    if (element && element.tagName === 'CANVAS') points.push([Math.floor(x), Math.floor(y)]);
                }}
            return points;
        }})()"""
    )
    return np.asarray(points, dtype=np.int64).reshape(-1, 2)


def colour_fractions(image: Image.Image, points: np.ndarray) -> dict[str, float]:
    """At the given (x, y) pixels: the fractions that are clearly red, green or blue, and the std.

    A pixel counts as, say, blue when blue is at least 40/255 (above JPEG noise on a black
    background) and at least 1.5 times both red and green. The demo object's albedos have ratios of
    2.4 and more (sphere 0.85/0.2 red, box 0.85/0.35 blue, cylinder 0.75/0.3 green), which leaves room
    for blur and JPEG; grey, white and black have ratio 1.
    """
    pixels = np.asarray(image, dtype=np.float32)[points[:, 1], points[:, 0]]
    fractions = {}
    for channel, name in enumerate(("red", "green", "blue")):
        value = pixels[:, channel]
        others = np.delete(pixels, channel, axis=1)
        dominant = (value >= 40.0) & (value >= 1.5 * others[:, 0]) & (value >= 1.5 * others[:, 1])
        fractions[name] = float(dominant.mean())
    fractions["coloured"] = fractions["red"] + fractions["green"] + fractions["blue"]
    fractions["std"] = float(pixels.std())
    return fractions
