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
    "unipc": UniPCMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "lcm": LCMScheduler,  # consistency-distilled students only (distill_latent_ddpm.py)
}

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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


def parse_scheduler(spec: str):
    """"unipc:solver_order=3,use_karras_sigmas=true" -> ("unipc", {"solver_order": 3, "use_karras_sigmas": True}).

    A bare name means the defaults below; the options are constructor arguments of the scheduler class."""
    name, _, rest = spec.partition(":")
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; valid names: {', '.join(SCHEDULERS)} "
                         "(options go after a colon: dpm:solver_order=3)")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"scheduler option {item!r} in {spec!r} is not key=value; write e.g. {name}:solver_order=3")
        options[key.strip()] = _value(value.strip())
    valid = [k for k in inspect.signature(SCHEDULERS[name].__init__).parameters if k != "self"]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid options: {', '.join(valid)}"
            raise ValueError(f"{SCHEDULERS[name].__name__} takes no option {key}; {hint}")
    return name, options


def make_scheduler(spec: str, config):
    """A sampling scheduler from a scheduler config (or scheduler): `spec` is a key of SCHEDULERS, optionally
    with constructor options after a colon ("dpm:solver_order=3"), which win over the defaults here."""
    name, options = parse_scheduler(spec)
    cls = SCHEDULERS[name]
    overrides = {"timestep_spacing": "trailing", "clip_sample": False}
    if name == "dpm":
        overrides["algorithm_type"] = "dpmsolver++"
    # from_config silently drops kwargs a class does not take (Euler has no clip_sample); pass only real ones.
    accepted = inspect.signature(cls.__init__).parameters
    overrides = {k: v for k, v in overrides.items() if k in accepted}
    try:
        return cls.from_config(getattr(config, "config", config), **{**overrides, **options})
    except (TypeError, ValueError, NotImplementedError) as e:  # a bad option value: "x" for an int, an unknown name
        raise ValueError(f"scheduler {spec!r} cannot be built: {first_line(e)}; check its option values") from e


def check_steps(spec: str, config, num_inference_steps: int):
    """Raise ValueError (naming the fix) if `spec` at this many steps would repeat a timestep: Karras sigmas on
    the cosine schedule do, and the pipeline refuses them; checked before any sampling or scoring starts."""
    from .pipeline_latent_ddpm import repeats_timesteps  # the very test the pipeline applies

    scheduler = make_scheduler(spec, config)
    try:
        scheduler.set_timesteps(num_inference_steps)
    except (TypeError, ValueError, NotImplementedError) as e:  # e.g. timestep_spacing=bogus fails only here
        raise ValueError(f"scheduler {spec!r} cannot set {num_inference_steps} steps: {first_line(e)}") from e
    if repeats_timesteps(scheduler):
        t = [int(x) for x in scheduler.timesteps]
        raise ValueError(f"scheduler {spec!r} repeats timesteps at {num_inference_steps} steps ({t}) with this "
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


def with_scheduler(pipe, spec):
    """A copy of `pipe` sampling with another scheduler (a make_scheduler spec); `pipe` itself is untouched."""
    _, optional = pipe._get_signature_keys(pipe)  # flags such as consistency_distilled travel with the copy
    other = type(pipe)(**pipe.components, **{k: pipe.config[k] for k in optional if k in pipe.config})
    other.scheduler = make_scheduler(spec, pipe.scheduler.config)
    other.set_progress_bar_config(disable=True)
    return other
