"""The one command: a folder of images (or a dataset) to a pipeline people can use, and a few-step student.

    python train_latent_ddpm.py --train_data_dir DIR --output_dir runs/mine --student_steps 2
    accelerate launch train_latent_ddpm.py --dataset ID --output_dir runs/mine --preset gpu

Without --autoencoder, train_latent_ddpm.py runs the stages in one process, each exactly as its own script would
(the same checks, checkpoints, exact resume, signals and folder lock):
  1. autoencoder  -> OUTPUT_DIR/autoencoder   (pipeline/autoencoder_training.py)
  2. pipeline     -> OUTPUT_DIR/pipeline      (pipeline/latent_training.py), on that autoencoder
  3. student      -> OUTPUT_DIR/student       (pipeline/distill.py), only with --student_steps N

A stage's options, later layers win: the preset's YAML for it; its own YAML (--config for the pipeline stage,
--autoencoder_config, --student_config); options without a prefix (those of the data and the machine, SHARED, go
to every stage, the image geometry to the autoencoder, the rest to the pipeline stage); options with the stage's
prefix (--autoencoder_max_train_steps, --student_learning_rate, ...). A batch the user did not choose shrinks to
fit small data. With --resume_from_checkpoint latest a finished stage is not run again.
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import autoencoder_training, distill, latent_training
from .config import (AutoencoderTrainConfig, DistillConfig, LatentDDPMTrainConfig, build_config, merge_options,
                     option_value, read_options, read_yaml, to_dict)
from .errors import UserError
from .image_data import DATA_OPTIONS, load_images

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Each preset is the stage YAMLs it starts from: "cpu" the quick configs (minutes on 2 cores, docs/tuning.md),
# "gpu" the full configs (bf16, torch.compile; docs/results.md). The default: gpu when CUDA is there.
PRESETS = {
    "cpu": {"autoencoder": "autoencoder_quick.yaml", "pipeline": "latent_ddpm_quick.yaml", "student": "distill_quick.yaml"},
    "gpu": {"autoencoder": "autoencoder.yaml", "pipeline": "latent_ddpm.yaml", "student": "distill.yaml"},
}
# Colour images on the CPU start from the emoji study's recipe instead (docs/tuning.md: a wider UNet with attention,
# its batch, rate and sampler), which the digits' quick configs leave as smudges.
COLOUR_PRESETS = {"cpu": {"autoencoder": "emoji_autoencoder_quick.yaml", "pipeline": "emoji_latent_ddpm_quick.yaml"}}
# A preset is a recipe, not data: which data, its size and whether to condition on labels are the user's to say.
NOT_FROM_PRESETS = DATA_OPTIONS + ("resolution", "channels", "conditioning")
# Options without a prefix that every stage takes: which data, and how this machine runs.
SHARED = DATA_OPTIONS + ("max_train_samples", "seed", "mixed_precision", "num_threads", "report_to",
                         "resume_from_checkpoint", "compile", "compile_mode", "skip_figures")
GEOMETRY = ("resolution", "channels", "max_resolution")  # the autoencoder's; the later stages read it from it
PREFIXES = ("autoencoder", "student")  # --autoencoder_X and --student_X are option X of that stage
OWN = ("preset", "student_steps")  # options of the one command itself
MIN_BATCHES_PER_EPOCH = 4  # a batch the user did not set shrinks to give at least this many per epoch

HELP = """The one command (no --autoencoder): autoencoder -> latent model -> (--student_steps N) student, each into
a folder of --output_dir, with every option of train_autoencoder.py as --autoencoder_<option> and of
distill_latent_ddpm.py as --student_<option> (their YAMLs: --autoencoder_config, --student_config).
  --preset cpu|gpu        start from the quick (CPU minutes) or full (GPU, bf16, compile) configs; default: gpu
                          when a CUDA GPU is present
  --student_steps N       then distil a student that samples in N steps by default (1 to 4 measured)
With --autoencoder, the options below train the latent model on that autoencoder, as always.
"""


@dataclass
class Stage:
    name: str  # also the folder's name in --output_dir
    cfg: object
    train: object  # the stage's train(cfg)

    @property
    def folder(self) -> Path:
        return Path(self.cfg.output_dir)


def main(argv):
    """train_latent_ddpm.py: the latent stage on a given --autoencoder, else the one command."""
    if "-h" in argv or "--help" in argv:
        print(HELP)
        return latent_training.main(["--help"])
    rest, prefixed, own = split_argv(argv)
    values, dry_run = read_options(rest, LatentDDPMTrainConfig)
    if option_value(values, "autoencoder") is not None:
        if own or any(prefixed.values()):
            given = [f"--{k}" for k in own] + [f"--{p}_..." for p in PREFIXES if prefixed[p]]
            raise UserError(f"{', '.join(given)} belong to the one command, which trains its own autoencoder; leave "
                            "out --autoencoder, or distil this run later with distill_latent_ddpm.py --teacher")
        return latent_training.main(argv)
    stages = plan(values, prefixed, own)
    if dry_run:
        for stage in stages:
            print(f"# {stage.name}: {stage.folder}\n" + yaml.safe_dump(to_dict(stage.cfg), sort_keys=False), end="")
        return
    run(stages)


def split_argv(argv):
    """(the pipeline stage's arguments, {prefix: that stage's arguments without the prefix}, {own option: text})."""
    rest, prefixed, own, i = [], {p: [] for p in PREFIXES}, {}, 0
    while i < len(argv):
        arg = argv[i]
        name, sep, inline = arg[2:].partition("=") if arg.startswith("--") else (None, "", "")
        takes_next = name is not None and not sep and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = [argv[i + 1]] if takes_next else []
        i += 1 + len(value)
        prefix = next((p for p in PREFIXES if name and name.startswith(p + "_")), None)
        if name in OWN:
            if not sep and not value:
                raise UserError(f"--{name} needs a value")
            own[name] = inline if sep else value[0]
        elif prefix is not None:
            key = name[len(prefix) + 1:]
            prefixed[prefix] += [f"--{key}{sep}{inline}", *value]
        else:
            rest += [arg, *value]
    return rest, prefixed, own


def plan(values, prefixed, own) -> list:
    """The stages to run, each with its resolved, validated config; the data read once (a problem with it is one
    line, with nothing written) to fit the batches to it."""
    preset = own.get("preset") or ("gpu" if _cuda() else "cpu")
    if preset not in PRESETS:
        raise UserError(f"--preset {preset} is unknown; use cpu (minutes on a laptop) or gpu (the full configs)")
    top = Path(str(option_value(values, "output_dir") or LatentDDPMTrainConfig.output_dir))
    if option_value(values, "resume_from_checkpoint") not in (None, "latest"):
        raise UserError("the one command resumes with --resume_from_checkpoint latest (every stage continues at its "
                        "newest checkpoint); a checkpoint path is for the stage scripts")
    shared = {k: v for k, v in values.items() if k in SHARED}
    geometry = {k: v for k, v in values.items() if k in GEOMETRY}
    ae_user = read_options(prefixed["autoencoder"], AutoencoderTrainConfig)[0]
    pipeline_user = {k: v for k, v in values.items() if k not in GEOMETRY}
    student_user = read_options(prefixed["student"], DistillConfig)[0]
    if student_user and "student_steps" not in own:
        raise UserError("--student_* options were given without --student_steps N, which adds the student stage")

    def stages_from(files):
        ae = _stage_config("autoencoder", AutoencoderTrainConfig, files["autoencoder"], shared, geometry, ae_user,
                           {"output_dir": str(top / "autoencoder")})
        data = {k: getattr(ae, k) for k in DATA_OPTIONS}  # what the autoencoder reads, the later stages read
        latent = _stage_config("pipeline", LatentDDPMTrainConfig, files["pipeline"], pipeline_user, data,
                               {"output_dir": str(top / "pipeline"), "autoencoder": str(top / "autoencoder")})
        stages = [Stage("autoencoder", ae, autoencoder_training.train),
                  Stage("pipeline", latent, latent_training.train)]
        if "student_steps" in own:
            student = _stage_config("student", DistillConfig, files["student"], shared, data,
                                    {"default_steps": _steps(own["student_steps"])}, student_user,
                                    {"output_dir": str(top / "student"), "teacher": str(top / "pipeline")})
            stages.append(Stage("student", student, distill.train))
        return stages

    stages = stages_from(preset_files(preset, colour=False))  # every option checked before any image is read
    images = _training_images(stages[0].cfg)
    if images.ndim == 4 and preset in COLOUR_PRESETS:  # (N, 3, H, W): colour images get the colour recipe
        stages = stages_from(preset_files(preset, colour=True))
    fit_batches(stages, [ae_user, pipeline_user, student_user][:len(stages)], len(images))
    return stages


def preset_files(preset: str, colour: bool) -> dict:
    """{stage: its preset options}: the preset's YAMLs (the colour ones for colour images, where the preset has
    them), without the options of the data, which are the user's."""
    names = {**PRESETS[preset], **(COLOUR_PRESETS.get(preset, {}) if colour else {})}
    return {stage: {k: v for k, v in read_yaml(CONFIGS / name).items() if k not in NOT_FROM_PRESETS}
            for stage, name in names.items()}


def _stage_config(name, cls, *layers):
    """The stage's validated config from its option layers; a bad option says which stage's it is."""
    try:
        return build_config(cls, merge_options(*layers))
    except UserError as e:
        prefix = "" if name == "pipeline" else f" (its options: --{name}_<option>, --{name}_config)"
        raise UserError(f"the {name} stage{prefix}: {e}") from None


def _steps(text) -> int:
    """--student_steps as an int; its range (1 to the student's num_ddim_timesteps) is DistillConfig's to check."""
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--student_steps must be a step count such as 1, 2 or 4, got {text!r}") from None


def _training_images(ae_cfg):
    """The autoencoder's training images, as its stage will read them (a problem with them stops here)."""
    images = load_images("train", ae_cfg, ae_cfg.resolution, ae_cfg.channels, max_side=ae_cfg.max_resolution).images
    return images[:ae_cfg.max_train_samples]


def fit_batches(stages, users, num_images):
    """A preset's batch that leaves fewer than MIN_BATCHES_PER_EPOCH batches per epoch shrinks, with a note; a batch
    the user set is kept (and refused by the stage if the data cannot fill it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for stage, user in zip(stages, users):
        batch = stage.cfg.train_batch_size
        if "train_batch_size" in user or batch * world * MIN_BATCHES_PER_EPOCH <= num_images:
            continue
        stage.cfg.train_batch_size = max(1, num_images // (world * MIN_BATCHES_PER_EPOCH))
        prefix = "" if stage.name == "pipeline" else f"{stage.name}_"
        _say(f"note: {num_images} training images: the {stage.name}'s batch {batch} -> {stage.cfg.train_batch_size} "
             f"per process ({MIN_BATCHES_PER_EPOCH} batches per epoch at least); --{prefix}train_batch_size sets it")


def run(stages):
    start, ran = time.time(), False
    resume = stages[0].cfg.resume_from_checkpoint == "latest"
    for i, stage in enumerate(stages, 1):
        if resume and finished(stage):
            _say(f"[{i}/{len(stages)}] {stage.name}: finished earlier in {stage.folder}; not run again")
            continue
        if ran:
            _next_stage()
        _say(f"[{i}/{len(stages)}] {stage.name} -> {stage.folder}")
        stage.train(stage.cfg)
        ran = True
    _say(last_screen(stages, time.time() - start))


def finished(stage) -> bool:
    """Whether the stage's folder holds its finished run (timings.json is written last) with these options; a
    finished run with other options stops the command, naming them."""
    if not (stage.folder / "timings.json").is_file():
        return False
    try:
        saved = yaml.safe_load((stage.folder / "training_config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    now = to_dict(stage.cfg)
    diffs = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items()
             if k != "resume_from_checkpoint" and saved.get(k) != v]
    if diffs:
        raise UserError(f"{stage.folder} holds a finished {stage.name} trained with other options ({'; '.join(diffs)}); "
                        "use a new --output_dir to start afresh, or the old options to resume")
    return True


def last_screen(stages, seconds) -> str:
    """What was made, its scores beside their floor, and the commands to sample, serve and push."""
    by_name = {s.name: s.folder for s in stages}
    lines = ["", f"done in {seconds / 60:.1f} min: made in {stages[0].folder.parent}"]
    ae = _json(by_name["autoencoder"] / "metrics.json")
    lines.append(f"  autoencoder  {by_name['autoencoder']}  " + (
        f"test PSNR {ae['psnr']:.2f} dB, SSIM {ae['ssim']:.3f}" if ae else "(no scores)"))
    m = _json(by_name["pipeline"] / "evaluation" / "metrics.json")
    score = (f"FID {m['fid']:.2f} (floor {m['fid_floor']:.2f}) at {m['num_inference_steps']} steps, "
             f"{m['images_per_second']:.0f} images/s" if m and m.get("fid") is not None else
             (m or {}).get("not_scored", "not scored (eval_num_samples 0)"))
    g = _json(by_name["pipeline"] / "evaluation" / "guidance.json")
    if g:
        row = g["scales"][0]
        score += (f"; class accuracy {row['class_accuracy']:.0%} at guidance {row['guidance_scale']} "
                  f"(real test images at the same class mix: {g['floor']['class_accuracy']:.0%})")
    lines.append(f"  pipeline     {by_name['pipeline']}  {score}")
    if "student" in by_name:
        d = _json(by_name["student"] / "distillation.json") or {}
        scores = ", ".join(f"{n} step{'s' * (int(n) > 1)} FID {s['fid']:.2f} (floor {s['fid_floor']:.2f})"
                           for n, s in (d.get("scores") or {}).items())
        lines.append(f"  student      {by_name['student']}  {scores or 'not scored'}")
    use = by_name.get("student", by_name["pipeline"])
    lines += ["", "sample (plain diffusers, anywhere):",
              "  from diffusers import DiffusionPipeline",
              f"  pipe = DiffusionPipeline.from_pretrained(\"{use}\", trust_remote_code=True)",
              "  images = pipe(batch_size=16).images",
              f"serve:  python app.py --pipeline {use}",
              f"push:   python -m pipeline.export push {use} USER/NAME"]
    return "\n".join(lines)


def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _say(line):
    if int(os.environ.get("RANK", "0")) == 0:  # before the first Accelerator there is no PartialState to ask
        print(line, flush=True)


def _next_stage():
    """Each stage builds its own Accelerator (its precision, accumulation, trackers): forget the last one's state
    (the process group stays), and wait for the main process, which finishes a stage (saving, scores) before the
    next one reads it."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    PartialState().wait_for_everyone()
