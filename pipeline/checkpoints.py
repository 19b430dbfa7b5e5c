"""The run folder's guards and checkpoints: one run per folder (a lock), what a run was trained with and the check
that a resume continues it, checkpoints written whole or not at all, EMA weights inside them, resume, and saves
that fail in one line. Every training stage uses these through pipeline/training.py's loop and its own set-up.
"""

import atexit
import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .config import to_dict
from .errors import UserError, first_line
from .paths import follow_umask

logger = logging.getLogger(__name__)
STATE_FILE = "training_state.json"  # written last into a checkpoint; marks it complete


def any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any process: an all-reduce, so every process must call it."""
    if accelerator.num_processes == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


EMA_FIELDS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")


def keep_ema_in_checkpoints(accelerator, ema, model, folder, copy_to=None):
    """The EMA weights of `model` travel with the Accelerate state as diffusers-format `folder/` (safetensors);
    on load they are checked against `model` and also copied into `copy_to` (a target network) when given."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            ema.save_pretrained(os.path.join(output_dir, folder))

    def load_hook(models, input_dir):
        # What EMAModel.from_pretrained does, without building a throw-away model from a config.json that
        # also holds the EMA fields (diffusers warns about those, twice, on every resume).
        path = os.path.join(input_dir, folder)
        if not os.path.isdir(path):
            raise RuntimeError(f"checkpoint {input_dir} does not match this run: it has no {folder}/")
        state = {k: v for k, v in UNet2DModel.load_config(path).items() if k in EMA_FIELDS}
        weights = load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))
        names = [name for name, _ in model.named_parameters()]
        if set(names) != set(weights) or any(weights[n].shape != p.shape for n, p in zip(names, ema.shadow_params)):
            raise RuntimeError(f"{path} does not match this run's model (its EMA weights have other names or shapes)")
        ema.load_state_dict({**state, "shadow_params": [weights[n] for n in names]})
        ema.to(accelerator.device)
        if copy_to is not None:
            ema.copy_to(copy_to.parameters())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ---------------------------------------------------------------------------------------
# One run per folder: the main process holds an exclusive lock on <output_dir>/.lock.

LOCK_FILE = ".lock"


def lock_output_dir(accelerator, output_dir):
    """Take the run folder for this run, or stop (every process) with one line naming the run that has it.

    An flock is dropped by the kernel when its process dies, however it dies, so the lock of a killed
    run is simply taken over (with a note). Leftovers of a killed save are removed once the lock is held."""
    failure, held = None, None
    if accelerator.is_main_process:
        try:
            held = _take_lock(Path(output_dir))
            for tmp in Path(output_dir).glob(".tmp-*"):  # .tmp-checkpoint-N, .tmp-pipeline, ...
                shutil.rmtree(tmp, ignore_errors=True)
        except UserError as e:
            failure = e
    if any_process(accelerator, failure is not None) and failure is None:
        raise SystemExit(2)  # the main process prints why
    if failure is not None:
        raise failure
    return held


def _take_lock(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"{folder} is in use by another run (process {holder}); wait for it to end, "
                                "or pass another --output_dir")
            try:  # locked the file that is there now, not one replaced meanwhile
                if os.stat(folder / LOCK_FILE).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError as e:
        raise UserError(f"cannot lock the run folder {folder} ({first_line(e)}); pass a writable --output_dir")
    if previous and previous != str(os.getpid()):
        print(f"note: took over {folder / LOCK_FILE} from process {previous}, which ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release():  # an empty lock file says the last run ended normally
        try:
            os.ftruncate(fd, 0)
            os.close(fd)
        except OSError:
            pass

    atexit.register(release)
    return fd


def save_or_explain(save, output_dir, what):
    """Run `save()`; a write error (a full disk, a quota) becomes one line with the path and the free space.
    The saving functions write under temporary names, so what was saved before is left as it was."""
    from safetensors import SafetensorError

    try:
        return save()
    except (OSError, RuntimeError, SafetensorError) as e:  # Python, torch and safetensors word a full disk apart
        raise UserError(f"could not save {what} to {output_dir} ({write_problem(e, output_dir)}); what was saved "
                        "there before is untouched: free some space, then run the same command with "
                        "--resume_from_checkpoint latest") from e


# ---------------------------------------------------------------------------------------
# What a checkpoint was trained with, and the check that a resume continues the same run.


# Options every run keeps from its first start: they decide the data and its order (exact resume
# replays it), the batch, and so the path training takes. Each script adds those of its model.
RESUME_FIXED = ("dataset", "max_train_samples", "seed", "train_batch_size", "gradient_accumulation_steps")


def run_record(accelerator, cfg, fixed, **facts) -> dict:
    """The options in RESUME_FIXED + `fixed` (groups such as `unet` entry by entry) and `facts` (such as the
    autoencoder's fingerprint): what decides the model and the training path. Saved in every checkpoint,
    compared on resume."""
    options = to_dict(cfg)
    flat = {}
    for key in RESUME_FIXED + tuple(fixed):
        value = options[key]
        for k, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            flat[f"{key}.{k}" if k else key] = v
    return {**flat, "num_processes": accelerator.num_processes, **facts}


def check_output_dir(cfg, record):
    """Stop, before anything is written, if the run folder holds checkpoints of another configuration:
    resuming them would fail or silently train something else, and a fresh start would prune them."""
    for path in reversed(checkpoint_folders(cfg.output_dir)):
        if not checkpoint_is_complete(path):
            continue
        old = json.loads((path / STATE_FILE).read_text()).get("run")
        if old is None:  # saved before checkpoints recorded their options: loading them tells
            continue
        diffs = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in record.items() if old.get(k, v) != v]
        if diffs:
            raise UserError(f"{path} was trained with other options ({'; '.join(diffs)}); use a new --output_dir "
                            "to start afresh, or the old options to resume")


def _refresh_optimizer(cfg, optimizer, lr_scheduler):
    """A resumed optimizer and LR schedule take this run's learning rate, Adam betas and weight decay (the
    loaded state holds the old ones); the schedule's shape already comes from this run's options."""
    sched = getattr(lr_scheduler, "scheduler", lr_scheduler)
    lambdas = getattr(sched, "lr_lambdas", None)
    if lambdas is None:
        return
    sched.base_lrs = [cfg.learning_rate for _ in sched.base_lrs]
    for group, fn in zip(optimizer.param_groups, lambdas):
        group.update(initial_lr=cfg.learning_rate, lr=cfg.learning_rate * fn(sched.last_epoch),
                     betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay)
    sched._last_lr = [group["lr"] for group in optimizer.param_groups]


# ---------------------------------------------------------------------------------------
# Checkpoints: written under a temporary name and renamed when complete.


def checkpoint_folders(output_dir):
    """The checkpoint-N folders of a run, oldest first (complete or not)."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        try:
            found.append((int(p.name.split("-")[1]), p))
        except ValueError:
            pass
    return [p for _, p in sorted(found)]


def checkpoint_is_complete(path) -> bool:
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
        return isinstance(state.get("global_step"), int) and any(Path(path).glob("model*.safetensors"))
    except (OSError, ValueError):
        return False


def save_checkpoint(accelerator, output_dir, step, total_limit, extra_state=None):
    """Every process calls this (DeepSpeed/FSDP shard the state); the main process
    renames the finished folder into place and prunes old ones."""
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            with open(tmp / STATE_FILE, "w") as f:
                json.dump({"global_step": step, **(extra_state or {})}, f)
                f.flush()
                os.fsync(f.fileno())
    except Exception as e:  # a full disk, a quota, a file-size limit: torch, safetensors and Python word it differently
        failure = e
    _raise_if_any_failed(accelerator, failure, tmp, final, output_dir)  # also: every process has written its part
    if accelerator.is_main_process:
        follow_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _raise_if_any_failed(accelerator, failure, tmp, final, output_dir):
    """After a failed save on any process: remove the partial folder and stop with one line (every process)."""
    if any_process(accelerator, failure is not None) and failure is None:
        failure = RuntimeError("another process could not write its part")
    if failure is None:
        return
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    good = [p for p in checkpoint_folders(output_dir) if checkpoint_is_complete(p)]
    kept = f"the last good checkpoint {good[-1]} is untouched" if good else "no earlier checkpoint exists"
    raise UserError(f"could not write {final} ({write_problem(failure, output_dir)}); {kept}: free some space, "
                    "then run the same command with --resume_from_checkpoint latest")


def write_problem(e, path) -> str:
    """A write error and the free space where it happened, in words."""
    try:
        free = f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return f"{first_line(e)}; {free} on {path}"


def _prune(output_dir, total_limit):
    if total_limit is None:
        return
    good = [p for p in checkpoint_folders(output_dir) if checkpoint_is_complete(p)]
    # The newest complete checkpoint is always kept, whatever the limit.
    for p in good[:-max(total_limit, 1)]:
        shutil.rmtree(p, ignore_errors=True)


MISMATCH_WORDS = ("size mismatch", "must match", "Missing key", "Unexpected key", "does not match")


def resume(accelerator, cfg, optimizer=None, lr_scheduler=None) -> int:
    """Load the checkpoint named by resume_from_checkpoint; return the step to start at.

    `latest` picks the newest complete checkpoint, skipping damaged ones with a warning;
    no checkpoint at all starts from step 0 (so the same command works first time). A checkpoint
    that loads but does not fit this run's model stops the run: it is another run's, not damaged."""
    wanted = cfg.resume_from_checkpoint
    if not wanted:
        return 0
    if wanted == "latest":
        candidates = list(reversed(checkpoint_folders(cfg.output_dir)))
        if not candidates:
            accelerator.print(f"no checkpoint in {cfg.output_dir}; starting from step 0")
            return 0
    else:
        candidates = [Path(wanted)]
        if not candidates[0].is_dir():
            raise UserError(f"checkpoint {wanted} does not exist; pass a checkpoint-N folder or 'latest'")
    for path in candidates:
        if not checkpoint_is_complete(path):
            if wanted != "latest":
                raise UserError(f"checkpoint {path} is incomplete or damaged ({STATE_FILE} or model weights missing)")
            logger.warning(f"skipping damaged checkpoint {path}")
            accelerator.print(f"warning: skipping damaged checkpoint {path}")
            continue
        try:
            accelerator.load_state(str(path))
        except Exception as e:  # a truncated file inside an otherwise complete folder, or another run's model
            if any(w in str(e) for w in MISMATCH_WORDS):
                raise UserError(f"checkpoint {path} does not fit this run's model ({first_line(e)}): it was trained "
                                "with other options; use a new --output_dir to start afresh, or the old options "
                                "to resume")
            if wanted != "latest":
                raise UserError(f"checkpoint {path} cannot be loaded: {first_line(e)}")
            accelerator.print(f"warning: skipping unreadable checkpoint {path}: {first_line(e)}")
            continue
        step = json.loads((path / STATE_FILE).read_text())["global_step"]
        if optimizer is not None:
            _refresh_optimizer(cfg, optimizer, lr_scheduler)
        accelerator.print(f"resumed from {path} at step {step}")
        return step
    # Loading may have half-filled the model before it failed: training on from step 0 would not be a fresh run.
    raise UserError(f"no checkpoint in {cfg.output_dir} could be loaded (see the warnings above); move them aside "
                    "and run again to start afresh, or use a new --output_dir")
