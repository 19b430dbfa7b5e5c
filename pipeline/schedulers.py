"""Sampling schedulers by name, built from the training scheduler's config.

Every sampler is `Cls.from_config(training_config, ...)`, so `num_train_timesteps`, the beta schedule and
`prediction_type` always match training. Two overrides matter for few-step latent sampling (see
notes/diffusers-facts.md): `timestep_spacing="trailing"` (the saved DDPM config brings "leading", so 10 steps
would start at t=900, not 999) and `clip_sample=False` (DDPM/DDIM default to clipping to [-1, 1], which ruins
latents).
"""

import difflib
import inspect

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from .errors import first_line

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,  # used as DPM-Solver++ (algorithm_type="dpmsolver++")
    "sde-dpm": DPMSolverMultistepScheduler,  # the same solver, stochastic: algorithm_type="sde-dpmsolver++"
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "lcm": LCMScheduler,  # consistency-distilled students only (distill_latent_ddpm.py)
}
DPM_ALGORITHMS = {"dpm": "dpmsolver++", "sde-dpm": "sde-dpmsolver++"}  # the two names of DPMSolverMultistepScheduler

# What a folder saved by train_latent_ddpm.py samples with when `pipe()` is given no scheduler or steps, and what the
# evaluation scores by default: the best quality per second measured on the demo teacher (docs/fast_sampling.md:
# 5,000 digits x 2 seeds, FID 1.95 at 300 digits/s, against DPM-Solver++ 20's 3.00 at 191/s and DDPM 50's 1.65 at 96/s).
DEFAULT_SAMPLER = "sde-dpm"
DEFAULT_STEPS = 10
# What the model card says of that choice.
DEFAULT_SAMPLER_MEASURED = (
    "SDE DPM-Solver++ at 10 steps is the best FID per second measured on the MNIST demo model (this project's "
    "docs/fast_sampling.md: 5,000 digits, two seeds, 2 CPU cores): FID 1.95 at 300 digits/s, against 3.00 at 191/s "
    "for the deterministic DPM-Solver++ at 20 steps and 1.65 at 96/s for DDPM at 50 steps.")

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SAMPLING = ("uniform", "logit_normal", "loss_weight")  # how training draws timesteps (latent_training.py)


def _value(text: str):
    """'true' -> True, '3' -> 3, '0.5' -> 0.5, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_scheduler(sampler: str):
    """"unipc:solver_order=3,use_karras_sigmas=true" -> ("unipc", {"solver_order": 3, "use_karras_sigmas": True}).

    A bare name means the defaults below; the options are constructor arguments of the scheduler class."""
    name, _, rest = sampler.partition(":")
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)} "
                         "(options go after a colon: dpm:solver_order=3)")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"scheduler option {item!r} in {sampler!r} is not key=value; write e.g. {name}:solver_order=3")
        options[key.strip()] = _value(value.strip())
    valid = [k for k in inspect.signature(SCHEDULERS[name].__init__).parameters if k != "self"]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid options: {', '.join(valid)}"
            raise ValueError(f"{SCHEDULERS[name].__name__} takes no option {key}; {hint}")
    return name, options


def make_scheduler(sampler: str, config):
    """A sampling scheduler from a scheduler config (or scheduler): `sampler` is a key of SCHEDULERS, optionally
    with constructor options after a colon ("dpm:solver_order=3"), which win over the defaults here."""
    name, options = parse_scheduler(sampler)
    cls = SCHEDULERS[name]
    overrides = {"timestep_spacing": "trailing", "clip_sample": False}
    if name in DPM_ALGORITHMS:
        overrides["algorithm_type"] = DPM_ALGORITHMS[name]
    # from_config silently drops kwargs a class does not take (Euler has no clip_sample); pass only real ones.
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {k: v for k, v in overrides.items() if k in accepted}
    config = getattr(config, "config", config)
    if name != "lcm":  # the training noise schedule plus the sampler, never another sampler's leftover options
        config = noise_schedule(config).config  # (a student's LCMScheduler keeps its own: its grid)
    try:
        return cls.from_config(config, **{**overrides, **options})
    except (TypeError, ValueError, NotImplementedError) as e:  # a bad option value: "x" for an int, an unknown name
        raise ValueError(f"scheduler {sampler!r} cannot be built: {first_line(e)}; check its option values") from e


def check_steps(sampler: str, config, num_inference_steps: int):
    """Raise ValueError (naming the fix) if `sampler` at this many steps would repeat a timestep: Karras sigmas on
    the cosine schedule do, and the pipeline refuses them; checked before any sampling or scoring starts."""
    from .pipeline_latent_ddpm import repeats_timesteps  # the very test the pipeline applies

    scheduler = make_scheduler(sampler, config)
    try:
        scheduler.set_timesteps(num_inference_steps)
    except (TypeError, ValueError, NotImplementedError) as e:  # e.g. timestep_spacing=bogus fails only here
        raise ValueError(f"scheduler {sampler!r} cannot set {num_inference_steps} steps: {first_line(e)}") from e
    if repeats_timesteps(scheduler):
        t = [int(x) for x in scheduler.timesteps]
        raise ValueError(f"scheduler {sampler!r} repeats timesteps at {num_inference_steps} steps ({t}) with this "
                         f"model's {scheduler.config.beta_schedule} noise schedule; drop its sigma options "
                         "(e.g. use_karras_sigmas) or use another scheduler")


def make_train_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear", prediction_type: str = "epsilon"):
    """The DDPM noise schedule used for training (and saved with the pipeline); latents are never clipped."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )


def noise_schedule(config) -> DDPMScheduler:
    """The training noise schedule (betas, prediction type) in any saved scheduler's config, as the DDPMScheduler
    training used: whatever sampler a folder saved, noising and distillation see the same schedule."""
    config = getattr(config, "config", config)
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "rescale_betas_zero_snr")
    return DDPMScheduler(clip_sample=False, **{k: config[k] for k in keys if k in config})


def default_sampling(pipe) -> tuple[str, int]:
    """(sampler, steps) the evaluation samples `pipe` with when not told: a consistency-distilled student's
    LCMScheduler at its saved steps; any other folder (old ones saved with DDPM 50 too) the measured best."""
    if pipe.config.get("consistency_distilled"):
        return "lcm", pipe.config.get("default_num_inference_steps", 2)
    return DEFAULT_SAMPLER, DEFAULT_STEPS


def with_scheduler(pipe, sampler):
    """A copy of `pipe` sampling with another scheduler (a make_scheduler sampler); `pipe` itself is untouched."""
    _, optional = pipe._get_signature_keys(pipe)  # flags such as consistency_distilled travel with the copy
    other = type(pipe)(**pipe.components, **{k: pipe.config[k] for k in optional if k in pipe.config})
    other.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    other.set_progress_bar_config(disable=True)
    return other
