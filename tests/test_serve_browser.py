"""``stylenet-serve``'s page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium.

The page uploads a generated photo with a chosen model and shows a result of the photo's size that
differs from it; a blend of two ticked styles of a file of several styles is one more result; a bad
file shows its error on the page; the webcam mode (Chromium's fake camera) shows stylized frames and
their rate. Screenshots are saved under pytest's temporary folder and,
when ``STYLENET_ARTIFACTS`` names a folder, copied there. Without Chromium, chromedriver or
Selenium the tests are skipped, saying which is missing and how to install it.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stylenet.serve import ServeConfig, StyleServer
from tests.conftest import make_photo
from tests.test_serve import model_folder, pixels

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
WAIT_S = 60

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason=f"Chromium or chromedriver not installed ({INSTALL}): browser tests skipped")


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StyleServer]:
    root = tmp_path_factory.mktemp("serve")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest on shared cores
    server = StyleServer(ServeConfig(model_folder(root / "models"), port=0, device="cpu", precision="fp32",
                                     temp_parent=root, memory_limit=64 * 2**30))
    server.serve_in_thread()
    yield server
    server.shutdown()
    server.server_close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1200,1100", "--use-fake-device-for-media-stream",
                     "--use-fake-ui-for-media-stream"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def screenshot(tmp_path: Path, browser: Any) -> Callable[[str], Path]:
    """Save a screenshot of the page as ``<name>.png``, and copy it to $STYLENET_ARTIFACTS if set."""
    def save(name: str) -> Path:
        path = tmp_path / f"{name}.png"
        assert browser.save_screenshot(str(path)), f"no screenshot {path}"
        if os.environ.get("STYLENET_ARTIFACTS"):
            target = Path(os.environ["STYLENET_ARTIFACTS"]) / "browser"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        return path
    return save


def wait_for(browser: Any, script: str, what: str) -> Any:
    """Run ``script`` (JavaScript returning a value) until it returns something truthy."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(lambda driver: driver.execute_script(script))
    except TimeoutException:
        text = browser.execute_script("return document.body.innerText")
        raise AssertionError(f"the page did not show {what} within {WAIT_S} s; it reads: {text[:1500]}") from None


def open_page(browser: Any, server: StyleServer) -> None:
    browser.get(server.url)
    wait_for(browser, "return document.querySelectorAll('#models input').length === 2", "the two models")


def choose_only(browser: Any, label: str) -> None:
    """Tick the model ``label`` and untick the others, by clicking as a user does."""
    for box in browser.find_elements("css selector", "#models input"):
        if box.is_selected() != (box.get_attribute("data-label") == label):
            box.click()


def test_the_page_stylizes_an_uploaded_photo(browser: Any, page_server: StyleServer, tmp_path: Path,
                                             screenshot: Callable[[str], Path]) -> None:
    from stylenet.serve.limits import millions

    photo = make_photo(tmp_path / "harbour.png", size=(96, 72), seed=7)
    open_page(browser, page_server)
    limits = browser.execute_script("return limits")  # what /api/models said: written as the server writes them
    assert browser.find_element("id", "limits").text.startswith(
        f"Up to {millions(limits['max_upload'])} MB and {millions(limits['max_pixels'])} megapixels per photo")
    choose_only(browser, "tiny")
    browser.find_element("id", "files").send_keys(str(photo))
    found = wait_for(browser, """
        const image = document.querySelector('.card img.result');
        const link = document.querySelector('.card figcaption a');
        return image && image.complete && image.naturalWidth
            ? [image.naturalWidth, image.naturalHeight, image.src, link.getAttribute('download')] : null;""",
                     "a stylized photo")
    width, height, source, download = found
    assert (width, height, download) == (96, 72, "harbour_tiny.png")
    with urllib.request.urlopen(source, timeout=WAIT_S) as response:  # what the page shows and downloads
        result = pixels(response.read())
    assert result.shape == (72, 96, 3) and np.abs(result - pixels(photo)).mean() > 5
    assert len(browser.find_elements("css selector", ".card img.photo")) == 1  # side by side with the photo
    assert screenshot("photo_and_result").stat().st_size > 1000
    # a result the server has dropped since (it keeps its last photos only): its link says so when clicked
    job = re.search(r"/api/jobs/([0-9a-f]{32})/", source)[1]
    urllib.request.urlopen(urllib.request.Request(f"{page_server.url}api/jobs/{job}", method="DELETE"), timeout=WAIT_S)
    browser.find_element("css selector", ".card figcaption a").click()
    message = wait_for(browser, "const e = document.querySelector('.card figcaption .error');"
                                "return e && e.textContent;", "that the result is no longer kept")
    assert message == "no longer kept by the server: stylize the photo again"


def test_a_tiff_the_browser_cannot_show_gets_a_line_in_the_photos_place(browser: Any, page_server: StyleServer,
                                                                         tmp_path: Path) -> None:
    """The server stylizes TIFFs, which Chrome's <img> does not decode: the result shows, and a line takes the
    place of the broken photo beside it."""
    photo = make_photo(tmp_path / "scan.tif", size=(64, 48), seed=3)
    open_page(browser, page_server)
    choose_only(browser, "tiny")
    browser.find_element("id", "files").send_keys(str(photo))
    note = wait_for(browser, """
        const image = document.querySelector('.card img.result'), note = document.querySelector('.card .photo-note');
        return image && image.complete && image.naturalWidth === 64 && note ? note.textContent : null;""",
                    "the stylized TIFF beside a line for the photo")
    assert note == "this browser cannot show the photo's format"
    assert not browser.find_elements("css selector", ".card img.photo")


def test_two_ticked_styles_of_one_file_can_be_blended_with_their_weights(
        browser: Any, tmp_path: Path, screenshot: Callable[[str], Path]) -> None:
    from tests.test_multistyle import multi_file, multi_net

    folder = tmp_path / "models"
    multi_file(folder / "multi.safetensors", multi_net(styles=3))
    server = StyleServer(ServeConfig(folder, port=0, device="cpu", precision="fp32", temp_parent=tmp_path,
                                     memory_limit=64 * 2**30))
    server.serve_in_thread()
    try:
        browser.get(server.url)
        wait_for(browser, "return document.querySelectorAll('#models input').length === 3", "the three styles")
        assert browser.find_elements("css selector", "#blends .blend") == []  # one style ticked: nothing to blend
        for box in browser.find_elements("css selector", "#models input"):
            if box.is_selected() != (box.get_attribute("data-label") in ("multi / a", "multi / b")):
                box.click()
        row = browser.find_element("css selector", "#blends .blend")
        assert row.text.startswith("Blend of multi")
        row.find_element("css selector", "input[type=checkbox]").click()
        photo = make_photo(tmp_path / "park.png", size=(64, 48), seed=2)
        for weights in (("0", "0"), ("0.7", "0.3")):  # a blend of nothing is refused on the page, then a real one
            for slider, weight in zip(row.find_elements("css selector", "input[type=range]"), weights, strict=True):
                browser.execute_script("arguments[0].value = arguments[1];"
                                       "arguments[0].dispatchEvent(new Event('input'));", slider, weight)
            browser.find_element("id", "files").send_keys(str(photo))
        assert browser.find_element("css selector", ".card .error").text == (
            "multi / blend: set at least one weight above 0.")
        assert [o.text for o in row.find_elements("css selector", "output")] == ["0.70", "0.30"]
        found = wait_for(browser, """
            const images = [...document.querySelectorAll('.card img.result')];
            return images.length === 3 && images.every((i) => i.complete && i.naturalWidth)
                ? [...document.querySelectorAll('.card figcaption a')].map((a) => [a.getAttribute('download'), a.href])
                : null;""", "three results: two styles and their blend")
        screenshot("blend")
        results = []
        for _, url in found:
            with urllib.request.urlopen(url, timeout=WAIT_S) as response:
                results.append(pixels(response.read()))
    finally:
        server.shutdown()
        server.server_close()
    assert [download for download, _ in found] == ["park_multi_a.png", "park_multi_b.png", "park_multi_a0.7+b0.3.png"]
    assert all(np.abs(results[2] - result).mean() > 0.5 for result in results[:2])  # its own result


def test_a_bad_file_shows_its_error_on_the_page(browser: Any, page_server: StyleServer, tmp_path: Path,
                                                screenshot: Callable[[str], Path]) -> None:
    bad = tmp_path / "holiday.jpg"
    bad.write_text("these are not the pixels you are looking for")
    open_page(browser, page_server)
    browser.find_element("id", "files").send_keys(str(bad))
    message = wait_for(browser, "const e = document.querySelector('.card .error'); return e && e.textContent;",
                       "an error message")
    assert message.startswith("cannot read image 'holiday.jpg': not a recognised image file"), message
    # dropped on the page rather than chosen: a file the browser makes, in a drop event
    browser.execute_script("""
        const data = new DataTransfer();
        data.items.add(new File([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 0])], 'dropped.png'));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true}));""")
    message = wait_for(browser, "const c = document.querySelector('.card[data-name=\"dropped.png\"] .error');"
                                "return c && c.textContent;", "the dropped file's error")
    assert message.startswith("cannot read image 'dropped.png': truncated or corrupt PNG file"), message
    assert browser.find_elements("css selector", ".card img.result") == []
    screenshot("bad_file")


def test_a_page_that_the_browser_gives_no_camera_says_why_in_one_line(browser: Any,
                                                                      page_server: StyleServer) -> None:
    """Opened from another computer over plain http (``--host 0.0.0.0``), a page has no
    ``navigator.mediaDevices``; the page said "Cannot read properties of undefined"."""
    open_page(browser, page_server)
    browser.execute_script("Object.defineProperty(navigator, 'mediaDevices', {value: undefined});")
    browser.find_element("id", "webcam-start").click()
    message = wait_for(browser, "const e = document.getElementById('webcam-error');"
                                "return !e.hidden && e.textContent;", "the webcam's error")
    port = page_server.server_address[1]
    assert message.startswith("No camera: browsers give the camera only to a page opened as http://127.0.0.1"), message
    assert message.endswith(f"(ssh -L {port}:127.0.0.1:{port} 127.0.0.1)"), message


def test_the_webcam_mode_shows_stylized_frames_and_their_rate(browser: Any, page_server: StyleServer,
                                                              screenshot: Callable[[str], Path]) -> None:
    open_page(browser, page_server)
    browser.find_element("id", "webcam-start").click()
    try:
        wait_for(browser, "return Number(document.getElementById('fps').dataset.frames || 0) >= 3",
                 "three stylized webcam frames")
        rate = browser.find_element("id", "fps").text
        size = browser.execute_script("const i = document.getElementById('webcam-result');"
                                      "return [i.naturalWidth, i.naturalHeight];")
        screenshot("webcam")
    finally:
        browser.find_element("id", "webcam-stop").click()
    assert re.fullmatch(r"\d+\.\d frames/s", rate) and float(rate.split()[0]) > 0, rate
    assert size[0] == 320 and size[1] > 0  # the frame width chosen on the page
