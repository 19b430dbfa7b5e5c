"""The one command: `train_latent_ddpm.py --train_data_dir DIR --output_dir OUT` without --autoencoder trains the
autoencoder, the latent model and (--student_steps) a student, as a user runs it."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import kill_9_once, run_script
from PIL import Image
from test_image_data import colour_folder

from pipeline.config import read_options
from pipeline.errors import UserError
from pipeline.stages import main, plan, split_argv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--preset", "cpu", "--num_threads", "1",
        "--autoencoder_autoencoder.block_out_channels", "[8, 16, 16]", "--autoencoder_autoencoder.norm_num_groups", "4",
        "--autoencoder_autoencoder.reduction", "4", "--autoencoder_max_train_steps", "10",
        "--autoencoder_checkpointing_steps", "5", "--autoencoder_tsne_num_points", "20",
        "--max_train_steps", "60", "--checkpointing_steps", "10", "--num_inference_steps", "2", "--eval_num_samples", "10",
        "--student_steps", "2", "--student_max_train_steps", "6", "--student_checkpointing_steps", "3",
        "--student_eval_num_samples", "10", "--student_eval_steps", "[1, 2]"]


def stage_plan(args):
    rest, prefixed, own = split_argv(args)
    return {s.name: s.cfg for s in plan(read_options(rest)[0], prefixed, own)}


def test_options_reach_their_stage_in_layers(tmp_path, capsys):
    """Preset YAML <- the stage's YAML <- unprefixed options (data and machine: every stage; geometry: the
    autoencoder; the rest: the pipeline) <- prefixed options; batches the user did not set fit small data."""
    folder = colour_folder(tmp_path / "pics", n_per_class=12)
    ae_yaml = tmp_path / "ae.yaml"
    ae_yaml.write_text("learning_rate: 0.01\nmax_train_steps: 77\n")
    cfg = stage_plan(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / "run"), "--preset", "cpu",
                      "--seed", "3", "--resolution", "16", "--max_train_steps", "5", "--autoencoder_config", str(ae_yaml),
                      "--autoencoder_max_train_steps", "9", "--student_steps", "1", "--student_train_batch_size", "2"])
    ae, latent, student = cfg["autoencoder"], cfg["pipeline"], cfg["student"]
    assert (ae.learning_rate, ae.max_train_steps, ae.resolution, ae.max_resolution) == (0.01, 9, 16, 32)
    assert latent.max_train_steps == 5 and latent.resolution is None and latent.autoencoder == str(tmp_path / "run/autoencoder")
    assert student.teacher == str(tmp_path / "run/pipeline") and student.default_steps == 1
    assert {c.seed for c in cfg.values()} == {3} and {c.train_data_dir for c in cfg.values()} == {str(folder)}
    assert [Path(c.output_dir).name for c in cfg.values()] == ["autoencoder", "pipeline", "student"]
    # 21 training images: the preset's batches shrink to 5 (4 per epoch), the one the user set is kept.
    assert (ae.train_batch_size, latent.train_batch_size, student.train_batch_size) == (5, 5, 2)
    assert "the pipeline's batch 128 -> 5 per process" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()  # planning writes nothing


def test_colour_images_start_from_the_colour_recipe_and_keep_their_data_options(tmp_path):
    """--preset cpu: colour images start from the emoji study's recipe (a wider UNet with attention, DPM-Solver++ at
    20 steps), grayscale ones from the digits' quick configs; either way the data, its size and the conditioning
    are the user's, never the emoji's."""
    from test_image_data import picture

    colour = colour_folder(tmp_path / "pics", n_per_class=12)
    gray = tmp_path / "gray" / "x"
    gray.mkdir(parents=True)
    for i in range(24):
        picture("L", 16, i).save(gray / f"{i}.png")
    runs = {}
    for name, folder in (("colour", colour), ("gray", gray.parent)):
        runs[name] = stage_plan(["--train_data_dir", str(folder), "--output_dir", str(tmp_path / name), "--preset", "cpu"])
    ae, latent = runs["colour"]["autoencoder"], runs["colour"]["pipeline"]
    assert latent.unet.block_out_channels == [64, 128] and "AttnDownBlock2D" in latent.unet.down_block_types
    assert (latent.sampler, latent.num_inference_steps, latent.learning_rate) == ("dpm", 20, 1e-3)
    for cfg in (ae, latent):
        assert cfg.train_data_dir == str(colour) and cfg.dataset != "emoji-datasource-google"
    assert (ae.resolution, ae.max_resolution, latent.conditioning) == (None, 32, "none")
    assert latent.autoencoder == str(tmp_path / "colour" / "autoencoder")
    gray_latent = runs["gray"]["pipeline"]
    assert gray_latent.unet.block_out_channels == [32, 64] and gray_latent.sampler == "sde-dpm"
    # Each autoencoder from its own preset: the two differ today only in how many test images the t-SNE draws.
    assert (runs["gray"]["autoencoder"].tsne_num_points, ae.tsne_num_points) == (2000, 379)


def test_options_of_the_one_command_are_refused_with_a_given_autoencoder(tmp_path):
    with pytest.raises(UserError, match="--student_steps belong to the one command"):
        main(["--autoencoder", str(tmp_path / "ae"), "--student_steps", "2"])
    with pytest.raises(UserError, match="--student_\\* options were given without --student_steps"):
        stage_plan(["--data_dir", "x", "--student_learning_rate", "1"])
    with pytest.raises(UserError, match="--preset fast is unknown"):
        stage_plan(["--preset", "fast"])
    with pytest.raises(UserError, match="the autoencoder stage .its options: --autoencoder_<option>.*unknown config key 'learning_rat'"):
        stage_plan(["--autoencoder_learning_rat", "1"])


def refused(args, out) -> str:
    res = run_script("train_latent_ddpm.py", [*args, "--output_dir", str(out), *TINY], check=False)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr[-2000:]
    assert not out.exists()  # nothing written
    return res.stderr


@pytest.mark.slow
def test_bad_input_is_one_line_with_nothing_written(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no images" in refused(["--train_data_dir", str(tmp_path / "empty")], tmp_path / "a")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(12):
        (broken / f"{i}.png").write_bytes(b"not a png")
    assert "remove or replace the file" in refused(["--train_data_dir", str(broken)], tmp_path / "b")
    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (16, 16), "red").save(one / "a.png")
    assert "at least 10" in refused(["--train_data_dir", str(one)], tmp_path / "c")
    dots = tmp_path / "dots"
    dots.mkdir()
    for i in range(12):
        Image.new("RGB", (4, 4), (20 * i, 0, 0)).save(dots / f"{i}.png")
    assert "smaller than the 8x8" in refused(["--train_data_dir", str(dots)], tmp_path / "d")
    line = refused(["--train_data_dir", str(one), "--dataset", "uoft-cs/cifar10"], tmp_path / "e")
    assert "either --train_data_dir" in line and "not both" in line


def weights(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))
            if "checkpoint-" not in p.as_posix()}


@pytest.mark.slow
def test_a_colour_folder_becomes_a_pipeline_and_a_student_and_kill_9_resumes_bitwise(tmp_path):
    folder = colour_folder(tmp_path / "pics", n_per_class=16)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["--train_data_dir", str(folder), *TINY]
    res = run_script("train_latent_ddpm.py", args + ["--output_dir", str(whole)])
    for line in ("[1/3] autoencoder ->", "[2/3] pipeline ->", "[3/3] student ->", f"made in {whole}",
                 f'DiffusionPipeline.from_pretrained("{whole / "student"}", trust_remote_code=True)',
                 f"python app.py --pipeline {whole / 'student'}", f"python -m pipeline.export push {whole / 'student'}"):
        assert line in res.stdout, res.stdout[-3000:]
    # kill -9 in the second stage, then the same command resumes: the finished stage is not run again.
    kill_9_once("train_latent_ddpm.py", args + ["--output_dir", str(killed)], killed / "pipeline" / "checkpoint-10")
    assert not (killed / "pipeline" / "model_index.json").exists()
    res = run_script("train_latent_ddpm.py", args + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert f"[1/3] autoencoder: finished earlier in {killed / 'autoencoder'}; not run again" in res.stdout
    assert "resumed from" in res.stdout and "checkpoint-10 at step 10" in res.stdout
    for stage in ("autoencoder", "pipeline", "student"):
        a, b = weights(whole / stage), weights(killed / stage)
        assert a and a == b, stage  # bitwise the same weights as the uninterrupted run
    # Everything finished: the same command runs nothing; other options for a finished stage are refused.
    res = run_script("train_latent_ddpm.py", args + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert res.stdout.count("not run again") == 3
    res = run_script("train_latent_ddpm.py", args + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest",
                                                     "--autoencoder_learning_rate", "0.01"], check=False)
    assert res.returncode == 2 and "trained with other options (learning_rate 0.003 -> 0.01)" in res.stderr
    # Both folders load with plain diffusers in a fresh process and make colour images of the data's size.
    code = textwrap.dedent(f"""
        import torch
        from diffusers import DiffusionPipeline
        for name, steps in (("pipeline", 2), ("student", 1), ("student", 2)):
            pipe = DiffusionPipeline.from_pretrained({str(whole)!r} + "/" + name, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            images = pipe(batch_size=2, num_inference_steps=steps, generator=torch.manual_seed(0)).images
            print(name, steps, type(pipe.scheduler).__name__, [(im.mode, im.size) for im in images])
    """)
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "student 2 LCMScheduler [('RGB', (16, 16)), ('RGB', (16, 16))]" in r.stdout, r.stdout
    assert "pipeline 2 DPMSolverMultistepScheduler [('RGB', (16, 16)), ('RGB', (16, 16))]" in r.stdout, r.stdout
    assert json.loads((whole / "student" / "distillation.json").read_text())["default_steps"] == 2
