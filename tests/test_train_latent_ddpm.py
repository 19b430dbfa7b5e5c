"""train_latent_ddpm.py end to end, resume after kill -9 / SIGTERM, and its input checks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from conftest import REPO, kill_9_once, run_script

TINY_UNET = ["--unet.block_out_channels", "[32, 64]", "--unet.down_block_types", "[DownBlock2D, DownBlock2D]",
             "--unet.up_block_types", "[UpBlock2D, UpBlock2D]", "--unet.layers_per_block", "1",
             "--unet.norm_num_groups", "8"]


def ddpm_args(mnist_dir, ae, out, steps=20, extra=()):
    return ["--config", str(REPO / "configs/latent_ddpm_quick.yaml"), "--autoencoder", str(ae),
            "--output_dir", str(out), "--data_dir", str(mnist_dir), "--max_train_samples", "1024",
            "--max_train_steps", str(steps), "--train_batch_size", "32", "--logging_steps", "5",
            "--checkpointing_steps", "10", "--save_images_steps", "10", "--eval_num_samples", "0",
            "--num_inference_steps", "2", *TINY_UNET, *extra]


def unet_weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), f"{k} differs"


FAKE_TOKEN = "hf_NotARealTokenForTests1234567890"
RUN_OUTPUT = {}


@pytest.fixture(scope="module")
def ddpm_run(mnist_dir, tiny_autoencoder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ddpm"
    res = run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out) +
                     ["--hub_token", FAKE_TOKEN])  # given but unused: no push
    RUN_OUTPUT["log"] = res.stdout + res.stderr
    return out


@pytest.mark.slow
def test_hub_token_is_never_written_or_printed(ddpm_run):
    assert FAKE_TOKEN not in RUN_OUTPUT["log"]
    files = [p for p in ddpm_run.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files)  # TensorBoard hparams are among the files searched
    for p in files:
        assert FAKE_TOKEN.encode() not in p.read_bytes(), f"token found in {p}"


@pytest.mark.slow
def test_output_to_a_pipe_gets_plain_progress_lines_not_a_bar(ddpm_run):
    """run_script captures the output, as `make demo > log`, CI or nohup do: no carriage-return updates."""
    assert "\r" not in RUN_OUTPUT["log"]
    assert "latent ddpm: step 20/20 (100%), loss " in RUN_OUTPUT["log"] and "done in" in RUN_OUTPUT["log"]


@pytest.mark.slow
def test_run_leaves_a_pipeline_folder_and_pictures(ddpm_run):
    for name in ["model_index.json", "unet/config.json", "autoencoder/config.json", "scheduler/scheduler_config.json",
                 "README.md", "samples.png", "denoising.png", "grid_diffusion.gif", "loss.png", "training_config.yaml"]:
        assert (ddpm_run / name).is_file(), name
    scheduler = json.loads((ddpm_run / "scheduler/scheduler_config.json").read_text())
    assert scheduler["clip_sample"] is False and scheduler["beta_schedule"] == "squaredcos_cap_v2"
    ckpt = ddpm_run / "checkpoint-20"
    assert (ckpt / "unet_ema" / "diffusion_pytorch_model.safetensors").is_file()
    assert list((ddpm_run / "logs").rglob("events.out.tfevents*"))
    t = json.loads((ddpm_run / "timings.json").read_text())
    assert list(t["phases"]) == ["set-up", "data and latents", "training", "saving", "figures"]
    assert min(t["phases"].values()) >= 0 and sum(t["phases"].values()) == pytest.approx(t["total_seconds"])
    assert t["phases"]["training"] < t["model_saved_after_seconds"] < t["total_seconds"]


@pytest.mark.slow
def test_saved_pipeline_samples_digits(ddpm_run):
    import torch

    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    pipe = LatentDDPMPipeline.from_pretrained(ddpm_run)
    images = pipe(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (3, 28, 28, 1) and images.min() >= 0 and images.max() <= 1


@pytest.mark.slow
def test_pipe_without_arguments_samples_with_the_saved_sde_dpm_solver(ddpm_run):
    """The folder saves the configured sampler (SDE DPM-Solver++, the measured best) and steps, and plain
    diffusers' `pipe()` uses them: one UNet call per step, the very images of that sampler asked for by name."""
    import torch
    from diffusers import DiffusionPipeline

    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
    from pipeline.schedulers import with_scheduler

    scheduler = json.loads((ddpm_run / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler"
    assert scheduler["algorithm_type"] == "sde-dpmsolver++" and scheduler["timestep_spacing"] == "trailing"
    assert json.loads((ddpm_run / "model_index.json").read_text())["default_num_inference_steps"] == 2  # as run

    pipe = DiffusionPipeline.from_pretrained(ddpm_run, trust_remote_code=True)
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    images = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert len(calls) == 2 and images.shape == (3, 28, 28, 1)
    by_name = with_scheduler(LatentDDPMPipeline.from_pretrained(ddpm_run), "sde-dpm")
    same = by_name(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert (same.images == images).all()
    other = pipe(batch_size=3, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert not (other == images).all()  # the noise it adds follows the generator


@pytest.mark.parametrize("sampler,message", [
    ("lcm", "error: sampler lcm is for consistency-distilled students"),
    ("sde-dpn", "error: sampler: unknown scheduler 'sde-dpn'"),
    ("dpm:use_karras_sigmas=true", "error: sampler: scheduler 'dpm:use_karras_sigmas=true' repeats timesteps"),
])
def test_a_bad_sampler_is_one_line_before_any_data(tmp_path, tiny_autoencoder_run, sampler, message):
    args = ddpm_args(tmp_path / "no_data", tiny_autoencoder_run, tmp_path / "x") + ["--sampler", sampler,
                                                                                  "--num_inference_steps", "10"]
    res = run_script("train_latent_ddpm.py", args, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_latent_cache_is_keyed_to_the_autoencoder_weights(mnist_dir, tiny_autoencoder_run):
    import torch
    from accelerate import Accelerator

    from pipeline.data import load_idx_dataset
    from pipeline.latent_cache import cached_latents, encode_images, load_autoencoder
    from pipeline.paths import cache_dir

    images, _ = load_idx_dataset("train", data_dir=mnist_dir)
    images = images[:256]
    acc = Accelerator(cpu=True)
    ae = load_autoencoder(tiny_autoencoder_run)
    first = cached_latents(acc, ae, images, "mnist-test")
    assert torch.allclose(first, encode_images(ae, images, "cpu"))
    before = set(cache_dir("latents").iterdir())
    with torch.no_grad():
        next(ae.parameters()).add_(0.01)  # a different autoencoder
    second = cached_latents(acc, ae, images, "mnist-test")
    assert len(set(cache_dir("latents").iterdir()) - before) == 1, "a new autoencoder must get a new cache entry"
    assert not torch.allclose(first, second)


@pytest.mark.slow
def test_compiled_training_follows_the_eager_run(mnist_dir, tiny_autoencoder_run, ddpm_run, tmp_path):
    """--compile changes the speed, not the run. CUDA graphs are asked for; a CPU has none and
    compiles without them, the same code path as on a GPU up to the graph capture."""
    out = tmp_path / "compiled"
    run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out,
                                                 extra=["--compile", "true", "--compile_mode", "reduce-overhead"]))
    rows = [(ddpm_run / "loss.csv").read_text().split()[1:], (out / "loss.csv").read_text().split()[1:]]
    eager, compiled = ([tuple(map(float, r.split(","))) for r in rs] for rs in rows)
    assert [s for s, _ in compiled] == [s for s, _ in eager] == [5, 10, 15, 20]
    assert [loss for _, loss in compiled] == pytest.approx([loss for _, loss in eager], rel=1e-3)


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_identical_weights(mnist_dir, tiny_autoencoder_run, ddpm_run, tmp_path):
    out = tmp_path / "killed"
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, extra=["--checkpointing_steps", "5"])
    kill_9_once("train_latent_ddpm.py", args, out / "checkpoint-10")
    assert not (out / "unet").exists()
    # The same command with --resume_from_checkpoint latest finishes the job...
    run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"])
    # ...and ends exactly where the uninterrupted run ended (CPU ops are deterministic,
    # data order and noise are functions of (seed, step)): bitwise equal.
    assert_same_weights(unet_weights(out), unet_weights(ddpm_run))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(mnist_dir, tiny_autoencoder_run, ddpm_run, tmp_path):
    out = tmp_path / "term"
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, extra=["--checkpointing_steps", "100"])
    proc = subprocess.Popen([sys.executable, str(REPO / "train_latent_ddpm.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "loss.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    while len((out / "loss.csv").read_text().split()) < 2 and time.time() < deadline:  # first logged step
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "--resume_from_checkpoint latest" in output and "Traceback" not in output
    ckpts = list(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and not (out / "unet").exists()
    run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(unet_weights(out), unet_weights(ddpm_run))


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_skipped(mnist_dir, tiny_autoencoder_run, ddpm_run, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, extra=["--checkpointing_steps", "5",
                                                                  "--checkpoints_total_limit", "4"])
    run_script("train_latent_ddpm.py", args)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (10, 15, 20, 5)]
    # As if killed late: the newest checkpoint's weights cut short, a half-written
    # temporary one beside it, and no final model yet.
    shutil.rmtree(out / "checkpoint-20")
    shutil.rmtree(out / "unet")
    weights = out / "checkpoint-15" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (out / ".tmp-checkpoint-20").mkdir()
    res = run_script("train_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"])
    log = res.stdout + res.stderr
    assert "skipping unreadable checkpoint" in log and "checkpoint-15" in log and "resumed from" in log
    assert_same_weights(unet_weights(out), unet_weights(ddpm_run))


def test_checkpoints_total_limit_keeps_the_newest_good_one(tmp_path):
    from pipeline.checkpoints import STATE_FILE, _prune

    for n in (5, 10, 15):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "model.safetensors").write_bytes(b"x")
        if n != 15:  # the newest one is incomplete: it must not count as the one to keep
            (tmp_path / f"checkpoint-{n}" / STATE_FILE).write_text(f'{{"global_step": {n}}}')
    _prune(tmp_path, total_limit=1)
    assert (tmp_path / "checkpoint-10").is_dir() and not (tmp_path / "checkpoint-5").exists()


@pytest.mark.slow
def test_autoencoder_path_that_is_not_an_autoencoder(mnist_dir, ddpm_run, tmp_path):
    res = run_script("train_latent_ddpm.py", ["--autoencoder", str(ddpm_run / "unet"), "--output_dir",
                                              str(tmp_path / "x"), "--data_dir", str(mnist_dir)], check=False)
    assert res.returncode == 2 and "not a CABAutoencoder" in res.stderr and "Traceback" not in res.stderr
    for missing, says in ((tmp_path / "nothing", "no such folder; train one first"),  # cannot be a Hub id
                          ("someone/autoencoder", "the Hub cannot be asked (HF_HUB_OFFLINE is set)")):
        res = run_script("train_latent_ddpm.py", ["--autoencoder", str(missing), "--output_dir",
                                                  str(tmp_path / "x"), "--data_dir", str(mnist_dir)], check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr
        error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and says in error[0] and "python train_autoencoder.py --output_dir" in error[0]


@pytest.mark.slow
def test_unet_that_does_not_fit_the_latents(mnist_dir, tiny_autoencoder_run, tmp_path):
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, tmp_path / "x")
    args += ["--unet.block_out_channels", "[32, 32, 32, 32, 32]",
             "--unet.down_block_types", "[DownBlock2D, DownBlock2D, DownBlock2D, DownBlock2D, DownBlock2D]",
             "--unet.up_block_types", "[UpBlock2D, UpBlock2D, UpBlock2D, UpBlock2D, UpBlock2D]"]
    res = run_script("train_latent_ddpm.py", args, check=False)
    assert res.returncode == 2 and "8x8 latents cannot be halved 4 times" in res.stderr


@pytest.mark.slow
def test_a_misspelt_unet_block_type_is_one_line_before_any_data(tmp_path, tiny_autoencoder_run):
    """--data_dir points nowhere: the UNet is built (and refused) before the data is read."""
    args = ddpm_args(tmp_path / "no_data", tiny_autoencoder_run, tmp_path / "x")
    args += ["--unet.down_block_types", "[DownBlock2D, AttnDownBlok2D]"]
    res = run_script("train_latent_ddpm.py", args, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: the unet.* options do not build a diffusers UNet2DModel (AttnDownBlok2D does not exist.); "
        "check --unet.down_block_types")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_good_checkpoint(mnist_dir, tiny_autoencoder_run, tmp_path):
    out = tmp_path / "nan"
    args = ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=10, extra=["--checkpointing_steps", "5"])
    run_script("train_latent_ddpm.py", args)
    good = unet_weights(out)
    # The same folder again with a learning rate that blows the weights up within a few steps.
    res = run_script("train_latent_ddpm.py", args + ["--learning_rate", "1e12", "--max_grad_norm", "1e30",
                                                     "--lr_warmup_steps", "0"], check=False)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "loss became non-finite at step" in res.stderr and "Traceback" not in res.stderr
    assert_same_weights(unet_weights(out), good)  # the saved model was not overwritten
    from pipeline.checkpoints import checkpoint_is_complete

    assert checkpoint_is_complete(out / "checkpoint-10")


@pytest.mark.slow
def test_epsilon_with_cosine_schedule_is_warned_about(mnist_dir, tiny_autoencoder_run, tmp_path):
    res = run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, tmp_path / "eps", steps=1) +
                     ["--prediction_type", "epsilon", "--save_images_steps", "100"])
    assert "use --prediction_type v_prediction" in res.stdout + res.stderr


@pytest.mark.slow
def test_push_to_hub_without_network_fails_cleanly_and_keeps_the_pipeline(mnist_dir, tiny_autoencoder_run, tmp_path):
    out = tmp_path / "push"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=1) +
                     ["--push_to_hub", "true", "--hub_model_id", "someone/latent-digits", "--hub_token", FAKE_TOKEN,
                      "--save_images_steps", "100"], env=env, check=False)
    assert res.returncode == 2 and "upload to someone/latent-digits failed" in res.stderr
    assert f"python -m pipeline.export push {out} someone/latent-digits" in res.stderr  # upload later, same files
    assert "Traceback" not in res.stderr and FAKE_TOKEN not in res.stdout + res.stderr
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("schedule,target", [("squaredcos_cap_v2", "v_prediction"), ("linear", "epsilon")])
def test_min_snr_weights_each_sample_by_its_noise_level(schedule, target):
    """snr_gamma=5 scales each sample's MSE by min(SNR, 5) / (SNR + 1) for v, min(SNR, 5) / SNR for epsilon
    (Hang et al. 2023), SNR = alpha_bar / (1 - alpha_bar) at that sample's timestep."""
    import torch

    from pipeline.config import LatentDDPMTrainConfig, parse_config
    from pipeline.schedulers import make_train_scheduler
    from test_conditional import tiny_unet
    from pipeline import latent_training

    script, unet = latent_training, tiny_unet()
    scheduler = make_train_scheduler(1000, schedule, target)
    latents = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def per_sample_loss(gamma, i):
        cfg = parse_config(LatentDDPMTrainConfig, ["--prediction_type", target, "--snr_gamma", str(gamma)])
        with torch.no_grad():
            return script.loss_fn(cfg, scheduler, unet, latents[i:i + 1], None, torch.Generator().manual_seed(i))

    weights_seen = []
    for i in range(len(latents)):
        gen = torch.Generator().manual_seed(i)  # the draws loss_fn makes: noise first, then the timestep
        torch.randn(latents[i:i + 1].shape, generator=gen)
        t = torch.randint(0, 1000, (1,), generator=gen).item()
        abar = scheduler.alphas_cumprod[t].double()
        snr = abar / (1 - abar)
        want = min(snr, 5.0) / (snr + 1 if target == "v_prediction" else snr)
        got = per_sample_loss(5.0, i) / per_sample_loss("null", i)
        assert got.item() == pytest.approx(want.item(), rel=1e-4), f"t={t}"
        weights_seen.append(want.item())
    assert min(weights_seen) < 0.99  # the draws reached timesteps where the weighting matters


def test_timestep_sampling_keeps_or_reshapes_the_objective():
    """loss_weight draws each timestep in proportion to its min-SNR weight and weighs every draw alike: the
    expected loss is the uniform draw's (checked on a loss that grows with t), with no draws where the weight is
    near zero. logit_normal draws most timesteps at middling noise; both come from the generator alone."""
    import torch

    from pipeline import latent_training
    from pipeline.config import LatentDDPMTrainConfig, parse_config
    from pipeline.schedulers import make_train_scheduler

    scheduler = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")

    def draw(how, n=200_000, seed=0):
        cfg = parse_config(LatentDDPMTrainConfig, ["--timestep_sampling", how])
        return latent_training.draw_timesteps(cfg, scheduler, n, torch.Generator().manual_seed(seed), "cpu")

    per_step_loss = torch.linspace(1.0, 3.0, 1000)  # any loss that differs across timesteps
    expected = {}
    for how in ("uniform", "loss_weight"):
        t, w = draw(how)
        expected[how] = (w * per_step_loss[t]).mean().item()
    assert expected["loss_weight"] == pytest.approx(expected["uniform"], rel=0.01)
    t, w = draw("loss_weight")
    assert torch.all(w == w[0]) and ((t > 950) | (t < 20)).float().mean() < 0.01  # uniform: 7% there
    assert torch.equal(draw("loss_weight", 64, seed=3)[0], draw("loss_weight", 64, seed=3)[0])
    t, _ = draw("logit_normal")
    assert 450 < t.median() < 550 and ((t < 100) | (t > 900)).float().mean() < 0.1  # uniform: 20%
