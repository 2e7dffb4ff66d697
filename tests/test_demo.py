"""The demo: what it says without a browser (the model it serves, the saliency captions, a busy
port), and the page in a real headless browser (Debian's chromium + chromium-driver, Selenium):
it loads, takes an uploaded photo and shows each face's expression; nothing leaves 127.0.0.1."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from face_assets import face_photo
from fer_fast import VGG, Predictor, bundled
from fer_fast.checkpoint import save_atomic
from fer_fast.demo import describe_model, saliency_panel
from fer_fast.demo import main as demo_main
from fer_fast.model import CLASS_NAMES

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs a headless browser: apt-get install chromium chromium-driver")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_page_names_the_model_it_serves(tmp_path):
    assert describe_model(None, None) == bundled.describe()
    torch.manual_seed(0)
    model = VGG("paper", width=0.0625)
    path = tmp_path / "mine.pt"
    save_atomic({"params": model.state_dict(), "config": {"recipe": "paper", "width": 0.0625},
                 "logs": {"best_val_acc": 0.5}}, path)
    assert describe_model(path, Predictor(path, device="cpu")) == (
        "mine.pt: VGG width 0.0625, paper recipe, 50.00% validation ten-crop accuracy")


def test_saliency_panel_captions_each_face_with_its_number_and_class():
    torch.manual_seed(0)
    predictor = Predictor(VGG(width=0.0625), device="cpu")
    faces = torch.randint(0, 256, (2, 48, 48), dtype=torch.uint8).numpy()
    panel = saliency_panel(predictor, faces, [3, 0])
    assert [caption for _, caption in panel] == [f"face 1: {CLASS_NAMES[3]}",
                                                 f"face 2: {CLASS_NAMES[0]}"]
    assert all(image.shape == (192, 384, 3) and image.dtype == "uint8" for image, _ in panel)


def test_a_busy_port_says_to_choose_another_with_port(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert demo_main(["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: port {port} on 127.0.0.1 is in use") and "--port" in err
    assert len(err.splitlines()) == 1 and "GRADIO" not in err


def test_ctrl_c_deletes_the_photos_the_page_was_given(tmp_path):
    """The command stopped as a user stops it (Ctrl-C) leaves none of the uploaded photos in
    Gradio's cache."""
    httpx = pytest.importorskip("httpx", reason="the demo page needs gradio (which brings httpx): "
                                "pip install fer_fast[demo]")
    pytest.importorskip("gradio", reason="the demo page needs gradio: pip install fer_fast[demo]")
    port, cache = _free_port(), tmp_path / "gradio"
    proc = subprocess.Popen([sys.executable, "-m", "fer_fast", "demo", "--port", str(port)],
                            env={**os.environ, "GRADIO_TEMP_DIR": str(cache)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.TransportError:
                time.sleep(0.5)
        photo = tmp_path / "photo.png"
        cv2.imwrite(str(photo), face_photo(0, faces=((90, 120, 90),)))
        with photo.open("rb") as f:
            uploaded = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload",
                                  files={"files": f}).json()
        assert [Path(u).parent.parent for u in uploaded] == [cache] and all(
            map(os.path.exists, uploaded))
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-2000:]
    assert not [f for f in cache.rglob("*") if f.is_file()], "uploaded photos outlived the page"


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("gradio", reason="the demo page needs gradio: pip install fer_fast[demo]")
    webdriver = pytest.importorskip("selenium.webdriver",
                                    reason="the browser test drives chromium with selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@needs_browser
def test_demo_page_labels_an_uploaded_photo(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fer_fast.demo import build_demo

    torch.manual_seed(0)
    page = build_demo(Predictor(VGG(width=0.0625), device="cpu"), "a test VGG")
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, share=False, inbrowser=False,
                prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(browser, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=file]"))
        assert "facial expressions" in browser.title
        assert "Model: a test VGG" in browser.find_element(By.ID, "model").text
        photo = tmp_path / "photo.png"
        cv2.imwrite(str(photo), face_photo(0, faces=((90, 120, 90), (240, 110, 100))))
        browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(photo))

        def summary(driver):
            text = driver.find_element(By.CSS_SELECTOR, "#summary textarea").get_attribute("value")
            return text if text.count("face ") == 2 else False

        lines = WebDriverWait(browser, 90).until(summary).splitlines()
        assert all(any(f": {name} (" in line for name in CLASS_NAMES) for line in lines)
        label = browser.find_element(By.ID, "label").text
        assert any(name in label for name in CLASS_NAMES) and "%" in label
        assert browser.find_elements(By.CSS_SELECTOR, "#annotated img")
        urls = [json.loads(entry["message"])["message"]["params"].get("request", {}).get("url", "")
                for entry in browser.get_log("performance")]
        outside = sorted({u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))
                          and not u.startswith((f"http://127.0.0.1:{port}/",
                                                f"ws://127.0.0.1:{port}/"))})
        assert any(u.startswith(f"http://127.0.0.1:{port}/") for u in urls)  # log captured
        assert not outside, f"the page reached outside 127.0.0.1: {outside}"
        cached = set().union(*page.temp_file_sets)  # Gradio's copies of the photo and results
        assert any(Path(f).name == photo.name for f in cached) and all(map(os.path.exists, cached))
    finally:
        page.close()
    assert not [f for f in cached if os.path.exists(f)], "the page's cached photos outlived it"
