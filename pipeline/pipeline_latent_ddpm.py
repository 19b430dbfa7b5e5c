"""LatentDDPMPipeline: sample small images (MNIST digits, colour emoji, ...) by denoising latents, then decoding them.

Components: `unet` (diffusers UNet2DModel on scaled latents), `autoencoder` (CABAutoencoder:
`encode`/`decode`, `image_processor` (its padding and cropping), `config.scaling_factor`, `config.image_size`,
`config.in_channels`) and any diffusers `scheduler`. Image size, channels and padding come from the autoencoder;
`class_names` (saved in model_index.json) lets `class_labels` be given by name.
Besides plain sampling it does SDEdit-style img2img (`image` + `strength`) and, for a UNet built
with `num_class_embeds = num_classes + 1`, class-conditional sampling with classifier-free guidance.

This file is self-contained (torch, numpy, PIL, diffusers only) because it is shipped at the root
of every saved pipeline folder, where `DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`
imports it without this repo.
"""

import contextlib
import importlib
import inspect
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, LCMScheduler, ModelMixin, UNet2DModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

        >>> pipe = DiffusionPipeline.from_pretrained("path/to/pipeline_folder", trust_remote_code=True)
        >>> digits = pipe(batch_size=16, generator=torch.manual_seed(0)).images  # the saved scheduler and steps

        >>> # img2img: noise the digits halfway, then denoise them again
        >>> redrawn = pipe(image=digits, strength=0.5).images

        >>> # a class-conditional pipeline: three chosen digits with classifier-free guidance
        >>> threes = pipe(class_labels=[3, 3, 3], guidance_scale=1.5).images

        >>> # another sampler: the deterministic DPM-Solver++, from the saved config (the training noise schedule)
        >>> pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        ...     pipe.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing="trailing")
        >>> digits = pipe(batch_size=16, num_inference_steps=20).images
        ```
"""


@dataclass
class LatentDDPMPipelineOutput(ImagePipelineOutput):
    """`images` as in ImagePipelineOutput. `intermediates` (only with `return_intermediates=True`): the decoded
    images before the first and after every denoising step, x_T first, each a float numpy in [0, 1]: (N, H, W) for
    grayscale pipelines, (N, H, W, 3) for colour ones."""

    intermediates: list[np.ndarray] | None = None


def _shapes(channels, size) -> str:
    if channels == 1:
        return f"(N, {size}, {size}), (N, 1, {size}, {size}) or (N, {size}, {size}, 1)"
    return f"(N, {channels}, {size}, {size}) or (N, {size}, {size}, {channels})"


def _images_to_unit_tensor(image, channels=1, size=28) -> torch.Tensor:
    """Accepted `image` inputs -> float (N, channels, size, size) in [0, 1]. Raises ValueError for anything else,
    naming both channel counts when the images are colour and the pipeline grayscale or the reverse."""
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)):
        if not image or not all(isinstance(im, PIL.Image.Image) for im in image):
            raise ValueError("`image` given as a list must be a non-empty list of PIL images.")
        gray = [im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in image]
        if any(gray) and not all(gray):
            raise ValueError("`image` mixes grayscale and colour PIL images; pass one kind.")
        given = 1 if gray[0] else 3
        if given != channels:
            raise ValueError(f"`image` holds {given}-channel images but this pipeline makes {channels}-channel images.")
        image = np.stack([np.asarray(im.convert("L" if channels == 1 else "RGB")) for im in image])
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"`image` must be a numpy array, a torch tensor or a list of PIL images, not {type(image)}.")

    shape = tuple(image.shape)
    if image.ndim == 3:  # (N, H, W)
        image = image.unsqueeze(1)
    elif image.ndim == 4 and image.shape[1] not in (1, 3) and image.shape[-1] in (1, 3):  # (N, H, W, C)
        image = image.permute(0, 3, 1, 2)
    if image.ndim == 4 and image.shape[1] in (1, 3) and image.shape[1] != channels and image.shape[0] > 0:
        raise ValueError(f"`image` holds {image.shape[1]}-channel images (shape {shape}) but this pipeline makes "
                         f"{channels}-channel images.")
    if image.ndim != 4 or image.shape[0] == 0 or tuple(image.shape[1:]) != (channels, size, size):
        raise ValueError(f"`image` must have shape {_shapes(channels, size)} with N >= 1; got {shape}.")

    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(f"`image` must be uint8 (0-255) or float in [0, 1]; got dtype {image.dtype}.")
    image = image.float()
    if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(
            f"float `image` values must lie in [0, 1]; got [{image.min().item():.3g}, {image.max().item():.3g}]"
            " (pass uint8 for 0-255 data)."
        )
    return image


def repeats_timesteps(scheduler) -> bool:
    """Whether a one-step-per-timestep scheduler's current timesteps repeat one: Karras sigmas on a cosine
    schedule do (its huge sigma_max crowds the steps at t=999), and the scheduler then fails mid-loop.
    Schedulers of order 2 (Heun-like) repeat timesteps by design."""
    t = scheduler.timesteps.tolist()
    return getattr(scheduler, "order", 1) == 1 and len(set(t)) < len(t)


def _load_component(model_cls, folder, subfolder, torch_dtype=None):
    """Load one model, turning a missing or damaged weights file into an error that names it."""
    path = os.path.join(folder, subfolder)
    pickled = [f for f in ("diffusion_pytorch_model.bin", "pytorch_model.bin") if os.path.isfile(os.path.join(path, f))]
    if pickled and not os.path.isfile(os.path.join(path, "diffusion_pytorch_model.safetensors")):
        raise ValueError(f"{os.path.join(path, pickled[0])} is a pickle, and pickles can run code when loaded: this "
                         "pipeline loads safetensors only; re-save the model with save_pretrained(safe_serialization=True)")
    try:  # safetensors only, never a pickle
        return model_cls.from_pretrained(folder, subfolder=subfolder, torch_dtype=torch_dtype, use_safetensors=True)
    except Exception as e:  # safetensors/diffusers errors do not always say which file
        raise ValueError(f"cannot load {path} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         "the folder is incomplete or damaged, re-save or re-download it") from e


def _kind(value) -> str:
    """What was passed, in words, for an error message: "a list of str", "a tensor of torch.float32"."""
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {', '.join(sorted({type(v).__name__ for v in value})) or 'nothing'}"
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__


def _label_count(class_labels):
    """How many labels a list / array / tensor of them holds; None for no labels or a single int."""
    if class_labels is None:
        return None
    ndim = class_labels.ndim if torch.is_tensor(class_labels) else np.ndim(class_labels)
    return len(class_labels) if ndim == 1 else None


class LatentDDPMPipeline(DiffusionPipeline):
    r"""Latent diffusion for small grayscale or colour images: UNet2DModel denoiser + CABAutoencoder + a diffusers
    scheduler. `class_names` (optional): the name of each class of a class-conditional UNet, index order."""

    model_cpu_offload_seq = "unet->autoencoder"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, autoencoder: ModelMixin, scheduler: SchedulerMixin,
                 consistency_distilled: bool = False, default_num_inference_steps: int = 50,
                 class_names: list[str] | None = None, default_timesteps: list[list[int]] | None = None):
        super().__init__()
        self.register_modules(unet=unet, autoencoder=autoencoder, scheduler=scheduler)
        # A consistency-distilled UNet (distill_latent_ddpm.py) predicts the end of the trajectory: LCMScheduler only.
        # `pipe()` without num_inference_steps takes the folder's saved default (a student: its few steps).
        self.register_to_config(consistency_distilled=consistency_distilled,
                                default_num_inference_steps=default_num_inference_steps)
        if class_names is not None:  # folders saved without names keep a model_index.json without the key
            self.register_to_config(class_names=list(class_names))
        # A student's measured timesteps for LCMScheduler, one list per step count: `pipe(num_inference_steps=2)`
        # runs [999, 699] rather than LCM's evenly spaced [999, 499] when the folder lists it (docs/fast_sampling.md).
        if default_timesteps is not None:
            self.register_to_config(default_timesteps=[[int(t) for t in ts] for ts in default_timesteps])

    @property
    def class_names(self) -> list[str] | None:
        return self.config.get("class_names")

    @property
    def image_size(self) -> int:
        """The side of the images the pipeline returns (the autoencoder's input without its padding)."""
        return self.autoencoder.config.image_size  # 28 (digits) in folders saved before it was recorded

    @property
    def num_channels(self) -> int:
        return self.autoencoder.config.in_channels

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Inside the project, `LatentDDPMPipeline.from_pretrained(folder_or_repo)` builds this class from the
        saved weights and runs none of the Python files shipped in the folder. (diffusers itself would import
        the shipped copies, which needs `trust_remote_code=True`; passing that takes diffusers' own path.)"""
        if kwargs.pop("trust_remote_code", False):
            kwargs.setdefault("use_safetensors", True)  # never unpickle weights
            return super().from_pretrained(pretrained_model_name_or_path, trust_remote_code=True, **kwargs)
        if not __package__:
            raise ValueError("outside the project, load with DiffusionPipeline.from_pretrained(path, trust_remote_code=True)")
        autoencoder_cls = importlib.import_module(".autoencoder", __package__).CABAutoencoder
        folder = str(pretrained_model_name_or_path)
        if not os.path.isdir(folder):  # a Hub repo id: fetch configs and weights only, never code
            from huggingface_hub import snapshot_download

            folder = snapshot_download(folder, allow_patterns=["*.json", "*.safetensors"], token=kwargs.get("token"))
        for name in ("model_index.json", "unet/config.json", "autoencoder/config.json", "scheduler/scheduler_config.json"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise ValueError(f"{os.path.join(folder, name)} is missing: this is not a complete pipeline folder")
        with open(os.path.join(folder, "scheduler", "scheduler_config.json")) as f:
            scheduler_cls = getattr(importlib.import_module("diffusers"), json.load(f)["_class_name"])
        torch_dtype = kwargs.get("torch_dtype")
        with open(os.path.join(folder, "model_index.json")) as f:
            index = json.load(f)
        saved = {k: index[k] for k in ("consistency_distilled", "default_num_inference_steps", "default_timesteps")
                 if k in index}
        class_names = index.get("class_names")
        pipe = cls(
            class_names=class_names,
            unet=_load_component(UNet2DModel, folder, "unet", torch_dtype),
            autoencoder=_load_component(autoencoder_cls, folder, "autoencoder", torch_dtype),
            scheduler=scheduler_cls.from_pretrained(folder, subfolder="scheduler"),
            **saved,
        )
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipe

    def check_inputs(self, batch_size, num_inference_steps, strength, image, output_type, class_labels,
                     callback_on_step_end_tensor_inputs, timesteps=None, guidance_scale=1.0, generator=None):
        """Refuse bad arguments with a ValueError that says what is wrong, before anything runs. `batch_size` is the
        batch the call makes (the images or the labels may have set it)."""
        if timesteps is not None:
            self._check_timesteps(timesteps)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` is a list of {len(generator)} generators, but the batch has {batch_size} "
                             "images; pass one generator per image, or a single generator.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating, np.integer)) \
                or not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0 (1 = no guidance); got {guidance_scale!r}.")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive int; got {num_inference_steps!r}.")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"`strength` must be in [0, 1]; got {strength}.")
        if strength < 1.0 and image is None:
            raise ValueError("`strength` < 1 only makes sense with an `image` to start from (img2img).")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}; got {output_type!r}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}; got {unknown}.")
        if class_labels is None:
            return
        num_class_embeds = self.unet.config.num_class_embeds
        if num_class_embeds is None:
            raise ValueError("`class_labels` were given, but this UNet is unconditional (num_class_embeds is None).")
        labels = self._label_indices(class_labels)
        if labels.ndim > 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"`class_labels` are class indices: an int from 0 to {num_class_embeds - 2}, or a list of "
                             f"such ints, one per image; got {class_labels!r} ({_kind(class_labels)}).")
        if labels.min() < 0 or labels.max() >= num_class_embeds - 1:  # the last embedding is the null label
            raise ValueError(f"`class_labels` must lie in [0, {num_class_embeds - 2}]; got {labels.tolist()}.")

    def _check_timesteps(self, timesteps):
        """Custom timesteps (diffusers' `timesteps=` argument): ints, strictly descending, inside the noise
        schedule, for a scheduler whose set_timesteps takes them."""
        name = type(self.scheduler).__name__
        if "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(f"{name} does not take custom `timesteps`; pass `num_inference_steps` instead.")
        num_train = self.scheduler.config.num_train_timesteps
        ok = isinstance(timesteps, (list, tuple)) and len(timesteps) > 0 and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in timesteps)
        if not ok or any(not 0 <= t < num_train for t in timesteps) or any(
                a <= b for a, b in zip(timesteps, timesteps[1:])):
            raise ValueError(f"`timesteps` must be a non-empty list of ints, strictly descending, from "
                             f"{num_train - 1} to 0 (e.g. [999, 699]); got {timesteps!r}.")

    def _label_indices(self, class_labels) -> np.ndarray:
        """`class_labels` as an array, class names (str) turned into their indices."""
        if torch.is_tensor(class_labels):
            return np.asarray(class_labels.cpu())
        named = [class_labels] if isinstance(class_labels, str) else class_labels
        names = self.class_names
        if names is not None and isinstance(named, (list, tuple)) and any(isinstance(v, str) for v in named):
            unknown = [v for v in named if isinstance(v, str) and v not in names]
            if unknown:
                raise ValueError(f"unknown class name(s) {unknown}; this pipeline's classes: {', '.join(names)}.")
            indices = [names.index(v) if isinstance(v, str) else v for v in named]
            return np.asarray(indices[0] if isinstance(class_labels, str) else indices)
        return np.asarray(class_labels)

    def _prepare_class_labels(self, class_labels, batch_size, device):
        """Labels for the UNet, or None for an unconditional UNet. No labels -> the null (unconditional) label.
        `class_labels` passed check_inputs: ints in range."""
        num_class_embeds = self.unet.config.num_class_embeds
        if num_class_embeds is None:
            return None
        null_label = num_class_embeds - 1  # trained as the "no class" label for classifier-free guidance
        if class_labels is None:
            return torch.full((batch_size,), null_label, device=device, dtype=torch.long)
        labels = self._label_indices(class_labels)
        if labels.ndim == 0:
            labels = np.full(batch_size, labels)
        if len(labels) != batch_size:
            raise ValueError(f"`class_labels` must be an int or {batch_size} ints (one per image); "
                             f"got {len(labels)}: {labels.tolist()}.")
        return torch.as_tensor(labels, device=device, dtype=torch.long)

    def prepare_latents(self, batch_size, dtype, device, generator, image=None, timestep=None):
        """The starting latents: scaled noise, or (img2img) the encoded `image` noised to `timestep`
        (left as encoded when `timestep` is None: strength 0 returns the autoencoder's reconstruction)."""
        size = self.autoencoder.latent_size
        shape = (batch_size, self.unet.config.in_channels, size, size)
        if image is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            return latents * self.scheduler.init_noise_sigma
        x = self.autoencoder.image_processor.preprocess(image)  # padded as the training data was
        x = x.to(device=device, dtype=self.autoencoder.dtype)
        latents = (self.autoencoder.encode(x).latents * self.autoencoder.config.scaling_factor).to(dtype)
        if timestep is None:
            return latents
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        return self.scheduler.add_noise(latents, noise, timestep.repeat(batch_size))

    def get_timesteps(self, num_inference_steps, strength):
        """Like diffusers' img2img pipelines: keep the last `strength` fraction of the schedule."""
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)
        return timesteps

    def prepare_extra_step_kwargs(self, generator, eta):
        """Not all schedulers take `eta` (DDIM only) or `generator` (UniPC does not); pass only what `step` accepts."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> float (N, C, H, W) in [0, 1]: unscale, decode, clamp, rescale, crop the padding."""
        z = (latents / self.autoencoder.config.scaling_factor).to(self.autoencoder.dtype)
        if z.device.type == "cpu":
            # channels_last (NHWC) spares oneDNN's convolutions a layout reorder around each one: on the CPU the
            # demo's decode ran 1.44x faster, its images within 3e-6 of the plain decode's (benchmarks/studies/decode.py)
            z = z.contiguous(memory_format=torch.channels_last)
        return self.autoencoder.image_processor.postprocess(self.autoencoder.decode(z).sample.contiguous())

    def _frame(self, latents) -> np.ndarray:
        """One intermediate: decoded, on the CPU, (N, H, W) for grayscale or (N, H, W, C) for colour."""
        x = self.decode_latents(latents).float().cpu()
        return (x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)).numpy()

    def _student_timesteps(self, num_inference_steps, timesteps):
        """All a consistency student needs, in one place: the timesteps to sample at (those given, else the
        folder's measured `default_timesteps` for this step count with LCMScheduler, else None: the scheduler's
        own), the grid's limit on steps, and a warning when another scheduler would read its clean-latent
        predictions as denoising steps."""
        lcm = isinstance(self.scheduler, LCMScheduler)
        grid = self.scheduler.config.get("original_inference_steps") if lcm else None
        if grid is not None and num_inference_steps > grid:
            raise ValueError(f"`num_inference_steps` ({num_inference_steps}) is more than the {grid} steps of this "
                             f"consistency model's grid (LCMScheduler's original_inference_steps); use 1 to {grid}.")
        if self.config.get("consistency_distilled") and not lcm:
            warnings.warn(f"this UNet is consistency-distilled: each call predicts a clean latent, which "
                          f"{type(self.scheduler).__name__} reads as a denoising step, so its images will be poor; "
                          "sample with LCMScheduler.from_config(pipe.scheduler.config)", stacklevel=3)
        if timesteps is not None:
            return list(timesteps)
        if not lcm:
            return None
        return next((list(ts) for ts in self.config.get("default_timesteps") or [] if len(ts) == num_inference_steps),
                    None)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        image=None,
        strength: float = 1.0,
        class_labels=None,
        guidance_scale: float = 1.0,
        return_intermediates: bool = False,
        timesteps: list[int] | None = None,
    ) -> LatentDDPMPipelineOutput | tuple:
        r"""Generate images from noise, or from given images (img2img).

        Args:
            batch_size (`int`, defaults to 1):
                How many digits to make from noise. With `image`, the images set the batch (pass 1 or their number);
                with a list of `class_labels` alone, the labels do.
            generator (`torch.Generator` or a list of them, *optional*):
                The noise source; the same seed gives the same digits.
            num_inference_steps (`int`, *optional*):
                Denoising steps; by default the folder's `default_num_inference_steps`: 10 with the SDE DPM-Solver++
                a training run saves, 50 in folders saved with DDPM, a distilled student's few. DPM-Solver++ and UniPC
                need 10 to 20, DDPM hundreds, LCMScheduler 1 to 4.
            eta (`float`, defaults to 0.0):
                DDIM's eta (0: deterministic); schedulers whose `step` takes no `eta` ignore it.
            output_type (`str`, defaults to `"pil"`):
                `"pil"` (list of grayscale or RGB images, H x W), `"np"` (float32 (N, H, W, C) in [0, 1]) or `"pt"`
                (float (N, C, H, W) in [0, 1]). H, W and C come from the autoencoder's config (28, 28, 1 for digits).
            return_dict (`bool`, defaults to `True`):
                Return a `LatentDDPMPipelineOutput` rather than a tuple `(images,)` / `(images, intermediates)`.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called as `callback_on_step_end(pipe, i, t, callback_kwargs)` after each step; may return new `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`):
                The tensors passed in `callback_kwargs`.
            image (*optional*):
                Images to start from, of the pipeline's size and channels: (N, H, W) (grayscale), (N, C, H, W) or
                (N, H, W, C), float in [0, 1] or uint8, numpy or torch, or a list of PIL images. They are encoded,
                noised to the level `strength` sets and denoised.
            strength (`float`, defaults to 1.0):
                With `image`, the fraction of the schedule to run: 1 starts from almost pure noise, 0 runs no step
                and returns the autoencoder's reconstruction.
            class_labels (`int`, `str`, list of them, array or tensor, *optional*):
                Classes for a class-conditional UNet: indices (digits 0-9 for MNIST) or, when the pipeline has
                `class_names`, names; one for the whole batch or one per image.
            guidance_scale (`float`, defaults to 1.0):
                Classifier-free guidance for class-conditional UNets; 1 is a single conditional pass, no guidance.
            return_intermediates (`bool`, defaults to `False`):
                Also return the decoded images before the first and after every step.
            timesteps (`list[int]`, *optional*):
                Custom timesteps, descending, for schedulers whose `set_timesteps` takes them (LCMScheduler, DDPM,
                DPM-Solver++, Euler; not DDIM or UniPC); their number is the step count. By default a consistency student runs its folder's
                `default_timesteps` for that step count, if it lists one, and LCMScheduler's own otherwise.

        Examples:

        Returns:
            `LatentDDPMPipelineOutput` (`images`, `intermediates`), or a tuple if `return_dict` is `False`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Check the inputs; the images, if any, set the batch, else a list of labels alone does
        if timesteps is not None and num_inference_steps is None and isinstance(timesteps, (list, tuple)):
            num_inference_steps = len(timesteps)
        if num_inference_steps is None:
            num_inference_steps = self.config.get("default_num_inference_steps", 50)
        if image is not None:
            image = _images_to_unit_tensor(image, self.num_channels, self.image_size)
            if batch_size not in (1, len(image)):
                raise ValueError(f"`batch_size` ({batch_size}) must be 1 or match the number of images ({len(image)}).")
            batch_size = len(image)
        n_labels = _label_count(class_labels)
        if image is None and n_labels and batch_size == 1:  # like DiTPipeline: one image per label
            batch_size = n_labels  # (with `image`, the images set the batch and the labels must match it)
        self.check_inputs(batch_size, num_inference_steps, strength, image, output_type, class_labels,
                          callback_on_step_end_tensor_inputs, timesteps, guidance_scale, generator)
        if timesteps is not None and len(timesteps) != num_inference_steps:
            raise ValueError(f"`num_inference_steps` ({num_inference_steps}) and the {len(timesteps)} `timesteps` "
                             "disagree; pass one of them.")
        custom = self._student_timesteps(num_inference_steps, timesteps)

        device, dtype = self._execution_device, self.unet.dtype
        labels = self._prepare_class_labels(class_labels, batch_size, device)
        # Guidance needs a real label to move towards; without one the null label is a single unconditional pass.
        do_cfg = labels is not None and class_labels is not None and guidance_scale != 1.0
        if do_cfg:
            labels = torch.cat([torch.full_like(labels, self.unet.config.num_class_embeds - 1), labels])

        # 1. Set the timesteps (img2img keeps only the last `strength` fraction)
        if custom is not None:
            self.scheduler.set_timesteps(timesteps=[int(t) for t in custom], device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if repeats_timesteps(self.scheduler):
            raise ValueError(f"{type(self.scheduler).__name__} repeats timesteps at {num_inference_steps} steps "
                             f"({timesteps.tolist()}): its sigma options do not suit this noise schedule; "
                             "drop them (e.g. use_karras_sigmas) or use another scheduler.")
        if image is not None:
            timesteps = self.get_timesteps(num_inference_steps, strength)

        # 2. Prepare the starting latents: pure noise, or the encoded digits noised to the first kept timestep
        start = timesteps[:1] if image is not None and len(timesteps) > 0 else None  # none: strength too small
        latents = self.prepare_latents(batch_size, dtype, device, generator, image, start)

        # 3. Denoising loop (no progress bar when there is nothing to denoise: strength 0)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        intermediates = [self._frame(latents)] if return_intermediates else None
        bar = self.progress_bar(total=len(timesteps)) if len(timesteps) > 0 else contextlib.nullcontext()
        with bar as progress_bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                model_output = self.unet(model_input, t, class_labels=labels).sample
                if do_cfg:
                    uncond, cond = model_output.chunk(2)
                    model_output = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:  # a loop: a comprehension has its own locals()
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                if return_intermediates:
                    intermediates.append(self._frame(latents))
                progress_bar.update()

        # 4. Decode: unscale, decode, clamp to [0, 1], crop the padding (32x32 back to 28x28 for digits)
        images = self.decode_latents(latents)

        # 5. Convert to the requested output type
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images, intermediates) if return_intermediates else (images,)
        return LatentDDPMPipelineOutput(images=images, intermediates=intermediates)
