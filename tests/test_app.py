"""The web demo (app.py): its start-up errors, its page in a real browser (headless Chromium driven by
selenium), and its API under a burst of requests (gradio_client).

One server for the module: `python app.py` started as a user would, on a free port, with a tiny
class-conditional pipeline (the session's tiny trained autoencoder and a tiny random UNet). Random UNet
weights make noise, not digits, so the checks compare what the server returns with what the same
pipeline gives in this process for the same settings, and look for non-blank images of the right size.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import UNet2DModel

from pipeline.autoencoder import CABAutoencoder
from pipeline.data import to_uint8
from pipeline.export import save_pipeline_folder
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline.schedulers import default_sampling, make_train_scheduler, with_scheduler

from conftest import REPO

NULL_LABEL = 10
SCALE = 4  # app.py shows 28x28 digits 4x larger, pixel for pixel
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # a training run, a server, a browser


# ----------------------------------------------------------------------------- the pipeline and the server

@pytest.fixture(scope="module")
def pipeline_folder(tiny_autoencoder_run, tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=NULL_LABEL + 1).eval()
    autoencoder = CABAutoencoder.from_pretrained(tiny_autoencoder_run).eval()
    pipe = LatentDDPMPipeline(unet=unet, autoencoder=autoencoder, scheduler=make_train_scheduler())
    return save_pipeline_folder(pipe, tmp_path_factory.mktemp("app") / "pipeline")


@pytest.fixture(scope="module")
def pipe(pipeline_folder):
    """The same pipeline in this process, to say what the server should have answered."""
    p = LatentDDPMPipeline.from_pretrained(pipeline_folder)
    p.set_progress_bar_config(disable=True)
    return p


def expected(pipe, sampler=None, steps=2, seed=0, **call):
    """uint8 (N, 28, 28): what app.py's settings mean as a plain pipeline call (sampler None: the page's default,
    the evaluation's, SDE DPM-Solver++)."""
    sampler = sampler or default_sampling(pipe)[0]
    generator = torch.Generator().manual_seed(seed)
    images = with_scheduler(pipe, sampler)(num_inference_steps=steps, generator=generator, output_type="np", **call)
    return to_uint8(images.images[..., 0])


def as_digit(png) -> np.ndarray:
    """A digit as the page shows it (a path or PNG bytes, 112x112 grayscale) -> uint8 (28, 28), one pixel each."""
    image = np.asarray(PIL.Image.open(io.BytesIO(png) if isinstance(png, bytes) else png).convert("L"))
    assert image.shape == (28 * SCALE, 28 * SCALE)
    return image[::SCALE, ::SCALE]


def close(a, b, tolerance=2):
    """Equal to within `tolerance` grey levels (the server runs its own torch threads)."""
    return a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= tolerance


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(pipeline_folder, tmp_path_factory):
    """`python app.py` on a free local port; yields its URL, and ends it afterwards."""
    port, tmp = free_port(), tmp_path_factory.mktemp("gradio")
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp), OMP_NUM_THREADS="1")
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py", "--pipeline", str(pipeline_folder), "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            log.seek(0)
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"app.py did not start serving {url}:\n{log.read()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def server(pipeline_folder, tmp_path_factory):
    yield from serve(pipeline_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """A class-conditional colour pipeline of 16x16 RGB images in two named classes, saved as training saves one."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=3).eval()
    autoencoder = CABAutoencoder(in_channels=3, sample_size=16, image_size=16, block_out_channels=(8, 16, 16),
                                 layers_per_block=1, norm_num_groups=4, reduction=4).eval()
    pipe = LatentDDPMPipeline(unet=unet, autoencoder=autoencoder, scheduler=make_train_scheduler(),
                              class_names=["cats", "dogs"])
    return save_pipeline_folder(pipe, tmp_path_factory.mktemp("app") / "colour", dataset=None)  # a local folder's


@pytest.fixture(scope="module")
def colour_pipe(colour_folder):
    p = LatentDDPMPipeline.from_pretrained(colour_folder)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def colour_server(colour_folder, tmp_path_factory):
    yield from serve(colour_folder, tmp_path_factory)


# ----------------------------------------------------------------------------- bad input at start-up

def start(argv, capsys):
    """app.main as `python app.py` runs it: (exit status, what it printed on stderr)."""
    import app
    from pipeline.errors import run_cli

    with pytest.raises(SystemExit) as exit_:
        run_cli(app.main, argv)
    return exit_.value.code, capsys.readouterr().err


def test_a_missing_pipeline_is_one_line_and_exit_2_before_any_server(tmp_path):
    missing = tmp_path / "runs" / "demo" / "pipeline"
    res = subprocess.run([sys.executable, "app.py", "--pipeline", str(missing), "--port", str(free_port())],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: --pipeline {missing}: no such folder")
    assert "make demo" in res.stderr and "Running on" not in res.stdout


def test_bad_pipelines_say_why_in_one_line(pipeline_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = start(["--pipeline", str(tmp_path / "empty"), "--port", str(free_port())], capsys)
    assert code == 2 and err.count("\n") == 1 and "is not a pipeline folder (no model_index.json)" in err

    damaged = tmp_path / "damaged"
    shutil.copytree(pipeline_folder, damaged)
    weights = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = start(["--pipeline", str(damaged), "--port", str(free_port())], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: cannot load the pipeline {damaged}")

    code, err = start(["--pipeline", "someone/no-such-model", "--port", str(free_port())], capsys)  # offline
    assert code == 2 and err.count("\n") == 1 and "the Hub cannot be asked (HF_HUB_OFFLINE is set)" in err


def test_a_port_in_use_is_named(pipeline_folder, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = start(["--pipeline", str(pipeline_folder), "--port", str(port)], capsys)
    assert code == 2 and err == f"error: port {port} is in use on 127.0.0.1; pass another with --port\n"


def test_controls_follow_the_pipeline(pipe):
    """Class and guidance only for a class-conditional pipeline; class names where the dataset has them."""
    import app

    def controls(p, names=None):
        blocks = app.build_demo(p, names).blocks.values()
        return {b.elem_id: b for b in blocks if b.elem_id in ("class", "guidance")}

    conditional = controls(pipe, app.CLASS_NAMES["zalando-datasets/fashion_mnist"])
    assert conditional["class"].visible and conditional["guidance"].visible
    assert conditional["class"].choices[:3] == [("any", app.NO_CLASS), ("T-shirt/top", 0), ("Trouser", 1)]
    unconditional = LatentDDPMPipeline(unet=UNet2DModel.from_config(pipe.unet.config, num_class_embeds=None),
                                       autoencoder=pipe.autoencoder, scheduler=pipe.scheduler)
    assert not any(c.visible for c in controls(unconditional).values())


# ----------------------------------------------------------------------------- the page in headless Chromium

def chromium(profile):
    """Debian's Chromium, headless, driven by selenium, with a fresh profile; None if it is not installed."""
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and chromedriver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    return webdriver.Chrome(service=Service(chromedriver), options=options)


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-")
    driver = chromium(profile)
    if driver is None:
        why = "needs Debian's headless Chromium: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser test {why} (.ci/run installs them)")
        pytest.skip(f"the browser test {why}")
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "generate"))
    time.sleep(1)  # fonts and late scripts
    events = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    browser.loaded_urls = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    return browser


def test_the_page_needs_no_internet(page, server):
    """Offline, as here: everything the page loads comes from the app's own server."""
    web = [url for url in page.loaded_urls if url.startswith(("http:", "https:", "ws:", "wss:"))]
    assert web and all(url.split("//")[1].startswith(server.split("//")[1]) for url in web), web


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition())


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def type_into(driver, selector, value):
    """Replace a field's value as a user does, then leave the field so the page takes it."""
    from selenium.webdriver.common.keys import Keys

    field = css(driver, selector)[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.TAB)


def fetch(url) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def shown_digits(driver, selector):
    return [as_digit(fetch(img.get_attribute("src"))) for img in css(driver, selector)]


def error_on_page(driver, text):
    """The error toast gradio shows for a gr.Error, once it holds `text`."""
    wait_for(driver, lambda: any(text in t.text for t in css(driver, ".toast-body")))
    for close_button in css(driver, ".toast-close"):  # leave the page clean for the next check
        close_button.click()


def test_generate_shows_the_asked_number_of_images(page, pipe):
    type_into(page, "#num_images input[type=number]", 5)
    type_into(page, "#steps input", 3)
    type_into(page, "#seed input", 7)
    css(page, "#generate")[0].click()
    wait_for(page, lambda: len(css(page, "#gallery img")) == 5 and "5 images in" in css(page, "#timing")[0].text)
    digits = shown_digits(page, "#gallery img")
    assert all(d.std() > 1 for d in digits), "a blank image in the gallery"
    assert close(np.stack(digits), expected(pipe, steps=3, seed=7, batch_size=5))


def test_a_bad_value_is_a_message_on_the_page(page):
    type_into(page, "#steps input", 0)
    css(page, "#generate")[0].click()
    error_on_page(page, "Steps must be a whole number from 1 to 1000; got 0")
    type_into(page, "#steps input", 3)  # and the page works on
    type_into(page, "#num_images input[type=number]", 2)
    css(page, "#generate")[0].click()
    wait_for(page, lambda: len(css(page, "#gallery img")) == 2)


def test_draw_a_stroke_and_get_its_img2img(page, pipe):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    type_into(page, "#steps input", 3)
    type_into(page, "#seed input", 7)
    page.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Draw']").click()
    wait_for(page, lambda: css(page, "#sketch canvas") and css(page, "#draw")[0].is_displayed())
    css(page, "#draw")[0].click()  # nothing drawn yet
    error_on_page(page, "The drawing is blank")

    canvas = css(page, "#sketch canvas")[0]
    ActionChains(page).move_to_element_with_offset(canvas, -10, -90).click_and_hold() \
        .move_by_offset(15, 30).move_by_offset(10, 60).move_by_offset(0, 60).release().perform()  # a "1"
    type_into(page, "#strength input[type=number]", 0)  # the autoencoder's reconstruction
    css(page, "#draw")[0].click()
    wait_for(page, lambda: css(page, "#seen img") and css(page, "#result img"))
    (drawing,), (result,) = shown_digits(page, "#seen img"), shown_digits(page, "#result img")
    # The stroke arrives as a digit framed like MNIST's: in the middle 20x20, centred, an upright "1".
    rows, cols = np.nonzero(drawing > 32)
    assert 30 < len(rows) < 300 and rows.max() - rows.min() >= 18 and cols.max() - cols.min() < 14
    assert abs(rows.mean() - 13.5) < 2 and abs(cols.mean() - 13.5) < 2
    assert close(result, expected(pipe, steps=3, seed=7, image=drawing[None], strength=0.0)[0])

    type_into(page, "#strength input[type=number]", 1)  # a new sample: no longer the reconstruction
    css(page, "#draw")[0].click()
    wait_for(page, lambda: not close(shown_digits(page, "#result img")[0], result, tolerance=10))


# ----------------------------------------------------------------------------- a colour pipeline, in the same browser

COLOUR_SCALE = 7  # 16x16 images are shown 7x larger (app.py: about 112 pixels)


def as_colour(png) -> np.ndarray:
    """A colour image as the page shows it (112x112 RGB) -> uint8 (16, 16, 3), one pixel each."""
    image = np.asarray(PIL.Image.open(io.BytesIO(png) if isinstance(png, bytes) else png))
    assert image.shape == (16 * COLOUR_SCALE, 16 * COLOUR_SCALE, 3), image.shape
    return image[::COLOUR_SCALE, ::COLOUR_SCALE]


def test_a_colour_pipeline_shows_its_size_colours_and_class_names(browser, colour_server, colour_pipe, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(colour_server)
    wait_for(browser, lambda: css(browser, "#generate"))
    assert "decodes them into 16x16 colour images" in css(browser, "#title")[0].text
    assert browser.title == "Latent diffusion images"
    css(browser, "#class input")[0].click()  # the class choice lists the pipeline's own names
    options = lambda: css(browser, "li[role=option]")  # noqa: E731
    wait_for(browser, lambda: [o.get_attribute("aria-label") for o in options()] == ["any", "cats", "dogs"])
    options()[2].click()  # "dogs"
    type_into(browser, "#steps input", 3)
    type_into(browser, "#seed input", 5)
    type_into(browser, "#num_images input[type=number]", 3)
    css(browser, "#generate")[0].click()
    wait_for(browser, lambda: len(css(browser, "#gallery img")) == 3)
    got = np.stack([as_colour(fetch(img.get_attribute("src"))) for img in css(browser, "#gallery img")])
    want = with_scheduler(colour_pipe, default_sampling(colour_pipe)[0])(
        batch_size=3, num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="np",
        class_labels=1, guidance_scale=1.5).images
    assert close(got, to_uint8(want))

    # Draw: an uploaded colour picture, in the pipeline's size and channels, redrawn by img2img
    upload = np.zeros((40, 60, 3), np.uint8)
    upload[:, :30] = (200, 30, 30)
    upload[:, 30:] = (30, 30, 200)
    PIL.Image.fromarray(upload).save(tmp_path / "upload.png")
    browser.find_element(By.XPATH, "//button[@role='tab' and normalize-space()='Draw']").click()
    wait_for(browser, lambda: css(browser, "#upload input[type=file]"))
    css(browser, "#upload input[type=file]")[0].send_keys(str(tmp_path / "upload.png"))
    wait_for(browser, lambda: css(browser, "#upload img"))
    type_into(browser, "#strength input[type=number]", 0)
    css(browser, "#draw")[0].click()
    wait_for(browser, lambda: css(browser, "#seen img") and css(browser, "#result img"))
    seen = as_colour(fetch(css(browser, "#seen img")[0].get_attribute("src")))
    assert (seen[:, :7, 0] > 150).all() and (seen[:, 9:, 2] > 150).all()  # red left, blue right: the centre 40x40
    result = as_colour(fetch(css(browser, "#result img")[0].get_attribute("src")))
    want = with_scheduler(colour_pipe, default_sampling(colour_pipe)[0])(
        image=seen[None], strength=0.0, num_inference_steps=3, generator=torch.Generator().manual_seed(5),
        output_type="np", class_labels=1, guidance_scale=1.5).images
    assert close(result, to_uint8(want)[0])


# ----------------------------------------------------------------------------- the API under a burst

def test_twenty_concurrent_requests_are_all_answered_correctly(server, pipe, tmp_path):
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=str(tmp_path))
    asks = [dict(n=1 + i % 4, seed=i, label=(i % 3 if i % 2 else -1)) for i in range(20)]
    start = time.perf_counter()
    jobs = [client.submit(a["n"], "dpm", 2, a["seed"], a["label"], 2.0, api_name="/generate") for a in asks]
    with ThreadPoolExecutor(4) as pool:  # wait for all at once: none may be lost or time out
        answers = list(pool.map(lambda job: job.result(timeout=120), jobs))
    seconds = time.perf_counter() - start
    assert seconds < 90, f"20 tiny requests took {seconds:.0f} s"
    for ask, (gallery, timing) in zip(asks, answers):
        labels = {} if ask["label"] == -1 else dict(class_labels=ask["label"], guidance_scale=2.0)
        got = np.stack([as_digit(item["image"]) for item in gallery])
        assert len(gallery) == ask["n"] and timing.startswith(f"{ask['n']} image")
        assert close(got, expected(pipe, "dpm", seed=ask["seed"], batch_size=ask["n"], **labels)), ask


def test_a_bad_request_is_an_error_and_the_server_serves_on(server, pipe, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False, download_files=str(tmp_path))
    with pytest.raises(AppError, match="maximum value 64"):
        client.predict(65, "dpm", 2, 0, -1, 1.0, api_name="/generate")  # too many images
    with pytest.raises(AppError, match="dpm-fast is not in the list of choices"):
        client.predict(1, "dpm-fast", 2, 0, -1, 1.0, api_name="/generate")
    strip, caption = client.predict("ddim", 4, 3, -1, 1.0, api_name="/denoise")
    frames = np.asarray(PIL.Image.open(strip).convert("L"))
    assert caption.startswith("Steps 0, 1, 2, 3, 4 of 4")
    assert frames.shape == ((2 + 28 + 2) * SCALE, (5 * (28 + 2) + 2) * SCALE)  # five frames in a row


if __name__ == "__main__":
    # The README's screenshot: `python tests/test_app.py URL OUT.png` with `python app.py` serving at URL;
    # the page after one Generate at its default settings.
    url, out = sys.argv[1:3]
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        driver = chromium(profile)
        assert driver is not None, "apt-get install chromium chromium-driver"
        try:
            driver.get(url)
            wait_for(driver, lambda: css(driver, "#generate"))
            css(driver, "#generate")[0].click()
            wait_for(driver, lambda: css(driver, "#gallery img") and css(driver, "#timing")[0].text)
            time.sleep(1)  # the gallery's images finish loading
            driver.save_screenshot(out)
        finally:
            driver.quit()
