"""The latent stage (train_latent_ddpm.py with --autoencoder): train a diffusers UNet2DModel to denoise the
autoencoder's latents, with Accelerate.

The run folder ends up a complete pipeline folder (model_index.json, unet/, autoencoder/,
scheduler/, the pipeline source and a model card) that loads with plain diffusers, plus
samples.png, denoising.png, grid_diffusion.gif, loss.png, timings.json (seconds per phase)
and TensorBoard logs.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling, compute_snr

from . import checkpoints, training, visualisation
from .config import LatentDDPMTrainConfig, parse_config, save_config
from .errors import UserError, first_line
from .image_data import check_geometry, describe_source, hub_dataset, inherit_data_options, is_idx
from .latent_cache import autoencoder_fingerprint, cached_latents, load_autoencoder, training_images
from .pipeline_latent_ddpm import LatentDDPMPipeline
from .schedulers import make_scheduler, make_train_scheduler, with_scheduler

NUM_IDX_CLASSES = 10  # MNIST and Fashion-MNIST; other datasets say how many classes they have
# Besides checkpoints.RESUME_FIXED: the options that shape the model, its objective and its EMA. A resume
# with any of them changed would fail or train another model; the learning rate and its schedule may change.
RESUME_FIXED = ("unet", "ddpm_num_steps", "ddpm_beta_schedule", "prediction_type", "snr_gamma", "timestep_sampling",
                "conditioning", "class_dropout", "class_balance", "use_ema", "ema_max_decay", "ema_inv_gamma",
                "ema_power")


def build_unet(cfg, autoencoder, num_classes=NUM_IDX_CLASSES) -> UNet2DModel:
    u, size = cfg.unet, autoencoder.latent_size
    depth = len(u.block_out_channels) - 1
    if size % 2 ** depth:
        raise UserError(f"{size}x{size} latents cannot be halved {depth} times by the UNet; "
                        "use fewer unet.block_out_channels or an autoencoder with larger latents")
    try:
        return UNet2DModel(
            sample_size=size, in_channels=autoencoder.config.latent_channels,
            out_channels=autoencoder.config.latent_channels, block_out_channels=tuple(u.block_out_channels),
            down_block_types=tuple(u.down_block_types), up_block_types=tuple(u.up_block_types),
            layers_per_block=u.layers_per_block, attention_head_dim=u.attention_head_dim,
            norm_num_groups=u.norm_num_groups, dropout=u.dropout,
            # Class conditioning: one extra embedding is the "no label" class used for CFG.
            num_class_embeds=num_classes + 1 if cfg.conditioning == "class" else None,
        )
    except (ValueError, TypeError) as e:  # a misspelt block type, channels that norm_num_groups does not divide
        raise UserError(f"the unet.* options do not build a diffusers UNet2DModel ({first_line(e)}); "
                        "check --unet.down_block_types / --unet.up_block_types (e.g. DownBlock2D, AttnDownBlock2D / "
                        "UpBlock2D, AttnUpBlock2D) and that unet.norm_num_groups divides every channel count") from e


def loss_weights(cfg, scheduler, t):
    """Each timestep's weight in the loss: min-SNR weighting (Hang et al. 2023), or ones without snr_gamma."""
    if not cfg.snr_gamma:
        return torch.ones(len(t), device=t.device)
    snr = compute_snr(scheduler, t)
    weight = torch.clamp(snr, max=cfg.snr_gamma)
    return weight / {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[cfg.prediction_type]


def draw_timesteps(cfg, scheduler, n, gen, device):
    """(timesteps, each one's loss weight) for a batch of `n`, drawn from `gen` as cfg.timestep_sampling says."""
    num_t = scheduler.config.num_train_timesteps
    if cfg.timestep_sampling == "loss_weight":
        # Importance sampling: draw t in proportion to its weight and weigh every draw alike (by the mean weight,
        # so the loss keeps its scale). The expected loss is the uniform draw's; no draws go to timesteps the
        # weighting would all but ignore (min-SNR's weight is near zero at both ends of the schedule).
        w = loss_weights(cfg, scheduler, torch.arange(num_t, device=device))
        return torch.multinomial(w, n, replacement=True, generator=gen), w.mean().expand(n)
    if cfg.timestep_sampling == "logit_normal":  # SD3's: most draws at middling noise
        u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=0.0, logit_std=1.0, device=device,
                                                  generator=gen)
        t = (u * num_t).long().clamp(max=num_t - 1)
    else:
        t = torch.randint(0, num_t, (n,), generator=gen, device=device)
    return t, loss_weights(cfg, scheduler, t)


def loss_fn(cfg, scheduler, unet, latents, labels, gen, null_label=NUM_IDX_CLASSES):
    """One denoising loss on a batch: noise, timesteps and label dropout (to `null_label`, the number of
    classes) from `gen`."""
    noise = torch.randn(latents.shape, generator=gen, device=latents.device)
    t, weight = draw_timesteps(cfg, scheduler, len(latents), gen, latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    class_labels = None
    if labels is not None:
        drop = torch.rand(len(labels), generator=gen, device=labels.device) < cfg.class_dropout
        class_labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    pred = unet(noisy, t, class_labels=class_labels).sample.float()
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(latents, noise, t),
              "sample": latents}[cfg.prediction_type]
    loss = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (loss * weight).mean()


def main(argv):
    train(parse_config(LatentDDPMTrainConfig, argv))


def train(cfg):
    """One run of this stage with the resolved options `cfg`."""
    accelerator, clock = training.start(cfg)
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)

    # 1. Frozen autoencoder; the UNet the latents decide the shape of (built before the data, so bad unet options
    #    fail in seconds; reading and encoding the data draws no random numbers, so the order changes no weights);
    #    the data, read and checked before the run folder is touched (data the system cannot take is refused
    #    with nothing written); then the folder's lock, the check that checkpoints already there are this run's,
    #    and the training split as latents on the accelerator.
    autoencoder = load_autoencoder(cfg.autoencoder)
    if Path(cfg.autoencoder).is_dir():  # a run folder (not a Hub id): its data, unless this command names other data
        inherit_data_options(cfg, cfg.autoencoder, "autoencoder")
    check_geometry(cfg, autoencoder, cfg.autoencoder, "autoencoder")
    # Before the data when the class count is known without it (IDX data, or no classes): bad unet options fail in seconds.
    unet = build_unet(cfg, autoencoder) if is_idx(cfg) or cfg.conditioning != "class" else None
    clock.lap("set-up")
    images, labels, data, key = training_images(accelerator, cfg, autoencoder)
    class_names, num_classes = data.class_names, NUM_IDX_CLASSES
    if cfg.conditioning == "class":
        if data.labels is None:
            raise UserError(f"conditioning: class needs labels, but {describe_source(cfg)} has none (no ClassLabel "
                            "column, no class subfolders); pass --label_column or use --conditioning none")
        if not is_idx(cfg):
            num_classes = len(class_names) if class_names else int(data.labels.max()) + 1
    unet = unet or build_unet(cfg, autoencoder, num_classes)
    weights = training.class_weights(labels, cfg.class_balance) if cfg.class_balance else None
    order = training.BatchOrder(len(images), cfg.train_batch_size, cfg.seed,
                                accelerator.process_index, accelerator.num_processes, accelerator.device, weights)
    clock.lap("data and latents")

    checkpoints.lock_output_dir(accelerator, out)  # one run per folder, held until this process ends
    record = checkpoints.run_record(accelerator, cfg, RESUME_FIXED, autoencoder=autoencoder_fingerprint(autoencoder),
                                 latent_shape=f"{autoencoder.config.latent_channels}x{autoencoder.latent_size}"
                                              f"x{autoencoder.latent_size}")
    checkpoints.check_output_dir(cfg, record)
    if accelerator.is_main_process:
        save_config(cfg, out / "training_config.yaml")  # hub_token is redacted
    clock.lap("set-up")
    latents = cached_latents(accelerator, autoencoder, images, key, fingerprint=record["autoencoder"])
    labels = torch.as_tensor(labels, device=accelerator.device) if cfg.conditioning == "class" else None
    clock.lap("data and latents")

    # 2. Noise schedule, EMA, optimizer.
    noise_scheduler = make_train_scheduler(cfg.ddpm_num_steps, cfg.ddpm_beta_schedule, cfg.prediction_type)
    if cfg.prediction_type == "epsilon" and noise_scheduler.alphas_cumprod[-1] < 1e-6:
        accelerator.print(f"warning: {cfg.ddpm_beta_schedule} ends at alpha_bar={noise_scheduler.alphas_cumprod[-1]:.1e}; "
                          "an epsilon model's samples diverge from t=T there: use --prediction_type v_prediction "
                          "or --ddpm_beta_schedule linear")
    ema = None
    if cfg.use_ema:
        ema = EMAModel(unet.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, inv_gamma=cfg.ema_inv_gamma,
                       power=cfg.ema_power, model_cls=UNet2DModel, model_config=unet.config,
                       foreach=True)  # a few multi-tensor kernels per step instead of ~3 per parameter tensor
        ema.to(accelerator.device)
        checkpoints.keep_ema_in_checkpoints(accelerator, ema, unet, "unet_ema")
    unet, train_unet, optimizer, lr_scheduler = training.prepare(accelerator, cfg, unet, "latent_ddpm")

    # 3. Resume, then train to exactly max_train_steps (pipeline/training.py's loop).
    def batch_loss(k, gen):
        idx = order(k)
        return loss_fn(cfg, noise_scheduler, train_unet, latents[idx], None if labels is None else labels[idx], gen,
                       null_label=num_classes)

    loss_log, stop = training.fit(
        accelerator, cfg, unet, train_unet, optimizer, lr_scheduler, record, batch_loss, clock, name="latent ddpm",
        per_second="latents_per_s", after_step=None if ema is None else lambda: ema.step(unet.parameters()),
        extra_logs=None if ema is None else lambda step: {"ema_decay": ema.cur_decay_value},
        pictures=lambda step: log_samples(accelerator, cfg, unet, ema, autoencoder, noise_scheduler, step, class_names))

    # 4. The pipeline folder, pictures and model card (main process), then the upload.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe = final_pipeline(accelerator, cfg, unet, ema, autoencoder, noise_scheduler, class_names)
        finish(pipe, cfg, out, loss_log, clock, stop)
    accelerator.wait_for_everyone()
    training.end_training(accelerator)


def make_pipeline(unet, autoencoder, noise_scheduler, class_names=None):
    return LatentDDPMPipeline(unet=unet, autoencoder=autoencoder, scheduler=noise_scheduler, class_names=class_names)


@torch.no_grad()
def log_samples(accelerator, cfg, unet, ema, autoencoder, noise_scheduler, step, class_names=None):
    writer = training.tensorboard_writer(accelerator)
    if writer is None:
        return
    model = accelerator.unwrap_model(unet)
    if ema is not None:  # sample with the EMA weights, then put the training weights back
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    pipe = with_scheduler(make_pipeline(model, autoencoder.to(accelerator.device), noise_scheduler, class_names),
                          cfg.sampler)
    images = pipe(batch_size=64, generator=torch.Generator(accelerator.device).manual_seed(0),
                  num_inference_steps=cfg.num_inference_steps, output_type="np").images
    grid = visualisation.tile(images, nrow=8)
    writer.add_image("samples", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
    if ema is not None:
        ema.restore(model.parameters())


def final_pipeline(accelerator, cfg, unet, ema, autoencoder, noise_scheduler, class_names=None):
    """The published pipeline: EMA weights, and the configured sampler and steps as what `pipe()` does by default
    (the training noise schedule lives on in the sampler's config: noise_schedule() reads it back)."""
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(model.parameters())  # the published weights are the EMA ones
    return LatentDDPMPipeline(unet=model.float().eval(), autoencoder=autoencoder.to(accelerator.device).float().eval(),
                              scheduler=make_scheduler(cfg.sampler, noise_scheduler),
                              default_num_inference_steps=cfg.num_inference_steps, class_names=class_names)


def class_accuracy_check(pipe, cfg, out) -> dict:
    """A class-conditional model at its eval_guidance_scale: every class equally often, does the judge see
    the class that was asked for? (guidance.json / guidance.png in `out`, as `pipeline.evaluate --guidance_scales`)"""
    from .guidance import guidance_sweep, num_classes_of

    k = num_classes_of(pipe)
    n = max(k, cfg.eval_num_samples - cfg.eval_num_samples % k)
    result = guidance_sweep(pipe, out, [cfg.eval_guidance_scale], num_samples=n,
                            num_inference_steps=cfg.num_inference_steps, scheduler=cfg.sampler, seed=cfg.seed,
                            dataset=cfg.dataset, data_dir=cfg.data_dir, source=cfg)
    row = result["scales"][0]
    return dict(eval_guidance_scale=cfg.eval_guidance_scale, class_accuracy=row["class_accuracy"],
                class_accuracy_floor=result["floor"]["class_accuracy"], guided_fid=row["fid"])


def finish(pipe, cfg, out, loss_log, clock, stop):
    from .evaluate import evaluate_pipeline
    from .export import push_folder, save_pipeline_folder, write_model_card
    from .figures import pipeline_figures

    # The trained model is saved before anything that could fail (pictures, evaluation).
    checkpoints.save_or_explain(lambda: save_pipeline_folder(pipe, out, dataset=hub_dataset(cfg)), out, "the pipeline")
    print(f"pipeline saved to {out}")
    clock.lap("saving", saved=True)
    stop.model_saved(out)  # a stop signal from here on ends the run at once: the pipeline is safe
    pipe.set_progress_bar_config(disable=True)
    if not cfg.skip_figures:
        loss_log.plot(out / "loss.png", f"latent diffusion loss ({cfg.prediction_type})")
        pipeline_figures(pipe, cfg, out)
        clock.lap("figures")
    metrics = {}
    if cfg.eval_num_samples > 0:
        metrics = evaluate_pipeline(pipe, num_samples=cfg.eval_num_samples, num_inference_steps=cfg.num_inference_steps,
                                    scheduler=cfg.sampler, seed=cfg.seed, output_dir=out / "evaluation",
                                    dataset=cfg.dataset, data_dir=cfg.data_dir, source=cfg)
        if cfg.conditioning == "class" and metrics.get("classifier_why_no_classes") is not None:
            print(f"no class accuracy: {metrics['classifier_why_no_classes']}")
        elif cfg.conditioning == "class" and metrics.get("fid") is not None:
            metrics.update(class_accuracy_check(pipe, cfg, out / "evaluation"))
        clock.lap("evaluation")
    # The model card again, now with the sample grid and the measured metrics.
    grid = out / "samples.png"
    write_model_card(pipe, out, metrics=metrics, sample_grid_path=str(grid) if grid.is_file() else None,
                     dataset=hub_dataset(cfg))
    clock.lap("saving")
    clock.write(out / "timings.json")
    if cfg.push_to_hub:
        try:
            url = push_folder(out, cfg.hub_model_id, token=cfg.hub_token, private=cfg.hub_private_repo)
        except Exception as e:  # network, auth, permissions: the trained pipeline is safe on disk
            raise UserError(f"upload to {cfg.hub_model_id} failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            f"the pipeline in {out} is complete: upload it later, with the same files, by "
                            f"`python -m pipeline.export push {out} {cfg.hub_model_id}`")
        print(f"pushed to {url}")

