"""Web demo of a trained LatentDDPMPipeline: `python app.py [--pipeline FOLDER_OR_HUB_ID] [--host H] [--port P]`.

One pipeline, loaded once at start-up, behind three tabs: Generate (a gallery of samples), Draw (a sketch or an
uploaded picture turned into an image by the pipeline's img2img) and Denoising (one sample's steps from noise to
image). Everything follows the pipeline: its image size and channels (28x28 grayscale digits, 64x64 colour
emoji, ...), its class names and its title. Built with gradio Blocks; the same file is the `app_file` of a
Hugging Face Space (docs/web_demo.md).
"""

import os

# No usage analytics: the demo runs offline (its page's fonts and scripts are served by gradio itself).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import errno  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from pipeline.data import hub_unavailable, to_uint8  # noqa: E402
from pipeline.errors import UserError, first_line, run_cli  # noqa: E402
from pipeline.evaluate import load_pipeline, pick_device  # noqa: E402
from pipeline.image_data import picture_array, saved_data_options  # noqa: E402
from pipeline.judge_data import trained_on  # noqa: E402
from pipeline.schedulers import SCHEDULERS, default_sampling, with_scheduler  # noqa: E402
from pipeline.visualisation import tile  # noqa: E402

DEMO_PIPELINE = "runs/demo/pipeline"  # what `make demo` writes
MAX_IMAGES = 64  # per Generate request: a few seconds on two CPU cores
MAX_STEPS = 1000  # the length of the training noise schedule
SHOWN = 112  # images are shown about this many pixels wide, with sharp pixels: 28x28 digits 4x, 64x64 emoji 2x
CANVAS = 280  # the sketchpad's side in canvas pixels
MNIST_FRAME = 20 / 28  # MNIST centres each digit in a 20x20 box of its 28x28 picture
STRIP_FRAMES = 11  # denoising steps shown in the strip, x_T and the result included
NO_CLASS = -1  # the Class dropdown's "any": sample with the null label, as an unconditional model does
MNIST_IDS = ("ylecun/mnist", "mnist")  # the page calls their images digits
# Folders saved with class_names use theirs; these name the classes of the IDX datasets, which have none saved.
CLASS_NAMES = {
    "ylecun/mnist": [str(d) for d in range(10)],
    "zalando-datasets/fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                       "Sneaker", "Bag", "Ankle boot"],
}


def user_error(message):
    """A message on the page, and no traceback in the server's log: the user can fix it."""
    return gr.Error(message, print_exception=False)


def whole_number(name, value, low, high):
    if value is None or value != int(value) or not low <= value <= high:
        raise user_error(f"{name} must be a whole number from {low} to {high}; got {value}")
    return int(value)


def scale_for(size: int) -> int:
    """How many screen pixels each image pixel takes: 4 for 28x28 digits, 2 for 64x64 emoji."""
    return max(1, round(SHOWN / size))


def shown(images, scale):
    """float images (N, H, W[, C]) in [0, 1] -> PIL images (L or RGB), upscaled `scale` times without blurring."""
    images = to_uint8(np.asarray(images))
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return [PIL.Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), PIL.Image.NEAREST)
            for im in images]


def sketch_to_digit(sketch, size=28) -> np.ndarray:
    """The sketchpad's picture (a white stroke on black, RGBA) -> uint8 (size, size), framed as MNIST frames its
    digits: the stroke's bounding box scaled to fit 20/28 of the side, its centre of mass at the centre."""
    picture = None if sketch is None else sketch.get("composite")
    if picture is None:
        raise user_error("The drawing is blank: draw a digit first")
    picture = np.asarray(picture, np.float32)
    gray = picture[..., :3].mean(-1) * picture[..., 3] / 255 if picture.ndim == 3 else picture  # transparent = black
    rows, cols = np.nonzero(gray > 32)
    if len(rows) == 0:
        raise user_error("The drawing is blank: draw a digit first (a white stroke on the black square)")
    box = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    fit = round(size * MNIST_FRAME) / max(box.shape)
    shape = (max(1, round(box.shape[1] * fit)), max(1, round(box.shape[0] * fit)))
    small = np.asarray(PIL.Image.fromarray(box.astype(np.uint8)).resize(shape, PIL.Image.LANCZOS), np.float32)
    ys, xs = np.indices(small.shape)
    top = int(np.clip(round(size / 2 - (ys * small).sum() / small.sum()), 0, size - small.shape[0]))
    left = int(np.clip(round(size / 2 - (xs * small).sum() / small.sum()), 0, size - small.shape[1]))
    digit = np.zeros((size, size), np.uint8)
    digit[top:top + small.shape[0], left:left + small.shape[1]] = small.clip(0, 255).astype(np.uint8)
    return digit


def sketch_to_picture(sketch, size) -> np.ndarray:
    """A colour drawing (RGBA on the white canvas) -> uint8 (size, size, 3): the whole canvas, transparency on
    white, resized as the training images were (shorter side, then the centre)."""
    picture = None if sketch is None else sketch.get("composite")
    if picture is None or np.asarray(picture)[..., :3].min() > 223:
        raise user_error("The drawing is blank: draw something first, or upload a picture")
    return picture_array(PIL.Image.fromarray(np.asarray(picture, np.uint8)), 3, "white", size).transpose(1, 2, 0)


def build_demo(pipe, class_names=None, subject="images", background="white") -> gr.Blocks:
    """The page, laid out for `pipe`'s image size, channels and classes. `class_names`: one name per class when the
    pipeline has none saved (default: the indices); `subject`: what the images are ("digits", "images");
    `background`: what the training images' transparency was composited on (uploads get the same)."""
    size, channels = pipe.image_size, pipe.num_channels
    scale, colour = scale_for(size), channels == 3
    num_classes = (pipe.unet.config.num_class_embeds or 1) - 1  # the last embedding is the null label
    class_names = pipe.class_names or class_names
    if not class_names or len(class_names) != num_classes:
        class_names = [str(c) for c in range(num_classes)]

    def run(sampler, steps, seed, class_choice, guidance, **call):
        """One pipeline call with the settings shared by all tabs; a bad value becomes a message on the page."""
        steps = whole_number("Steps", steps, 1, MAX_STEPS)
        seed = whole_number("Seed", seed, 0, 2**63 - 1)
        if num_classes > 0 and class_choice is not None and class_choice != NO_CLASS:
            call.update(class_labels=whole_number("Class", class_choice, 0, num_classes - 1),
                        guidance_scale=float(guidance))
        # A fresh scheduler per call (schedulers keep state between steps); the models are shared.
        sampling = with_scheduler(pipe, sampler)
        generator = torch.Generator(device=pipe.device).manual_seed(seed)
        try:
            return sampling(num_inference_steps=steps, generator=generator, output_type="np", **call)
        except ValueError as e:  # the pipeline's own checks of its arguments
            raise user_error(first_line(e))

    def generate(num_images, sampler, steps, seed, class_choice, guidance):
        n = whole_number("Number of images", num_images, 1, MAX_IMAGES)
        start = time.perf_counter()
        images = run(sampler, steps, seed, class_choice, guidance, batch_size=n).images
        seconds = time.perf_counter() - start
        return (shown(images, scale),
                f"{n} image{'s' * (n > 1)} in {seconds:.2f} s ({sampler}, {int(steps)} steps, {pipe.device})")

    def start_picture(sketch, upload) -> np.ndarray:
        """What img2img starts from, uint8 (size, size) or (size, size, 3): an uploaded picture if there is one,
        else the drawing (grayscale: framed as MNIST frames its digits)."""
        if upload is not None:
            picture = picture_array(upload, channels, background, size)
            return picture[0] if channels == 1 else picture.transpose(1, 2, 0)
        return sketch_to_picture(sketch, size) if colour else sketch_to_digit(sketch, size)

    def draw(sketch, upload, strength, sampler, steps, seed, class_choice, guidance):
        picture = start_picture(sketch, upload)
        if strength is None or not 0 <= strength <= 1:
            raise user_error(f"Strength must be from 0 to 1; got {strength}")
        images = run(sampler, steps, seed, class_choice, guidance, image=picture[None], strength=float(strength)).images
        return shown(picture[None] / 255, scale)[0], shown(images, scale)[0]

    def denoise(sampler, steps, seed, class_choice, guidance):
        frames = run(sampler, steps, seed, class_choice, guidance, return_intermediates=True).intermediates
        picked = np.unique(np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round().astype(int))
        strip = tile(np.stack([frames[i][0] for i in picked]), nrow=len(picked))
        caption = f"Steps {', '.join(str(i) for i in picked)} of {len(frames) - 1}: pure noise (left) to the result (right)"
        return strip.repeat(scale, axis=0).repeat(scale, axis=1), caption

    latents = f"{pipe.autoencoder.config.latent_channels}x{pipe.autoencoder.latent_size}x{pipe.autoencoder.latent_size}"
    default_sampler, default_steps = default_sampling(pipe)  # the evaluation's: SDE DPM-Solver++ 10, a student's LCM
    with gr.Blocks(title=f"Latent diffusion {subject}") as demo:
        gr.Markdown(f"## Latent diffusion {subject}\n`{pipe.config.get('_name_or_path', 'pipeline')}` on {pipe.device}: "
                    f"a diffusers UNet denoises {latents} latents, the CAB autoencoder decodes them into "
                    f"{size}x{size} {'colour' if colour else 'grayscale'} images.", elem_id="title")
        with gr.Row():  # settings shared by the three tabs
            sampler = gr.Dropdown(list(SCHEDULERS), value=default_sampler, label="Sampler", elem_id="sampler")
            steps = gr.Number(default_steps, precision=0, label="Steps", elem_id="steps")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
            class_choice = gr.Dropdown([("any", NO_CLASS)] + [(name, c) for c, name in enumerate(class_names)],
                                       value=NO_CLASS, label="Class", visible=num_classes > 0, elem_id="class")
            guidance = gr.Slider(1, 10, value=1.5, step=0.25, label="Guidance scale", visible=num_classes > 0,
                                 elem_id="guidance")
        settings = [sampler, steps, seed, class_choice, guidance]

        with gr.Tab("Generate"):
            num_images = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="Number of images", elem_id="num_images")
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            timing = gr.Markdown(elem_id="timing")
            gallery = gr.Gallery(label="Samples", columns=8, format="png", elem_id="gallery")
        with gr.Tab("Draw"):
            with gr.Row():
                # Grayscale: a white stroke on black, as MNIST's digits are; colour: any colour on white.
                ground, brush, brush_mode = ((255, ["#000000", "#e53935", "#fdd835", "#43a047", "#1e88e5", "#8e24aa",
                                                    "#6d4c41"], "defaults") if colour else (0, ["#ffffff"], "fixed"))
                sketch = gr.Sketchpad(
                    value={"background": np.full((CANVAS, CANVAS, 3), ground, np.uint8), "layers": [], "composite": None},
                    canvas_size=(CANVAS, CANVAS), fixed_canvas=True, image_mode="RGBA", layers=False, transforms=(),
                    brush=gr.Brush(colors=brush, color_mode=brush_mode, default_size=12),
                    label="Draw a digit" if subject == "digits" else "Draw", elem_id="sketch")
                with gr.Column():
                    upload = gr.Image(type="pil", sources=["upload"], image_mode=None, label="or upload a picture",
                                      elem_id="upload")
                    strength = gr.Slider(0, 1, value=0.5, step=0.05, elem_id="strength",
                                         label="Strength (0 = the autoencoder's reconstruction, 1 = a new sample)")
                    draw_button = gr.Button("Draw", variant="primary", elem_id="draw")
                    with gr.Row():
                        seen = gr.Image(label=f"What the model gets, at {size}x{size}", format="png", elem_id="seen")
                        result = gr.Image(label="Result", format="png", elem_id="result")
        with gr.Tab("Denoising"):
            denoise_button = gr.Button("Denoise one sample", variant="primary", elem_id="denoise")
            caption = gr.Markdown(elem_id="caption")
            strip = gr.Image(label="Denoising", format="png", elem_id="strip")

        generate_button.click(generate, [num_images, *settings], [gallery, timing], api_name="generate")
        draw_button.click(draw, [sketch, upload, strength, *settings], [seen, result], api_name="draw")
        denoise_button.click(denoise, settings, [strip, caption], api_name="denoise")
    # Every request waits its turn in gradio's queue; one pipeline call at a time keeps a CPU responsive.
    return demo.queue(default_concurrency_limit=1, max_size=100)


def load(where, device):
    """The pipeline at a folder or Hub id, or a one-line UserError saying what is wrong and what to do."""
    path = Path(where).expanduser()
    make_one = f"make one with `make demo` (it writes {DEMO_PIPELINE}) or pass --pipeline FOLDER_OR_HUB_ID"
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise UserError(f"--pipeline {where} is not a pipeline folder (no model_index.json); {make_one}")
    else:  # a Hub model id, if it can be one and the Hub answers
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(str(where))
        except HFValidationError:
            raise UserError(f"--pipeline {where}: no such folder; {make_one}")
        problem = hub_unavailable()
        if problem:
            raise UserError(f"--pipeline {where}: no such folder here, and the Hub cannot be asked ({problem}); {make_one}")
    pipe = load_pipeline(where, device)  # UserError if it does not load
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_port(host, port):
    """Fail now, in one line, if the server could not listen there (before loading anything)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} is in use on {host}; pass another with --port")
            raise UserError(f"cannot listen on {host} port {port}: {e.strerror or e}; check --host and --port")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default=os.environ.get("DEMO_PIPELINE", DEMO_PIPELINE),
                   help="a pipeline folder or Hub model id (default: $DEMO_PIPELINE, else %(default)s)")
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT; anywhere else the demo stays on this machine.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, mps")
    args = p.parse_args(argv)

    check_port(args.host, args.port)
    pipe = load(args.pipeline, pick_device(args.device))
    folder = Path(args.pipeline)
    dataset = trained_on(folder) if folder.is_dir() else None
    saved = saved_data_options(folder) if folder.is_dir() else {}
    digits = dataset is not None and dataset[0] in MNIST_IDS and not saved.get("train_data_dir") and pipe.num_channels == 1
    demo = build_demo(pipe, CLASS_NAMES.get(dataset[0]) if dataset else None, "digits" if digits else "images",
                      saved.get("background", "white"))
    try:
        demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False)
    except OSError as e:  # taken between the check and now
        raise UserError(f"cannot start the server on {args.host} port {args.port}: {first_line(e)}")


if __name__ == "__main__":
    run_cli(main)
