"""What one sampled digit costs in FLOPs, for the full configs or overrides of them.

    python -m benchmarks.flops
    python -m benchmarks.flops --ae_args='--autoencoder.block_out_channels [32,64,128]' \
        --ddpm_args='--unet.block_out_channels [64,128] --unet.attention_head_dim 32'

Builds the autoencoder and the UNet exactly as the training scripts do from configs/autoencoder.yaml
and configs/latent_ddpm.yaml (plus the overrides), untrained, and counts the FLOPs of one UNet call,
one decode and one encode per digit with torch.utils.flop_counter (a multiply-add is 2 FLOPs). A
sampled digit costs steps x UNet + decode. Runs on the CPU in seconds; FLOPs do not depend on the device.
"""

import argparse
import shlex

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.project import AE_CONFIG, DDPM_CONFIG
from benchmarks.common import REPO, int_list


def gflop(fn, *inputs) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() / 1e9


def count(ae_args=(), ddpm_args=()):
    """GFLOP per digit of one UNet call, one decode and one encode, and the parameter counts."""
    from pipeline.autoencoder import CABAutoencoder
    from pipeline.config import AutoencoderTrainConfig, LatentDDPMTrainConfig, parse_config
    from pipeline.latent_training import build_unet

    ae_cfg = parse_config(AutoencoderTrainConfig, ["--config", str(REPO / AE_CONFIG), *ae_args])
    ddpm_cfg = parse_config(LatentDDPMTrainConfig, ["--config", str(REPO / DDPM_CONFIG), *ddpm_args])
    autoencoder = CABAutoencoder(**vars(ae_cfg.autoencoder)).eval()
    unet = build_unet(ddpm_cfg, autoencoder).eval()
    image = torch.zeros(1, autoencoder.config.in_channels, autoencoder.config.sample_size, autoencoder.config.sample_size)
    latent = autoencoder.encode(image).latents.detach()
    return {"unet_call": gflop(lambda z: unet(z, torch.tensor([500])), latent),
            "decode": gflop(lambda z: autoencoder.decode(z).sample, latent),
            "encode": gflop(lambda x: autoencoder.encode(x).latents, image),
            "unet_parameters": sum(p.numel() for p in unet.parameters()),
            "autoencoder_parameters": sum(p.numel() for p in autoencoder.parameters()),
            "unet": list(ddpm_cfg.unet.block_out_channels), "autoencoder": list(ae_cfg.autoencoder.block_out_channels)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ae_args", default="", help="overrides for configs/autoencoder.yaml, as one string")
    p.add_argument("--ddpm_args", default="", help="overrides for configs/latent_ddpm.yaml, as one string")
    p.add_argument("--steps", type=int_list, default=[10, 20], help="sampling steps to cost (default 10,20)")
    args = p.parse_args(argv)
    c = count(shlex.split(args.ae_args), shlex.split(args.ddpm_args))
    print(f"UNet {c['unet']} ({c['unet_parameters'] / 1e6:.2f}M parameters): {c['unet_call']:.3f} GFLOP per call")
    print(f"autoencoder {c['autoencoder']} ({c['autoencoder_parameters'] / 1e6:.2f}M parameters): "
          f"decode {c['decode']:.3f}, encode + decode {c['encode'] + c['decode']:.3f} GFLOP per digit")
    for steps in args.steps:
        print(f"one sampled digit at {steps} steps: {steps * c['unet_call'] + c['decode']:.2f} GFLOP")
    return c


if __name__ == "__main__":
    from pipeline.errors import run_cli

    run_cli(main)
