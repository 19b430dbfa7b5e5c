"""The pictures a finished latent-diffusion run leaves in its folder.

samples.png (a grid of generated images, one column per class for a class-conditional model), denoising.png (rows going from pure noise on
the left to clean digits on the right) and grid_diffusion.gif (a grid being denoised,
frame by frame).
"""

from pathlib import Path

import torch

from . import visualisation
from .schedulers import with_scheduler


@torch.no_grad()
def pipeline_figures(pipe, cfg, out):
    out = Path(out)
    device = pipe.unet.device
    gen = torch.Generator(device).manual_seed(cfg.seed)

    # A 10x10 grid (10 rows of one column per class) with the sampler the folder saves: what users get from pipe().
    k = pipe.unet.config.num_class_embeds - 1 if cfg.conditioning == "class" else 10
    fast = with_scheduler(pipe, cfg.sampler)
    kwargs = {"class_labels": list(range(k)) * 10, "guidance_scale": cfg.eval_guidance_scale} if cfg.conditioning == "class" else {}
    grid = fast(batch_size=10 * k, generator=gen, num_inference_steps=cfg.num_inference_steps, output_type="np",
                **kwargs).images
    visualisation.save_grid(grid, out / "samples.png", nrow=k)

    # x_T -> x_0 with DDIM-50: enough frames for a smooth strip and GIF, cheap on a CPU.
    ddim = with_scheduler(pipe, "ddim")
    kwargs = {"class_labels": [i % min(k, 8) for i in range(64)], "guidance_scale": cfg.eval_guidance_scale} \
        if cfg.conditioning == "class" else {}
    res = ddim(batch_size=64, generator=torch.Generator(device).manual_seed(cfg.seed + 1), num_inference_steps=50,
               output_type="np", return_intermediates=True, **kwargs)
    visualisation.denoising_strip(res.intermediates, out / "denoising.png", num_columns=11, num_rows=8)
    visualisation.grid_gif(res.intermediates, out / "grid_diffusion.gif", nrow=8)
