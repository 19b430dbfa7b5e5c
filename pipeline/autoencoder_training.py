"""The autoencoder stage (train_autoencoder.py, and the first stage of the one command): train the CAB
autoencoder with Accelerate.

The run folder ends up holding the model (config.json with scaling_factor +
safetensors), metrics.json (PSNR/SSIM over the full test split), data.json (what was
read: source, test split, size, channels, class names), reconstruction.png, tsne_batch.png,
tsne_test.png, loss.png, training_config.yaml, timings.json (seconds per phase) and
TensorBoard logs. Any small-image dataset works (pipeline/image_data.py): the autoencoder
takes its channels and size from the data.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from . import checkpoints, training, visualisation
from .autoencoder import CABAutoencoder, ImageProcessor
from .config import AutoencoderTrainConfig, parse_config, save_config
from .errors import UserError
from .image_data import load_images, write_data_record
from .latent_cache import encode_decode, encode_images
from .metrics import psnr_ssim

# Besides checkpoints.RESUME_FIXED: the autoencoder's shape. A resume with it changed would fail or train another model.
RESUME_FIXED = ("autoencoder",)


def main(argv):
    train(parse_config(AutoencoderTrainConfig, argv))


def train(cfg):
    """One run of this stage with the resolved options `cfg`."""
    accelerator, clock = training.start(cfg)
    out = Path(cfg.output_dir)
    clock.lap("set-up")

    # 1. Data, read and checked before the run folder is touched: data the system cannot take is refused with
    #    nothing written. The whole split lives on the device as one tensor; no dataloader needed.
    check_resolution(cfg)
    train = load_images("train", cfg, cfg.resolution, cfg.channels, max_side=cfg.max_resolution)
    test = load_images("test", cfg, train.images.shape[-1], train.channels)
    train_images, _ = training.first_samples(accelerator, cfg, train.images)
    order = training.BatchOrder(len(train_images), cfg.train_batch_size, cfg.seed,
                                accelerator.process_index, accelerator.num_processes, accelerator.device)
    test_images = test.images[:cfg.max_eval_samples]
    test_labels = None if test.labels is None else test.labels[:cfg.max_eval_samples]
    image_size = train_images.shape[-1]
    processor = ImageProcessor(image_size, multiple=pad_multiple(cfg))  # the native size, padded (28 -> 32)
    sample_size = processor.sample_size
    train_x = processor.preprocess(train_images).to(accelerator.device)
    held_out = processor.preprocess(test_images[:256]).to(accelerator.device)
    clock.lap("data")

    checkpoints.lock_output_dir(accelerator, out)  # one run per folder, held until this process ends
    record = checkpoints.run_record(accelerator, cfg, RESUME_FIXED)
    checkpoints.check_output_dir(cfg, record)  # before anything is written: the checkpoints there are this run's
    if accelerator.is_main_process:
        save_config(cfg, out / "training_config.yaml")
        write_data_record(out, cfg, train, test, image_size, sample_size)
    set_seed(cfg.seed)  # model initialisation; data order and noise have their own seeds
    clock.lap("set-up")

    # 2. Model, optimizer, schedule.
    model = CABAutoencoder(**vars(cfg.autoencoder), in_channels=train.channels, sample_size=sample_size,
                           image_size=image_size)
    model, train_model, optimizer, lr_scheduler = training.prepare(accelerator, cfg, model, "autoencoder")

    # 3. Resume, then train to exactly max_train_steps (pipeline/training.py's loop).
    def batch_loss(k, gen):
        x = train_x[order(k)]
        if cfg.random_flip:  # each image mirrored with probability 1/2, from this step's own generator
            flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return F.mse_loss(train_model(x).float(), x)

    def val_psnr(step):
        due = step % cfg.validation_steps == 0 or step == cfg.max_train_steps
        return {"val_psnr": validate(accelerator, model, held_out, step)} if due else {}

    loss_log, stop = training.fit(accelerator, cfg, model, train_model, optimizer, lr_scheduler, record, batch_loss,
                                  clock, name="autoencoder", extra_logs=val_psnr)

    # 4. Save the model with its latent scaling, then measure and draw.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(accelerator.unwrap_model(model), cfg, out, train_images, test_images, test_labels, loss_log, clock, stop,
               test.class_names)
    training.end_training(accelerator)


def pad_multiple(cfg) -> int:
    """Image sides the models can take are multiples of this (ImageProcessor.size_multiple)."""
    return ImageProcessor.size_multiple(len(cfg.autoencoder.block_out_channels))


def check_resolution(cfg):
    """A --resolution the models cannot halve is a UserError naming the sizes that work (images resized to a
    size that works are not padded)."""
    if cfg.resolution is None:
        return
    m = pad_multiple(cfg)
    if cfg.resolution % m:
        works = ", ".join(str(m * i) for i in range(1, 9))
        raise UserError(f"--resolution {cfg.resolution} cannot be halved often enough: the autoencoder halves it "
                        f"{len(cfg.autoencoder.block_out_channels) - 1} times and the UNet once more, so use a "
                        f"multiple of {m} ({works}, ...), or leave it unset for the native size, padded")


@torch.no_grad()
def validate(accelerator, model, held_out, step):
    model.eval()
    with accelerator.autocast():
        recon = accelerator.unwrap_model(model)(held_out).float()
    processor = accelerator.unwrap_model(model).image_processor
    mse = F.mse_loss(processor.postprocess(recon), processor.postprocess(held_out))
    psnr = (10 * torch.log10(1.0 / mse)).item()
    writer = training.tensorboard_writer(accelerator)
    if writer is not None:
        pairs = torch.cat([processor.postprocess(held_out[:16]), processor.postprocess(recon[:16])]).cpu().numpy()
        grid = visualisation.tile(pairs, nrow=16)
        writer.add_image("reconstructions", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
    return psnr


def finish(model, cfg, out, train_images, test_images, test_labels, loss_log, clock, stop, class_names=None):
    model = model.float()
    # Unit-variance latents for the diffusion stage: estimated on up to 10k training digits
    # (encoded only; divided by the factor the encoder applies, 1 before this line has run).
    latents = encode_images(model, train_images[:10000], model.device, batch_size=1000) / model.config.scaling_factor
    model.register_to_config(scaling_factor=float(1.0 / latents.std()))
    checkpoints.save_or_explain(lambda: save_model(model, out), out, "the autoencoder")
    clock.lap("scaling and saving", saved=True)
    stop.model_saved(out)  # a stop signal from here on ends the run at once: the model is safe

    test_latents, recons = encode_decode(model, test_images)
    originals = test_images.astype(np.float32) / 255.0
    m = psnr_ssim(originals, recons)
    metrics = {"psnr": m["psnr"], "ssim": m["ssim"], "num_images": m["num_images"],
               "scaling_factor": model.config.scaling_factor, "max_train_steps": cfg.max_train_steps}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"test split: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} over {m['num_images']} test images; "
          f"scaling_factor {model.config.scaling_factor:.4f}")
    clock.lap("test-split scores")

    if cfg.skip_figures:
        clock.write(out / "timings.json")
        return
    visualisation.reconstruction_figure(originals, recons, out / "reconstruction.png")
    for name, n, title in (("tsne_batch.png", 64, "one batch"), ("tsne_test.png", cfg.tsne_num_points, "test split")):
        n = min(n, len(test_latents))
        if n < 3:
            continue  # t-SNE needs a few points
        visualisation.tsne_figure(test_latents[:n].numpy(), None if test_labels is None else test_labels[:n],
                                  out / name, f"t-SNE of latents, {title}", class_names=class_names)
    loss_log.plot(out / "loss.png", "autoencoder reconstruction loss (MSE)")
    clock.lap("figures")
    clock.write(out / "timings.json")


def save_model(model, out):
    """save_pretrained through a staging folder: a full disk or a killed save leaves an earlier model whole."""
    from .export import staged

    with staged(out, "autoencoder") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)

