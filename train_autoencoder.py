"""Train the CAB autoencoder with Accelerate.

    python train_autoencoder.py --config configs/autoencoder_quick.yaml
    accelerate launch train_autoencoder.py --config configs/autoencoder.yaml --train_batch_size 512

The run folder ends up holding the model (config.json with scaling_factor +
safetensors), metrics.json (PSNR/SSIM over the full test split), reconstruction.png,
tsne_batch.png, tsne_test.png, loss.png, training_config.yaml, timings.json (seconds
per phase) and TensorBoard logs.
"""

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from pipeline import training, visualisation
from pipeline.autoencoder import CABAutoencoder
from pipeline.config import AutoencoderTrainConfig, parse_config, save_config
from pipeline.data import load_digits, to_digits, to_model_input
from pipeline.errors import run_cli
from pipeline.latent_cache import encode_decode, encode_images
from pipeline.metrics import psnr_ssim
from pipeline.progress import progress

logger = logging.getLogger("train_autoencoder")
# Besides training.RESUME_FIXED: the autoencoder's shape. A resume with it changed would fail or train another model.
RESUME_FIXED = ("autoencoder",)


def main(argv):
    clock = training.Stopwatch()
    cfg = parse_config(AutoencoderTrainConfig, argv)
    accelerator = training.make_accelerator(cfg)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    training.announce(accelerator, cfg)
    out = Path(cfg.output_dir)
    training.lock_output_dir(accelerator, out)  # one run per folder, held until this process ends
    record = training.run_record(accelerator, cfg, RESUME_FIXED)
    training.check_output_dir(cfg, record)  # before anything is written: the checkpoints there are this run's
    if accelerator.is_main_process:
        save_config(cfg, out / "training_config.yaml")
    set_seed(cfg.seed)  # model initialisation; data order and noise have their own seeds
    clock.lap("set-up")

    # 1. Data: the whole split lives on the device as one tensor; no dataloader needed.
    train_images, _ = load_digits("train", cfg.dataset, cfg.data_dir)
    test_images, test_labels = load_digits("test", cfg.dataset, cfg.data_dir)
    train_images, _ = training.first_samples(accelerator, cfg, train_images)
    test_images, test_labels = test_images[:cfg.max_eval_samples], test_labels[:cfg.max_eval_samples]
    train_x = to_model_input(train_images).to(accelerator.device)
    held_out = to_model_input(test_images[:256]).to(accelerator.device)
    clock.lap("data")

    # 2. Model, optimizer, schedule.
    model = CABAutoencoder(**vars(cfg.autoencoder))
    model, train_model, optimizer, lr_scheduler = training.prepare(accelerator, cfg, model, "autoencoder")

    # 3. Resume, then train to exactly max_train_steps.
    step = training.resume(accelerator, cfg, optimizer, lr_scheduler)
    order = training.BatchOrder(len(train_x), cfg.train_batch_size, cfg.seed,
                                accelerator.process_index, accelerator.num_processes, train_x.device)
    loss_log = training.LossLog(out / "loss.csv", step, accelerator.is_main_process)
    stop = training.StopRequest()
    meter = training.LossMeter(accelerator, cfg, step)
    clock.lap("set-up")
    bar = progress(cfg.max_train_steps, step, desc="autoencoder", disable=not accelerator.is_main_process)
    while step < cfg.max_train_steps:
        model.train()
        for micro in range(cfg.gradient_accumulation_steps):
            x = train_x[order(step * cfg.gradient_accumulation_steps + micro)]
            with accelerator.accumulate(model), accelerator.autocast():
                loss = F.mse_loss(train_model(x).float(), x)
                training.optimizer_step(accelerator, model, optimizer, lr_scheduler, loss, cfg.max_grad_norm)
        step += 1
        meter.add(loss, step)

        if step % cfg.logging_steps == 0 or step == cfg.max_train_steps:
            mean_loss, rate = meter.summary(step)
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "images_per_s": rate}
            if step % cfg.validation_steps == 0 or step == cfg.max_train_steps:
                logs["val_psnr"] = validate(accelerator, model, held_out, step)
            accelerator.log(logs, step=step)
            loss_log.add(step, mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.4g}")
        bar.update(1)  # counted after the loss is set, so a plain progress line shows this step's loss
        training.checkpoint_if_due(accelerator, cfg, step, stop, meter, record)
    bar.close()
    meter.check()
    training.check_replicas_in_sync(accelerator, model)
    clock.lap("training")

    # 4. Save the model with its latent scaling, then measure and draw.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(accelerator.unwrap_model(model), cfg, out, train_images, test_images, test_labels, loss_log, clock, stop)
    accelerator.end_training()


@torch.no_grad()
def validate(accelerator, model, held_out, step):
    model.eval()
    with accelerator.autocast():
        recon = accelerator.unwrap_model(model)(held_out).float()
    mse = F.mse_loss(to_digits(recon), to_digits(held_out))
    psnr = (10 * torch.log10(1.0 / mse)).item()
    writer = training.tensorboard_writer(accelerator)
    if writer is not None:
        grid = visualisation.tile(torch.cat([to_digits(held_out[:16]), to_digits(recon[:16])]).cpu().numpy(), nrow=16)
        writer.add_image("reconstructions", grid, step, dataformats="HW")
    return psnr


def finish(model, cfg, out, train_images, test_images, test_labels, loss_log, clock, stop):
    model = model.float()
    # Unit-variance latents for the diffusion stage: estimated on up to 10k training digits
    # (encoded only; divided by the factor the encoder applies, 1 before this line has run).
    latents = encode_images(model, train_images[:10000], model.device, batch_size=1000) / model.config.scaling_factor
    model.register_to_config(scaling_factor=float(1.0 / latents.std()))
    training.save_or_explain(lambda: save_model(model, out), out, "the autoencoder")
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
    batch = slice(0, 64)  # "one batch", as in the reference
    visualisation.tsne_figure(test_latents[batch].numpy(), test_labels[batch], out / "tsne_batch.png",
                              "t-SNE of latents, one batch")
    n = min(cfg.tsne_num_points, len(test_latents))
    visualisation.tsne_figure(test_latents[:n].numpy(), test_labels[:n], out / "tsne_test.png",
                              "t-SNE of latents, test split")
    loss_log.plot(out / "loss.png", "autoencoder reconstruction loss (MSE)")
    clock.lap("figures")
    clock.write(out / "timings.json")


def save_model(model, out):
    """save_pretrained through a staging folder: a full disk or a killed save leaves an earlier model whole."""
    from pipeline.export import staged

    with staged(out, "autoencoder") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


if __name__ == "__main__":
    run_cli(main)
