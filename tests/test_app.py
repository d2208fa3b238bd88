"""The web app: its form -> config logic, and the app itself driven in headless Chromium (Playwright)
against `videograin app` on the bundled toy-world model: example, regions by a typed box and by two
clicks, an edit whose zip is downloaded and read, bad input that starts no run, and Cancel."""

from __future__ import annotations

import io as _io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml

from videograin.app import Form, RegionForm, add_click, compose_prompt, config_from_form, zip_folder
from videograin.app_pictures import draw_prompts
from videograin.config.parse import spec_from_dict
from videograin.toy import DEMO as TOY_EXAMPLE
from videograin.toy import SD_MODEL
from videograin.config.preflight import model_recommended
from videograin.config.spec import MaskPrompt
from videograin.errors import SpecError
from videograin.viz import region_colors

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# the toy demo's shapes on frame 0 (from src/videograin/toy/demo/masks/*/00000.png, grown by one pixel)
LEFT_BOX, RIGHT_BOX = (0, 5, 14, 19), (18, 12, 32, 26)
DEMO = yaml.safe_load((TOY_EXAMPLE / "config.yaml").read_text())


# --------------------------------------------------------------------------- form -> config


def _form(**changes) -> Form:
    regions = [RegionForm("left", "red square", "box=0,5,14,19"), RegionForm("right", "blue triangle", "points=24,18,-2,2@3")]
    values = dict(video=str(TOY_EXAMPLE / "frames"), regions=regions, prompt="a red square and a blue triangle",
                  frames=12, model=str(SD_MODEL), steps=4)
    return Form(**{**values, **changes})


def test_the_form_becomes_the_config_the_cli_reads(tmp_path):
    spec = spec_from_dict(config_from_form(_form(width=32, height=32, flow=True), tmp_path), tmp_path)
    left, right = spec.regions
    assert left.prompts == MaskPrompt(box=LEFT_BOX) and left.prompt == "red square"
    assert right.prompts == MaskPrompt(points=((24, 18),), negative=((2, 2),), frame=3)
    assert spec.video.size == (32, 32) and spec.video.frames == 12 and spec.edit.steps == 4
    assert spec.edit.temporal_aids.flow is not None and spec.model == str(SD_MODEL)
    # uploaded masks: a zip of PNGs becomes the region's mask folder
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(12):
            png = _io.BytesIO()
            PIL.Image.fromarray(np.full((32, 32), 255 * (i % 2), np.uint8)).save(png, format="PNG")
            z.writestr(f"masks/{i:05d}.png", png.getvalue())
    uploaded = _form(regions=[RegionForm("left", "red square", mask_files=[str(archive)])], prompt="a red square")
    region = spec_from_dict(config_from_form(uploaded, tmp_path / "up"), tmp_path).regions[0]
    assert region.masks is not None and len(list(region.masks.iterdir())) == 12


@pytest.mark.parametrize(("changes", "field", "text"), [
    (dict(video=None), "video.path", "no video loaded"),
    (dict(regions=[]), "regions", "no regions"),
    (dict(width=32), "video.size", "only one of width and height"),
    (dict(regions=[RegionForm("left", "red square")]), "regions[0].masks", "is not marked"),
    (dict(regions=[RegionForm("left", "red square", "box=1,2,3")]), "regions[0].masks", "cannot read 'box=1,2,3'"),
])
def test_what_the_form_lacks_is_a_one_line_error_naming_the_field(tmp_path, changes, field, text):
    with pytest.raises(SpecError) as info:
        config_from_form(_form(**changes), tmp_path)
    assert info.value.field == field and text in str(info.value) and "\n" not in str(info.value)


def test_clicks_make_boxes_and_points():
    where, corner = add_click("", "box corners", 20, 9, 2, None)
    assert (where, corner) == ("", (20, 9))
    where, corner = add_click(where, "box corners", 5, 30, 2, corner)  # any two opposite corners
    assert (where, corner) == ("box=5,9,21,31@2", None)
    where, _ = add_click(where, "positive click", 7, 8, 2, None)
    where, _ = add_click(where, "negative click", 1, 2, 2, None)
    assert where == "box=5,9,21,31@2; points=7,8@2,-1,2@2"
    assert compose_prompt(["red square", " ", "blue triangle"]) == "red square and blue triangle"


def test_the_frame_preview_draws_each_region_in_its_colour():
    frame = np.zeros((8, 10, 3), np.uint8)
    drawn = draw_prompts(frame, ["box=1,1,5,6", "points=8,2"], 4)
    assert drawn.shape == (32, 40, 3)
    colours = region_colors(2)
    assert (drawn[4, 4:20] == colours[0]).all()  # the box's top edge, row y0 * scale
    assert (drawn[2 * 4 + 2, 8 * 4 + 2] == colours[1]).all()  # the click's centre
    assert (drawn[28, 36] == 0).all()  # elsewhere the frame


def test_zip_folder_holds_every_file(tmp_path):
    (tmp_path / "run" / "frames").mkdir(parents=True)
    (tmp_path / "run" / "frames" / "00000.png").write_bytes(b"x")
    (tmp_path / "run" / "run.json").write_text("{}")
    with zipfile.ZipFile(zip_folder(tmp_path / "run", tmp_path / "run.zip")) as z:
        assert sorted(z.namelist()) == ["run/frames/00000.png", "run/run.json"]


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`videograin app` on a free port with the toy model: (its URL, its output folder)."""
    if not (SD_MODEL / "model_index.json").is_file():
        pytest.skip("needs the shipped SD toy model (videograin.toy.SD_MODEL)")
    out = tmp_path_factory.mktemp("app") / "out"
    log = out.parent / "app.log"  # a file, not a pipe: a full pipe nobody reads would block the app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "videograin", "app", "--out", str(out), "--port", str(port),
                                "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, out
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs Debian's chromium (apt-get install -y chromium; scripts/test.sh installs it)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def _new_page(browser, url: str):
    """A browser page that reaches only the app: any other request (web fonts, CDNs) is refused."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else route.abort())
    return page


@pytest.fixture()
def page(browser, server):
    page = _new_page(browser, server[0])
    page.set_default_timeout(60_000)
    page.goto(server[0], wait_until="load")
    page.wait_for_selector("#load-example")
    yield page
    page.close()


def _field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _fill(page, elem_id: str, value) -> None:
    field = _field(page, elem_id)
    field.fill(str(value))
    field.press("Tab")  # Gradio reads a field when it loses focus
    assert field.input_value() == str(value)
    page.wait_for_timeout(100)


def _example_with_two_regions(page, steps: int) -> None:
    """Load the example, add two regions: the left one by a typed box, the right one by clicking two
    corners of its box on the frame; prompts typed; the steps set."""
    page.click("#load-example")
    page.wait_for_selector("#frame img")
    page.wait_for_function("document.querySelector('#video-path textarea, #video-path input').value.includes('demo')")
    for i in range(2):
        page.click("#add-region")
        page.wait_for_selector(f"#region-{i}-name textarea, #region-{i}-name input", state="visible")
    _fill(page, "region-0-name", "left")
    _fill(page, "region-0-prompt", DEMO["regions"][0]["prompt"])
    _fill(page, "region-0-where", "box={},{},{},{}".format(*LEFT_BOX))
    _fill(page, "region-1-name", "right")
    _fill(page, "region-1-prompt", DEMO["regions"][1]["prompt"])
    _click_box(page, RIGHT_BOX, 1)  # the last region added is the active one
    composed = " and ".join(r["prompt"] for r in DEMO["regions"][:2])
    page.wait_for_function(f"document.querySelector('#prompt textarea').value === {composed!r}")
    _fill(page, "prompt", DEMO["prompt"])
    recommended = model_recommended(str(SD_MODEL)).steps  # what the example sets (the model's videograin.json)
    page.wait_for_function(f"document.querySelector('#steps input')?.value === '{recommended}'")
    _fill(page, "steps", steps)


def _settled_frame(page) -> str:
    """Wait until the shown frame has not been redrawn for a second (the events a button started have
    run, so a click lands on the frame that stays); its src."""
    src, quiet_since = _frame_src(page), time.time()
    while time.time() - quiet_since < 1.0:
        page.wait_for_timeout(200)
        now = _frame_src(page)
        if now != src:
            src, quiet_since = now, time.time()
    return src


def _click_box(page, box: tuple[int, int, int, int], region: int) -> None:
    """Two clicks on the shown frame at the corners of ``box`` (frame pixels); wait for region
    ``region``'s (0-based) where field to hold a box."""
    frame = page.locator("#frame img")
    scale = frame.bounding_box()["width"] / 32  # the 32x32 frame, as shown
    x0, y0, x1, y1 = box
    before = _settled_frame(page)
    frame.click(position={"x": (x0 + 0.5) * scale, "y": (y0 + 0.5) * scale})
    page.wait_for_function(f"document.querySelector('#frame img').src !== {before!r}")  # the first corner, drawn
    page.wait_for_timeout(300)  # the new frame shown, so the next click lands on it
    frame.click(position={"x": (x1 - 0.5) * scale, "y": (y1 - 0.5) * scale})
    page.wait_for_function(f"document.querySelector('#region-{region}-where textarea').value.startsWith('box=')")


def _wait_status(page, text: str, out: Path, timeout: float = 120_000) -> None:
    """Wait until the status says ``text``; on a timeout, fail with what it says and the app's log."""
    try:
        page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout)
    except Exception:  # Playwright's TimeoutError
        log = (out.parent / "app.log").read_text()[-3000:]
        pytest.fail(f"the status never said {text!r}; it says {page.locator('#status').inner_text()!r}; "
                    f"the app's log ends: {log}")


def _runs(out: Path) -> list[str]:
    """The finished runs' folders and zips (a running edit writes into a hidden temporary folder)."""
    folder = out / "runs"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_the_app_edits_the_example_and_its_zip_holds_the_frames(page, server, tmp_path):
    url, out = server
    _example_with_two_regions(page, steps=3)
    assert _field(page, "region-1-where").input_value() == "box={},{},{},{}@0".format(*RIGHT_BOX)
    before = page.locator("#frame img").get_attribute("src")
    page.click("#preview-masks")
    page.wait_for_selector("#masks-preview video")
    page.wait_for_function(f"document.querySelector('#frame img').src !== {before!r}")  # the masks over the frame
    page.wait_for_timeout(300)
    tinted = np.asarray(PIL.Image.open(_io.BytesIO(page.locator("#frame img").screenshot())).convert("RGB")
                        .resize((32, 32), PIL.Image.NEAREST), np.int16)
    source = np.asarray(PIL.Image.open(TOY_EXAMPLE / "frames" / "00000.png").convert("RGB"), np.int16)
    for region, (x0, y0, x1, y1) in enumerate((LEFT_BOX, RIGHT_BOX)):
        inside = (slice(y0 + 4, y1 - 4), slice(x0 + 4, x1 - 4))  # the square, away from the outlines
        tint = region_colors(2)[region].astype(np.int16)
        assert np.abs(tinted[inside] - (0.55 * source[inside] + 0.45 * tint)).max() < 10  # its colour over it
    assert np.abs(tinted[inside] - source[inside]).max() > 60  # (blue under orange: the tint is plain to see)
    page.click("#run")
    page.wait_for_selector("#edited-video video", timeout=300_000)
    assert "done in" in page.locator("#status").inner_text()
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    link = page.locator("#downloads a[href$='.zip']").first
    with page.expect_download() as download:
        link.click()
    archive = tmp_path / "out.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as z:
        frames = sorted(n for n in z.namelist() if "/frames/" in n and n.endswith(".png"))
        assert len(frames) == 12
        assert {PIL.Image.open(_io.BytesIO(z.read(n))).size for n in frames} == {(32, 32)}
        config = yaml.safe_load(z.read(next(n for n in z.namelist() if n.endswith("/config.yaml"))))
    assert [r["masks"]["box"] for r in config["regions"]] == [list(LEFT_BOX), list(RIGHT_BOX)]
    assert config["edit"]["steps"] == 3 and config["prompt"] == DEMO["prompt"]
    assert (tmp_path / "app.png").stat().st_size > 10_000


@pytest.mark.parametrize(("change", "box", "text"), [
    (lambda page: _fill(page, "prompt", "a green circle on a black background"), "prompt-error", "does not occur"),
    (lambda page: _fill(page, "width", 30), "video-error", "must be a positive multiple of 8"),
    (lambda page: [page.click("#remove-region") or time.sleep(0.5) for _ in range(2)], "region-error", "no regions"),
])
def test_bad_input_shows_the_one_line_error_next_to_its_field_and_starts_no_run(page, server, change, box, text):
    _, out = server
    _example_with_two_regions(page, steps=2)
    before = _runs(out)
    change(page)
    page.click("#run")
    shown = page.locator(f"#{box} [data-testid='markdown']")
    page.wait_for_function(f"document.querySelector(\"#{box} [data-testid='markdown']\")?.innerText.includes({text!r})")
    assert shown.inner_text().strip().count("\n") == 0
    assert _runs(out) == before


def test_cancel_stops_the_run_with_nothing_written_and_a_queued_edit_runs_next(page, browser, server):
    """A long edit is cancelled while it inverts; meanwhile a second browser session's Edit says that
    another edit is running and waits in the queue; after the cancel it runs to the end. The cancelled
    edit leaves no folder (nor a temporary one)."""
    url, out = server
    _example_with_two_regions(page, steps=400)
    other = _new_page(browser, server[0])
    other.set_default_timeout(60_000)
    other.goto(url, wait_until="load")
    other.wait_for_selector("#load-example")
    _example_with_two_regions(other, steps=2)
    before = _runs(out)
    page.click("#run")
    _wait_status(page, "inverting", out)
    other.click("#run")
    _wait_status(other, "another edit is running", out, timeout=60_000)
    assert _runs(out) == before
    page.click("#cancel")
    _wait_status(page, "cancelled", out)
    _wait_status(other, "done in", out, timeout=300_000)
    page.wait_for_timeout(1000)
    assert "cancelled" in page.locator("#status").inner_text()  # not overwritten by a late message
    added = sorted(set(_runs(out)) - set(before))
    assert len(added) == 2 and added[0] + ".zip" == added[1]  # the queued edit's folder and zip only
    assert not list(out.glob("runs/.*"))  # no temporary folder left by the cancelled one
    assert "steps: 2\n" in (out / "runs" / added[0] / "config.yaml").read_text()
    other.close()


def test_uploads_become_a_video_path_under_the_apps_folder(tmp_path):
    from videograin.app import App

    app = App(tmp_path / "out", model=str(tmp_path / "no-model"))
    assert "not readable" in app.size_help(None)  # a missing model is a note, not a crash at start
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00")
    path = Path(app.upload([str(video)], "session1"))
    assert path.name == "clip.mp4" and path.is_relative_to(tmp_path / "out" / "uploads")
    frames = [tmp_path / f"{i}.png" for i in (10, 2, 1)]
    for f in frames:
        PIL.Image.new("RGB", (8, 8)).save(f)
    folder = Path(app.upload([str(f) for f in frames], "session1"))
    assert sorted(p.name for p in folder.iterdir()) == ["1.png", "10.png", "2.png"]
    with pytest.raises(SpecError, match="neither an image nor a zip"):
        app.upload([str(video), str(tmp_path / "notes.txt")], "session1")


def test_an_unknown_event_on_the_queue_is_a_client_error_not_a_crash(server):
    """Gradio looks the fn_index up unchecked (KeyError, HTTP 500 with a traceback): 400 naming it."""
    url, _ = server
    request = urllib.request.Request(f"{url}/gradio_api/queue/join", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"fn_index": 999, "data": [], "session_hash": "x"}).encode())
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=10)
    assert answer.value.code == 400 and "999" in answer.value.read().decode()
    with urllib.request.urlopen(url, timeout=10) as page:  # and the app still serves
        assert page.status == 200


def _frame_src(page) -> str:
    return page.locator("#frame img").get_attribute("src")


def test_a_new_users_path_marks_regions_where_they_are_and_shows_errors_where_the_eye_is(page, server, tmp_path):
    """Load the example; region 1 by two clicks (its first corner drawn at once); Add region makes region 2
    the one clicks mark, while region 1 keeps its box; the menu lists only existing regions; a bad prompt's
    error shows beside Edit without scrolling; a new clip resets frames, size and regions. Screenshots
    of each stage in the test's tmp folder."""
    shots = iter(range(100))
    shot = lambda name: page.screenshot(path=str(tmp_path / f"{next(shots):02d}-{name}.png"))  # noqa: E731
    page.click("#load-example")
    page.wait_for_selector("#frame img")
    page.wait_for_function("document.querySelector('#clip-help').innerText.includes('loaded the example')")
    shot("example")
    page.click("#add-region")
    page.wait_for_selector("#region-0-name textarea", state="visible")
    page.wait_for_function("document.querySelector('#region-0-swatch').innerText.includes('clicks mark this region')")
    frame = page.locator("#frame img")
    scale = frame.bounding_box()["width"] / 32
    before = _settled_frame(page)
    frame.click(position={"x": (LEFT_BOX[0] + 0.5) * scale, "y": (LEFT_BOX[1] + 0.5) * scale})
    page.wait_for_function(f"document.querySelector('#frame img').src !== {before!r}")  # the first corner, drawn
    page.wait_for_timeout(300)
    shown = np.asarray(PIL.Image.open(_io.BytesIO(frame.screenshot())).convert("RGB").resize((320, 320)), np.int16)
    cx, cy = (int((v + 0.5) * 10) for v in LEFT_BOX[:2])  # the first corner, at 10 px per frame pixel
    near = shown[cy - 3 : cy + 4, max(0, cx - 3) : cx + 4].reshape(-1, 3)
    assert (np.abs(near - region_colors(1)[0]).max(-1) <= 12).any()  # a cross in region 1's colour
    shot("first-corner")
    frame.click(position={"x": (LEFT_BOX[2] - 0.5) * scale, "y": (LEFT_BOX[3] - 0.5) * scale})
    page.wait_for_function("document.querySelector('#region-0-where textarea').value.startsWith('box=')")
    first = _field(page, "region-0-where").input_value()
    assert first == "box={},{},{},{}@0".format(*LEFT_BOX)
    page.click("#add-region")
    page.wait_for_selector("#region-1-name textarea", state="visible")
    page.wait_for_function("document.querySelector('#region-1-swatch').innerText.includes('clicks mark this region')")
    assert "clicks mark" not in page.locator("#region-0-swatch").inner_text()
    _click_box(page, RIGHT_BOX, 1)
    assert _field(page, "region-0-where").input_value() == first  # region 1 keeps its box
    assert _field(page, "region-1-where").input_value() == "box={},{},{},{}@0".format(*RIGHT_BOX)
    page.locator("#target input").click()
    options = page.locator("ul[role='listbox'] li").all_inner_texts()
    assert [o.replace("✓", "").strip() for o in options] == ["region 1", "region 2"]  # only the regions that exist
    assert "✓" in options[1]  # region 2, the one added last, is chosen
    page.keyboard.press("Escape")
    shot("two-regions")

    _fill(page, "region-0-prompt", DEMO["regions"][0]["prompt"])
    _fill(page, "region-1-prompt", DEMO["regions"][1]["prompt"])
    composed = " and ".join(r["prompt"] for r in DEMO["regions"][:2])  # the prompt follows the regions, live
    page.wait_for_function(f"document.querySelector('#prompt textarea').value === {composed!r}")
    page.wait_for_function("document.querySelector('#region-1-check').innerText.includes('in the prompt')")
    assert "✓" in page.locator("#region-0-check").inner_text()
    _fill(page, "prompt", "a green circle on a black background")  # holds neither region prompt
    page.wait_for_function("document.querySelector('#region-0-check').innerText.includes('not in the prompt')")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').innerText.includes('does not occur')")
    status, run = page.locator("#status").bounding_box(), page.locator("#run").bounding_box()
    height = page.evaluate("window.innerHeight")
    assert 0 <= status["y"] and status["y"] + status["height"] <= height  # in view where Edit was clicked
    assert abs(status["y"] - (run["y"] + run["height"])) <= 200
    assert "region 1.prompt" in page.locator("#status").inner_text()  # numbered as on the page, not regions[0]
    shot("error-beside-edit")

    page.locator("#upload input[type=file]").set_input_files(
        [str(p) for p in sorted((TOY_EXAMPLE / "frames").glob("*.png"))[:10]])
    page.wait_for_function("document.querySelector('#status').innerText.includes('new clip')")
    assert _field(page, "frames").input_value() == "10"
    assert not page.locator("#region-0-name textarea").is_visible()  # the regions were cleared
    assert page.locator("#status").inner_text().count("regions were cleared") == 1
    assert [_field(page, f).input_value() for f in ("width", "height")] == ["32", "32"]
    shot("new-clip")


def test_the_quick_preview_is_the_form_made_small_and_says_so():
    from videograin.app import quick_preview

    quick, note = quick_preview(_form(frames=12, steps=25), (64, 48), 8)
    assert (quick.frames, quick.steps, quick.width, quick.height) == (8, 10, 32, 24)
    assert quick.regions == _form().regions and note.startswith("quick preview: 8 frames of 32x24, 10 steps")
    small, _ = quick_preview(_form(frames=3, steps=None), (8, 8), 8)
    assert (small.frames, small.steps, small.width, small.height) == (3, 10, 8, 8)  # never below one multiple


def test_the_result_view_shows_source_and_edit_of_one_frame_with_the_regions_under_the_source():
    from videograin.app_pictures import compare_frame

    frames = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 4, 6, 3), np.uint8)
    clips = {"source": frames, "edited": 100 + frames, "regions": 200 + frames}
    view = compare_frame(clips, 3, width=28)
    assert view.shape == ((4 + 2 + 4) * 2, (6 + 2 + 6) * 2, 3)  # enlarged 2x to about 28 px
    assert (view[:8, :12] == 3).all() and (view[:8, 16:] == 103).all()  # frame 3 of both, side by side
    assert (view[12:, :12] == 203).all() and (view[12:, 12:] == 255).all()  # its regions under the source
    assert (compare_frame(clips, 99, width=14)[:4, :6] == 4).all()  # past the end: the last frame


def test_the_quick_preview_returns_a_result_whose_frame_slider_shows_one_frame_of_both(page, server, tmp_path):
    _, out = server
    _example_with_two_regions(page, steps=3)
    page.click("#quick")
    _wait_status(page, "done in", out)
    assert "quick preview: 8 frames of 16x16, 3 steps" in page.locator("#status").inner_text()
    page.wait_for_selector("#result-view img")
    first = page.locator("#result-view img").get_attribute("src")
    slider = page.locator("#result-frame input[type=number]")
    slider.fill("5")
    slider.press("Enter")
    page.wait_for_function(f"document.querySelector('#result-view img').src !== {first!r}")
    page.locator("#result-view").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "quick-preview.png"))


def test_the_settings_start_from_the_models_recommended_values_and_reset_to_them(page):
    """The toy model's videograin.json (not the paper's SD defaults) fills the settings; a changed
    value goes back with "Reset to recommended"."""
    recommended = model_recommended(str(SD_MODEL))
    assert recommended.source.endswith("videograin.json")
    assert recommended.modulation.cross_strength != 1.0  # the toy's own, so the test can tell them apart
    assert _field(page, "steps").input_value() == str(recommended.steps)
    assert recommended.source in page.locator("#settings-source").inner_text()
    _fill(page, "steps", 3)
    page.click("#reset-settings")
    page.wait_for_function(f"document.querySelector('#steps input').value === '{recommended.steps}'")


def test_the_app_is_made_of_small_functions():
    """The page is built from one small function per panel and per handler: ``build_app`` and every
    function of the app's modules (its logic, app.py; its pictures, app_pictures.py; the page's layout,
    app_ui.py, and behaviour, app_handlers.py) at most 60 lines."""
    import ast

    import videograin.app

    folder = Path(videograin.app.__file__).parent
    lengths = {}
    for module in ("app.py", "app_pictures.py", "app_ui.py", "app_handlers.py"):
        for node in ast.walk(ast.parse((folder / module).read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{module}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert "app_ui.py:build_app" in lengths and "app_handlers.py:on_click" in lengths
    assert {name: n for name, n in lengths.items() if n > 60} == {}


def test_the_models_on_offer_and_what_each_asks_of_a_clip(tmp_path):
    from videograin.app import App
    from videograin.toy import PARTS_MODEL, WAN_MODEL

    app = App(tmp_path / "out")
    offered = dict((path, label) for label, path in app.models())
    assert {str(SD_MODEL), str(PARTS_MODEL), str(WAN_MODEL)} <= set(offered)
    wan = app.model_help(str(WAN_MODEL))
    wan_recommended = model_recommended(str(WAN_MODEL))
    assert wan.startswith("WAN model: frames: 4k + 1 (e.g. 9, 17); sides multiples of ")
    assert f"recommended {wan_recommended.steps} steps, guidance {wan_recommended.guidance_scale}" in wan
    assert app.model_help(str(SD_MODEL)).startswith("SD model: sides multiples of 8")
    assert App(tmp_path / "out", model="org/missing").models()[3] == ("org/missing", "org/missing")


def test_choosing_a_model_brings_its_rules_and_recommended_settings(page):
    from videograin.toy import WAN_MODEL

    wan = model_recommended(str(WAN_MODEL))
    page.locator("#model input").click()
    page.locator("ul[role='listbox'] li", has_text="toy Wan").first.click()
    page.wait_for_function("document.querySelector('#model-help').innerText.includes('4k + 1')")
    page.wait_for_function(f"document.querySelector('#steps input').value === '{wan.steps}'")
    assert float(_field(page, "guidance").input_value()) == wan.guidance_scale
    assert "videograin.json" in page.locator("#settings-source").inner_text()
