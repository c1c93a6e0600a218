"""End to end in a real headless browser: `streamlit run app/main.py` as a subprocess, driven by
playwright with Debian's chromium (never a downloaded browser). Opens the page, picks a demo
study, checks the research-use banner, the probabilities, the per-expert evidence chart and a
saliency image, downloads a chart as SVG from its camera button, and saves a screenshot (a non-blank PNG) as a test artifact.
Moves through the slices with the arrow keys and the mouse wheel without focusing the slider.

The screenshot goes to ``$I2M2_TEST_ARTIFACTS`` when set, else to pytest's temporary folder; its
path is printed."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from app_support import prepare

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 180
PAGE_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from benchmarks.common import app_server

    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    env_root = tmp_path_factory.mktemp("browser")
    app_env = prepare(env_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("I2M2_")}
    env.update(app_env.environ())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    with app_server(env, env_root / "server.log", START_TIMEOUT_S) as url:
        yield url


@contextmanager
def app_page(url: str, height: int):
    """A chromium page (1440 px wide, ``height`` tall) opened on the app at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()


def wait_until_idle(page, timeout_s: float = 420.0) -> None:
    """Until the app's script run has finished: no element is marked stale (Streamlit marks the
    previous run's elements ``data-stale="true"`` until the new run replaces them) for 2 s."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    time.sleep(1.0)
    while time.monotonic() < deadline:
        stale = page.evaluate("() => document.querySelectorAll('[data-stale=\"true\"]').length")
        quiet = quiet + 1 if stale == 0 else 0
        if quiet >= 4:
            return
        time.sleep(0.5)
    raise AssertionError("the app kept running")


def test_browser_shows_banner_probabilities_evidence_and_saliency(server, tmp_path):
    from PIL import Image

    artifacts = Path(os.environ.get("I2M2_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "app_study_page.png"
    with app_page(server, 3400) as page:
        page.get_by_text("RESEARCH USE ONLY").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page)
        first_title = page.locator("h2").filter(has_text="Study").first.inner_text()

        # pick another demo study in the sidebar
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name=re.compile(r"Demo knee 2")).click()
        page.wait_for_function(
            "t => ![...document.querySelectorAll('h2')].some(h => h.innerText === t)", arg=first_title,
            timeout=PAGE_TIMEOUT_MS)
        page.get_by_text("Across slices").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page)

        banner = page.locator(".i2m2-banner").inner_text()
        assert "RESEARCH USE ONLY" in banner
        values = [float(v) for v in page.locator('[data-testid="stMetricValue"]').all_inner_texts()]
        assert len(values) == 4 and all(0.0 <= v <= 1.0 for v in values), values

        # the per-expert evidence chart (waterfall of log-odds) and a saliency image
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 8", timeout=PAGE_TIMEOUT_MS)
        plots = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
            title: (p.querySelector('.gtitle') || {}).textContent || '',
            bars: p.querySelectorAll('g.trace.bars g.point').length,
            images: [...p.querySelectorAll('image')].map(i => i.getAttribute('href') || '')}))""")
        waterfalls = [q for q in plots if q["title"].startswith("Log-odds contributions")]
        assert len(waterfalls) == 1 and waterfalls[0]["bars"] >= 4, plots  # experts + the I2M2 total
        maps = [q for q in plots if q["title"] == "Magnitude expert on magnitude"]
        assert len(maps) == 1, [q["title"] for q in plots]
        href = maps[0]["images"][0] if maps[0]["images"] else ""
        assert href.startswith("data:image/png;base64,") and len(href) > 2000
        # the chart's camera button downloads it as an SVG (a vector figure for a supplement)
        waterfall = page.locator(".js-plotly-plot").filter(
            has=page.locator(".gtitle", has_text="Log-odds contributions")).first
        waterfall.hover()
        button = waterfall.locator('.modebar-btn[data-title^="Download plot"]').first
        with page.expect_download(timeout=60_000) as info:
            button.click()
        download = info.value
        assert download.suggested_filename == "i2m2-waterfall.svg"
        svg = Path(download.path()).read_text()
        assert svg.lstrip().startswith("<svg") and "Log-odds contributions" in svg and "I2M2" in svg
        page.mouse.move(1400, 5)  # no tooltip in the picture
        time.sleep(1.0)
        page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    image = Image.open(shot)
    assert image.format == "PNG" and image.size[0] >= 1000 and image.size[1] >= 1000
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10.0  # not blank
    colours = np.unique(pixels[::4, ::4].reshape(-1, 3), axis=0)
    assert len(colours) > 500  # images and charts, not a flat page


def shown_slice(page) -> int:
    """The slice the page shows: the saliency section's header ends with its number."""
    return int(page.locator("h3", has_text="Where the image experts look").first.inner_text().rsplit(" ", 1)[-1])


def settle_on_slice(page, n: int) -> None:
    page.wait_for_function(
        """n => [...document.querySelectorAll('h3')].some(
               h => h.innerText.startsWith('Where the image experts look') && h.innerText.endsWith(' slice ' + n))""",
        arg=n, timeout=PAGE_TIMEOUT_MS)
    wait_until_idle(page)
    assert shown_slice(page) == n


def test_arrow_keys_and_wheel_over_the_images_change_the_slice(server):
    main_scroll = "() => document.querySelector('[data-testid=\"stMain\"]').scrollTop"  # the page's scroller
    on_body = "() => document.activeElement === document.body"
    with app_page(server, 1400) as page:
        page.get_by_text("Where the image experts look").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page)
        slider = page.locator('input[aria-label="Slice"]').first
        slider.focus()
        page.keyboard.press("Home")  # the slider's own key: the first slice, so that there is a next one
        page.evaluate("() => document.activeElement.blur()")
        wait_until_idle(page)
        first = shown_slice(page)
        assert page.evaluate(on_body)

        # arrow keys with the focus on the page, not on the slider
        page.keyboard.press("ArrowDown")
        settle_on_slice(page, first + 1)
        assert slider.input_value() == str(first + 1)  # the slider moved: it holds the slice
        assert page.evaluate(on_body)  # and the focus stayed where it was
        page.keyboard.press("ArrowUp")
        settle_on_slice(page, first)

        # the wheel over an image: one notch, one slice, and the page does not scroll
        image = page.locator(".js-plotly-plot").filter(
            has=page.locator(".gtitle", has_text=re.compile(r"^Magnitude - slice"))).first
        image.scroll_into_view_if_needed()
        box = image.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        scrolled = page.evaluate(main_scroll)
        page.mouse.wheel(0, 100)
        settle_on_slice(page, first + 1)
        assert page.evaluate(main_scroll) == scrolled
        page.mouse.wheel(0, -100)
        settle_on_slice(page, first)
        # elsewhere the wheel scrolls the page as usual
        box = page.locator('[data-testid="stExpander"] summary', has_text="Window / level").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, 100)
        page.wait_for_function(f"() => ({main_scroll})() > {scrolled}", timeout=10_000)
        wait_until_idle(page)
        assert shown_slice(page) == first

        # arrow keys while typing a window / level value change the value, not the slice
        page.get_by_text("Window / level").first.click()
        level = page.get_by_label("Magnitude level (%)")
        level.click()
        for key in ("ArrowUp", "ArrowUp", "ArrowDown", "PageUp"):
            page.keyboard.press(key)
        assert level.input_value() == "55"  # 50 + 5 + 5 - 5: the field took the keys
        page.keyboard.press("Enter")
        wait_until_idle(page)
        assert shown_slice(page) == first and slider.input_value() == str(first)


def test_a_dicom_folder_uploads_from_the_browser(server, tmp_path):
    """The upload's folder picker sends a whole exam folder: DICOM files without an extension, in
    a series subfolder, beside a hidden file, open as one study."""
    from diagnose_inputs import write_knee_dicom_study

    write_knee_dicom_study(tmp_path / "written", n_slices=3)
    exam = tmp_path / "exam"
    (exam / "SE1").mkdir(parents=True)
    for i, path in enumerate(sorted((tmp_path / "written").rglob("*.dcm"))):
        (exam / "SE1" / f"IM{i:04d}").write_bytes(path.read_bytes())
    (exam / ".DS_Store").write_bytes(b"\0" * 32)
    with app_page(server, 1400) as page:
        page.get_by_text("RESEARCH USE ONLY").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_text("Upload", exact=True).first.click()
        wait_until_idle(page)
        sidebar.get_by_text("A folder", exact=True).first.click()  # not "Data folder"
        wait_until_idle(page)
        sidebar.locator('input[type="file"]').first.set_input_files(str(exam))
        page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page)
        main = page.locator('[data-testid="stMain"]')
        assert main.get_by_text("dicom", exact=True).count() and main.get_by_text("3 slices", exact=True).count()
        assert not sidebar.locator('[data-testid="stAlertContentError"]').count()
        values = [float(v) for v in page.locator('[data-testid="stMetricValue"]').all_inner_texts()]
        assert len(values) == 4 and all(0.0 <= v <= 1.0 for v in values), values
