"""Sampling measurements, the same for both models: quality per sampler, speed, memory.

A "sampler" here is any callable `sampler(batch_size, num_inference_steps, scheduler,
generator) -> uint8 (N, H, W), or (N, 3, H, W) for colour,` with a `device` attribute: `LatentSampler` below wraps the
project's LatentDDPMPipeline, benchmarks/pixel_ddpm.PixelDDPM is the baseline. Both run
under the same precision (bf16 autocast on CUDA, fp32 on CPU), eagerly (no torch.compile,
except where sampling_cost.py --compile asks for it), and every timing waits for the GPU and
includes moving the digits to the CPU.
"""

import sys
import time

import numpy as np
import torch

from benchmarks.pixel_ddpm import autocast

# Each score keeps the real-data floor at its own sample size (fewer samples bias FID upwards).
QUALITY_KEYS = ("fid", "precision", "recall", "kl_to_uniform", "mean_confidence", "num_samples",
                "fid_floor", "precision_floor", "recall_floor", "floor_num_samples")


def split_eta(spec: str):
    """"ddim:eta=1,timestep_spacing=leading" -> ("ddim:timestep_spacing=leading", 1.0): DDIM's eta is an argument
    of each sampling call, not of the scheduler, so a benchmark spec carries it beside the scheduler's options."""
    name, _, rest = spec.partition(":")
    options = [o for o in rest.split(",") if o]
    etas = [float(o.split("=", 1)[1]) for o in options if o.replace(" ", "").startswith("eta=")]
    kept = [o for o in options if not o.replace(" ", "").startswith("eta=")]
    return name + (":" + ",".join(kept) if kept else ""), (etas[-1] if etas else 0.0)


class LatentSampler:
    """The project's pipeline, loaded from its folder as users load it, with a scheduler by name."""

    def __init__(self, folder, device, compile_mode=None, channels_last=False):
        from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

        self.pipe = LatentDDPMPipeline.from_pretrained(str(folder)).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        if channels_last:  # NHWC weights: cuDNN/Triton convolutions may run faster (measure, do not assume)
            self.pipe.unet.to(memory_format=torch.channels_last)
            self.pipe.autoencoder.to(memory_format=torch.channels_last)
        if compile_mode:  # the UNet runs once per step, the decoder once per call ("max-autotune" adds CUDA graphs)
            mode = None if compile_mode == "default" else compile_mode
            self.pipe.unet = torch.compile(self.pipe.unet, mode=mode)
            self.pipe.autoencoder.decoder = torch.compile(self.pipe.autoencoder.decoder, mode=mode)
        self.device = self.pipe.device
        self._copies = {}

    def parameters(self):
        return {"unet": sum(p.numel() for p in self.pipe.unet.parameters()),
                "autoencoder": sum(p.numel() for p in self.pipe.autoencoder.parameters())}

    def num_train_timesteps(self):
        return self.pipe.scheduler.config.num_train_timesteps

    def __call__(self, batch_size=1, num_inference_steps=20, scheduler="dpm", generator=None):
        from pipeline.sampling import pipeline_images_uint8
        from pipeline.schedulers import with_scheduler  # "dpm": DPM-Solver++, trailing spacing; "ddpm": no clipping

        spec, eta = split_eta(scheduler)
        if spec not in self._copies:
            self._copies[spec] = with_scheduler(self.pipe, spec)
        images = self._copies[spec](batch_size=batch_size, generator=generator, output_type="np", eta=eta,
                                    num_inference_steps=num_inference_steps).images  # float (N, H, W, C)
        return pipeline_images_uint8(images)


def check_schedulers(sampler, specs, steps):
    """Exit with a one-line error, before any sampling, if a scheduler spec cannot run at one of these step counts."""
    from pipeline.schedulers import check_steps

    for spec in specs:
        for n in steps:
            try:
                check_steps(split_eta(spec)[0], sampler.pipe.scheduler.config, n)
            except ValueError as e:
                sys.exit(f"error: {e}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(sampler, batch_size, steps, scheduler="dpm", seed=0):
    """(digits, seconds) of one sampler call."""
    generator = torch.Generator(sampler.device).manual_seed(seed)
    _sync(sampler.device)
    start = time.perf_counter()
    with autocast(sampler.device):
        digits = sampler(batch_size=batch_size, num_inference_steps=steps, scheduler=scheduler, generator=generator)
    _sync(sampler.device)
    return digits, time.perf_counter() - start


def largest_batch(sampler, start_batch, steps):
    """Speed at the largest batch that fits, trying `start_batch` and halving on out-of-memory."""
    cuda = sampler.device.type == "cuda"
    batch = start_batch
    while batch >= 1:
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(sampler.device)
            timed_call(sampler, batch, 2)  # warm-up at this size (kernels, allocator)
            _, seconds = timed_call(sampler, batch, steps)
            return {"batch_size": batch, "num_inference_steps": steps, "scheduler": "dpm", "seconds": seconds,
                    "digits_per_s": batch / seconds,
                    "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(sampler.device) if cuda else None}
        except torch.cuda.OutOfMemoryError:
            print(f"batch {batch} does not fit; halving", flush=True)
            batch //= 2
    raise RuntimeError("not even one digit fits in memory")


def sample_many(sampler, num_samples, batch_size, steps, scheduler, seed=0):
    """(uint8 digits, seconds): `num_samples` digits in batches, from one generator seeded once."""
    generator = torch.Generator(sampler.device).manual_seed(seed)
    out = []
    _sync(sampler.device)
    start = time.perf_counter()
    with autocast(sampler.device):
        for first in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - first)
            out.append(sampler(batch_size=n, num_inference_steps=steps, scheduler=scheduler, generator=generator))
    _sync(sampler.device)
    return np.concatenate(out), time.perf_counter() - start


def quality(sampler, runs, batch_size, classifier, reference, seed=0):
    """Score each (scheduler, steps, num_samples) run; return ({"dpm_20": scores, ...}, {run: first 100 digits})."""
    from pipeline.metrics import score_images

    results, grids = {}, {}
    for scheduler, steps, num_samples in runs:
        key = f"{scheduler}_{steps}"
        digits, seconds = sample_many(sampler, num_samples, min(batch_size, num_samples), steps, scheduler, seed)
        scores = score_images(digits, classifier, reference)
        results[key] = {k: scores[k] for k in QUALITY_KEYS}
        results[key].update(scheduler=scheduler, num_inference_steps=steps, batch_size=min(batch_size, num_samples),
                            sampling_seconds=seconds, digits_per_s=num_samples / seconds,
                            class_histogram=scores["class_histogram"])
        grids[key] = digits[:100]
        print(f"{key}: FID {scores['fid']:.3g}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f} "
              f"({num_samples} digits in {seconds:.1f} s)", flush=True)
    return results, grids


def batch_sweep(sampler, batch_sizes, steps, max_batch, scheduler="dpm"):
    """Seconds per call and digits/s at each batch size (up to the largest that fits), `steps` steps of `scheduler`."""
    rows = []
    for batch in batch_sizes:
        if batch > max_batch:
            rows.append({"batch_size": batch, "seconds": None, "digits_per_s": None,
                         "note": "above the largest batch that fits"})
            continue
        timed_call(sampler, batch, 2, scheduler)  # warm-up
        _, seconds = timed_call(sampler, batch, steps, scheduler)
        rows.append({"batch_size": batch, "num_inference_steps": steps, "scheduler": scheduler, "seconds": seconds,
                     "digits_per_s": batch / seconds})
    return rows


def measure(sampler, profile, classifier, reference, seed=0):
    """Everything the benchmark reports about one model's sampling; returns (results, sample grid digits)."""
    speed = largest_batch(sampler, profile["max_batch"], profile["throughput_steps"])
    runs = [("dpm", s, profile["num_samples"]) for s in profile["dpm_steps"]]
    runs.append(("ddpm", sampler.num_train_timesteps(), profile["ddpm_samples"]))
    scores, grids = quality(sampler, runs, speed["batch_size"], classifier, reference, seed)
    return {"throughput": speed, "quality": scores}, grids[f"dpm_{profile['throughput_steps']}"]
