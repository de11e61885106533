"""Sources added and removed while running (issue 17 item 2): through the HTTP API of a running
``emostream serve``, by its reload, and by SIGHUP with an edited sources file in ``emostream run``.

Every server and run is a ``python -m stream`` subprocess; the tests wait on files and HTTP
answers with deadlines (they poll what another process writes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[serve]'")

from tests.cli_run import interrupt, running_cli
from tests.test_serve import CHROMIUM, Serve, serve  # noqa: F401  (the fixture: one serve subprocess, killed at the end)

TOKEN = "sources-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(server: Serve, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> tuple[int, dict]:
    """Status and JSON answer of one API call (with the token unless ``headers`` says otherwise)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = dict(AUTH if headers is None else headers)
    if body is not None and headers is None:
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(server.url(path), data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        assert b"Traceback" not in text and len(text.splitlines()) == 1, text
        return err.code, json.loads(text)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)  # polling another process
    pytest.fail(f"timed out waiting for {what}")


def frames(path: Path) -> list[int]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


def status(server: Serve, source_id: int) -> dict:
    return call(server, "GET", f"/api/sources/{source_id}/status")[1]


def test_sources_added_and_removed_through_the_http_api(serve: Callable[..., Serve],  # noqa: F811
                                                        clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Not paced: the files are read whole, frame by frame, so their event logs must have every index.
    server = serve(str(clips["vga601"]), "--no-pace", "--port", "0", "--out-dir", str(out),
                   env={"EMOSTREAM_TOKEN": TOKEN}).wait_ready()

    # Token-protected like the rest; bad input is one line of JSON with the right code, and changes nothing.
    assert call(server, "POST", "/api/sources", {"source": str(clips["vga"])}, headers={})[0] == 401
    assert call(server, "DELETE", "/api/sources/0", headers={"Authorization": "Bearer wrong"})[0] == 403
    code, answer = call(server, "POST", "/api/sources", {"source": str(tmp_path / "missing.mp4")})
    assert code == 400 and "could not be opened: no such file" in answer["error"]
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert call(server, "POST", "/api/sources", raw=b"{not json", headers=json_type)[0] == 400
    assert call(server, "POST", "/api/sources", {"src": "x"})[0] == 400
    assert call(server, "POST", "/api/sources", {"source": str(clips["vga"]), "paced": "yes"})[0] == 400
    assert call(server, "POST", "/api/sources", raw=b'{"source": "x.mp4"}', headers={**AUTH})[0] == 400  # no JSON type
    code, answer = call(server, "POST", "/api/sources", {"source": str(clips["vga"])},
                        headers={**AUTH, "Content-Type": "application/json", "Origin": "http://elsewhere.example"})
    assert code == 403 and "origin" in answer["error"]
    assert call(server, "DELETE", "/api/sources/7")[0] == 404
    assert call(server, "POST", "/api/sources/reload")[0] == 409  # started without --sources

    # A file source joins; its frames are counted; removed, its event log is final and whole.
    code, added = call(server, "POST", "/api/sources", {"source": str(clips["vga601"]), "name": "extra"})
    assert code == 201 and added["id"] == 1 and added["name"] == "extra", added
    assert call(server, "POST", "/api/sources", {"source": str(clips["vga"]), "name": "extra"})[0] == 409
    wait_for("frames of the added source", lambda: status(server, 1)["frames_processed"] >= 20)
    code, removed = call(server, "DELETE", "/api/sources/1")
    assert code == 200 and removed["state"] == "removed"
    assert call(server, "DELETE", "/api/sources/1")[0] == 409  # ended already
    health = status(server, 1)
    assert health["state"] == "removed" and health["ended"]
    extra = frames(out / "extra.events.jsonl")  # published under its final name
    assert extra == list(range(len(extra))) and len(extra) == health["frames_processed"] >= 20
    scrape = urllib.request.urlopen(urllib.request.Request(server.url("/metrics"), headers=AUTH), timeout=10)
    assert 'emostream_source_state{source="extra",state="removed"} 1.0' in scrape.read().decode()

    # A camera that is down is added and shown as down (retried on its own thread).
    code, camera = call(server, "POST", "/api/sources", {"source": "rtsp://127.0.0.1:9/cam", "name": "door"})
    assert code == 201 and camera["id"] == 2
    wait_for("the camera shown as down", lambda: status(server, 2)["state"] == "down")
    assert "connection refused" in status(server, 2)["last_error"]
    listed = call(server, "GET", "/api/sources")[1]
    assert [s["name"] for s in listed["sources"]] == ["carphone_640x480_601", "extra", "door"]

    # The first source plays to its end, undisturbed; with every source ended or removed the server goes on.
    wait_for("the first source's end", lambda: status(server, 0)["ended"], timeout_s=120)
    assert frames(out / "carphone_640x480_601.events.jsonl") == list(range(601))
    assert call(server, "DELETE", "/api/sources/2")[0] == 200
    code, again = call(server, "POST", "/api/sources", {"source": str(clips["noface"]), "name": "extra"})
    assert code == 201 and again["name"] == "extra-2"  # the removed source's outputs keep their name
    wait_for("the new source's end", lambda: status(server, 3)["ended"])
    assert frames(out / "extra-2.events.jsonl") == list(range(40))
    assert server.interrupt() == 130, server.stderr()
    assert "Traceback" not in server.stderr()


def test_page_buttons_add_and_remove_a_source(serve: Callable[..., Serve],  # noqa: F811
                                              clips: dict[str, Path], tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (scripts/setup-system.sh --test)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    server = serve(str(clips["vga"]), "--port", "0", "--out-dir", str(tmp_path / "out"),
                   env={"EMOSTREAM_TOKEN": TOKEN}).wait_ready()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url(f"/?token={TOKEN}"))
            page.wait_for_function("() => document.querySelectorAll('.card').length === 1")
            assert page.locator("#reload-sources").is_hidden()  # started without --sources
            page.fill("#new-source", str(tmp_path / "missing.mp4"))
            page.click("#add-source")
            page.wait_for_function("() => document.getElementById('change-result').className === 'err'")
            assert "no such file" in page.inner_text("#change-result")
            page.fill("#new-source", str(clips["noface"]))
            page.fill("#new-name", "pattern")
            page.click("#add-source")
            page.wait_for_function("() => document.querySelectorAll('.card').length === 2")
            card = page.locator(".card").nth(1)
            assert card.locator(".name").inner_text() == "pattern"
            page.wait_for_function("() => Number(document.querySelectorAll('.card')[1].dataset.frames) > 10")
            card.locator("button.remove").click()
            page.wait_for_function("() => document.querySelectorAll('.card')[1].dataset.state === 'removed'")
            assert "ended" in (card.get_attribute("class") or "") and card.locator("button.remove").is_hidden()
        finally:
            browser.close()
    assert status(server, 1)["state"] == "removed" and not status(server, 0)["ended"]
    assert server.interrupt() == 130, server.stderr()


def write_sources(path: Path, entries: dict[str, Path]) -> None:
    path.write_text("".join(f"- name: {name}\n  path: {clip}\n  paced: true\n" for name, clip in entries.items()))


def test_serve_reloads_its_sources_file(serve: Callable[..., Serve],  # noqa: F811
                                        clips: dict[str, Path], tmp_path: Path) -> None:
    sources = tmp_path / "cams.yaml"
    write_sources(sources, {"a": clips["vga"], "b": clips["noface"]})
    server = serve("--sources", str(sources), "--port", "0", "--out-dir", str(tmp_path / "out"),
                   env={"EMOSTREAM_TOKEN": TOKEN}).wait_ready()
    write_sources(sources, {"a": clips["vga"], "c": clips["vga"]})
    code, result = call(server, "POST", "/api/sources/reload")
    assert code == 200 and result == {"added": ["c"], "removed": ["b"], "unchanged": ["a"]}
    assert status(server, 1)["state"] == "removed"
    wait_for("frames of c", lambda: status(server, 2)["frames_processed"] > 0)
    sources.write_text("- name: a\n  path: a.mp4\n  colour: blue\n")  # a bad file changes nothing
    code, answer = call(server, "POST", "/api/sources/reload")
    assert code == 400 and "unknown key 'colour'" in answer["error"]
    assert [status(server, i)["ended"] for i in range(3)] == [False, True, False]
    # SIGHUP does the same: b comes back (under a new name: the removed one's outputs keep theirs)
    write_sources(sources, {"a": clips["vga"], "b": clips["noface"], "c": clips["vga"]})
    server.proc.send_signal(signal.SIGHUP)
    wait_for("the reload line", lambda: "reloaded: added b-2; removed none" in server.stderr())
    assert server.stderr().count("not reloaded") == 1  # the bad file's one warning line
    assert server.interrupt() == 130, server.stderr()


def test_run_reloads_its_sources_file_on_sighup(clips: dict[str, Path], tmp_path: Path) -> None:
    sources, out = tmp_path / "cams.yaml", tmp_path / "out"
    write_sources(sources, {"a": clips["vga"], "b": clips["vga"]})
    stderr = tmp_path / "run.stderr"
    with running_cli(["run", "--sources", str(sources), "--out-dir", str(out), "--no-progress", "--max-seconds",
                      "300"], tmp_path, stderr) as proc:
        partial = out / "a.events.partial.jsonl"
        wait_for("the run's first frames", lambda: partial.is_file() and partial.stat().st_size > 0, timeout_s=90)
        write_sources(sources, {"a": clips["vga"], "c": clips["noface"]})
        proc.send_signal(signal.SIGHUP)
        wait_for("the reload line", lambda: "reloaded: added c; removed b" in stderr.read_text())
        wait_for("c's frames", lambda: (out / "c.events.partial.jsonl").is_file()
                 and (out / "c.events.partial.jsonl").stat().st_size > 0)
        b = frames(out / "b.events.jsonl")  # removed: its log is final
        assert b == sorted(set(b)) and b
        sources.write_text("[unclosed")
        proc.send_signal(signal.SIGHUP)
        wait_for("the warning", lambda: "not reloaded" in stderr.read_text())
        assert proc.poll() is None  # a bad file changes nothing
        interrupt(proc, stderr, 60)
    text = stderr.read_text()
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if "not reloaded" in line]) == 1
    assert re.search(r"\[1\] warning: removed", text), text
    for name in ("a", "c"):
        logged = frames(out / f"{name}.events.jsonl")  # finalised at Ctrl-C
        assert logged and logged == sorted(set(logged))
