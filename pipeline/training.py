"""What every training stage shares: the Accelerator, data order, the training loop, stop signals, non-finite
losses, the loss log and the clock (the run folder's guards and checkpoints: pipeline/checkpoints.py).

Functions, not a Trainer: each stage (autoencoder_training, latent_training, distill) reads top to bottom, sets up
its model and data, hands `fit` its loss on one batch, and writes what it made.

Determinism: the data order of step N is a pure function of (seed, N) and the noise of
step N comes from a generator seeded with (seed, N, rank), so a run resumed from a
checkpoint follows exactly the path of an uninterrupted one without restoring any RNG.
"""

import atexit
import json
import logging
import os
import platform
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from .checkpoints import any_process, resume, save_checkpoint
from .config import to_dict
from .errors import UserError
from .progress import progress

logger = logging.getLogger(__name__)


def start(cfg):
    """The start of every stage's run: its clock, its Accelerator, logging (info on the main process only) and the
    line saying how it trains. Returns (accelerator, clock)."""
    clock = Stopwatch()
    accelerator = make_accelerator(cfg)
    logging.basicConfig(level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    announce(accelerator, cfg)
    return accelerator, clock


def make_accelerator(cfg) -> Accelerator:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cuda = torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and not cuda:
        raise UserError("mixed_precision fp16 needs a CUDA GPU; use --mixed_precision bf16 or no on CPU")
    if cfg.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16; use --mixed_precision fp16 or no")
    if cfg.mixed_precision == "bf16" and not cuda and not native_cpu_bf16() and os.environ.get("LOCAL_RANK", "0") == "0":
        print("note: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 autocast emulates them and "
              "trains several times slower than fp32 (docs/tuning.md); --mixed_precision no is faster here", flush=True)
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


def native_cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 itself. Without it oneDNN emulates bf16: on the 2-core CPU with its bf16
    instructions masked, training steps under bf16 autocast ran 0.35x to 0.64x as fast as fp32 (AVX-512 only) and
    0.08x to 0.11x (AVX2, a laptop's), where with them the autoencoder's ran 1.62x (docs/tuning.md). Only x86 CPUs
    were measured: elsewhere, or with a torch that cannot say, this answers True and nothing is said."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return not all(probes) or any(probe() for probe in probes)


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
    per epoch from (seed, epoch), sliced into global batches, each split across ranks.
    With `weights` (one per item), each epoch is instead as many draws with replacement, in proportion to them."""

    def __init__(self, num_items, batch_size, seed, rank=0, world=1, device="cpu", weights=None):
        self.n, self.b, self.seed, self.rank, self.world = num_items, batch_size, seed, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
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
            order = (torch.randperm(self.n, generator=g) if self.weights is None else
                     torch.multinomial(self.weights, self.n, replacement=True, generator=g))
            self._epoch, self._perm = epoch, order.to(self.device)
        start = (k * self.world + self.rank) * self.b
        return self._perm[start:start + self.b]


def class_weights(labels, balance: float):
    """Per-item draw weights: an item of a class of n items gets n**-balance (0: every item alike, as the data
    holds its classes; 1: every class equally often)."""
    labels = torch.as_tensor(labels).long().cpu()
    counts = torch.bincount(labels).double()
    return counts[labels].pow(-balance)


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


def fit(accelerator, cfg, model, train_model, optimizer, lr_scheduler, record, batch_loss, clock, *, name,
        per_second="images_per_s", after_step=None, extra_logs=None, pictures=None):
    """Resume (cfg.resume_from_checkpoint), then train to exactly cfg.max_train_steps: accumulation, clipping, the
    optimizer and LR steps, non-finite checks, the loss log and tracker scalars, the progress line, checkpoints and
    stop signals. Returns (LossLog, StopRequest) for the stage's finish.

    batch_loss(k, gen): the loss of micro-step k, its randomness drawn from `gen` (a function of seed, k and rank);
    after_step(): after each optimizer step (EMA updates); extra_logs(step): more scalars at logging steps;
    pictures(step): TensorBoard pictures every cfg.save_images_steps (main process)."""
    step = resume(accelerator, cfg, optimizer, lr_scheduler)
    loss_log = LossLog(Path(cfg.output_dir) / "loss.csv", step, accelerator.is_main_process)
    stop = StopRequest()
    meter = LossMeter(accelerator, cfg, step)
    clock.lap("set-up")
    bar = progress(cfg.max_train_steps, step, desc=name, disable=not accelerator.is_main_process)
    while step < cfg.max_train_steps:
        model.train()
        for micro in range(cfg.gradient_accumulation_steps):
            k = step * cfg.gradient_accumulation_steps + micro
            gen = step_generator(cfg.seed, k, accelerator.process_index, accelerator.device)
            with accelerator.accumulate(model), accelerator.autocast():
                loss = batch_loss(k, gen)
                optimizer_step(accelerator, model, optimizer, lr_scheduler, loss, cfg.max_grad_norm)
        if after_step is not None:
            after_step()
        step += 1
        meter.add(loss, step)
        if step % cfg.logging_steps == 0 or step == cfg.max_train_steps:
            mean_loss, rate = meter.summary(step)
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], per_second: rate}
            accelerator.log({**logs, **(extra_logs(step) if extra_logs else {})}, step=step)
            loss_log.add(step, mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.4g}")
        bar.update(1)  # counted after the loss is set, so a plain progress line shows this step's loss
        if pictures is not None and step % cfg.save_images_steps == 0 and accelerator.is_main_process:
            pictures(step)
        checkpoint_if_due(accelerator, cfg, step, stop, meter, record)
    bar.close()
    meter.check()
    check_replicas_in_sync(accelerator, model)
    clock.lap("training")
    return loss_log, stop


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


def first_samples(accelerator, cfg, images, labels=None):
    """The first max_train_samples training items; says so when the dataset has fewer than asked for."""
    n = cfg.max_train_samples
    if n is not None and n > len(images):
        accelerator.print(f"note: max_train_samples {n} is more than the {len(images)} training images; "
                          f"using all {len(images)}")
    return images[:n], None if labels is None else labels[:n]


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
