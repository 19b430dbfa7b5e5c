"""Drawing images from a pipeline to score them: the same seed, the same images, batch by batch.

Used by the evaluation (pipeline/evaluate.py) and the guidance sweep (pipeline/guidance.py), which sit above it.
"""

from pathlib import Path

import numpy as np
import torch

from pipeline.data import to_uint8
from pipeline.errors import UserError

MIN_SAMPLES = 10  # precision/recall need k+1 neighbours; below this the numbers mean nothing


def pipeline_images_uint8(images) -> np.ndarray:
    """The pipeline's float (N, H, W, C) images in [0, 1] as scored: uint8 (N, H, W) for grayscale, (N, 3, H, W)
    for colour."""
    return to_uint8(images[..., 0] if images.shape[-1] == 1 else images.transpose(0, 3, 1, 2))


def sample_images(pipe, num_samples, batch_size, num_inference_steps, seed, class_labels=None,
                  guidance_scale=1.0) -> np.ndarray:
    """uint8 (N, H, W) for grayscale pipelines, (N, 3, H, W) for colour ones: batches drawn in order from one generator seeded once on the pipeline's device.
    `class_labels` (N ints; class-conditional pipelines only) go out batch by batch, with `guidance_scale`."""
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    out = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        labels = {} if class_labels is None else dict(class_labels=class_labels[start:start + n],
                                                       guidance_scale=guidance_scale)
        images = pipe(batch_size=n, generator=generator, num_inference_steps=num_inference_steps,
                      output_type="np", **labels).images  # float32 (n, H, W, C) in [0, 1]
        out.append(pipeline_images_uint8(images))
        print(f"sampled {start + n}/{num_samples}", flush=True)
    return np.concatenate(out)


def output_folder(output_dir) -> Path:
    """`output_dir` made if need be; one line if it cannot be."""
    out = Path(output_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --output_dir {out} ({e.strerror}); pass a writable folder")
    return out
