"""Config loading: YAML + command-line overrides, and clear errors for bad values."""

import pytest
import yaml

from pipeline.config import AutoencoderTrainConfig, LatentDDPMTrainConfig, parse_config, save_config
from pipeline.errors import UserError

from conftest import REPO


def test_yaml_then_overrides_win():
    cfg = parse_config(AutoencoderTrainConfig, ["--config", str(REPO / "configs/autoencoder_quick.yaml"),
                                                "--learning_rate", "1e-4", "--autoencoder.layers_per_block", "3",
                                                "--autoencoder.block_out_channels", "[8, 16, 16]", "--compile=true"])
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float)
    assert cfg.autoencoder.layers_per_block == 3
    assert cfg.autoencoder.block_out_channels == [8, 16, 16]
    assert cfg.compile is True
    assert cfg.train_batch_size == 64  # from the YAML file


def test_bare_boolean_flags_mean_true():
    cfg = parse_config(LatentDDPMTrainConfig, ["--push_to_hub", "--hub_model_id", "me/digits", "--compile"])
    assert cfg.push_to_hub is True and cfg.hub_model_id == "me/digits" and cfg.compile is True
    with pytest.raises(UserError, match="--learning_rate needs a value"):
        parse_config(LatentDDPMTrainConfig, ["--learning_rate", "--seed", "1"])


def test_booleans_nulls_and_nested_ddpm_keys():
    cfg = parse_config(LatentDDPMTrainConfig, ["--use_ema", "false", "--unet.layers_per_block", "1",
                                               "--checkpoints_total_limit", "null", "--data_dir", "/x"])
    assert cfg.use_ema is False and cfg.unet.layers_per_block == 1
    assert cfg.checkpoints_total_limit is None and cfg.data_dir == "/x"


def test_unknown_key_names_it_and_suggests_closest():
    with pytest.raises(UserError, match=r"unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        parse_config(AutoencoderTrainConfig, ["--learning_rat", "1e-3"])
    with pytest.raises(UserError, match=r"'unet.layers_per_blok'.*'unet.layers_per_block'"):
        parse_config(LatentDDPMTrainConfig, ["--unet.layers_per_blok", "1"])


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train_batchsize: 3\n")
    with pytest.raises(UserError, match="train_batch_size"):
        parse_config(AutoencoderTrainConfig, ["--config", str(p)])


@pytest.mark.parametrize("args,match", [
    (["--train_batch_size", "0"], "train_batch_size must be >= 1"),
    (["--learning_rate", "-1e-3"], "learning_rate must be > 0"),
    (["--mixed_precision", "fp8"], "mixed_precision must be one of no, fp16, bf16"),
    (["--report_to", "off"], "report_to must be tensorboard or none"),
    (["--compile_mode", "fast"], "compile_mode must be one of default, reduce-overhead, max-autotune"),
    (["--train_batch_size", "abc"], "train_batch_size expects int"),
    (["--max_train_steps", "1.5"], "max_train_steps expects int"),
    (["--lr_scheduler", "cosinus"], "lr_scheduler 'cosinus' is unknown"),
    (["--autoencoder.block_out_channels", "[24, 32]"], "divisible"),
    (["--config", "nope.yaml"], "config file nope.yaml not found"),
    (["--seed"], "--seed needs a value"),
])
def test_bad_values_are_user_errors(args, match):
    with pytest.raises(UserError, match=match):
        parse_config(AutoencoderTrainConfig, args)


def test_ddpm_specific_checks():
    with pytest.raises(UserError, match="prediction_type"):
        parse_config(LatentDDPMTrainConfig, ["--prediction_type", "x0"])
    with pytest.raises(UserError, match="ddpm_beta_schedule must be one of linear, scaled_linear, squaredcos_cap_v2 "
                                        r"\(the cosine schedule is squaredcos_cap_v2\), got 'cosine'"):
        parse_config(LatentDDPMTrainConfig, ["--ddpm_beta_schedule", "cosine"])
    with pytest.raises(UserError, match="timestep_sampling must be one of uniform, logit_normal, loss_weight, got 'snr'"):
        parse_config(LatentDDPMTrainConfig, ["--timestep_sampling", "snr"])
    with pytest.raises(UserError, match="hub_model_id"):
        parse_config(LatentDDPMTrainConfig, ["--push_to_hub", "true"])
    with pytest.raises(UserError, match="same length"):
        parse_config(LatentDDPMTrainConfig, ["--unet.block_out_channels", "[32, 64, 64]"])


def test_resolved_config_is_written_without_the_token(tmp_path):
    cfg = parse_config(LatentDDPMTrainConfig, ["--hub_token", "hf_secret123", "--seed", "7"])
    assert cfg.hub_token == "hf_secret123"  # usable in memory
    save_config(cfg, tmp_path / "training_config.yaml")
    text = (tmp_path / "training_config.yaml").read_text()
    assert "hf_secret123" not in text
    assert yaml.safe_load(text)["seed"] == 7


def test_string_options_keep_what_was_typed():
    # YAML would read `no` as a boolean and 2024 as a number; these options are strings.
    # Quoting still works, and null still means "not set" for optional ones.
    cfg = parse_config(AutoencoderTrainConfig, ["--mixed_precision", "no", "--output_dir", "2024",
                                                "--dataset", '"ylecun/mnist"', "--data_dir", "null"])
    assert cfg.mixed_precision == "no" and cfg.output_dir == "2024"
    assert cfg.dataset == "ylecun/mnist" and cfg.data_dir is None


def _exit_output(capsys, cls, argv):
    with pytest.raises(SystemExit) as stop:
        parse_config(cls, argv)
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cls", [AutoencoderTrainConfig, LatentDDPMTrainConfig])
def test_help_gives_every_option_its_default_and_reason(capsys, cls):
    import dataclasses
    import typing

    text = _exit_output(capsys, cls, ["--help"])
    for flag in ("--config FILE", "--dry_run", "--debug"):  # not config keys, but options all the same
        assert f"  {flag}" in text

    def keys(c, prefix=""):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], prefix + f.name + ".")
            else:
                yield prefix + f.name, f.metadata.get("help")

    entries = text.split("\n  --")
    for key, why in keys(cls):
        assert why, f"{key} has no reason: give it option(..., help)"
        entry = next((e for e in entries if e.startswith(key + " ")), None)
        assert entry is not None and why in " ".join(entry.split()), f"--help lacks {key} or its reason"
    assert "--learning_rate 0.003" not in text and "peak learning rate after warmup" in text


def test_dry_run_prints_the_resolved_config_and_exits(capsys, tmp_path):
    argv = ["--config", str(REPO / "configs/latent_ddpm_quick.yaml"), "--seed", "3", "--unet.layers_per_block", "1",
            "--hub_token", "hf_secret123"]
    text = _exit_output(capsys, LatentDDPMTrainConfig, [*argv, "--dry_run"])
    assert "hf_secret123" not in text
    printed = yaml.safe_load(text)
    assert printed["seed"] == 3 and printed["unet"]["layers_per_block"] == 1
    # What it prints is the config the run would use: fed back as --config, it gives the same one.
    (tmp_path / "resolved.yaml").write_text(text)
    again = parse_config(LatentDDPMTrainConfig, ["--config", str(tmp_path / "resolved.yaml"), "--hub_token", "hf_secret123"])
    assert again == parse_config(LatentDDPMTrainConfig, argv)
    assert parse_config(LatentDDPMTrainConfig, [*argv, "--dry_run", "false"]).seed == 3
    with pytest.raises(UserError, match="dry_run expects bool"):
        parse_config(LatentDDPMTrainConfig, ["--dry_run", "maybe"])


@pytest.mark.slow
def test_dry_run_of_a_script_writes_nothing(tmp_path):
    from conftest import run_script

    out = tmp_path / "run"
    res = run_script("train_autoencoder.py", ["--config", str(REPO / "configs/autoencoder_quick.yaml"),
                                              "--output_dir", str(out), "--max_train_steps", "7", "--dry_run"])
    assert yaml.safe_load(res.stdout)["max_train_steps"] == 7 and not out.exists()
    bad = run_script("train_autoencoder.py", ["--learning_rat", "1", "--dry_run"], check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown config key 'learning_rat'")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*latent_ddpm*.yaml")))
def test_every_latent_config_saves_the_measured_default_sampler(name):
    """What `pipe()` does for a folder these configs make is what was measured best for its data: the evaluation's
    default, SDE DPM-Solver++ at 10 steps, for the digits and clothes; DPM-Solver++ at 20 for the emoji, where the
    SDE form scored further from the floor (docs/tuning.md)."""
    from pipeline.schedulers import DEFAULT_SAMPLER, DEFAULT_STEPS

    cfg = parse_config(LatentDDPMTrainConfig, ["--config", str(REPO / "configs" / name)])
    measured = ("dpm", 20) if name.startswith("emoji") else (DEFAULT_SAMPLER, DEFAULT_STEPS)
    assert (cfg.sampler, cfg.num_inference_steps) == measured
    assert (DEFAULT_SAMPLER, DEFAULT_STEPS) == ("sde-dpm", 10)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_says_fp32_is_faster(tmp_path, monkeypatch, capsys, native):
    # On an AVX2 laptop bf16 autocast is emulated and trains several times slower than fp32: the run says so
    # in one line (the user's choice stands); on a CPU with AVX512-BF16 or AMX it says nothing.
    import torch

    from pipeline.training import make_accelerator

    if torch.cuda.is_available():
        pytest.skip("the note is about CPU training")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    cfg = parse_config(AutoencoderTrainConfig, ["--mixed_precision", "bf16", "--output_dir", str(tmp_path)])
    accelerator = make_accelerator(cfg)
    assert accelerator.mixed_precision == "bf16"
    out = capsys.readouterr().out
    assert ("no bf16 instructions" in out and "--mixed_precision no is faster here" in out) == (not native)
