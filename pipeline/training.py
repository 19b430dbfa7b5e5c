"""Pieces both training scripts share: the Accelerator, data order, checkpoints, signals.

Functions, not a Trainer: each script keeps its own loop and reads top to bottom.

Determinism: the data order of step N is a pure function of (seed, N) and the noise of
step N comes from a generator seeded with (seed, N, rank), so a run resumed from a
checkpoint follows exactly the path of an uninterrupted one without restoring any RNG.
"""

import atexit
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from .config import to_dict
from .errors import UserError, first_line
from .paths import follow_umask

logger = logging.getLogger(__name__)
STATE_FILE = "training_state.json"  # written last into a checkpoint; marks it complete


def make_accelerator(cfg) -> Accelerator:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cuda = torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and not cuda:
        raise UserError("mixed_precision fp16 needs a CUDA GPU; use --mixed_precision bf16 or no on CPU")
    if cfg.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16; use --mixed_precision fp16 or no")
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=os.path.join(cfg.output_dir, cfg.logging_dir))
    atexit.unregister(_end_process_group)  # once, however many stages this process runs
    atexit.register(_end_process_group)
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=project,
        # Without cpu=True a CUDA-less Accelerator ignores torchrun's environment and
        # every process trains alone; with it, processes join one gloo group.
        cpu=not cuda,
    )


def end_training(accelerator):
    """End the trackers (TensorBoard flushes). The process group stays until the process exits (see
    make_accelerator): the one command runs its next stage in it."""
    for tracker in accelerator.trackers:
        tracker.finish()


def _end_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def announce(accelerator, cfg):
    accelerator.print(f"training on {accelerator.num_processes} process(es), device {accelerator.device.type}, "
                      f"mixed precision {cfg.mixed_precision}, batch {cfg.train_batch_size} per process")


def any_process(accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any process: an all-reduce, so every process must call it."""
    if accelerator.num_processes == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def check_replicas_in_sync(accelerator, model):
    """Every process must end with the same weights (DDP keeps them so); say so, or fail."""
    if accelerator.num_processes == 1:
        return
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    everyone = accelerator.gather(fingerprint)
    if not (everyone == everyone[0]).all():
        raise RuntimeError(f"processes ended with different weights: {everyone.tolist()}")
    accelerator.print(f"weights identical on all {accelerator.num_processes} processes")


def init_trackers(accelerator, cfg, name):
    # TensorBoard hparams take scalars only: flatten groups and stringify lists.
    flat = {}
    for k, v in to_dict(cfg).items():
        for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)]):
            key = f"{k}.{kk}" if kk else k
            if key != "hub_token":
                flat[key] = vv if isinstance(vv, (int, float, str, bool)) else str(vv)
    accelerator.init_trackers(name, config=flat)


def tensorboard_writer(accelerator):
    """The SummaryWriter for pictures, or None when tracking is off or not main."""
    if not accelerator.is_main_process:
        return None
    try:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
    except (ValueError, KeyError):
        return None
    return writer if hasattr(writer, "add_image") else None  # report_to none: accelerate's empty GeneralTracker


class BatchOrder:
    """Which training items each process uses at each micro-step: a fresh permutation
    per epoch from (seed, epoch), sliced into global batches, each split across ranks."""

    def __init__(self, num_items, batch_size, seed, rank=0, world=1, device="cpu"):
        self.n, self.b, self.seed, self.rank, self.world = num_items, batch_size, seed, rank, world
        self.device = device  # indices live where the data does: no host-to-device copy (and wait) per step
        self.per_epoch = num_items // (batch_size * world)
        if self.per_epoch < 1:
            raise UserError(f"train_batch_size {batch_size} x {world} processes exceeds the {num_items} "
                            "training items; lower --train_batch_size")
        self._epoch, self._perm = None, None

    def __call__(self, micro_step) -> torch.Tensor:
        epoch, k = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).to(self.device)
        start = (k * self.world + self.rank) * self.b
        return self._perm[start:start + self.b]


def step_generator(seed, step, rank, device) -> torch.Generator:
    """The noise source of one step on one process, independent of anything before it."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def prepare(accelerator, cfg, model, tracker_name):
    """AdamW (fused on CUDA) with warmup + decay, wrapped by Accelerate; trackers started.
    Returns (model, model to call in the training loop, optimizer, lr_scheduler)."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, fused=torch.cuda.is_available())
    # Accelerate steps a prepared LR scheduler once per process per optimizer step.
    n = accelerator.num_processes
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * n,
                                 num_training_steps=cfg.max_train_steps * n)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if cfg.report_to != "none":
        init_trackers(accelerator, cfg, tracker_name)
    return model, (torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model), optimizer, lr_scheduler


def optimizer_step(accelerator, model, optimizer, lr_scheduler, loss, max_grad_norm):
    """Backward, clip on the synchronising micro-step, step; Accelerate skips the step itself
    on accumulation micro-steps."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


class LossMeter:
    """The running loss, kept on the device so the hot loop never waits for the GPU;
    summarised (averaged over steps and processes) only when logging."""

    def __init__(self, accelerator, cfg, start_step):
        self.accelerator = accelerator
        self.items_per_step = cfg.train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
        self.sum, self.count = torch.zeros((), device=accelerator.device), 0
        self.first_bad = torch.full((), -1, device=accelerator.device)
        self.start_time, self.start_step = time.time(), start_step

    def add(self, loss, step):
        loss = loss.detach().float()
        self.first_bad = track_non_finite(self.first_bad, loss, step)
        self.sum, self.count = self.sum + loss, self.count + 1

    def check(self):
        check_finite(self.accelerator, self.first_bad)

    def summary(self, step):
        """(mean loss since the last summary over all processes, items per second so far)."""
        self.check()
        mean = (self.accelerator.reduce(self.sum, reduction="mean") / max(self.count, 1)).item()
        self.sum, self.count = torch.zeros_like(self.sum), 0
        rate = (step - self.start_step) * self.items_per_step / (time.time() - self.start_time)
        return mean, rate


def checkpoint_if_due(accelerator, cfg, step, stop, meter, record):
    """Save every `checkpointing_steps`, and on SIGTERM/SIGINT save and exit (every process alike).
    `record` (from `run_record`) goes into the checkpoint, so that a resume can check what it resumes."""
    stopping = stop.requested(accelerator, step)
    if step % cfg.checkpointing_steps == 0 or stopping:
        meter.check()  # never checkpoint NaN weights
        ckpt = save_checkpoint(accelerator, cfg.output_dir, step, cfg.checkpoints_total_limit, {"run": record})
        if stopping:
            exit_after_signal(accelerator, ckpt, stop.signum)


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


def first_samples(accelerator, cfg, images, labels=None):
    """The first max_train_samples training items; says so when the dataset has fewer than asked for."""
    n = cfg.max_train_samples
    if n is not None and n > len(images):
        accelerator.print(f"note: max_train_samples {n} is more than the {len(images)} training images; "
                          f"using all {len(images)}")
    return images[:n], None if labels is None else labels[:n]


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
    spec = cfg.resume_from_checkpoint
    if not spec:
        return 0
    if spec == "latest":
        candidates = list(reversed(checkpoint_folders(cfg.output_dir)))
        if not candidates:
            accelerator.print(f"no checkpoint in {cfg.output_dir}; starting from step 0")
            return 0
    else:
        candidates = [Path(spec)]
        if not candidates[0].is_dir():
            raise UserError(f"checkpoint {spec} does not exist; pass a checkpoint-N folder or 'latest'")
    for path in candidates:
        if not checkpoint_is_complete(path):
            if spec != "latest":
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
            if spec != "latest":
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


# ---------------------------------------------------------------------------------------
# Stopping cleanly


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checks it between steps, saves and exits."""

    def __init__(self):
        self.signum = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    # Processes agree on stopping through an all-reduce, which waits for the GPU: do it every
    # few steps only. One process reads its own flag, which costs nothing, every step.
    sync_every = 10

    def requested(self, accelerator, step) -> bool:
        """Whether to save and exit after `step`; the same answer on every process."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        if step % self.sync_every:
            return False
        if any_process(accelerator, self.signum is not None):  # one rank signalled: every rank stops
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

    def model_saved(self, where):
        """Call once the trained model is on disk: from then on a stop signal ends the run at once, as
        only scores and pictures are left to lose; one that came after the loop ends it here."""
        def stop_now(signum, frame=None):
            print(f"\nstopped by {signal.Signals(signum).name} after the trained model was saved to {where}; "
                  "skipped the scores and pictures still to come", flush=True)
            raise SystemExit(128 + signum)

        if self.signum is not None:
            stop_now(self.signum)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, stop_now)


def exit_after_signal(accelerator, checkpoint, signum):
    name = signal.Signals(signum).name if signum else "signal"
    # tqdm.write: the message on a line of its own, not after the progress bar
    message = (f"stopped by {name}: checkpoint saved to {checkpoint}; "
               "run the same command with --resume_from_checkpoint latest to continue")
    if accelerator.is_main_process:
        tqdm.write(message)
    end_training(accelerator)
    raise SystemExit(128 + (signum or 15))


class NonFiniteLoss(UserError):
    pass


def check_finite(accelerator, first_bad_step):
    """Raise if any loss so far was NaN/inf; `first_bad_step` is tracked on the device
    so the hot loop never syncs, and this one sync happens at log/save time only."""
    bad = first_bad_step.reshape(1).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="max")
    if bad.item() >= 0:
        raise NonFiniteLoss(f"loss became non-finite at step {int(bad.item())}; the last good checkpoint is kept "
                            "and the model was not saved: lower --learning_rate or use --mixed_precision no, then "
                            "resume with --resume_from_checkpoint latest")


def track_non_finite(first_bad_step, loss, step):
    """Remember the first step whose loss was not finite, without leaving the device."""
    hit = (first_bad_step < 0) & ~torch.isfinite(loss)
    return torch.where(hit, torch.full_like(first_bad_step, step), first_bad_step)


class Stopwatch:
    """Wall seconds per phase of a run (data, training, saving, figures), so a run says where its
    time went: one line at the end, and timings.json in the run folder for the benchmark."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.phases, self.saved_after = {}, None

    def lap(self, phase, saved=False):
        """Charge the time since the last lap to `phase`, once the GPU has done the work queued
        so far; `saved=True` marks the moment the trained model is on disk."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now
        if saved:
            self.saved_after = now - self.start

    def write(self, path):
        total = self.last - self.start
        Path(path).write_text(json.dumps({"total_seconds": total, "model_saved_after_seconds": self.saved_after,
                                          "phases": self.phases}, indent=2))
        print(f"done in {total:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items()))


class LossLog:
    """loss.csv in the run folder (main process), kept consistent across resumes."""

    def __init__(self, path, start_step, enabled):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        rows = []
        if start_step > 0 and self.path.exists():  # drop rows past the checkpoint we resumed from
            rows = [r for r in self.path.read_text().splitlines()[1:] if int(r.split(",")[0]) <= start_step]
        self.path.write_text("\n".join(["step,loss", *rows]) + "\n")

    def add(self, step, loss):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(f"{step},{loss:.6g}\n")

    def read(self):
        rows = [r.split(",") for r in self.path.read_text().splitlines()[1:] if r]
        return [int(r[0]) for r in rows], [float(r[1]) for r in rows]

    def plot(self, path, title):
        from .visualisation import loss_curve

        steps, losses = self.read()
        if steps:
            loss_curve(steps, losses, path, title)
