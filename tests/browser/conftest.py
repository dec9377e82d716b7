"""One JupyterLab server and one headless Chromium (Debian's, through Playwright; no `jupyter lab
build`, no `playwright install`) for the browser tests: each test writes its own notebook into the
server's root and opens it in a page of its own (re-opening a notebook whose kernel is being
replaced ran half of a Run All)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

CHROMIUM = shutil.which("chromium")
REQUIRED = os.environ.get("PRUNE_MAGIC_BROWSER") == "required"
ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored: screenshots and latencies to look at
SKIP = pytest.mark.skipif(
    not CHROMIUM and not REQUIRED, reason="needs Debian's chromium (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_notebook(root: Path, name: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(nb, root / name)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab server on loopback with a random token: (url, token, root)."""
    root = tmp_path_factory.mktemp("lab")
    settings = root / "settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    port, token = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, "jupyter lab exited at start"
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "jupyter lab did not start in 60 s"
            time.sleep(0.5)
    yield url, token, root
    os.killpg(server.pid, signal.SIGTERM)  # kernels got their own sessions: the server shuts them down
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """Headless Chromium through Playwright (one per session: sync_playwright cannot nest)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # (expect's default is 5 s, whatever the page's is)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM or "chromium",
            args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            ],
        )  # fmt: skip
        yield browser
        browser.close()


def open_notebook(chromium: Any, lab: tuple[str, str, Path], name: str, errors: list[str]) -> Any:
    """A page with notebook ``name`` open and its kernel connected and idle (BROWSER-TESTS G4)."""
    from playwright.sync_api import expect

    url, token, _ = lab
    page = chromium.new_page(viewport={"width": 1280, "height": 1400})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab/tree/{name}?token={token}&reset")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle")
    return page
