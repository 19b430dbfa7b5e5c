"""Write a trained pipeline as a folder plain diffusers can load, with a model card, and push it to the Hub.

The folder uses diffusers' community-components layout (docs: using-diffusers/custom_pipeline_overview):

    model_index.json           "_class_name": ["pipeline_latent_ddpm", "LatentDDPMPipeline"],
                               "autoencoder": ["autoencoder", "CABAutoencoder"]
    pipeline_latent_ddpm.py    the pipeline class, at the root
    autoencoder/autoencoder.py the autoencoder class, beside its config and weights
    unet/, scheduler/, autoencoder/  config + safetensors, as save_pretrained writes them
    README.md, samples.png     model card

so `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` loads it without this repo.
Plain `save_pretrained` alone would record the autoencoder as ["pipeline.autoencoder", ...] and ship no code.
"""

import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import HfApi, ModelCardData
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from .paths import follow_umask
from .schedulers import DEFAULT_SAMPLER, DEFAULT_SAMPLER_MEASURED, DEFAULT_STEPS, make_scheduler

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PIPELINE_MODULE, PIPELINE_CLASS = "pipeline_latent_ddpm", "LatentDDPMPipeline"
AUTOENCODER_MODULE, AUTOENCODER_CLASS = "autoencoder", "CABAutoencoder"
SHIPPED_CODE = (f"{PIPELINE_MODULE}.py", f"autoencoder/{AUTOENCODER_MODULE}.py")  # run by trust_remote_code
SAMPLE_GRID = "samples.png"

# What a pipeline folder consists of; everything else (checkpoint-*/, logs/, optimizer states...) stays home.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.md", "*.png", "*.gif", "*.yaml"]
IGNORE_PATTERNS = [
    "checkpoint-*", "*/checkpoint-*", "logs/*", "*/logs/*", "runs/*", "wandb/*",
    "__pycache__/*", "*/__pycache__/*", ".ipynb_checkpoints/*", "*/.ipynb_checkpoints/*", ".*",
]
REQUIRED_FILES = [
    "model_index.json", "README.md", *SHIPPED_CODE,
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "autoencoder/config.json", "autoencoder/diffusion_pytorch_model.safetensors",
    "scheduler/scheduler_config.json",
]
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")


class UploadPlan(NamedTuple):
    repo_id: str
    files: list[str]  # relative paths, posix separators, sorted
    allow_patterns: list[str]
    ignore_patterns: list[str]


def save_pipeline_folder(pipe, output_dir, metrics: dict | None = None, sample_grid_path: str | None = None,
                         dataset: str = "ylecun/mnist", license: str = "mit", repo_id: str | None = None,
                         distillation: dict | None = None) -> Path:
    """Save `pipe` (a LatentDDPMPipeline) as a complete, self-describing pipeline folder; returns its path."""
    if type(pipe).__name__ != PIPELINE_CLASS or type(pipe.autoencoder).__name__ != AUTOENCODER_CLASS:
        raise ValueError(f"expected a {PIPELINE_CLASS} with a {AUTOENCODER_CLASS}, got {type(pipe).__name__}")
    out = Path(output_dir)
    with staged(out, "pipeline") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        # Ship the code next to the weights, and point model_index.json at those files.
        shutil.copyfile(HERE / f"{PIPELINE_MODULE}.py", tmp / f"{PIPELINE_MODULE}.py")
        shutil.copyfile(HERE / "autoencoder.py", tmp / "autoencoder" / f"{AUTOENCODER_MODULE}.py")
        index_path = tmp / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [PIPELINE_MODULE, PIPELINE_CLASS]
        index["autoencoder"] = [AUTOENCODER_MODULE, AUTOENCODER_CLASS]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return write_model_card(pipe, out, metrics, sample_grid_path, dataset, license, repo_id, distillation)


@contextmanager
def staged(output_dir, name):
    """A temporary folder `output_dir/.tmp-<name>` to save into; once the block ends, its files move into
    `output_dir`. A full disk or a killed save leaves what was saved there before as it was."""
    out = Path(output_dir)
    tmp = out / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        follow_umask(tmp)
        for rel in _list_files(tmp):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, out / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model_card(pipe, output_dir, metrics: dict | None = None, sample_grid_path: str | None = None,
                     dataset: str = "ylecun/mnist", license: str = "mit", repo_id: str | None = None,
                     distillation: dict | None = None) -> Path:
    """(Re)write the model card of a saved pipeline folder, with `metrics` and the sample grid if given, and for
    a consistency-distilled student (`distillation`: teacher, settings, scores per step count) how it was made
    and how it samples; the weights are left alone. Written under a temporary name and renamed, so it is never half a file."""
    if sample_grid_path is not None and not os.path.isfile(sample_grid_path):
        raise FileNotFoundError(f"sample grid {sample_grid_path} does not exist")
    out = Path(output_dir)
    if sample_grid_path is not None and Path(sample_grid_path).resolve() != (out / SAMPLE_GRID).resolve():
        shutil.copyfile(sample_grid_path, out / SAMPLE_GRID)  # (a training run may have drawn it there already)
    tmp = out / "README.md.tmp"
    try:
        card = _model_card(pipe, metrics, sample_grid_path is not None, dataset, license, repo_id)
        if distillation is not None:
            card = _student_card(card, pipe, distillation, repo_id)
        tmp.write_text(card)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out / "README.md")
    _check_no_token(out, [p for p in _list_files(out) if not p.endswith(".safetensors")])
    return out


def _model_card(pipe, metrics, has_grid, dataset, license, repo_id) -> str:
    digits = dataset is not None and "mnist" in dataset.lower()  # MNIST and Fashion-MNIST: the card as it always was
    conditional = pipe.unet.config.num_class_embeds is not None
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    front = ModelCardData(
        library_name="diffusers", license=license, datasets=[dataset] if dataset else None,
        tags=[task, "diffusers", "latent-diffusion"] + (["mnist"] if digits else []),
    ).to_yaml()
    size, channels = pipe.image_size, pipe.num_channels
    what = f"{size}x{size} {'grayscale' if channels == 1 else 'RGB'} {'digits' if digits else 'images'}"
    source = f"[{dataset}](https://huggingface.co/datasets/{dataset})" if dataset else "a local image folder"
    unet, ae, sched = pipe.unet.config, pipe.autoencoder.config, pipe.scheduler.config
    latent = f"{ae.latent_channels}x{pipe.autoencoder.latent_size}x{pipe.autoencoder.latent_size}"
    n_unet = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    n_ae = sum(p.numel() for p in pipe.autoencoder.parameters()) / 1e6
    repo = repo_id or "path/to/this/folder"
    sampler, steps = sampler_name(pipe.scheduler), pipe.config.get("default_num_inference_steps", 50)
    measured_default = sampler == sampler_name(make_scheduler(DEFAULT_SAMPLER, sched)) and steps == DEFAULT_STEPS
    lines = [
        f"---\n{front}\n---", "",
        "# Latent diffusion for MNIST digits" if digits else f"# Latent diffusion for {dataset or 'small images'}", "",
        f"A latent diffusion model trained on {source} that generates"
        f" {what}. A convolutional autoencoder with channel attention (`CABAutoencoder`, {n_ae:.2f}M"
        f" parameters) compresses the {'digits' if digits else 'images'}, padded to {ae.sample_size}x{ae.sample_size},"
        f" into {latent} latents (scaled by"
        f" `scaling_factor={ae.scaling_factor:.4g}`); a diffusers `UNet2DModel` ({n_unet:.2f}M parameters) denoises"
        f" them with a {sched.num_train_timesteps}-step {sched.beta_schedule} noise schedule and"
        f" `prediction_type=\"{sched.prediction_type}\"`."
        + (f" The UNet is class-conditional ({unet.num_class_embeds - 1} classes plus a null label for"
           " classifier-free guidance)." if conditional else ""), "",
        "## Usage", "",
        "```python", "import torch", "from diffusers import DiffusionPipeline", "",
        f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)',
        f"images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images  # {sampler}, {steps} steps",
        f'images[0].save("{"digit" if digits else "image"}.png")',
    ]
    if conditional:
        names = pipe.class_names
        labels = list(range(unet.num_class_embeds - 1)) if not names else names if len(names) <= 4 else names[:4]
        lines += ["", "# class-conditional, with classifier-free guidance: one image per label"
                  + (" (by index or by name)" if names else ""),
                  f"images = pipe(class_labels={labels!r}, guidance_scale=2.0).images"]
        if names:
            lines += [f"# the {len(names)} classes: {', '.join(names)}"]
    lines += [
        "```", "",
        f"`pipe()` samples with the saved scheduler ({sampler}) in {steps} steps unless told otherwise. "
        + (DEFAULT_SAMPLER_MEASURED + " " if measured_default else "")
        + "Any diffusers scheduler built `from_config` of the saved one keeps the training noise schedule; the"
        " deterministic DPM-Solver++ (`trailing` spacing starts at the last training step):", "",
        "```python", "from diffusers import DPMSolverMultistepScheduler", "",
        "pipe.scheduler = DPMSolverMultistepScheduler.from_config(",
        '    pipe.scheduler.config, algorithm_type="dpmsolver++", timestep_spacing="trailing"',
        ")", "images = pipe(batch_size=16, num_inference_steps=10).images", "```", "",
        f"`output_type=\"np\"` gives a float array (N, {size}, {size}, {channels}) in [0, 1]. Passing `image=`"
        f" ({'digits' if digits else 'images'} in [0, 1]) and `strength=` edits existing ones SDEdit-style;"
        " `strength=0` returns the autoencoder reconstruction.", "",
    ]
    if metrics:
        lines += ["## Evaluation", "",
                  "Measured by this project's scorer (`python -m pipeline.evaluate`): FID and KID (torchmetrics), "
                  "precision, recall, density and coverage (prdc, k=3) on the features of a small transformers "
                  "ResNet trained on the dataset (a classifier for digits, contrastive with the labels where there "
                  "are any for other data; not Inception unless `features` says so; `classifier_*` names it), "
                  "against the test split. Each `*_floor` "
                  "is as many real training images as samples (`floor_num_samples`, at most 10,000) scored the same "
                  "way: what a perfect model would get. Each `*_reconstructed` is those real images passed through "
                  "this pipeline's autoencoder: the best any latent model decoded by it can expect. "
                  "`class_accuracy_floor` is the judge on real test images with every class counted equally, as "
                  "the guided samples ask for them.", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += [""]
    if has_grid:
        lines += ["## Samples", "", f"![samples]({SAMPLE_GRID})", ""]
    lines += [
        "## Security note", "",
        "Loading with `trust_remote_code=True` imports and runs the Python files shipped in this repository: "
        + " and ".join(f"`{p}`" for p in SHIPPED_CODE) + ". Read them before loading, and pin a `revision=`"
        " (commit hash) so later changes to the repository cannot change the code you run.", "",
    ]
    return "\n".join(lines)


def sampler_name(scheduler) -> str:
    """How the card names a scheduler: the class, and DPM-Solver's algorithm (its SDE form is another sampler)."""
    name = type(scheduler).__name__
    algorithm = scheduler.config.get("algorithm_type")
    return f"{name}, algorithm_type=\"{algorithm}\"" if algorithm else name


def _student_card(card: str, pipe, d: dict, repo_id=None) -> str:
    """A teacher's card turned into its consistency-distilled student's: LCMScheduler usage, how it was made."""
    start, end = card.index("## Usage"), card.index("`output_type=")
    conditional = pipe.unet.config.num_class_embeds is not None
    usage = [
        "## Usage", "",
        f"A consistency-distilled student of `{d['teacher']}`: it samples with the saved `LCMScheduler` in 1 to"
        f" {d['num_ddim_timesteps']} steps, one UNet call per step. Other schedulers read its output as a"
        " denoiser's and give poor digits (the pipeline warns).", "",
        "```python", "import torch", "from diffusers import DiffusionPipeline", "",
        f"pipe = DiffusionPipeline.from_pretrained(\"{repo_id or 'path/to/this/folder'}\", trust_remote_code=True)",
        f"images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images  # {d['default_steps']} steps"
        + next((f" at {ts}" for ts in d.get("default_timesteps") or [] if len(ts) == d["default_steps"]), ""),
        "images = pipe(batch_size=16, num_inference_steps=1).images  # 1 to the grid's steps",
    ]
    if d.get("default_timesteps"):
        usage += [f"images = pipe(batch_size=16, timesteps={d['default_timesteps'][0]}).images  # any from the grid"]
    if conditional:
        usage += [f"threes = pipe(class_labels=[3] * 8).images  # guidance {d['guidance_scale']}"
                  " is built in: leave guidance_scale at 1"]
    usage += ["```", "", ""]
    keys = ["teacher", "num_ddim_timesteps", "guidance_scale", "default_steps", "default_timesteps", "max_train_steps",
            "train_batch_size", "learning_rate", "ema_decay", "huber_c", "timestep_scaling", "distillation_seconds", "teacher_training_seconds"]
    made = ["## Consistency distillation", "",
            "Distilled with `distill_latent_ddpm.py` (diffusers' latent-consistency recipe: DDIM steps of the frozen"
            " teacher on a skipping grid, c_skip/c_out boundary scalings, an EMA target network, pseudo-Huber loss;"
            " classifier-free guidance folded into the target at `guidance_scale`).", "",
            "| setting | value |", "| --- | --- |", *[f"| {k} | {d.get(k)} |" for k in keys], ""]
    if d.get("scores"):
        made += ["Scored by this project's evaluation (`pipeline.evaluate`: the features of a judge trained on the"
                 " data itself, not Inception), against as many real images (the floor):", "",
                 "| steps | FID | precision | recall | FID floor | precision floor | recall floor |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        made += [f"| {n} | {s['fid']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['fid_floor']:.3f} | "
                 f"{s['precision_floor']:.3f} | {s['recall_floor']:.3f} |" for n, s in d["scores"].items()]
        made += [""]
    rest = card[end:]
    return card[:start] + "\n".join(usage + made) + "\n" + rest


def _list_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _check_no_token(folder: Path, files, token: str | None = None):
    """Refuse to ship a folder that contains a Hub token (never echo the token itself)."""
    secrets = [t for t in (token, os.environ.get("HF_TOKEN")) if t]
    for rel in files:
        text = (folder / rel).read_bytes().decode("utf-8", errors="ignore")
        if _TOKEN_RE.search(text) or any(s in text for s in secrets):
            raise ValueError(f"{folder / rel} contains what looks like a Hugging Face token; remove it before uploading")


def upload_plan(output_dir, hub_model_id: str) -> UploadPlan:
    """What `push_folder` would upload: the repo id, the files, and the patterns handed to `upload_folder`."""
    validate_repo_id(hub_model_id)
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; write it with save_pipeline_folder first")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a complete pipeline folder (missing {', '.join(missing)}); "
                         "write it with save_pipeline_folder")
    # The same filter upload_folder applies, so the plan is what actually goes up.
    files = list(filter_repo_objects(_list_files(folder), allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    return UploadPlan(hub_model_id, files, list(ALLOW_PATTERNS), list(IGNORE_PATTERNS))


def push_folder(output_dir, hub_model_id: str, token: str | None = None, private: bool = False):
    """Create the model repo if needed (`private` only applies on creation) and upload the planned files.

    The token is used in memory only (None: huggingface_hub's own login). Errors from the Hub, including offline
    mode, propagate unchanged. Returns huggingface_hub's CommitInfo.
    """
    plan = upload_plan(output_dir, hub_model_id)
    _check_no_token(Path(output_dir), [f for f in plan.files if not f.endswith(".safetensors")], token)
    api = HfApi(token=token)
    repo = api.create_repo(plan.repo_id, repo_type="model", exist_ok=True, private=private)
    commit = api.upload_folder(
        repo_id=repo.repo_id, repo_type="model", folder_path=str(output_dir),
        allow_patterns=plan.allow_patterns, ignore_patterns=plan.ignore_patterns,
        commit_message="Upload latent-diffusion MNIST pipeline",
    )
    logger.info("uploaded %d files to %s", len(plan.files), commit.commit_url)
    return commit


def main(argv=None):
    """`python -m pipeline.export push RUN_DIR user/name`: upload a finished run folder later, with exactly the
    files and model card that `--push_to_hub` sends (checkpoints and logs stay home)."""
    import argparse

    from .errors import UserError, first_line

    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="upload a finished pipeline folder to the Hub")
    push.add_argument("folder", help="a run folder of train_latent_ddpm.py")
    push.add_argument("repo_id", help="the model repo, user/name (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private (applies on creation only)")
    push.add_argument("--token", default=None, help="else HF_TOKEN or `hf auth login`")
    push.add_argument("--dry_run", action="store_true", help="list the files that would go up, and stop")
    args = parser.parse_args(argv)
    try:
        plan = upload_plan(args.folder, args.repo_id)
    except (OSError, ValueError) as e:  # no such folder, an incomplete one, a malformed repo id
        raise UserError(f"cannot upload {args.folder}: {first_line(e)}")
    if args.dry_run:
        print("\n".join(plan.files))
        print(f"{len(plan.files)} files would go to {plan.repo_id}")
        return
    try:
        commit = push_folder(args.folder, args.repo_id, token=args.token, private=args.private)
    except Exception as e:  # network, auth, permissions
        raise UserError(f"upload to {args.repo_id} failed ({type(e).__name__}: {first_line(e)}); the folder is "
                        "unchanged: check `hf auth login` and the network, then run this again")
    print(f"uploaded {len(plan.files)} files to {commit.commit_url}")


if __name__ == "__main__":
    from .errors import run_cli

    run_cli(main)
