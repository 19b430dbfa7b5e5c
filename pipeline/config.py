"""Every training option in one place, with why it is there.

A run's config is: these dataclass defaults <- a YAML file (`--config`) <- command-line
overrides (`--key value`, nested as `--unet.layers_per_block 1`). Values on the command
line are parsed as YAML scalars, so `true`, `1e-4`, `null` and `[64,128]` all work.
Unknown keys, wrong types and out-of-range values raise `UserError` naming the key.
The resolved config is written into the run folder (`training_config.yaml`).
"""

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import UserError, first_line

SECRET_KEYS = {"hub_token"}  # never written to disk or logged
DEFAULT_DATASET = "ylecun/mnist"


def option(default=dataclasses.MISSING, help="", *, factory=dataclasses.MISSING):
    """A config field with its reason: the reason is `--help`'s text and the only place it is written."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class TrainConfig:
    """Options both training scripts share; names follow diffusers' example scripts."""

    output_dir: str = option("runs/default", "the run folder: model, pictures, logs, checkpoints")
    dataset: str = option(DEFAULT_DATASET, "Hub image dataset id (uoft-cs/cifar10, zalando-datasets/fashion_mnist, a "
                          "local folder of Parquet files) or emoji-datasource-google (offline colour, from npm)")
    data_dir: Optional[str] = option(None, "folder with the four IDX files: skips the Hub entirely")
    train_data_dir: Optional[str] = option(None, "a local image folder (datasets' imagefolder); class subfolders become labels")
    image_column: Optional[str] = option(None, "the image column; null: the dataset's first Image feature")
    label_column: Optional[str] = option(None, "the label column; null: the first ClassLabel feature, if any (labels are optional)")
    resolution: Optional[int] = option(None, "images resized to this side; null: the native size, padded as 28 -> 32")
    channels: Optional[int] = option(None, "1 or 3; null: from the data (L -> 1; RGB, RGBA, P -> 3)")
    background: str = option("white", "white or black: what transparent pixels (RGBA, P) are composited on")
    random_flip: bool = option(False, "train on left-right mirrored images too (not for digits or text)")
    max_train_samples: Optional[int] = option(None, "use only the first N training digits (quick tests)")
    seed: int = option(0, "seeds weights, data order and noise: same seed, same run")
    train_batch_size: int = option(256, "per process; the effective batch is this x processes x accumulation")
    max_train_steps: int = option(2000, "optimizer steps; training ends exactly here, also after resume")
    learning_rate: float = option(1e-3, "peak learning rate after warmup")
    lr_scheduler: str = option("cosine", "any name diffusers.optimization.get_scheduler knows")
    lr_warmup_steps: int = option(100, "linear warmup keeps the first large-batch steps stable")
    adam_beta1: float = option(0.9, "AdamW first-moment decay")
    adam_beta2: float = option(0.99, "shorter second-moment memory suits short runs")
    adam_weight_decay: float = option(0.0, "AdamW decoupled weight decay; 0 turns it off")
    max_grad_norm: float = option(1.0, "gradient clipping guards against rare spikes")
    gradient_accumulation_steps: int = option(1, "simulate a larger batch on small hardware")
    mixed_precision: str = option("no", "no / fp16 / bf16 (bf16 on Ampere+ GPUs)")
    checkpointing_steps: int = option(500, "save the full Accelerate state this often")
    checkpoints_total_limit: Optional[int] = option(2, "keep this many checkpoint-N folders")
    resume_from_checkpoint: Optional[str] = option(None, "a checkpoint path or \"latest\"")
    report_to: str = option("tensorboard", "Accelerate tracker; \"none\" disables logging")
    logging_dir: str = option("logs", "relative to output_dir")
    logging_steps: int = option(20, "how often scalars go to the tracker")
    validation_steps: int = option(500, "how often pictures go to the tracker")
    compile: bool = option(False, "torch.compile the model (GPU runs; slow to start on CPU)")
    compile_mode: str = option("default", "reduce-overhead adds CUDA graphs: fewer launches for small 8x8 UNets")
    num_threads: Optional[int] = option(None, "CPU threads for torch; null leaves torch's default")
    skip_figures: bool = option(False, "no pictures at the end: on tiny runs they take longer than the training")

    def validate(self):
        positive = ["train_batch_size", "max_train_steps", "gradient_accumulation_steps",
                    "checkpointing_steps", "logging_steps", "validation_steps"]
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(self, key)}; pass --{key} with a positive number")
        if not self.learning_rate > 0:
            raise UserError(f"learning_rate must be > 0, got {self.learning_rate}; pass e.g. --learning_rate 1e-3")
        for key in ("max_train_samples", "max_eval_samples"):
            if getattr(self, key, None) is not None and getattr(self, key) < 1:
                raise UserError(f"{key} must be >= 1 or null (all), got {getattr(self, key)}")
        if self.channels not in (None, 1, 3):
            raise UserError(f"channels must be 1, 3 or null (from the data), got {self.channels}")
        if self.background not in ("white", "black"):
            raise UserError(f"background must be white or black, got {self.background!r}")
        if self.resolution is not None and self.resolution < 1:
            raise UserError(f"resolution must be >= 1 or null (native size), got {self.resolution}")
        if self.data_dir is not None and self.train_data_dir is not None:
            raise UserError("pass either data_dir (IDX files) or train_data_dir (an image folder), not both")
        if self.train_data_dir is not None and self.dataset != DEFAULT_DATASET:
            raise UserError(f"pass either --train_data_dir (an image folder) or --dataset (a Hub id or Parquet folder), "
                            f"not both: got --train_data_dir {self.train_data_dir} and --dataset {self.dataset}")
        if self.lr_warmup_steps < 0:
            raise UserError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"mixed_precision must be one of no, fp16, bf16, got {self.mixed_precision!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError("checkpoints_total_limit must be >= 1 or null (keep all)")
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if self.compile_mode not in modes:
            raise UserError(f"compile_mode must be one of {', '.join(modes)}, got {self.compile_mode!r}")
        if self.report_to not in ("tensorboard", "none"):
            raise UserError(f"report_to must be tensorboard or none, got {self.report_to!r}")
        from diffusers.optimization import SchedulerType

        names = [s.value for s in SchedulerType]
        if self.lr_scheduler not in names:
            raise UserError(f"lr_scheduler {self.lr_scheduler!r} is unknown; choose one of {', '.join(names)}")


def check_eval_num_samples(n):
    """Refused at the start, not after training: too few samples to score is known before any step."""
    from .sampling import MIN_SAMPLES

    if n != 0 and not n >= MIN_SAMPLES:
        raise UserError(f"eval_num_samples must be 0 (no scores) or at least {MIN_SAMPLES}, got {n}")


@dataclass
class AutoencoderModelConfig:
    """Arguments of CABAutoencoder; they become its config.json."""

    block_out_channels: list = option(factory=lambda: [64, 128, 128], help="one entry per resolution; 3 -> 32x32 to 8x8")
    layers_per_block: int = option(2, "residual CAB blocks per resolution")
    latent_channels: int = option(4, "4x8x8 latents: small enough for a fast UNet, rich enough for 38 dB")
    reduction: int = option(8, "channel-attention squeeze ratio")
    norm_num_groups: int = option(16, "GroupNorm groups; must divide every block_out_channels entry")


@dataclass
class AutoencoderTrainConfig(TrainConfig):
    output_dir: str = option("runs/autoencoder", "the run folder: model, pictures, logs, checkpoints")
    autoencoder: AutoencoderModelConfig = option(factory=AutoencoderModelConfig, help="the architecture")
    tsne_num_points: int = option(10000, "t-SNE of the full test split; lower it for a faster CPU run")
    max_eval_samples: Optional[int] = option(None, "PSNR/SSIM over the full test split unless set (quick tests)")
    max_resolution: Optional[int] = option(None, "larger images are resized down to this side unless --resolution "
                                           "is set (the quick configs: minutes on a CPU); null: no cap")

    def validate(self):
        super().validate()
        if self.max_resolution is not None and self.max_resolution < 8:
            raise UserError(f"max_resolution must be >= 8 or null (no cap), got {self.max_resolution}")
        ae = self.autoencoder
        if len(ae.block_out_channels) < 2:
            raise UserError("autoencoder.block_out_channels needs >= 2 entries (each extra one halves the size)")
        for c in ae.block_out_channels:
            if c % ae.norm_num_groups or c % ae.reduction:
                raise UserError(f"autoencoder channel count {c} must be divisible by norm_num_groups "
                                f"({ae.norm_num_groups}) and reduction ({ae.reduction})")


@dataclass
class UNetConfig:
    """Arguments of diffusers' UNet2DModel for 8x8 latents."""

    block_out_channels: list = option(factory=lambda: [128, 256], help="channels per level; each level after the first halves the latents")
    down_block_types: list = option(factory=lambda: ["DownBlock2D", "AttnDownBlock2D"], help="DownBlock2D or AttnDownBlock2D (attention) per level")
    up_block_types: list = option(factory=lambda: ["AttnUpBlock2D", "UpBlock2D"], help="the mirror of down_block_types: UpBlock2D or AttnUpBlock2D")
    layers_per_block: int = option(2, "ResNet blocks per level")
    attention_head_dim: int = option(64, "channels per attention head in the Attn* blocks")
    norm_num_groups: int = option(32, "GroupNorm groups; must divide every block_out_channels entry")
    dropout: float = option(0.0, "dropout inside the ResNet blocks")


@dataclass
class LatentDDPMTrainConfig(TrainConfig):
    output_dir: str = option("runs/latent_ddpm", "the run folder: it ends up a complete pipeline folder")
    autoencoder: Optional[str] = option(None, "a trained autoencoder folder or Hub id; null: train one first, then "
                                        "this model, then (--student_steps) a student: the one command (pipeline/stages.py)")
    unet: UNetConfig = option(factory=UNetConfig, help="the denoiser")
    learning_rate: float = option(2e-4, "peak learning rate after warmup")
    ddpm_num_steps: int = option(1000, "training timesteps of the noise schedule")
    ddpm_beta_schedule: str = option("squaredcos_cap_v2", "cosine schedule: more useful steps at low noise")
    # v_prediction: with the cosine schedule alpha_bar(999) ~ 2e-9, so an epsilon model's x0 estimate
    # near t=T divides its error by 5e-5 and every sampler starting at t=999 diverges (measured).
    prediction_type: str = option("v_prediction", "epsilon / v_prediction / sample; must match at sampling")
    snr_gamma: Optional[float] = option(5.0, "min-SNR loss weighting, best in benchmarks/schedules.py; null = off")
    timestep_sampling: str = option("uniform", "training timesteps: uniform; logit_normal (SD3's, most at middling "
                                    "noise); loss_weight (drawn in proportion to the loss weight, all then weighed alike)")
    conditioning: str = option("none", "none / class: class-conditional UNet with label dropout for CFG")
    class_dropout: float = option(0.1, "fraction of labels dropped so one model learns both modes")
    class_balance: float = option(0.0, "class-conditional: draw an image of a class of n images with weight "
                                  "n**-class_balance (0: as the data holds them, 1: every class equally often)")
    use_ema: bool = option(True, "EMA weights sample better than the raw ones")
    ema_max_decay: float = option(0.9999, "cap on the EMA decay; short runs never reach it (docs/tuning.md)")
    ema_inv_gamma: float = option(1.0, "EMA warm-up: decay = 1 - (1 + step / ema_inv_gamma) ** -ema_power")
    ema_power: float = option(0.75, "EMA warm-up speed: 3/4 suits short runs, 2/3 long ones (diffusers' EMAModel)")
    save_images_steps: int = option(500, "decoded sample grids to TensorBoard this often")
    # SDE DPM-Solver++ at 10 steps: the best FID per second measured on the demo model (docs/fast_sampling.md).
    sampler: str = option("sde-dpm", "the scheduler saved with the pipeline (pipe()'s default) and used for the "
                          "pictures and scores: ddpm, ddim, dpm, sde-dpm, unipc, euler, options after a colon")
    num_inference_steps: int = option(10, "the saved pipeline's default steps (pipe() with none given), and those "
                                      "of the pictures and scores at the end")
    eval_num_samples: int = option(10000, "score this many samples at the end (FID etc.); 0 skips it")
    eval_guidance_scale: float = option(1.5, "class-conditional: guidance of the pictures, and of the end's class "
                                        "accuracy check (every class equally often, guidance.json)")
    push_to_hub: bool = option(False, "upload the pipeline folder at the end (not checkpoints or logs)")
    hub_model_id: Optional[str] = option(None, "the Hub repo to push to, user/name")
    hub_token: Optional[str] = option(None, "the Hub token, else HF_TOKEN or `hf auth login`; never saved")
    hub_private_repo: bool = option(False, "create the Hub repo as private")

    def check_sampler(self):
        """The sampler must build on this noise schedule and run num_inference_steps (in seconds, before any data)."""
        from .schedulers import check_steps, make_train_scheduler

        if self.sampler.partition(":")[0] == "lcm":
            raise UserError("sampler lcm is for consistency-distilled students (distill_latent_ddpm.py); a diffusion "
                            "model samples with ddpm, ddim, dpm, sde-dpm, unipc or euler")
        try:
            schedule = make_train_scheduler(self.ddpm_num_steps, self.ddpm_beta_schedule, self.prediction_type)
            check_steps(self.sampler, schedule.config, self.num_inference_steps)
        except ValueError as e:
            raise UserError(f"sampler: {first_line(e)}")

    def validate(self):
        from .schedulers import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SAMPLING

        super().validate()
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}")
        if self.ddpm_beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"ddpm_beta_schedule must be one of {', '.join(BETA_SCHEDULES)} (the cosine schedule is "
                            f"squaredcos_cap_v2), got {self.ddpm_beta_schedule!r}")
        if self.timestep_sampling not in TIMESTEP_SAMPLING:
            raise UserError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, got "
                            f"{self.timestep_sampling!r}")
        if self.conditioning not in ("none", "class"):
            raise UserError(f"conditioning must be none or class, got {self.conditioning!r}")
        if not 0 <= self.class_dropout < 1:
            raise UserError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if not 0 <= self.class_balance <= 1:
            raise UserError(f"class_balance must be in [0, 1] (0: as the data holds them, 1: every class equally "
                            f"often), got {self.class_balance}")
        if self.class_balance and self.conditioning != "class":
            raise UserError("class_balance draws classes for a class-conditional model; set --conditioning class "
                            "or drop --class_balance")
        check_eval_num_samples(self.eval_num_samples)
        if not self.eval_guidance_scale >= 0:
            raise UserError(f"eval_guidance_scale must be >= 0 (1: no guidance), got {self.eval_guidance_scale}")
        if self.ddpm_num_steps < 2 or self.num_inference_steps < 1 or self.save_images_steps < 1:
            raise UserError("ddpm_num_steps must be >= 2, num_inference_steps and save_images_steps >= 1")
        self.check_sampler()
        u = self.unet
        if not (len(u.block_out_channels) == len(u.down_block_types) == len(u.up_block_types)):
            raise UserError("unet.block_out_channels, unet.down_block_types and unet.up_block_types need the same length")
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("push_to_hub needs a repo: pass --hub_model_id user/name")


@dataclass
class DistillConfig(TrainConfig):
    """Consistency distillation of a trained pipeline folder (distill_latent_ddpm.py; pipeline/distill.py)."""

    output_dir: str = option("runs/distill", "the run folder: it ends up a complete pipeline folder with LCMScheduler")
    teacher: str = option("runs/latent_ddpm", "a pipeline folder of train_latent_ddpm.py: the frozen teacher")
    learning_rate: float = option(1e-3, "peak learning rate; the student starts from the teacher's weights (2e-4 measured worse)")
    lr_scheduler: str = option("constant", "the schedule the step study measured (cosine not compared at target 0.99)")
    max_train_steps: int = option(2800, "optimizer steps; at target 0.995 the demo's 2-step FID still falls at 2,800")
    num_ddim_timesteps: int = option(50, "the DDIM grid the teacher solves on (skip = 1000 / this); the most steps "
                                         "the student can sample with (LCMScheduler's original_inference_steps)")
    guidance_scale: float = option(1.0, "class-conditional teachers: classifier-free guidance folded into the target")
    class_dropout: float = option(0.1, "class-conditional: fraction of labels dropped, so the student keeps a null label")
    ema_decay: float = option(0.995, "target network, an EMA of the student; LCM's 0.95 peaked early and then degraded")
    huber_c: float = option(0.001, "pseudo-Huber loss constant: sqrt(d^2 + c^2) - c")
    timestep_scaling: float = option(10.0, "c_skip/c_out boundary scalings at t * this (LCMScheduler's default)")
    save_images_steps: int = option(500, "1-, 2- and 4-step sample grids to TensorBoard this often")
    eval_steps: list = option(factory=lambda: [1, 2, 4], help="student step counts scored and drawn at the end")
    default_steps: int = option(4, "what pipe() samples with when given no num_inference_steps (docs/fast_sampling.md)")
    default_timesteps: Optional[list] = option(
        factory=lambda: [[999, 699], [999, 859, 699, 499]],
        help="the student's timesteps per step count, from the grid; null: LCM's evenly spaced ones (2 steps: "
             "[999, 699] scored 3.07 against 4.32 for [999, 499]; docs/fast_sampling.md)")
    eval_num_samples: int = option(2000, "score this many samples per step count at the end; 0 skips it")

    def validate(self):
        super().validate()
        if not 2 <= self.num_ddim_timesteps <= 1000:
            raise UserError(f"num_ddim_timesteps must be in [2, 1000], got {self.num_ddim_timesteps}")
        if self.guidance_scale < 1:
            raise UserError(f"guidance_scale must be >= 1 (1: no guidance), got {self.guidance_scale}")
        if not 0 <= self.class_dropout < 1 or not 0 <= self.ema_decay < 1 or self.huber_c <= 0:
            raise UserError("class_dropout and ema_decay must be in [0, 1) and huber_c > 0")
        check_eval_num_samples(self.eval_num_samples)
        if self.save_images_steps < 1:
            raise UserError(f"save_images_steps must be >= 1, got {self.save_images_steps}")
        bad = [s for s in self.eval_steps if not isinstance(s, int) or not 1 <= s <= self.num_ddim_timesteps]
        if not 1 <= self.default_steps <= self.num_ddim_timesteps:
            bad.append(self.default_steps)
        if not self.eval_steps or bad:
            raise UserError(f"eval_steps and default_steps must be step counts from 1 to num_ddim_timesteps "
                            f"({self.num_ddim_timesteps}): the student's grid has no more; got {bad or self.eval_steps}")
        for ts in self.default_timesteps or []:
            ok = isinstance(ts, list) and 1 <= len(ts) <= self.num_ddim_timesteps and all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ts)
            if not ok or any(a <= b for a, b in zip(ts, ts[1:])):
                raise UserError(f"default_timesteps holds lists of descending timesteps, one list per step count "
                                f"(e.g. [[999, 699]]); got {ts!r}")
        counts = [len(ts) for ts in self.default_timesteps or []]
        if len(set(counts)) != len(counts):
            raise UserError(f"default_timesteps has two lists of the same length; keep one per step count: "
                            f"{self.default_timesteps}")


# ---------------------------------------------------------------------------------------
# Loading: defaults <- YAML <- command line


def _check_type(key, value, hint, raw=None):
    """Return `value` converted to the type `hint`, or raise a UserError naming `key`.
    `raw` is the command-line text, kept for string options (YAML would read `no` as False)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is str and raw is not None and not isinstance(value, str):
        return raw  # `--mixed_precision no` means "no", not YAML's False
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    expected = origin or hint
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{key} expects {getattr(expected, '__name__', expected)}, got {value!r}")
    return value


class _CommandLineValue(str):
    """A value typed on the command line: parsed as YAML, except for string options."""

    def __new__(cls, text, bare=False):
        self = super().__new__(cls, text)
        self.bare = bare
        return self

    def parsed(self):
        try:
            return yaml.safe_load(self) if self != "" else None
        except yaml.YAMLError:
            return str(self)


def _build(cls, values: dict, prefix=""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            full = prefix + key
            guess = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {prefix + guess[0]!r}? " if guess else ""
            raise UserError(f"unknown config key {full!r}; {hint}valid keys: {', '.join(prefix + n for n in names)}")
        hint = hints[key]
        raw = None
        if isinstance(value, _CommandLineValue):
            if value.bare and hint is not bool:
                raise UserError(f"--{prefix + key} needs a value")
            raw, value = str(value), value.parsed()
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{prefix + key} must be a mapping of options, got {value!r}")
            kwargs[key] = _build(hint, value, prefix + key + ".")
        else:
            kwargs[key] = _check_type(prefix + key, value, hint, raw)
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value):
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise UserError(f"--{dotted}: {p} is not a group of options")
    tree[parts[-1]] = value


def _merge(base: dict, over: dict):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def read_options(argv, cls=None):
    """The options `argv` sets, as a nested dict (`--config` files merged in order, then `--key value` pairs),
    and whether `--dry_run` was passed. `--help` prints `cls`'s options and exits."""
    values, overrides, i, dry_run = {}, {}, 0, False
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(describe(cls, Path(sys.argv[0]).name))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; options look like --key value")
        key, sep, raw = arg[2:].partition("=")
        bare = not sep and (i + 1 >= len(argv) or argv[i + 1].startswith("--"))
        if not sep and not bare:
            raw, i = argv[i + 1], i + 1
        i += 1
        if key == "config":
            if bare:
                raise UserError("--config needs a value: a YAML file such as configs/latent_ddpm_quick.yaml")
            values = _merge(values, read_yaml(raw))
            continue
        if key == "dry_run":
            dry_run = bare or _check_type("dry_run", _CommandLineValue(raw).parsed(), bool)
            continue
        # A bare flag (`--push_to_hub`) means true, as in diffusers' scripts; other types then complain.
        _set_nested(overrides, key, _CommandLineValue("true", bare=True) if bare else _CommandLineValue(raw))
    return _merge(values, overrides), dry_run


def option_value(values: dict, key):
    """The value `values` (from `read_options`) holds for a top-level `key`, parsed; None when it is not set."""
    value = values.get(key)
    return value.parsed() if isinstance(value, _CommandLineValue) else value


def build_config(cls, values: dict):
    """A validated `cls` from nested option values (YAML values, or command-line text)."""
    cfg = _build(cls, values)
    cfg.validate()
    return cfg


def merge_options(*layers: dict) -> dict:
    """Option dicts merged left to right (later wins, groups such as `unet` key by key); the inputs are kept."""
    import copy

    merged = {}
    for layer in layers:
        _merge(merged, copy.deepcopy(layer))
    return merged


def parse_config(cls, argv):
    """Build a validated `cls` from `--config FILE` and `--key value` pairs in argv.
    `--help` prints every option with its reason and `--dry_run` the resolved config; both then exit."""
    values, dry_run = read_options(argv, cls)
    cfg = build_config(cls, values)
    if dry_run:  # what the run would use, nothing more: no folder, no data, no model
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return cfg


def read_yaml(path):
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} not found; pass --config configs/<name>.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {first_line(e)}")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of key: value")
    return data


def to_dict(cfg, redact=True) -> dict:
    d = dataclasses.asdict(cfg)
    for k in SECRET_KEYS & d.keys():
        if redact and d[k] is not None:
            d[k] = "<redacted>"
    return d


def save_config(cfg, path):
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _shown(value) -> str:
    """A default as it would be typed on the command line (YAML): null, true, [64, 128], runs/demo."""
    if isinstance(value, str):
        return value  # string options take the text as typed (`--mixed_precision no`)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def describe(cls, prog="SCRIPT") -> str:
    """`--help`: the options that are not config keys, then every key with its default and its reason."""
    lines = [f"usage: python {prog} [--config FILE] [--key value ...] [--dry_run] [--debug]", "",
             "  --config FILE   read options from a YAML file (configs/*.yaml); the command line overrides it",
             "  --dry_run       print the resolved options as YAML and exit, training nothing",
             "  --debug         show the traceback behind an `error:` line",
             "  -h, --help      show this text", "",
             f"options of {cls.__name__}: --key value, nested as --group.key value; values are YAML "
             "(true, 1e-4, null, [64,128])"]

    def walk(c, prefix):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"  --{prefix}{f.name}.*: {f.metadata.get('help', '')}")
                walk(hints[f.name], prefix + f.name + ".")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            left = f"  --{prefix}{f.name} {_shown(default)}"
            why = f.metadata.get("help", "")
            lines.append(f"{left:<44}{why}" if len(left) < 44 else f"{left}\n{'':<44}{why}")

    walk(cls, "")
    return "\n".join(lines)
