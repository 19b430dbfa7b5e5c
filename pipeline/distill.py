"""Consistency distillation of a trained pipeline folder into a few-step student (distill_latent_ddpm.py).

The recipe of diffusers' examples/consistency_distillation/train_lcm_distill_sd_wds.py, for a UNet2DModel:

  1. noise a training latent to t_n on a skipping grid of `num_ddim_timesteps` timesteps (k = 1000 / that:
     t = k-1, 2k-1, ..., 999);
  2. the frozen teacher takes one DDIM step from t_n to t_{n-1} = t_n - k (for a class-conditional teacher
     with classifier-free guidance at `guidance_scale` folded in, so the student needs one call per step);
  3. the student's consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t) at (x_{t_n}, t_n) is pulled
     with a pseudo-Huber loss towards the target network's f at (x_{t_{n-1}}, t_{n-1}); the target network
     is an EMA of the student, and c_skip = 1, c_out = 0 at t = 0 (the boundary condition).

The student starts from the teacher's weights and reuses its autoencoder and latent cache; c_skip/c_out are
LCMScheduler's own, so the saved folder samples with `LCMScheduler` in 1 to num_ddim_timesteps steps.
Everything else (the loop, exact resume, signals, non-finite losses, logs) is pipeline/training.py's, the locks and
checkpoints pipeline/checkpoints.py's.
"""

import copy
import inspect
import json
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import LCMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from . import checkpoints, training, visualisation
from .config import DistillConfig, parse_config, save_config
from .errors import UserError, first_line
from .image_data import check_geometry, describe_source, hub_dataset, inherit_data_options
from .latent_cache import autoencoder_fingerprint, cached_latents, training_images
from .pipeline_latent_ddpm import LatentDDPMPipeline
from .schedulers import noise_schedule

# Besides checkpoints.RESUME_FIXED: what decides the student's targets. The teacher itself is a fingerprint fact.
RESUME_FIXED = ("num_ddim_timesteps", "guidance_scale", "class_dropout", "ema_decay", "huber_c", "timestep_scaling")
TARGET_DIR = "unet_target"


def load_teacher(path) -> LatentDDPMPipeline:
    """The teacher pipeline, or a one-line UserError saying why the folder cannot be one."""
    try:
        pipe = LatentDDPMPipeline.from_pretrained(str(path))
    except Exception as e:
        raise UserError(f"--teacher {path} is not a pipeline folder ({first_line(e)}); pass the output_dir of "
                        "train_latent_ddpm.py") from e
    unet, ae = pipe.unet.config, pipe.autoencoder
    if (unet.in_channels, unet.out_channels) != (ae.config.latent_channels,) * 2 or unet.sample_size != ae.latent_size:
        raise UserError(f"--teacher {path}: its UNet ({unet.in_channels}->{unet.out_channels} channels, "
                        f"{unet.sample_size}x{unet.sample_size}) does not match its autoencoder's "
                        f"{ae.config.latent_channels}x{ae.latent_size}x{ae.latent_size} latents; the folder is mixed up")
    if pipe.config.get("consistency_distilled") or isinstance(pipe.scheduler, LCMScheduler):
        raise UserError(f"--teacher {path} is a consistency-distilled student already; pass the diffusion model it "
                        "was distilled from")
    return pipe


class DDIMGrid:
    """The teacher's solver: DDIM steps between neighbours of the skipping grid t = k-1, 2k-1, ..., T-1."""

    def __init__(self, noise_scheduler, num_ddim_timesteps, device):
        self.num_train = noise_scheduler.config.num_train_timesteps
        self.k = self.num_train // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1, device=device) * self.k - 1
        self.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
        self.prediction_type = noise_scheduler.config.prediction_type

    def x0_eps(self, output, t, x):
        """(predicted clean latent, predicted noise) from a UNet output at timestep t."""
        a = self.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            x0 = a * x - s * output
            return x0, s * x + a * output
        if self.prediction_type == "epsilon":
            return (x - s * output) / a, output
        return output, (x - a * output) / s  # "sample"

    def ddim_step(self, x0, eps, t_prev):
        a = self.alphas_cumprod[t_prev].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def consistency(lcm, grid, output, t, x):
    """f(x, t) = c_skip(t) x + c_out(t) x0: LCMScheduler's boundary scalings, the same it samples with."""
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in lcm.get_scalings_for_boundary_condition_discrete(t.float()))
    return c_skip * x + c_out * grid.x0_eps(output, t, x)[0]


def distill_loss(cfg, grid, lcm, noise_scheduler, teacher, student, target, latents, labels, null_label, gen):
    """One consistency-distillation loss on a batch; timesteps, noise and label dropout from `gen`."""
    n = len(latents)
    index = torch.randint(0, len(grid.timesteps), (n,), generator=gen, device=latents.device)
    t = grid.timesteps[index]
    t_prev = (t - grid.k).clamp(min=0)
    noise = torch.randn(latents.shape, generator=gen, device=latents.device)
    x_t = noise_scheduler.add_noise(latents, noise, t)
    if labels is not None:
        drop = torch.rand(n, generator=gen, device=labels.device) < cfg.class_dropout
        labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    pred = consistency(lcm, grid, student(x_t, t, class_labels=labels).sample.float(), t, x_t)
    with torch.no_grad():
        out = teacher(x_t, t, class_labels=labels).sample.float()
        if labels is not None and cfg.guidance_scale != 1:  # dropped labels give cond == uncond: no guidance there
            uncond = teacher(x_t, t, class_labels=torch.full_like(labels, null_label)).sample.float()
            out = uncond + cfg.guidance_scale * (out - uncond)
        x_prev = grid.ddim_step(*grid.x0_eps(out, t, x_t), t_prev)
        goal = consistency(lcm, grid, target(x_prev, t_prev, class_labels=labels).sample.float(), t_prev, x_prev)
    return (torch.sqrt((pred - goal) ** 2 + cfg.huber_c ** 2) - cfg.huber_c).mean()


def lcm_scheduler(teacher_scheduler, cfg) -> LCMScheduler:
    """The student's scheduler, built from the teacher's config: same betas, prediction type, no clipping."""
    accepted = inspect.signature(LCMScheduler.__init__).parameters  # DDPM's variance_type would only be warned about
    config = {k: v for k, v in noise_schedule(teacher_scheduler).config.items() if k in accepted}
    return LCMScheduler.from_config(config, original_inference_steps=cfg.num_ddim_timesteps,
                                    timestep_scaling=cfg.timestep_scaling, clip_sample=False)


def student_pipeline(unet, autoencoder, scheduler, default_steps=2, default_timesteps=None,
                     class_names=None) -> LatentDDPMPipeline:
    """`class_names`: the teacher's, so that the student takes the same class names."""
    pipe = LatentDDPMPipeline(unet=unet, autoencoder=autoencoder, scheduler=scheduler, consistency_distilled=True,
                              default_num_inference_steps=default_steps, default_timesteps=default_timesteps,
                              class_names=class_names)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _grid_labels(unet, n):
    k = unet.config.num_class_embeds
    return {"class_labels": [i % (k - 1) for i in range(n)]} if k else {}  # every class in turn (the last: null)


@torch.no_grad()
def log_grids(accelerator, cfg, student, autoencoder, scheduler, step):
    """Few-step sample grids (the student's step counts) to TensorBoard."""
    writer = training.tensorboard_writer(accelerator)
    if writer is None:
        return
    model = accelerator.unwrap_model(student)
    model.eval()
    pipe = student_pipeline(model, autoencoder, copy.deepcopy(scheduler), default_timesteps=cfg.default_timesteps)
    for n in cfg.eval_steps:
        images = pipe(batch_size=64, num_inference_steps=n, generator=torch.Generator(accelerator.device).manual_seed(0),
                      output_type="np", **_grid_labels(model, 64)).images
        grid = visualisation.tile(images, nrow=8)
        writer.add_image(f"samples_{n}_steps", grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
    model.train()


def main(argv):
    train(parse_config(DistillConfig, argv))


def train(cfg):
    """One run of this stage with the resolved options `cfg`."""
    accelerator, clock = training.start(cfg)
    out = Path(cfg.output_dir)
    if out.resolve() == Path(cfg.teacher).resolve():
        raise UserError("--output_dir is the --teacher folder; the student needs a folder of its own")
    set_seed(cfg.seed)

    # 1. The frozen teacher and its autoencoder; the teacher's own data (the data options its folder saved,
    #    unless this command line names others), read and checked before the run folder is touched; the folder's
    #    lock and the check that checkpoints in it are this run's; the latents (the teacher's cache: same
    #    autoencoder, same data).
    teacher_pipe = load_teacher(cfg.teacher)
    autoencoder = teacher_pipe.autoencoder.to(accelerator.device).eval()
    teacher = teacher_pipe.unet.to(accelerator.device).eval().requires_grad_(False)
    conditional = teacher.config.num_class_embeds is not None
    inherit_data_options(cfg, cfg.teacher, "teacher")
    check_geometry(cfg, autoencoder, cfg.teacher, "teacher")
    images, labels, data, key = training_images(accelerator, cfg, autoencoder)
    if conditional and labels is None:
        raise UserError(f"the teacher {cfg.teacher} is class-conditional, but {describe_source(cfg)} has no labels; "
                        "pass the data it was trained on (--dataset, --data_dir or --train_data_dir)")
    order = training.BatchOrder(len(images), cfg.train_batch_size, cfg.seed, accelerator.process_index,
                                accelerator.num_processes, accelerator.device)  # too large a batch: refused before writing
    clock.lap("data and latents")
    checkpoints.lock_output_dir(accelerator, out)
    ae_print = autoencoder_fingerprint(autoencoder)
    record = checkpoints.run_record(accelerator, cfg, RESUME_FIXED, teacher=autoencoder_fingerprint(teacher),
                                 autoencoder=ae_print)
    checkpoints.check_output_dir(cfg, record)
    if accelerator.is_main_process:
        save_config(cfg, out / "training_config.yaml")  # with the data options it read
    clock.lap("set-up")
    latents = cached_latents(accelerator, autoencoder, images, key, fingerprint=ae_print)
    labels = torch.as_tensor(labels, device=accelerator.device) if conditional else None
    null_label = teacher.config.num_class_embeds - 1 if conditional else None
    clock.lap("data and latents")

    # 2. Student (from the teacher's weights), target network (its EMA), the grid, optimizer.
    noise_scheduler = noise_schedule(teacher_pipe.scheduler)  # whichever sampler the teacher folder saved
    lcm = lcm_scheduler(teacher_pipe.scheduler, cfg)
    grid = DDIMGrid(noise_scheduler, cfg.num_ddim_timesteps, accelerator.device)
    check_on_grid(cfg.default_timesteps, grid)
    student = copy.deepcopy(teacher).requires_grad_(True).train()
    target = copy.deepcopy(teacher)
    ema = EMAModel(student.parameters(), decay=cfg.ema_decay, min_decay=cfg.ema_decay, use_ema_warmup=False,
                   model_cls=UNet2DModel, model_config=student.config, foreach=True)
    ema.to(accelerator.device)
    checkpoints.keep_ema_in_checkpoints(accelerator, ema, student, TARGET_DIR, copy_to=target)
    student, train_student, optimizer, lr_scheduler = training.prepare(accelerator, cfg, student, "distill")

    # 3. Resume, then train to exactly max_train_steps (pipeline/training.py's loop).
    def batch_loss(k, gen):
        idx = order(k)
        return distill_loss(cfg, grid, lcm, noise_scheduler, teacher, train_student, target, latents[idx],
                            None if labels is None else labels[idx], null_label, gen)

    def update_target():
        ema.step(student.parameters())
        ema.copy_to(target.parameters())

    loss_log, stop = training.fit(
        accelerator, cfg, student, train_student, optimizer, lr_scheduler, record, batch_loss, clock, name="distill",
        per_second="latents_per_s", after_step=update_target,
        pictures=lambda step: log_grids(accelerator, cfg, student, autoencoder, lcm, step))

    # 4. The student's pipeline folder, pictures, scores and model card (main process).
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe = student_pipeline(accelerator.unwrap_model(student).float().eval(), autoencoder.float(), lcm,
                                cfg.default_steps, cfg.default_timesteps, teacher_pipe.class_names)
        finish(pipe, cfg, out, loss_log, clock, stop, teacher_train_seconds(cfg.teacher))
    accelerator.wait_for_everyone()
    training.end_training(accelerator)


def check_on_grid(default_timesteps, grid):
    """The student learns only the grid's timesteps: sampling timesteps must be among them."""
    on_grid = set(grid.timesteps.tolist())
    for ts in default_timesteps or []:
        if not set(ts) <= on_grid:
            raise UserError(f"default_timesteps {ts} are not all on the student's grid (every {grid.k}th timestep: "
                            f"{grid.k - 1}, {2 * grid.k - 1}, ..., {grid.timesteps[-1].item()}); pick from it, or set "
                            "default_timesteps to null for LCMScheduler's evenly spaced ones")


def teacher_train_seconds(teacher):
    try:
        return json.loads((Path(teacher) / "timings.json").read_text())["phases"]["training"]
    except (OSError, ValueError, KeyError):
        return None


def settings(cfg, teacher_seconds, seconds) -> dict:
    keys = ("num_ddim_timesteps", "guidance_scale", "default_steps", "default_timesteps", "max_train_steps",
            "train_batch_size", "learning_rate", "ema_decay", "huber_c", "timestep_scaling", "seed")
    return {"teacher": str(cfg.teacher), **{k: getattr(cfg, k) for k in keys},
            "distillation_seconds": round(seconds, 1),
            "teacher_training_seconds": None if teacher_seconds is None else round(teacher_seconds, 1)}


def finish(pipe, cfg, out, loss_log, clock, stop, teacher_seconds):
    from .evaluate import evaluate_pipeline
    from .export import save_pipeline_folder, write_model_card

    info = settings(cfg, teacher_seconds, clock.phases["training"])
    checkpoints.save_or_explain(lambda: save_pipeline_folder(pipe, out, dataset=hub_dataset(cfg), distillation=info),
                             out, "the pipeline")
    print(f"pipeline saved to {out}")
    clock.lap("saving", saved=True)
    stop.model_saved(out)
    if not cfg.skip_figures:
        loss_log.plot(out / "loss.png", "consistency distillation loss (pseudo-Huber)")
        student_figures(pipe, cfg, out)
        clock.lap("figures")
    scores = {}
    for n in cfg.eval_steps if cfg.eval_num_samples > 0 else []:
        m = evaluate_pipeline(pipe, out / "evaluation" / f"{n}_steps", num_samples=cfg.eval_num_samples,
                              num_inference_steps=n, scheduler="lcm", seed=cfg.seed, dataset=cfg.dataset,
                              data_dir=cfg.data_dir, source=cfg)
        if m.get("fid") is None:  # too few test images: samples and speed, no scores (evaluation says why)
            continue
        scores[n] = {k: m[k] for k in ("fid", "precision", "recall", "fid_floor", "precision_floor", "recall_floor")}
        scores[n]["images_per_second"] = m["images_per_second"]
    if scores:
        clock.lap("evaluation")
    info["scores"] = scores
    (out / "distillation.json").write_text(json.dumps(info, indent=2) + "\n")
    grid = out / "samples.png"
    write_model_card(pipe, out, sample_grid_path=str(grid) if grid.is_file() else None, dataset=hub_dataset(cfg),
                     distillation=info)
    clock.lap("saving")
    clock.write(out / "timings.json")


@torch.no_grad()
def student_figures(pipe, cfg, out):
    """samples.png (a 10x10 grid at the folder's default step count, else the smallest but one) and
    samples_<n>_steps.png for each step count, from the same noise; denoising.png: x_T and the images after each
    of the largest step count's steps."""
    device = pipe.unet.device
    labels = _grid_labels(pipe.unet, 100)
    for n in cfg.eval_steps:
        images = pipe(batch_size=100, num_inference_steps=n, generator=torch.Generator(device).manual_seed(cfg.seed),
                      output_type="np", **labels).images
        visualisation.save_grid(images, out / f"samples_{n}_steps.png", nrow=10)
    default = (cfg.default_steps if cfg.default_steps in cfg.eval_steps
               else sorted(cfg.eval_steps)[min(1, len(cfg.eval_steps) - 1)])
    (out / "samples.png").write_bytes((out / f"samples_{default}_steps.png").read_bytes())
    res = pipe(batch_size=64, num_inference_steps=max(cfg.eval_steps), output_type="np", return_intermediates=True,
               generator=torch.Generator(device).manual_seed(cfg.seed + 1), **_grid_labels(pipe.unet, 64))
    visualisation.denoising_strip(res.intermediates, out / "denoising.png", num_columns=len(res.intermediates),
                                  num_rows=8)
