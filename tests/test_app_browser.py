"""The web UI in a real browser: `videoldm serve` started as a user starts it, driven by headless Chromium.

Chromium may reach 127.0.0.1 only (every other host name fails to resolve), so the page is shown to
work offline. Screenshots go to tests/artifacts/ (git-ignored). CI installs Chromium and its driver
(.ci/run); elsewhere these tests skip when they are absent.
"""

from __future__ import annotations

import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_app import start_server

from videoldm.app import EMBEDDED_MODEL_NAME

pytest.importorskip("gradio", reason="the ui extra is not installed: pip install -e '.[ui]'")
pytest.importorskip("selenium", reason="selenium (the test extra) is not installed")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Chromium and chromedriver: apt-get install chromium chromium-driver")

ARTIFACTS = Path(__file__).parent / "artifacts"
MAX_FRAMES, MAX_STEPS = 32, 10


@pytest.fixture(scope="module")
def server():
    """``videoldm serve`` with small limits; yields its URL, then stops it (SIGTERM) and checks its files are gone."""
    process, url, workdir, lines = start_server("--max-frames", str(MAX_FRAMES), "--max-steps", str(MAX_STEPS))
    yield url, process
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 128 + signal.SIGTERM, "".join(lines)
    assert not workdir.exists()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required",
                     # offline: any host but the server's fails, so a CDN asset would be missed
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def open_page(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements(By.CSS_SELECTOR, "#generate"))


def set_number(browser, field: str, value: int) -> None:
    box = browser.find_element(By.CSS_SELECTOR, f"#{field} input")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))


def generate(browser) -> None:
    browser.find_element(By.CSS_SELECTOR, "#generate").click()


def error_message(browser, timeout: float = 60) -> str:
    """The text of the error the page shows (a gradio toast), waiting for it."""
    def shown(driver) -> str:
        return " ".join(toast.text for toast in driver.find_elements(By.CSS_SELECTOR, ".toast-body.error")).strip()

    return WebDriverWait(browser, timeout).until(shown)


def field_value(browser, field: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f"#{field} textarea, #{field} input").get_attribute("value")


def screenshot(browser, name: str) -> None:
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_hostile_inputs_show_a_message_and_the_server_keeps_serving(server, browser, tmp_path):
    url, process = server
    open_page(browser, url)
    set_number(browser, "frames", 10**9)
    generate(browser)
    assert f"--frames 1000000000: this server makes at most {MAX_FRAMES} frames" in error_message(browser)
    screenshot(browser, "web_ui_frames_refused")

    open_page(browser, url)
    set_number(browser, "steps", -3)
    generate(browser)
    assert "--steps -3: expected 1..1000" in error_message(browser)
    screenshot(browser, "web_ui_steps_refused")

    # A model outside the server's list, sent the way the page sends its form (the page offers none).
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not in the list of choices"):
        Client(url, verbose=False).predict("/etc", "", "", 2, 0, 1, 2.0, 1.0, 8.0, 1, 1, 10, 20, None, api_name="/generate")
    too_big = tmp_path / "big.png"
    too_big.write_bytes(b"\0" * (11 << 20))
    with pytest.raises(Exception, match="(?i)too large|size"):
        Client(url, verbose=False).predict(EMBEDDED_MODEL_NAME, "", "", 2, 0, 1, 2.0, 1.0, 8.0, 1, 1, 10, 20,
                                           handle_file(too_big),
                                           api_name="/generate")
    # Files outside the server's own directory are not served.
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}/gradio_api/file=/etc/passwd", timeout=30)

    assert process.poll() is None
    open_page(browser, url)
    assert browser.title == "videoldm"


def test_generate_shows_a_playable_video_its_seed_and_command(server, browser):
    url, _ = server
    open_page(browser, url)
    assert field_value(browser, "steps") == "10"  # the embedded model's own number
    set_number(browser, "frames", 4)
    set_number(browser, "seed", 3)
    set_number(browser, "steps", 2)
    generate(browser)
    duration = WebDriverWait(browser, 180).until(lambda driver: driver.execute_script(
        "const video = document.querySelector('#video video');"
        "return video && video.currentSrc && video.readyState >= 1 ? video.duration : null;"))
    assert duration > 0
    screenshot(browser, "web_ui_generated")
    assert field_value(browser, "seed_used") == "3"
    command = field_value(browser, "command")
    assert command.startswith("videoldm generate --out videoldm-seed3.mp4 ") and "--frames 4 --steps 2 --seed 3" in command
    download = browser.find_element(By.CSS_SELECTOR, "#download a").get_attribute("href")
    assert download.endswith("videoldm-seed3.mp4")
    with urllib.request.urlopen(download, timeout=30) as response:
        assert response.read(12)[4:8] == b"ftyp"  # an MP4
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(entry => entry.name)")
    assert requested and all(name.startswith(url) for name in requested)
