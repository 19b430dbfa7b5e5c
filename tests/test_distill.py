"""distill_latent_ddpm.py: a tiny trained teacher distilled in a few steps, its folder loaded with plain diffusers
in a fresh process, exact resume after kill -9, and the bad inputs."""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO, kill_9_once, run_script
from test_train_latent_ddpm import assert_same_weights, ddpm_args, unet_weights


def distill_args(mnist_dir, teacher, out, steps=20, extra=()):
    return ["--config", str(REPO / "configs/distill_quick.yaml"), "--teacher", str(teacher), "--output_dir", str(out),
            "--data_dir", str(mnist_dir), "--max_train_samples", "1024", "--max_train_steps", str(steps),
            "--train_batch_size", "32", "--logging_steps", "5", "--checkpointing_steps", "10",
            "--save_images_steps", "10", "--eval_num_samples", "0", "--eval_steps", "[1, 2]", *extra]


@pytest.fixture(scope="module")
def teacher(mnist_dir, tiny_autoencoder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    run_script("train_latent_ddpm.py", ddpm_args(mnist_dir, tiny_autoencoder_run, out, steps=20,
                                                 extra=["--skip_figures"]))
    return out


@pytest.fixture(scope="module")
def student(mnist_dir, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "student"
    run_script("distill_latent_ddpm.py", distill_args(mnist_dir, teacher, out))
    return out


@pytest.mark.slow
def test_student_folder_is_complete_and_says_what_it_is(student, teacher):
    for name in ["model_index.json", "unet/config.json", "autoencoder/config.json", "scheduler/scheduler_config.json",
                 "pipeline_latent_ddpm.py", "README.md", "samples.png", "samples_1_steps.png", "samples_2_steps.png",
                 "denoising.png", "loss.png", "distillation.json", "timings.json", "training_config.yaml"]:
        assert (student / name).is_file(), name
    scheduler = json.loads((student / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 50
    assert scheduler["beta_schedule"] == "squaredcos_cap_v2" and scheduler["prediction_type"] == "v_prediction"
    index = json.loads((student / "model_index.json").read_text())
    assert index["consistency_distilled"] is True and index["default_num_inference_steps"] == 4
    assert index["default_timesteps"] == [[999, 699], [999, 859, 699, 499]]  # the config's measured timesteps
    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
    from pipeline.schedulers import default_sampling
    assert default_sampling(LatentDDPMPipeline.from_pretrained(student)) == ("lcm", 4)  # the evaluation's and the app's
    info = json.loads((student / "distillation.json").read_text())
    assert info["teacher"] == str(teacher) and info["guidance_scale"] == 1.0 and info["max_train_steps"] == 20
    card = (student / "README.md").read_text()
    assert f"student of `{teacher}`" in card and "# 4 steps at [999, 859, 699, 499]" in card
    assert "| guidance_scale | 1.0 |" in card
    assert "timesteps=[999, 699]" in card and "| default_timesteps | [[999, 699], [999, 859, 699, 499]] |" in card
    assert (student / "checkpoint-20" / "unet_target" / "diffusion_pytorch_model.safetensors").is_file()
    assert list((student / "logs").rglob("events.out.tfevents*"))
    # The student moved away from the teacher's weights it started from.
    s, t = unet_weights(student), unet_weights(teacher)
    assert any(not torch.equal(s[k], t[k]) for k in s)


@pytest.mark.slow
def test_student_loads_with_plain_diffusers_in_a_fresh_process_and_samples_at_1_and_2_steps(student, tmp_path):
    code = f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline, LCMScheduler
        pipe = DiffusionPipeline.from_pretrained({str(student)!r}, trust_remote_code=True)
        assert isinstance(pipe.scheduler, LCMScheduler), type(pipe.scheduler)
        for n in (1, 2):
            images = pipe(batch_size=4, num_inference_steps=n, generator=torch.manual_seed(0), output_type="np").images
            np.save(f"{{n}}.npy", images)
            print(n, images.shape, float(images.min()), float(images.max()))
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import numpy as np

    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

    pipe = LatentDDPMPipeline.from_pretrained(student)  # the project's classes: the same digits
    for n in (1, 2):
        shipped = np.load(tmp_path / f"{n}.npy")
        assert shipped.shape == (4, 28, 28, 1) and 0 <= shipped.min() and shipped.max() <= 1
        ours = pipe(batch_size=4, num_inference_steps=n, generator=torch.manual_seed(0), output_type="np").images
        np.testing.assert_allclose(ours, shipped, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "1.npy"), np.load(tmp_path / "2.npy"))
    default = pipe(batch_size=4, generator=torch.manual_seed(0), output_type="np").images  # the folder's 4 steps
    four = pipe(batch_size=4, num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
    np.testing.assert_array_equal(default, four)


@pytest.mark.slow
@pytest.mark.benchmark
def test_checkpoint_benchmark_scores_each_checkpoint_at_each_schedule(student, mnist_dir, tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.studies.distill_checkpoints", "--run", str(student), "--schedules", "2;999,699",
           "--num_samples", "16", "--batch_size", "8", "--data_dir", str(mnist_dir), "--output", str(tmp_path),
           "--name", "ck"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "ck.json").read_text())["rows"]
    assert [(r["checkpoint"], r["schedule"], r["timesteps"]) for r in rows] == [
        (10, "LCM 2", None), (10, "[999, 699]", [999, 699]), (20, "LCM 2", None), (20, "[999, 699]", [999, 699])]
    assert rows[0]["fid"] != rows[2]["fid"]  # each checkpoint's own weights
    assert "| 20 | " in (tmp_path / "ck.md").read_text()
    bad = subprocess.run(cmd[:-2] + ["--checkpoints", "15"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        f"error: {student} has no checkpoint-15 folder (found: 10, 20); distill with a checkpointing_steps that reaches it"]
    up = subprocess.run(cmd[:6] + ["699,999"] + cmd[7:], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert up.returncode == 1 and "error: --schedules [699, 999]: `timesteps` must be" in up.stderr


@pytest.mark.slow
def test_kill_9_then_resume_ends_with_identical_weights(mnist_dir, teacher, student, tmp_path):
    out = tmp_path / "killed"
    args = distill_args(mnist_dir, teacher, out, extra=["--checkpointing_steps", "5", "--skip_figures"])
    kill_9_once("distill_latent_ddpm.py", args, out / "checkpoint-10")
    assert not (out / "unet").exists()
    run_script("distill_latent_ddpm.py", args + ["--resume_from_checkpoint", "latest"])
    assert_same_weights(unet_weights(out), unet_weights(student))


@pytest.mark.slow
def test_a_teacher_that_is_not_a_pipeline_folder_is_one_line(mnist_dir, tiny_autoencoder_run, teacher, student,
                                                               tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(teacher, mixed, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))
    config = json.loads((mixed / "unet/config.json").read_text())
    (mixed / "unet/config.json").write_text(json.dumps({**config, "sample_size": 16}))  # loads, but not its latents
    cases = [(tiny_autoencoder_run, "is not a pipeline folder"), (tmp_path / "nothing", "is not a pipeline folder"),
             (mixed, "does not match its autoencoder's 4x8x8 latents"),
             (student, "is a consistency-distilled student already")]
    for folder, says in cases:
        res = run_script("distill_latent_ddpm.py", distill_args(mnist_dir, folder, tmp_path / "out"), check=False)
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert len(errors) == 1 and f"--teacher {folder}" in errors[0] and says in errors[0], errors
    assert not (tmp_path / "out" / "unet").exists()


def test_more_eval_steps_than_the_grid_has_is_refused():
    from pipeline.config import DistillConfig, parse_config
    from pipeline.errors import UserError

    with pytest.raises(UserError, match=r"from 1 to num_ddim_timesteps \(8\): the student's grid has no more"):
        parse_config(DistillConfig, ["--num_ddim_timesteps", "8", "--eval_steps", "[1, 9]"])


@pytest.mark.parametrize("value,match", [
    ("[[699, 999]]", "descending timesteps, one list per step count"),
    ("[[999, 699], [999, 499]]", "two lists of the same length"),
    ("[999, 699]", "descending timesteps, one list per step count"),
])
def test_bad_default_timesteps_are_refused(value, match):
    from pipeline.config import DistillConfig, parse_config
    from pipeline.errors import UserError

    with pytest.raises(UserError, match=match):
        parse_config(DistillConfig, ["--default_timesteps", value])
    assert parse_config(DistillConfig, ["--default_timesteps", "null"]).default_timesteps is None


def test_default_timesteps_off_the_students_grid_are_refused_with_the_grid_named():
    from pipeline.distill import DDIMGrid, check_on_grid
    from pipeline.errors import UserError
    from pipeline.schedulers import make_train_scheduler

    grid = DDIMGrid(make_train_scheduler(), 50, "cpu")
    check_on_grid([[999, 699], [999, 799, 599, 399]], grid)
    with pytest.raises(UserError, match=r"\[999, 690\] are not all on the student's grid \(every 20th timestep: "
                                        r"19, 39, ..., 999\); pick from it, or set default_timesteps to null"):
        check_on_grid([[999, 690]], grid)


@pytest.mark.slow
def test_student_refuses_more_steps_than_its_grid_and_warns_about_other_schedulers(student):
    from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline
    from pipeline.schedulers import with_scheduler

    pipe = LatentDDPMPipeline.from_pretrained(student)
    with pytest.raises(ValueError, match=r"`num_inference_steps` \(51\) is more than the 50 steps of this consistency"):
        pipe(batch_size=1, num_inference_steps=51)
    with pytest.warns(UserWarning, match="consistency-distilled: .* DPMSolverMultistepScheduler reads as a denois"):
        with_scheduler(pipe, "dpm")(batch_size=1, num_inference_steps=2)


def test_consistency_function_meets_the_boundary_and_matches_lcm_sampling():
    """f(x, 0) = x; the training scalings and x0 are LCMScheduler's own: one LCM step of an output is f."""
    from diffusers import LCMScheduler

    from pipeline.config import DistillConfig
    from pipeline.distill import DDIMGrid, consistency, lcm_scheduler
    from pipeline.schedulers import make_train_scheduler

    ddpm = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    lcm = lcm_scheduler(ddpm, DistillConfig())
    assert isinstance(lcm, LCMScheduler) and torch.allclose(lcm.alphas_cumprod, ddpm.alphas_cumprod)
    grid = DDIMGrid(ddpm, 50, "cpu")
    assert grid.timesteps[0] == 19 and grid.timesteps[-1] == 999 and grid.k == 20
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(consistency(lcm, grid, out, torch.zeros(2, dtype=torch.long), x), x)
    lcm.set_timesteps(1)
    t = lcm.timesteps[0]
    want = lcm.step(out[:1], t, x[:1]).prev_sample
    assert torch.allclose(consistency(lcm, grid, out[:1], t.reshape(1), x[:1]), want, atol=1e-5)


def test_a_teacher_saved_with_sde_dpm_solver_is_distilled_on_its_training_noise_schedule():
    """train_latent_ddpm.py saves its default sampler (SDE DPM-Solver++), not the DDPM it trained with: the
    student's LCMScheduler and the teacher's DDIM grid come from the training schedule under it."""
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    from pipeline.config import DistillConfig
    from pipeline.distill import DDIMGrid, lcm_scheduler, noise_schedule
    from pipeline.schedulers import make_scheduler, make_train_scheduler

    ddpm = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    saved = make_scheduler("sde-dpm", ddpm)
    assert isinstance(saved, DPMSolverMultistepScheduler)
    lcm = lcm_scheduler(saved, DistillConfig())
    assert isinstance(lcm, LCMScheduler) and torch.allclose(lcm.alphas_cumprod, ddpm.alphas_cumprod)
    assert lcm.config.prediction_type == "v_prediction" and lcm.config.original_inference_steps == 50
    assert lcm.config.clip_sample is False
    grid = DDIMGrid(noise_schedule(saved), 50, "cpu")
    assert torch.allclose(grid.alphas_cumprod, ddpm.alphas_cumprod) and grid.prediction_type == "v_prediction"


@pytest.mark.slow
def test_distillation_on_two_processes_under_accelerate_launch_and_its_resume(mnist_dir, teacher, tmp_path):
    from test_distributed import launch

    args = distill_args(mnist_dir, teacher, tmp_path / "ddp", extra=["--checkpointing_steps", "5", "--skip_figures"])
    log = launch("accelerate", "distill_latent_ddpm.py", args + ["--max_train_steps", "5"])
    assert "training on 2 process(es)" in log and "weights identical on all 2 processes" in log
    log = launch("accelerate", "distill_latent_ddpm.py", args + ["--max_train_steps", "10",
                                                                 "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "checkpoint-5" in log and "weights identical on all 2 processes" in log
    assert (tmp_path / "ddp" / "model_index.json").is_file() and (tmp_path / "ddp" / "checkpoint-10").is_dir()


def test_guidance_is_folded_into_the_target_of_a_class_conditional_teacher():
    """With labels the teacher is called for the conditional and the null label and the target moves with
    guidance_scale; the student is called once. Dropped labels (null) get no guidance."""
    import copy

    from pipeline.config import DistillConfig, parse_config
    from pipeline.distill import DDIMGrid, distill_loss, lcm_scheduler
    from pipeline.schedulers import make_train_scheduler
    from test_conditional import tiny_unet

    ddpm = make_train_scheduler(1000, "squaredcos_cap_v2", "v_prediction")
    teacher = tiny_unet(num_class_embeds=11).eval()
    student, target = copy.deepcopy(teacher), copy.deepcopy(teacher)
    latents, labels = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    calls = []
    teacher.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["class_labels"].tolist()),
                                  with_kwargs=True)

    def loss(scale, dropout=0.0):
        cfg = parse_config(DistillConfig, ["--guidance_scale", str(scale), "--class_dropout", str(dropout)])
        grid = DDIMGrid(ddpm, cfg.num_ddim_timesteps, "cpu")
        with torch.no_grad():
            return distill_loss(cfg, grid, lcm_scheduler(ddpm, cfg), ddpm, teacher, student, target, latents, labels,
                                10, torch.Generator().manual_seed(1)).item()

    plain, guided = loss(1.0), loss(3.0)
    assert calls == [list(range(6)), list(range(6)), [10] * 6]  # one pass without guidance, two with it
    assert plain != guided and all(map(lambda x: x == x, (plain, guided)))
    calls.clear()
    loss(3.0, dropout=0.999)  # every label dropped: cond and uncond are the same pass, so the target is unguided
    assert calls[0] == [10] * 6 and calls[1] == [10] * 6


@pytest.mark.slow
def test_a_colour_class_conditional_image_folder_teacher_is_distilled_from_its_own_data(tmp_path):
    """No data options on the distill command line: the student reads the teacher's image folder (its saved
    training_config.yaml), and its folder loads with plain diffusers and makes colour images of the teacher's size
    and classes at 1, 2 and 4 steps."""
    from test_image_data import TINY, colour_folder

    folder = colour_folder(tmp_path / "pics", n_per_class=10)
    ae, teacher, out = tmp_path / "ae", tmp_path / "teacher", tmp_path / "student"
    run_script("train_autoencoder.py", ["--train_data_dir", str(folder), "--resolution", "16", "--output_dir", str(ae),
                                        "--max_train_steps", "10", "--skip_figures", "true", *TINY])
    teacher_args = [
        "--config", str(REPO / "configs/latent_ddpm_class_quick.yaml"), "--autoencoder", str(ae),
        "--output_dir", str(teacher), "--max_train_steps", "5", "--train_batch_size", "4", "--checkpointing_steps", "100",
        "--num_inference_steps", "2", "--eval_num_samples", "0", "--skip_figures", "true", "--num_threads", "1"]
    student_args = [
        "--config", str(REPO / "configs/distill_quick.yaml"), "--teacher", str(teacher), "--output_dir", str(out),
        "--max_train_steps", "4", "--train_batch_size", "4", "--checkpointing_steps", "100", "--eval_num_samples", "10",
        "--eval_steps", "[1, 2, 4]", "--num_threads", "1"]
    # The image size, channels and background are the autoencoder's: a run that names others is refused, untouched.
    for flag, value, says in (("--resolution", "48", "takes 16x16 images (padded to 16x16)"),
                              ("--channels", "1", "takes 3-channel images"),
                              ("--background", "black", "composited on white")):
        bad = run_script("train_latent_ddpm.py", teacher_args + [flag, value], check=False)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr[-2000:]
        assert f"{flag} {value} contradicts the autoencoder {ae}, which" in bad.stderr or says in bad.stderr
        assert says in bad.stderr and not teacher.exists()
    # No data options: the latent model reads the autoencoder's image folder, the student the teacher's.
    res = run_script("train_latent_ddpm.py", teacher_args)
    assert f"data options from the autoencoder {ae}: train_data_dir {folder}" in res.stdout
    bad = run_script("distill_latent_ddpm.py", student_args + ["--resolution", "48"], check=False)
    assert bad.returncode == 2 and f"--resolution 48 contradicts the teacher {teacher}" in bad.stderr
    assert not out.exists()
    res = run_script("distill_latent_ddpm.py", student_args)
    assert f"data options from the teacher {teacher}: train_data_dir {folder}" in res.stdout
    saved = (out / "training_config.yaml").read_text()
    assert f"train_data_dir: {folder}" in saved
    assert "not_scored" in json.loads((out / "evaluation" / "2_steps" / "metrics.json").read_text())  # 18 images: no judge
    code = textwrap.dedent(f"""
        import torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        for n in (1, 2, 4):
            images = pipe(class_labels=["squares", "circles"], num_inference_steps=n,
                          generator=torch.manual_seed(0)).images
            print(n, type(pipe.scheduler).__name__, [(im.mode, im.size) for im in images])
    """)
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for n in (1, 2, 4):
        assert f"{n} LCMScheduler [('RGB', (16, 16)), ('RGB', (16, 16))]" in r.stdout
