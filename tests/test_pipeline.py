"""LatentDDPMPipeline, the scheduler factory and the exported pipeline folder, with tiny random models on CPU.

Random weights are enough here: these tests check shapes, control flow and loading, not sample quality.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from pipeline.autoencoder import CABAutoencoder
from pipeline.export import push_folder, save_pipeline_folder, upload_plan
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
from pipeline.schedulers import SCHEDULERS, make_scheduler, make_train_scheduler, with_scheduler

REPO = Path(__file__).resolve().parents[1]
STEPS = 2
NULL_LABEL = 10  # a UNet with num_class_embeds=11: digits 0-9 plus the null label for classifier-free guidance


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(num_class_embeds=None):
    return UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=num_class_embeds,
    ).eval()


def tiny_autoencoder():
    # scaling_factor != 1 so that a forgotten multiply/divide shows up
    return CABAutoencoder(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, reduction=4,
                          scaling_factor=0.8).eval()


def make_pipe(scheduler="ddpm", unet=None, autoencoder=None):
    torch.manual_seed(0)
    unet = unet or tiny_unet()
    autoencoder = autoencoder or tiny_autoencoder()
    pipe = LatentDDPMPipeline(unet=unet, autoencoder=autoencoder,
                              scheduler=make_scheduler(scheduler, make_train_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return make_pipe("ddpm")


@pytest.fixture(scope="module")
def cond_pipe():
    torch.manual_seed(1)
    return make_pipe("ddim", unet=tiny_unet(num_class_embeds=NULL_LABEL + 1))


@pytest.fixture(scope="module")
def digits():
    """Three uint8 (28, 28) 'digits': a bar, a ring and a cross on black."""
    d = np.zeros((3, 28, 28), np.uint8)
    d[0, 4:24, 12:16] = 255
    yy, xx = np.mgrid[:28, :28]
    d[1][np.abs(np.hypot(yy - 14, xx - 14) - 8) < 2] = 200
    d[2, 13:15, 4:24] = d[2, 4:24, 13:15] = 255
    return d


# ----------------------------------------------------------------------------- schedulers

def test_make_scheduler_overrides_and_carries_training_config():
    train = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    assert train.config.clip_sample is False
    for name, cls in SCHEDULERS.items():
        s = make_scheduler(name, train.config)
        assert type(s) is cls
        assert s.config.timestep_spacing == "trailing"
        assert s.config.prediction_type == "v_prediction"
        assert s.config.beta_schedule == "squaredcos_cap_v2"
        assert s.config.get("clip_sample", False) is False
        s.set_timesteps(10)
        assert int(s.timesteps[0]) == 999  # trailing: few-step sampling starts at the last training step
    assert make_scheduler("dpm", train).config.algorithm_type == "dpmsolver++"  # a scheduler works as well as a config


def test_make_scheduler_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: ddpm, ddim, dpm, sde-dpm, unipc, euler, lcm"):
        make_scheduler("heun", make_train_scheduler().config)


def test_make_scheduler_options_after_a_colon_win_over_defaults():
    train = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    s = make_scheduler("dpm:solver_order=3,use_karras_sigmas=true,timestep_spacing=leading", train.config)
    assert (s.config.solver_order, s.config.use_karras_sigmas, s.config.timestep_spacing) == (3, True, "leading")
    assert s.config.algorithm_type == "dpmsolver++"  # untouched defaults stay
    assert make_scheduler("unipc:solver_order=3", train).config.solver_order == 3


@pytest.mark.parametrize("spec, message", [("dpm:solver_order", "is not key=value"),
                                           ("dpm:no_such_option=1", "takes no option no_such_option; valid options: .*solver_order"),
                                           ("heun:solver_order=2", "unknown scheduler 'heun'"),
                                           # bad values: diffusers raises TypeError / NotImplementedError for these
                                           ("unipc:solver_order=x", "'unipc:solver_order=x' cannot be built: .*check its option values"),
                                           ("dpm:algorithm_type=foo", "'dpm:algorithm_type=foo' cannot be built: foo is not implemented")])
def test_make_scheduler_bad_options_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        make_scheduler(spec, make_train_scheduler().config)


def test_a_bad_value_that_only_fails_at_set_timesteps_is_a_value_error_too():
    from pipeline.schedulers import check_steps

    with pytest.raises(ValueError, match="'euler:timestep_spacing=bogus' cannot set 4 steps: bogus is not supported"):
        check_steps("euler:timestep_spacing=bogus", make_train_scheduler(), 4)


def test_repeated_timesteps_are_refused_before_sampling_with_the_fix_named():
    """Karras sigmas on the cosine schedule crowd the steps at t=999; diffusers would fail mid-loop."""
    from pipeline.schedulers import check_steps

    cosine = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    with pytest.raises(ValueError, match=r"repeats timesteps at 4 steps .*drop its sigma options"):
        check_steps("dpm:use_karras_sigmas=true", cosine, 4)
    check_steps("dpm:use_karras_sigmas=true", make_train_scheduler(1000, "linear", "v_prediction"), 4)  # fine there
    check_steps("dpm", cosine, 4)

    pipe = make_pipe()
    pipe.scheduler = make_scheduler("dpm:use_karras_sigmas=true", cosine)
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler repeats timesteps at 4 steps"):
        pipe(batch_size=1, num_inference_steps=4, generator=gen())


def test_make_train_scheduler_rejects_unknown_settings():
    with pytest.raises(ValueError, match="beta_schedule"):
        make_train_scheduler(1000, "cosine", "epsilon")
    with pytest.raises(ValueError, match="prediction_type"):
        make_train_scheduler(1000, "linear", "noise")


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_sampling_with_each_scheduler(name):
    pipe = make_pipe(name)
    images = pipe(batch_size=3, generator=gen(), num_inference_steps=STEPS, output_type="np").images
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.float32
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def reference_loop(pipe, batch_size, steps, seed, labels=None, guidance_scale=1.0):
    """Reference sampler written out by hand, like diffusers' LDMPipeline: noise * init_noise_sigma,
    scale_model_input, separate conditional / unconditional UNet calls, step with the generator when accepted."""
    s, generator = pipe.scheduler, gen(seed)
    latents = randn_tensor((batch_size, 4, 8, 8), generator=generator) * s.init_noise_sigma
    s.set_timesteps(steps)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(s.step).parameters else {}
    cond = torch.tensor(labels) if labels is not None else None
    with torch.no_grad():
        for t in s.timesteps:
            x = s.scale_model_input(latents, t)
            out = pipe.unet(x, t, class_labels=cond).sample
            if guidance_scale != 1.0:
                uncond = pipe.unet(x, t, class_labels=torch.full_like(cond, NULL_LABEL)).sample
                out = uncond + guidance_scale * (out - uncond)
            latents = s.step(out, t, latents, **step_kwargs).prev_sample
        return pipe.decode_latents(latents)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_sampling_matches_a_hand_written_loop(name):
    pipe = make_pipe(name)  # Euler's init_noise_sigma is ~157: forgetting it or scale_model_input shows here
    out = pipe(batch_size=2, generator=gen(4), num_inference_steps=3, output_type="pt").images
    torch.testing.assert_close(out, reference_loop(pipe, 2, 3, seed=4), rtol=1e-4, atol=1e-4)


def test_output_types(pipe):
    pil = pipe(batch_size=2, generator=gen(), num_inference_steps=STEPS).images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.mode == "L" and im.size == (28, 28) for im in pil)
    arr = pipe(batch_size=2, generator=gen(), num_inference_steps=STEPS, output_type="np").images
    pt = pipe(batch_size=2, generator=gen(), num_inference_steps=STEPS, output_type="pt").images
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr)
    np.testing.assert_array_equal(np.asarray(pil[1]), (arr[1, :, :, 0] * 255).round().astype(np.uint8))
    out = pipe(batch_size=2, generator=gen(), num_inference_steps=STEPS, output_type="np", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1
    np.testing.assert_array_equal(out[0], arr)


def test_same_seed_same_images_different_seed_different(pipe):
    run = lambda seed: pipe(batch_size=2, generator=gen(seed), num_inference_steps=STEPS, output_type="np").images
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def reconstruct(ae, digits_uint8):
    """The autoencoder reconstruction computed by hand: pad with -1, encode, scale, unscale, decode, crop."""
    x = F.pad(torch.from_numpy(digits_uint8).float()[:, None] / 127.5 - 1, (2, 2, 2, 2), value=-1.0)
    with torch.no_grad():
        z = ae.encode(x).latents * ae.config.scaling_factor
        y = ae.decode(z / ae.config.scaling_factor).sample
    return ((y.clamp(-1, 1) + 1) / 2)[:, :, 2:30, 2:30]


def test_strength_zero_returns_the_autoencoder_reconstruction(pipe, digits):
    calls = []
    out = pipe(image=digits, strength=0.0, output_type="pt", num_inference_steps=STEPS, return_intermediates=True,
               callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {})
    # (the pipeline decodes channels_last on the CPU: the same sums in another order, within 1e-5)
    torch.testing.assert_close(out.images, reconstruct(pipe.autoencoder, digits), rtol=0, atol=1e-5)
    assert calls == [] and len(out.intermediates) == 1  # no denoising step at all


def test_image_input_formats_agree(pipe, digits):
    unit = digits.astype(np.float32) / 255
    variants = {
        "uint8 numpy (N,28,28)": digits,
        "float numpy (N,28,28)": unit,
        "float numpy (N,28,28,1)": unit[..., None],
        "float torch (N,1,28,28)": torch.from_numpy(unit)[:, None],
        "uint8 torch (N,28,28)": torch.from_numpy(digits),
        "list of PIL": [PIL.Image.fromarray(d) for d in digits],
    }
    ref = pipe(image=digits, strength=0.0, output_type="np").images
    for name, image in variants.items():
        np.testing.assert_allclose(pipe(image=image, strength=0.0, output_type="np").images, ref, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("strength,expected_steps", [(1.0, 4), (0.5, 2), (0.25, 1)])
def test_strength_selects_the_last_steps(pipe, digits, strength, expected_steps):
    seen = []
    out = pipe(image=digits, strength=strength, num_inference_steps=4, generator=gen(), output_type="np",
               callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or {})
    assert out.images.shape == (3, 28, 28, 1)
    assert seen == [int(t) for t in pipe.scheduler.timesteps[4 - expected_steps:]]  # strength 1: all steps


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "batch_size"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"strength": 1.5, "image": np.zeros((1, 28, 28), np.float32)}, r"strength.*\[0, 1\]"),
    ({"strength": -0.1, "image": np.zeros((1, 28, 28), np.float32)}, r"strength.*\[0, 1\]"),
    ({"strength": 0.5}, "only makes sense with an `image`"),
    ({"image": np.zeros((2, 32, 32), np.float32)}, r"shape \(N, 28, 28\)"),
    ({"image": np.full((2, 28, 28), 2.0, np.float32)}, r"\[0, 1\]"),
    ({"image": np.zeros((2, 28, 28), np.int64)}, "uint8"),
    ({"image": [np.zeros((28, 28))]}, "PIL"),
    ({"image": np.zeros((2, 28, 28), np.float32), "batch_size": 3}, "number of images"),
    ({"output_type": "latent"}, "output_type"),
    ({"class_labels": 3}, "unconditional"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
])
def test_invalid_arguments_raise_value_error(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**{"num_inference_steps": STEPS, **kwargs})


def test_return_intermediates(pipe):
    out = pipe(batch_size=2, generator=gen(), num_inference_steps=3, output_type="np", return_intermediates=True)
    assert len(out.intermediates) == 3 + 1  # x_T first, then one per step
    for frame in out.intermediates:
        assert frame.shape == (2, 28, 28) and frame.dtype == np.float32 and 0 <= frame.min() <= frame.max() <= 1
    np.testing.assert_array_equal(out.intermediates[-1], out.images[..., 0])
    images, frames = pipe(batch_size=2, generator=gen(), num_inference_steps=3, output_type="np",
                          return_intermediates=True, return_dict=False)
    np.testing.assert_array_equal(images, out.images)
    assert len(frames) == 4


def test_callback_on_step_end_once_per_step_and_can_replace_latents(pipe):
    calls = []

    def callback(p, i, t, kwargs):
        assert p is pipe and set(kwargs) == {"latents"}
        calls.append((i, int(t)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    out = pipe(batch_size=2, generator=gen(), num_inference_steps=3, output_type="pt", callback_on_step_end=callback)
    assert calls == [(i, int(t)) for i, t in enumerate(pipe.scheduler.timesteps)] and len(calls) == 3
    with torch.no_grad():
        expected = pipe.decode_latents(torch.zeros(2, 4, 8, 8))  # the callback's latents are what gets decoded
    torch.testing.assert_close(out.images, expected)


def run_timesteps(pipe, **kwargs):
    """The timesteps a call ran (each step's t, from the callback) and its images."""
    seen = []
    images = pipe(batch_size=2, generator=gen(), output_type="np",
                  callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)) or {}, **kwargs).images
    return seen, images


def test_custom_timesteps_are_the_steps_that_run(pipe):
    seen, _ = run_timesteps(pipe, timesteps=[900, 500, 100])
    assert seen == [900, 500, 100]
    seen, _ = run_timesteps(pipe, num_inference_steps=2, timesteps=[999, 399])
    assert seen == [999, 399]


@pytest.mark.parametrize("kwargs,match", [
    ({"timesteps": [100, 500]}, "strictly descending"),
    ({"timesteps": []}, "non-empty list"),
    ({"timesteps": [1000, 10]}, "from 999 to 0"),
    ({"timesteps": [900.5, 10]}, "list of ints"),
    ({"timesteps": [900, 10], "num_inference_steps": 3}, r"`num_inference_steps` \(3\) and the 2 `timesteps` disagree"),
])
def test_bad_custom_timesteps_are_a_value_error(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(batch_size=1, **kwargs)


def test_a_scheduler_without_custom_timesteps_says_so():
    with pytest.raises(ValueError, match="does not take custom `timesteps`; pass `num_inference_steps`"):
        make_pipe("ddim")(batch_size=1, timesteps=[999, 499])


def test_a_students_default_timesteps_run_for_their_step_count_only_with_lcm(tmp_path):
    """A consistency student's folder lists measured timesteps per step count: pipe(num_inference_steps=2) runs
    them, other counts run LCMScheduler's own, an explicit `timesteps` wins, and they survive save/load."""
    from diffusers import LCMScheduler

    lcm = LCMScheduler.from_config(make_train_scheduler().config, original_inference_steps=50)
    student = LatentDDPMPipeline(unet=tiny_unet(), autoencoder=tiny_autoencoder(), scheduler=lcm,
                                 consistency_distilled=True, default_num_inference_steps=2,
                                 default_timesteps=[[999, 699], [999, 799, 599, 399]])
    student.set_progress_bar_config(disable=True)
    assert run_timesteps(student)[0] == [999, 699]  # the folder's default step count, at its timesteps
    assert run_timesteps(student, num_inference_steps=4)[0] == [999, 799, 599, 399]
    lcm.set_timesteps(3)
    assert run_timesteps(student, num_inference_steps=3)[0] == lcm.timesteps.tolist()  # none listed: LCM's own
    assert run_timesteps(student, timesteps=[999, 299])[0] == [999, 299]
    stock = LatentDDPMPipeline(**student.components, consistency_distilled=True, default_num_inference_steps=2)
    stock.set_progress_bar_config(disable=True)
    tuned, stock_seen = run_timesteps(student)[1], run_timesteps(stock)
    assert stock_seen[0] == [999, 499] and not np.allclose(tuned, stock_seen[1])
    student.save_pretrained(tmp_path)
    loaded = LatentDDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert run_timesteps(loaded)[0] == [999, 699]
    with pytest.warns(UserWarning, match="consistency-distilled"):  # another scheduler: LCM's timesteps not forced
        assert run_timesteps(with_scheduler(loaded, "dpm"), num_inference_steps=2)[0] != [999, 699]


# ----------------------------------------------------------------------------- pinned numbers

def test_pinned_numbers_of_a_seeded_tiny_pipeline():
    """A seeded tiny UNet and autoencoder at 2 steps against slices recorded when this test was written (as
    diffusers' test_ddpm.py does), so a silent numerical change to the sampling path fails here. The numbers
    also depend on the pinned torch/diffusers (their weight initialisation); after a deliberate change or an
    upgrade, check the samples and record the new slices."""
    torch.manual_seed(0)
    unet, autoencoder = tiny_unet(), tiny_autoencoder()
    images = make_pipe("ddpm", unet=unet, autoencoder=autoencoder)(
        batch_size=2, generator=gen(0), num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 28, 28, 1)
    expected = np.array([[0.547348, 0.577323, 0.583641, 0.690143, 0.564112, 0.556227, 0.656423, 0.447023, 0.577177],
                         [0.495627, 0.430284, 0.546667, 0.444234, 0.264998, 0.331136, 0.476614, 0.436689, 0.505482]])
    np.testing.assert_allclose(images[:, 12:15, 12:15, 0].reshape(2, 9), expected, atol=1e-4)

    torch.manual_seed(0)  # class-conditional with guidance, DPM-Solver++: the other branch of the loop
    unet, autoencoder = tiny_unet(num_class_embeds=NULL_LABEL + 1), tiny_autoencoder()
    images = make_pipe("dpm", unet=unet, autoencoder=autoencoder)(
        class_labels=[3, 7], guidance_scale=2.0, generator=gen(0), num_inference_steps=2, output_type="np").images
    expected = np.array([0.464274, 0.438752, 0.733031, 0.555214, 0.497176, 0.657108, 0.642506, 0.53851, 0.546232])
    np.testing.assert_allclose(images[0, 12:15, 12:15, 0].flatten(), expected, atol=1e-4)


# ----------------------------------------------------------------------------- class conditioning

def test_class_labels_must_be_class_indices(cond_pipe):
    for bad, kind in [(["3"], "a list of str"), ([1.0, 2.0], "a list of float"), (np.array([0.5]), "ndarray of float64"),
                      ([], "a list of nothing"), ([[1, 2]], "a list of list")]:
        with pytest.raises(ValueError, match=r"`class_labels` are class indices: an int from 0 to 9, or a list of "
                                             rf"such ints, one per image; got .* \({kind}\)"):
            cond_pipe(class_labels=bad, num_inference_steps=STEPS)


def test_no_progress_bar_when_there_is_nothing_to_denoise(digits, capfd):
    pipe = make_pipe("ddim")
    pipe.set_progress_bar_config(disable=False)
    pipe(image=digits, strength=0.0, num_inference_steps=STEPS, output_type="np")
    assert capfd.readouterr().err == ""  # was an empty "0it" bar
    pipe(image=digits, strength=1.0, num_inference_steps=STEPS, output_type="np")
    assert f"{STEPS}/{STEPS}" in capfd.readouterr().err  # a bar as before when there are steps


def test_class_labels_count_per_label(cond_pipe):
    out = cond_pipe(batch_size=3, class_labels=[0, 3, 9], generator=gen(), num_inference_steps=STEPS, output_type="pt")
    assert out.images.shape == (3, 1, 28, 28)
    out = cond_pipe(batch_size=4, class_labels=7, generator=gen(), num_inference_steps=STEPS, output_type="np")
    assert out.images.shape == (4, 28, 28, 1)
    with pytest.raises(ValueError, match="one per image"):
        cond_pipe(batch_size=3, class_labels=[1, 2], num_inference_steps=STEPS)
    # labels alone set the batch, as in the README's `pipe(class_labels=[0, 1, 2], guidance_scale=1.5)`
    alone = cond_pipe(class_labels=[0, 3, 9], guidance_scale=1.5, generator=gen(), num_inference_steps=STEPS,
                      output_type="pt").images
    given = cond_pipe(batch_size=3, class_labels=[0, 3, 9], guidance_scale=1.5, generator=gen(),
                      num_inference_steps=STEPS, output_type="pt").images
    torch.testing.assert_close(alone, given)
    assert cond_pipe(class_labels=torch.tensor([1, 2]), num_inference_steps=STEPS, output_type="np").images.shape[0] == 2
    with pytest.raises(ValueError, match="one per image"):  # with images, the images set the batch
        cond_pipe(image=np.zeros((1, 28, 28), np.float32), strength=0.5, class_labels=[0, 1, 2], num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        cond_pipe(batch_size=1, class_labels=NULL_LABEL, num_inference_steps=STEPS)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_guidance_matches_manual_loop(cond_pipe, guidance_scale):
    labels = [2, 5]
    out = cond_pipe(batch_size=2, class_labels=labels, guidance_scale=guidance_scale, generator=gen(3),
                    num_inference_steps=STEPS, output_type="pt").images
    expected = reference_loop(cond_pipe, 2, STEPS, seed=3, labels=labels, guidance_scale=guidance_scale)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 2, "generator": [gen(0), gen(1), gen(2)]}, "a list of 3 generators, but the batch has 2 images"),
    ({"batch_size": 3, "generator": [gen(0), gen(1)]}, "a list of 2 generators, but the batch has 3 images"),
    ({"class_labels": [1, 2, 3], "generator": [gen(0)]}, "a list of 1 generators, but the batch has 3 images"),
    ({"class_labels": [1, 2], "guidance_scale": -1.0}, r"finite number >= 0 .*got -1.0"),
    ({"class_labels": [1, 2], "guidance_scale": float("nan")}, r"finite number >= 0 .*got nan"),
    ({"class_labels": [1, 2], "guidance_scale": float("inf")}, r"finite number >= 0 .*got inf"),
    ({"class_labels": [1, 2], "guidance_scale": "2"}, r"finite number >= 0 .*got '2'"),
])
def test_bad_generators_and_guidance_are_a_value_error_before_sampling(cond_pipe, kwargs, match):
    calls = []
    hook = cond_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            cond_pipe(num_inference_steps=STEPS, output_type="np", **kwargs)
    finally:
        hook.remove()
    assert calls == []  # refused before the first denoising step


def test_one_generator_per_image_and_guidance_zero_are_accepted(cond_pipe):
    out = cond_pipe(class_labels=[1, 2], generator=[gen(0), gen(1)], guidance_scale=0.0, num_inference_steps=STEPS,
                    output_type="np").images
    assert out.shape[0] == 2 and np.isfinite(out).all()


def test_guidance_scale_one_is_a_single_conditional_pass(cond_pipe):
    labels_seen = []
    hook = cond_pipe.unet.register_forward_hook(lambda m, args, kwargs, out: labels_seen.append(kwargs["class_labels"]),
                                                with_kwargs=True)
    try:
        cond_pipe(batch_size=2, class_labels=[4, 6], guidance_scale=1.0, num_inference_steps=STEPS, output_type="np")
        assert len(labels_seen) == STEPS and all(lab.tolist() == [4, 6] for lab in labels_seen)
        labels_seen.clear()
        cond_pipe(batch_size=2, class_labels=[4, 6], guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")
        assert all(lab.tolist() == [NULL_LABEL, NULL_LABEL, 4, 6] for lab in labels_seen)  # batched uncond + cond
        labels_seen.clear()
        cond_pipe(batch_size=2, guidance_scale=2.0, num_inference_steps=STEPS, output_type="np")  # no labels
        assert all(lab.tolist() == [NULL_LABEL, NULL_LABEL] for lab in labels_seen)
    finally:
        hook.remove()


# ----------------------------------------------------------------------------- export and reload

@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("export") / "ldm-mnist"
    grid = tmp_path_factory.mktemp("grid") / "grid.png"
    PIL.Image.fromarray(np.zeros((64, 64), np.uint8)).save(grid)
    save_pipeline_folder(pipe, folder, metrics={"fid": 12.3456, "recon_psnr_db": 30.1}, sample_grid_path=str(grid),
                         dataset="ylecun/mnist")
    return folder


def subprocess_env(tmp_path, pythonpath=None):
    env = dict(os.environ)  # carries HF_HUB_OFFLINE=1 from conftest
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), OMP_NUM_THREADS="1")  # dynamic modules go here
    return env


def run_python(code, tmp_path, cwd, pythonpath=None):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=subprocess_env(tmp_path, pythonpath),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"subprocess failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    return r.stdout


def test_saved_folder_layout(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_latent_ddpm", "LatentDDPMPipeline"]
    assert index["autoencoder"] == ["autoencoder", "CABAutoencoder"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (saved / "pipeline_latent_ddpm.py").read_text() == (REPO / "pipeline/pipeline_latent_ddpm.py").read_text()
    assert (saved / "autoencoder/autoencoder.py").read_text() == (REPO / "pipeline/autoencoder.py").read_text()
    for code in ("pipeline_latent_ddpm.py", "autoencoder/autoencoder.py"):  # shipped code must not need this repo
        assert "from pipeline" not in (saved / code).read_text() and "import pipeline" not in (saved / code).read_text()


@pytest.mark.slow
def test_reload_with_plain_diffusers_outside_the_repo(saved, pipe, tmp_path):
    expected = pipe(batch_size=2, generator=gen(5), num_inference_steps=STEPS, output_type="np").images
    out_file = tmp_path / "images.npy"
    stdout = run_python(f"""
        import importlib.util, numpy as np, torch
        assert importlib.util.find_spec("pipeline") is None, "the project package must not be importable here"
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(saved)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        print(type(pipe).__module__, type(pipe).__name__, type(pipe.autoencoder).__name__)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(5), num_inference_steps={STEPS},
                      output_type="np").images
        np.save({str(out_file)!r}, images)
    """, tmp_path, cwd=tmp_path)
    assert "LatentDDPMPipeline CABAutoencoder" in stdout
    np.testing.assert_allclose(np.load(out_file), expected, atol=1e-5)


@pytest.mark.slow
def test_reload_inside_the_project(saved, pipe, tmp_path):
    expected = pipe(batch_size=2, generator=gen(6), num_inference_steps=STEPS, output_type="np").images
    stdout = run_python(f"""
        import numpy as np, torch
        from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

        # Without trust_remote_code: this repo's classes, none of the shipped code runs.
        # With it: diffusers' own path, which imports the shipped copies.
        for name, p in [("plain", LatentDDPMPipeline.from_pretrained({str(saved)!r})),
                        ("trusted", LatentDDPMPipeline.from_pretrained({str(saved)!r}, trust_remote_code=True))]:
            p.set_progress_bar_config(disable=True)
            images = p(batch_size=2, generator=torch.Generator().manual_seed(6), num_inference_steps={STEPS},
                       output_type="np").images
            np.save({str(tmp_path)!r} + "/" + name + ".npy", images)
            print(name, type(p).__module__, type(p.autoencoder).__module__)
    """, tmp_path, cwd=REPO, pythonpath=str(REPO))
    assert "plain pipeline.pipeline_latent_ddpm pipeline.autoencoder" in stdout  # this repo's classes
    for name in ("plain", "trusted"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), expected, atol=1e-5)


@pytest.mark.slow
def test_a_folder_saved_before_the_output_dataclasses_loads_and_gives_the_same_digits(saved, pipe, tmp_path):
    """Folders saved before encode/decode returned output dataclasses ship code whose autoencoder returns bare
    tensors (tests/old_pipeline_code: the two shipped files as they were). They must load both ways, the shipped
    code under trust_remote_code and this repo's classes without it, and give the digits they gave."""
    old = tmp_path / "old-folder"
    shutil.copytree(saved, old)
    shutil.copy(REPO / "tests/old_pipeline_code/pipeline_latent_ddpm.py", old / "pipeline_latent_ddpm.py")
    shutil.copy(REPO / "tests/old_pipeline_code/autoencoder.py", old / "autoencoder" / "autoencoder.py")
    config = json.loads((old / "autoencoder" / "config.json").read_text())
    del config["image_size"]  # recorded since the pipeline took sizes from the configs; old folders lack it
    (old / "autoencoder" / "config.json").write_text(json.dumps(config))
    expected = pipe(batch_size=2, generator=gen(8), num_inference_steps=STEPS, output_type="np").images
    stdout = run_python(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

        for name, p in [("new", LatentDDPMPipeline.from_pretrained({str(saved)!r})),
                        ("shipped", DiffusionPipeline.from_pretrained({str(old)!r}, trust_remote_code=True)),
                        ("repo", LatentDDPMPipeline.from_pretrained({str(old)!r}))]:
            p.set_progress_bar_config(disable=True)
            encoded = p.autoencoder.encode(torch.zeros(1, 1, 32, 32))
            print(name, type(p).__module__, type(encoded).__name__)
            images = p(batch_size=2, generator=torch.Generator().manual_seed(8), num_inference_steps={STEPS},
                       output_type="np").images
            np.save({str(tmp_path)!r} + "/" + name + ".npy", images)
    """, tmp_path, cwd=REPO, pythonpath=str(REPO))
    assert "shipped diffusers_modules.local.pipeline_latent_ddpm Tensor" in stdout  # the old shipped code ran
    assert "repo pipeline.pipeline_latent_ddpm EncoderOutput" in stdout
    new = np.load(tmp_path / "new.npy")  # the folder as saved today
    np.testing.assert_allclose(new, expected, atol=1e-6)  # (another process may differ in the last ulp)
    np.testing.assert_array_equal(np.load(tmp_path / "repo.npy"), new)  # this repo's code: bit for bit
    # the old shipped code decodes in the plain layout, this repo's channels_last on the CPU: the same digits
    np.testing.assert_allclose(np.load(tmp_path / "shipped.npy"), new, rtol=0, atol=1e-5)


def test_from_pretrained_in_process_uses_this_repos_classes(saved, pipe):
    loaded = LatentDDPMPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is LatentDDPMPipeline and type(loaded.autoencoder) is CABAutoencoder
    a = pipe(batch_size=2, generator=gen(7), num_inference_steps=STEPS, output_type="np").images
    b = loaded(batch_size=2, generator=gen(7), num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)  # same weights; conv kernels may differ in the last ulp


def test_missing_or_damaged_files_are_named(saved, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match=r"scheduler_config.json is missing"):
        LatentDDPMPipeline.from_pretrained(broken)
    shutil.rmtree(broken)
    shutil.copytree(saved, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ValueError, match=r"cannot load .*unet"):
        LatentDDPMPipeline.from_pretrained(broken)


def test_model_card(saved):
    card = (saved / "README.md").read_text()
    front = card.split("---")[1]
    for line in ("library_name: diffusers", "- unconditional-image-generation", "- latent-diffusion", "- mnist",
                 "license: mit", "- ylecun/mnist"):
        assert line in front
    assert 'DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)' in card
    assert 'algorithm_type="dpmsolver++", timestep_spacing="trailing"' in card
    assert "| fid | 12.35 |" in card and "| recon_psnr_db | 30.1 |" in card
    assert "![samples](samples.png)" in card and (saved / "samples.png").is_file()
    assert "`pipeline_latent_ddpm.py` and `autoencoder/autoencoder.py`" in card and "trust_remote_code=True" in card


def test_no_token_in_folder(tmp_path, pipe, monkeypatch):
    fake = "hf_" + "x" * 34
    monkeypatch.setenv("HF_TOKEN", fake)
    folder = save_pipeline_folder(pipe, tmp_path / "out", metrics=None, sample_grid_path=None, dataset="ylecun/mnist")
    assert not any(fake.encode() in p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert "## Evaluation" not in (folder / "README.md").read_text()  # no metrics, no table
    with pytest.raises(ValueError, match="token"):  # and a token that sneaks in is refused
        save_pipeline_folder(pipe, tmp_path / "leak", metrics={"note": "hf_" + "A1" * 17}, sample_grid_path=None,
                             dataset="ylecun/mnist")


def test_sample_grid_already_in_the_folder(tmp_path, pipe):
    # A training run draws samples.png into its output_dir and then saves the pipeline there.
    out = tmp_path / "run"
    out.mkdir()
    PIL.Image.fromarray(np.full((8, 8), 255, np.uint8)).save(out / "samples.png")
    save_pipeline_folder(pipe, out, metrics=None, sample_grid_path=str(out / "samples.png"), dataset="ylecun/mnist")
    assert np.asarray(PIL.Image.open(out / "samples.png")).min() == 255
    assert "![samples](samples.png)" in (out / "README.md").read_text()


def test_upload_plan_excludes_run_leftovers(saved, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(saved, folder)
    for leftover in ("checkpoint-500/unet/diffusion_pytorch_model.safetensors", "checkpoint-500/optimizer.bin",
                     "logs/train/events.out.tfevents.1", "logs/metrics.json", "optimizer.bin", ".cache/x.json",
                     "__pycache__/pipeline_latent_ddpm.cpython-311.pyc", ".tmp-checkpoint-600/model.json", "loss.csv"):
        (folder / leftover).parent.mkdir(parents=True, exist_ok=True)
        (folder / leftover).write_bytes(b"x")
    plan = upload_plan(folder, "someone/ldm-mnist")
    repo_id, files, allow, ignore = plan
    assert repo_id == "someone/ldm-mnist" and "checkpoint-*" in ignore and allow
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", ".", "__pycache__")) or f.endswith((".bin", ".csv"))]
    for required in ("model_index.json", "README.md", "pipeline_latent_ddpm.py", "samples.png",
                     "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "autoencoder/config.json", "autoencoder/diffusion_pytorch_model.safetensors",
                     "autoencoder/autoencoder.py", "scheduler/scheduler_config.json"):
        assert required in files
    with pytest.raises(ValueError, match="not a complete pipeline folder"):
        upload_plan(tmp_path / "run" / "unet", "someone/ldm-mnist")
    with pytest.raises(ValueError):  # huggingface_hub's HFValidationError is a ValueError
        upload_plan(folder, "not a repo id")


def test_push_folder_offline_raises_the_hub_error(saved, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    # conftest sets HF_HUB_OFFLINE=1, but huggingface_hub read it at import (before the fixture ran): set the flag too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    token = "hf_" + "t" * 34
    with pytest.raises(OfflineModeIsEnabled) as err:
        push_folder(saved, "someone/ldm-mnist", token=token, private=True)
    assert token not in str(err.value)


def test_the_cpu_decode_in_channels_last_gives_the_plain_decodes_images(pipe):
    """decode_latents hands the CPU decoder channels_last latents (faster); the images are the plain decode's."""
    latents = torch.randn(4, 4, 8, 8, generator=gen(3))
    fast = pipe.decode_latents(latents)
    ae = pipe.autoencoder
    with torch.no_grad():
        plain = ae.decode(latents / ae.config.scaling_factor).sample
    plain = ((plain.clamp(-1, 1) + 1) / 2)[:, :, 2:30, 2:30]
    assert fast.shape == plain.shape == (4, 1, 28, 28)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
