"""`birdcnn serve`, for real: the server runs (uvicorn, in a thread, on a free port, with the
shipped model) and is asked over HTTP; the page is driven by headless Chromium.

Every answer is checked against the library (`classify` on the same file), every refusal is a
4xx `{"error", "file"}` naming the problem, and the server keeps answering afterwards.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from PIL import Image

from birdcnn.cli import main
from birdcnn.modelfile import default_model_path, load_model
from birdcnn.predict import classify, sample_images
from birdcnn.serve import Limits, create_app, listen

# Small limits, so that refusals are cheap to provoke; the shared photos are ~0.2 MB, 0.2 MP.
LIMITS = Limits(max_files=4, max_upload_mb=1, max_megapixels=4)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def server(model) -> str:
    """The base URL of a real server: uvicorn in a background thread, on a free port."""
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(model, default_model_path(), LIMITS), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def bird(photos) -> Path:
    return photos / "bird" / "partridge.jpg"


@pytest.fixture(scope="module")
def other(photos) -> Path:
    return photos / "not_bird" / "airship.jpg"


def upload(field: str, *items: Path | tuple[str, bytes]) -> list:
    """httpx multipart `files` for real files or (name, bytes) pairs, all in one field."""
    return [(field, (i.name, i.read_bytes()) if isinstance(i, Path) else i) for i in items]


def expected(path: Path, model) -> dict:
    """What `birdcnn predict --json` says about `path`, with the name as the server shows it."""
    return {**classify([path], model)[0], "path": path.name}


def assert_refused(r: httpx.Response, status: int, words: str, file: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "file"} and words in body["error"] and body["file"] == file, body


def png_size(b64: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.format == "PNG"
        return im.size


# ---------------------------------------------------------------- the API

def test_health_describes_the_model(client, model):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["version"] == __import__("birdcnn").__version__
    assert h["model"]["name"] == "default" and h["model"]["path"].endswith("default.json")
    assert h["classes_count"] == len(model.classes) == len(h["classes"]) and h["classes"] == model.classes
    assert h["positive_class"] == model.positive == "bird"
    assert h["threshold"] == model.threshold
    assert h["limits"] == {"max_files": 4, "max_upload_mb": 1, "max_megapixels": 4}


def test_predict_matches_classify(client, model, bird, other):
    r = client.post("/api/predict", files=upload("files", bird, other))
    assert r.status_code == 200, r.text
    assert r.json() == [expected(bird, model), expected(other, model)]
    assert r.json()[0]["is_bird"] and not r.json()[1]["is_bird"]


def test_predict_one_shipped_sample(client, model):
    sample = sample_images()[1]
    assert client.post("/api/predict", files=upload("files", sample)).json() == [expected(sample, model)]


def test_bad_uploads_then_good_ones(client, model, bird):
    text = ("x.jpg", b"this is not a photo\n")
    truncated = ("cut.jpg", bird.read_bytes()[:20_000])
    r = client.post("/api/predict", files=upload("files", text, truncated, bird))
    assert r.status_code == 200
    bad_text, bad_cut, good = r.json()
    assert bad_text == {"path": "x.jpg", "error": "not an image (unrecognised format)"}
    assert bad_cut["path"] == "cut.jpg" and "truncated" in bad_cut["error"] and set(bad_cut) == {"path", "error"}
    assert good == expected(bird, model)
    # One file for locate/explain: a bad one is the request's answer, a 422 naming it.
    assert_refused(client.post("/api/locate", files=upload("file", text)), 422, "not an image", "x.jpg")
    assert_refused(client.post("/api/explain", files=upload("file", truncated)), 422, "truncated", "cut.jpg")
    assert client.post("/api/predict", files=upload("files", bird)).json() == [expected(bird, model)]


def test_refused_requests(client, bird, tmp_path):
    five = upload("files", *[bird] * 5)
    assert_refused(client.post("/api/predict", files=five), 400, "too many files: 5 (limit 4")
    assert_refused(client.post("/api/predict"), 400, "no file uploaded")
    assert_refused(client.post("/api/predict", files=upload("file", bird)), 400, "multipart field 'files'")
    assert_refused(client.post("/api/locate", data={"file": "text"}), 400, "holds text, not a file")
    assert_refused(client.post("/api/locate?for=unicorn", files=upload("file", bird)), 400, "no class 'unicorn'")
    assert_refused(client.post("/api/locate?top=0", files=upload("file", bird)), 400, "top")
    # Over the byte limit: a refused file of its own, or (locate) the request's 413.
    heavy = ("heavy.jpg", os.urandom(1_200_000))
    r = client.post("/api/predict", files=upload("files", heavy, bird))
    assert r.json()[0] == {"path": "heavy.jpg", "error": "too large (1.14 MB; limit 1 MB per file)"}
    assert "bird_probability" in r.json()[1]
    assert_refused(client.post("/api/locate", files=upload("file", heavy)), 413, "too large (1.14 MB", "heavy.jpg")
    # Over the pixel limit, from the header (the file itself is small), and a "bomb" far over it.
    for size, words in (((2500, 2000), "2500x2000 pixels; limit 4 MP"), ((4000, 3000), "decompression bomb")):
        Image.new("L", size).save(tmp_path / "wide.png")
        assert_refused(client.post("/api/explain", files=upload("file", tmp_path / "wide.png")), 413, words, "wide.png")
    # A whole request over max-files x max-upload-mb is refused before it is parsed.
    assert_refused(client.post("/api/predict", files=upload("files", ("big.jpg", bytes(5 << 20)))), 413,
                   "request too large")
    assert client.get("/api/health").status_code == 200  # still serving


def test_locate_gives_boxes_in_photo_pixels(client, model, bird):
    r = client.post("/api/locate", files=upload("file", bird))
    assert r.status_code == 200, r.text
    res = r.json()
    width, height = Image.open(bird).size
    assert res["image"] == bird.name and res["size"] == [width, height] and res["class"] == "bird"
    assert res["threshold"] == res["min_probability"] == model.window_threshold([model.positive_index])
    assert res["boxes"], "the partridge photo has a window over the window threshold"
    for b in res["boxes"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert res["threshold"] <= b["probability"] <= res["max_probability"]
    assert min(png_size(res["heatmap_png"])) > 100


def test_explain_gives_gradcam_and_top_classes(client, model, bird):
    res = client.post("/api/explain", files=upload("file", bird)).json()
    want = expected(bird, model)
    assert res["bird_probability"] == want["bird_probability"] and res["label"] == want["label"]
    assert [t["class"] for t in res["top_classes"][:3]] == [t["class"] for t in want["top_classes"]]
    assert len(res["top_classes"]) == 5 and res["gradcam_layer"]
    width, height = Image.open(bird).size
    shown = png_size(res["gradcam_png"])  # the whole photo as explain decodes it (a JPEG: a reduced draft)
    assert min(shown) >= model.input_size and abs(shown[0] / shown[1] - width / height) < 0.02


def test_concurrent_requests_get_their_own_results(client, model, photos):
    paths = sorted(photos.glob("*/*.jpg"))[:8]
    want = {p.name: expected(p, model) for p in paths}

    def ask(p: Path) -> tuple[str, list[dict]]:
        return p.name, client.post("/api/predict", files=upload("files", p, p)).json()

    def same(got: dict, want: dict) -> bool:
        # A request may share a batch with others: float32 kernels then round the last digit differently.
        probs = ("bird_probability", "top_classes")
        return ({k: v for k, v in got.items() if k not in probs} == {k: v for k, v in want.items() if k not in probs}
                and abs(got["bird_probability"] - want["bird_probability"]) < 1e-5
                and [t["class"] for t in got["top_classes"]] == [t["class"] for t in want["top_classes"]]
                and all(abs(g["probability"] - w["probability"]) < 1e-5
                        for g, w in zip(got["top_classes"], want["top_classes"])))

    with ThreadPoolExecutor(len(paths)) as pool:
        answers = list(pool.map(ask, paths * 2))
    for name, records in answers:
        assert len(records) == 2 and all(same(r, want[name]) for r in records), (name, records, want[name])


def test_openapi_and_page_need_no_cdn(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/locate", "/api/explain", "/api/health"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 404  # FastAPI's Swagger page would load from a CDN
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


def test_cli_refuses_a_busy_port(capsys):
    taken = listen("127.0.0.1", 0)
    with taken:
        assert main(["serve", "--port", str(taken.getsockname()[1]), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("birdcnn serve: error: cannot listen on 127.0.0.1:") and err.count("\n") == 1


# ---------------------------------------------------------------- the page, in a real browser

@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_page_classifies_an_uploaded_photo(browser, server, client, bird):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    api = client.post("/api/predict", files=upload("files", bird)).json()[0]
    sample = sample_images()[0]  # a 32 px photo: its heat map is quick to make
    browser.get(server + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "classes" in d.find_element(By.ID, "model").text)  # /api/health answered
    browser.find_element(By.ID, "files").send_keys(f"{bird.resolve()}\n{sample.resolve()}")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 2)
    card = browser.find_element(By.CSS_SELECTOR, f'.card[data-name="{bird.name}"]')
    assert card.find_element(By.CLASS_NAME, "label").text == api["label"] == "bird"
    prob = card.find_element(By.CLASS_NAME, "prob")
    assert float(prob.get_attribute("data-probability")) == api["bird_probability"]
    assert prob.text == f"{100 * api['bird_probability']:.1f}% bird"
    # The per-photo buttons fetch the Grad-CAM view and the heat map into their card.
    small = browser.find_element(By.CSS_SELECTOR, f'.card[data-name="{sample.name}"]')
    card.find_element(By.CSS_SELECTOR, "button.explain").click()
    small.find_element(By.CSS_SELECTOR, "button.locate").click()
    for where, view in ((card, "explain"), (small, "locate")):
        img = wait.until(lambda d: where.find_element(By.CSS_SELECTOR, f".view.{view} img"))
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        assert wait.until(lambda d: img.get_property("naturalWidth")) > 0
    # Nothing was fetched from anywhere but this server.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server) or u.startswith("data:") for u in urls), urls
