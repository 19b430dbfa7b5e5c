"""The baseline a diffusers user would pick: pixel-space DDPM, on 32x32 padded MNIST by default and on any images
through `processor` (benchmarks/studies/pixel_peer.py runs it on a latent run's own data).

Model: diffusers' `UNet2DModel` shaped like the default of diffusers'
examples/unconditional_image_generation/train_unconditional.py, scaled to 32x32: three
resolutions (32, 16, 8) with channels (64, 128, 256), two ResNet layers per level and
attention at 16x16 and 8x8 (16M parameters). Noise schedule: `DDPMScheduler` with its
defaults (1000 steps, linear betas, epsilon prediction), as that script uses.
Training: that script's optimiser and EMA settings (AdamW lr 1e-4, betas (0.95, 0.999),
weight decay 1e-6, gradient clipping at 1, EMA up to 0.9999 with warmup), batch 256,
bf16 autocast on CUDA, in a plain loop that runs for a fixed number of SECONDS, not
steps, so that it can be given exactly the training time the latent pipeline used. The
learning rate warms up over 500 steps, then follows a cosine over the time budget.

    sampler, stats = train(images_uint8, seconds=600, device="cuda")
    digits = sampler(batch_size=100, num_inference_steps=20)    # uint8 (100, 28, 28)
    emoji, _ = train(uint8_n_3_32_32, seconds=600, device="cpu", processor=ImageProcessor(32), max_steps=3000)
"""

import contextlib
import inspect
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from pipeline.autoencoder import ImageProcessor
from pipeline.schedulers import make_scheduler

DIGITS = ImageProcessor(28)  # 28x28 digits in 32x32 inputs, padded with background as the latent model's are

UNET = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(64, 128, 256), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
# train_unconditional.py's defaults (batch size excepted: it uses 16 on one GPU)
HPARAMS = dict(batch_size=256, learning_rate=1e-4, warmup_steps=500, adam_betas=(0.95, 0.999), weight_decay=1e-6,
               adam_eps=1e-8, max_grad_norm=1.0, ema_max_decay=0.9999, ema_inv_gamma=1.0, ema_power=0.75,
               num_train_timesteps=1000)


def autocast(device):
    """bf16 autocast on CUDA (both models are measured under it), nothing on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class PixelDDPM:
    """Sample images from a pixel-space UNet2DModel: noise -> padded input -> cropped uint8, (N, H, W) for one
    channel (the digits) and (N, C, H, W) for colour. `processor` pads and crops as the latent model's data does."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, processor: ImageProcessor = DIGITS):
        self.unet, self.scheduler = unet.eval(), scheduler  # `scheduler` is the training one
        self.processor = processor

    @property
    def device(self):
        return self.unet.device

    def num_train_timesteps(self):
        return self.scheduler.config.num_train_timesteps

    def save_pretrained(self, folder):
        self.unet.save_pretrained(Path(folder) / "unet")
        self.scheduler.save_pretrained(Path(folder) / "scheduler")

    @classmethod
    def from_pretrained(cls, folder, processor: ImageProcessor = DIGITS):
        return cls(UNet2DModel.from_pretrained(folder, subfolder="unet"),
                   DDPMScheduler.from_pretrained(folder, subfolder="scheduler"), processor)

    def make_sampler(self, name):
        """"dpm": DPM-Solver++ as the project builds it (trailing spacing). "ddpm": the training
        scheduler unchanged (clip_sample=True, what diffusers' DDPMPipeline samples with)."""
        if name == "ddpm":
            return DDPMScheduler.from_config(self.scheduler.config)
        return make_scheduler(name, self.scheduler.config)

    @torch.no_grad()
    def __call__(self, batch_size=1, num_inference_steps=20, scheduler="dpm", generator=None) -> np.ndarray:
        sched = self.make_sampler(scheduler)
        sched.set_timesteps(num_inference_steps, device=self.device)
        accepts_generator = "generator" in inspect.signature(sched.step).parameters
        shape = (batch_size, self.unet.config.in_channels, self.processor.sample_size, self.processor.sample_size)
        x = torch.randn(shape, generator=generator, device=self.device) * sched.init_noise_sigma
        for t in sched.timesteps:  # the loop of diffusers' DDPMPipeline, for any scheduler
            eps = self.unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(eps, t, x, **({"generator": generator} if accepts_generator else {})).prev_sample
        images = self.processor.postprocess(x)  # crop the padding, map [-1, 1] to [0, 1]
        images = images[:, 0] if images.shape[1] == 1 else images
        return (images * 255).round().to(torch.uint8).cpu().numpy()


def build_unet(**overrides) -> UNet2DModel:
    return UNet2DModel(**{**UNET, **overrides})


def lr_at(peak, step, warmup_steps, budget_fraction):
    """Linear warmup by steps, then a cosine to 0 over the time budget (the step count is unknown ahead)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1 + math.cos(math.pi * min(budget_fraction, 1.0)))


def train(images_uint8, seconds, device, unet_overrides=None, compile=True, seed=0, log_every=200, processor=DIGITS,
          max_steps=None, **hparams):
    """Train for `seconds` of wall-clock time, or `max_steps` steps where given (the learning rate then follows
    the steps: a budget set by a step rate measured alone, for runs that share the cores); return (PixelDDPM with
    the EMA weights, stats dict). `images_uint8`: (N, H, W) or (N, C, H, W), H = W = `processor.image_size`."""
    h = {**HPARAMS, **hparams}
    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    data = processor.preprocess(images_uint8).to(device)  # the whole split on the device: (N, C, S, S) in [-1, 1]
    shape = dict(sample_size=processor.sample_size, in_channels=data.shape[1], out_channels=data.shape[1])
    unet = build_unet(**{**shape, **(unet_overrides or {})}).to(device).train()
    scheduler = DDPMScheduler(num_train_timesteps=h["num_train_timesteps"])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=h["learning_rate"], betas=h["adam_betas"],
                                  weight_decay=h["weight_decay"], eps=h["adam_eps"], fused=cuda)
    ema = EMAModel(unet.parameters(), decay=h["ema_max_decay"], use_ema_warmup=True, inv_gamma=h["ema_inv_gamma"],
                   power=h["ema_power"], model_cls=UNet2DModel, model_config=unet.config)
    ema.to(device)
    gen = torch.Generator(device).manual_seed(seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def train_step(net, step, budget_fraction):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(h["learning_rate"], step, h["warmup_steps"], budget_fraction)
        # Batches drawn uniformly with replacement: no epochs needed for a time budget.
        x0 = data[torch.randint(len(data), (h["batch_size"],), device=device, generator=gen)]
        noise = torch.randn(x0.shape, device=device, generator=gen)
        t = torch.randint(0, h["num_train_timesteps"], (len(x0),), device=device, generator=gen)
        with autocast(device):
            pred = net(scheduler.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), h["max_grad_norm"])
        optimizer.step()
        ema.step(unet.parameters())
        return loss.detach()

    net, compile_error = (torch.compile(unet) if compile else unet), None
    step, mark = 0, None  # mark: (step, time) once 10% of the budget is spent, for the steady-state rate
    start = time.perf_counter()
    def spent(elapsed):  # the fraction of the budget used: steps where a step budget is given, else time
        return step / max_steps if max_steps else elapsed / seconds

    while spent(elapsed := time.perf_counter() - start) < 1:
        try:
            loss = train_step(net, step, spent(elapsed))
        except Exception as e:  # a torch.compile failure must not cost the whole benchmark: go on eagerly
            if net is unet or step > 0 or isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"pixel DDPM: torch.compile failed ({compile_error}); training eagerly")
            net = unet
            continue
        step += 1
        if mark is None and spent(elapsed) >= 0.1:
            if cuda:
                torch.cuda.synchronize(device)
            mark = (step, time.perf_counter())
        if step % log_every == 0:
            print(f"pixel DDPM step {step}: loss {loss.item():.4f}, {elapsed:.0f} s, {spent(elapsed):.0%}", flush=True)
    if cuda:
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    ema.copy_to(unet.parameters())  # sample with the EMA weights, as train_unconditional.py does
    steady = None
    if mark is not None and end > mark[1] and step > mark[0]:
        steady = (step - mark[0]) * h["batch_size"] / (end - mark[1])
    stats = dict(
        train_seconds=end - start, steps=step, images_seen=step * h["batch_size"],
        images_per_s=step * h["batch_size"] / (end - start), steady_images_per_s=steady,
        final_loss=float(loss.item()) if step else None, compiled=compile and compile_error is None,
        compile_error=compile_error, parameters=sum(p.numel() for p in unet.parameters()),
        peak_gpu_memory_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
        hyperparameters={**h, "unet": {**UNET, **shape, **(unet_overrides or {})}, "train_images": len(data),
                         "max_steps": max_steps, "precision": "bf16 autocast" if cuda else "fp32",
                         "lr_schedule": f"warmup, cosine over {'steps' if max_steps else 'time'}"},
    )
    return PixelDDPM(unet.eval(), scheduler, processor), stats
