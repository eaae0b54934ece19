"""Headless Chromium driven through the DevTools protocol: load a page, wait in real time (the FiftyOne App
decodes masks in web workers, which a virtual-time budget starves), press keys, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

from processes import free_port, kill_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,900"]


class Browser:
    """``with Browser() as browser: browser.run(page_script)`` where the script is an async function of a Page."""

    def __enter__(self) -> "Browser":
        self.port = free_port()
        self.profile = tempfile.mkdtemp()
        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}",
                                         f"--remote-debugging-port={self.port}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json", timeout=2))
                self.socket_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                return self
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        kill_tree(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)

    def run(self, script):
        async def main():
            async with websockets.connect(self.socket_url, max_size=64 * 2**20) as socket:
                return await script(Page(socket))

        return asyncio.run(main())


class Page:
    def __init__(self, socket) -> None:
        self.socket, self.next_id = socket, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def open(self, url: str, seconds: float) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(seconds)

    async def text(self) -> str:
        result = await self.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
        return result["result"].get("value", "")

    async def press(self, key: str, code: str) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, text=key if kind == "keyDown" else "")

    async def type(self, text: str) -> None:
        await self.call("Input.insertText", text=text)

    async def click_text(self, text: str) -> bool:
        """Click the first visible element whose own text is ``text``."""
        script = ("(() => { const all = [...document.querySelectorAll('button, div, span, p')]"
                  f".filter(e => e.childElementCount === 0 && e.innerText && e.innerText.trim() === {json.dumps(text)});"
                  " if (!all.length) return false; all[0].click(); return true; })()")
        result = await self.call("Runtime.evaluate", expression=script, returnByValue=True)
        return bool(result["result"].get("value"))

    async def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        return (await self.call("Runtime.evaluate", expression=expression, returnByValue=True))["result"].get("value")

    async def mouse_click(self, element: str) -> bool:
        """A real mouse click (press and release) at the middle of the element a JavaScript expression returns:
        widgets that listen to pointer events ignore ``element.click()``. False if there is no such element."""
        middle = await self.evaluate(f"(() => {{ const e = {element}; if (!e) return null; "
                                     "const b = e.getBoundingClientRect(); return [b.x + b.width / 2, b.y + b.height / 2]; })()")
        if not middle:
            return False
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=middle[0], y=middle[1], button="left", clickCount=1)
        return True

    async def screenshot(self, path: Path) -> None:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        Path(path).write_bytes(base64.b64decode(data))
