"""Does bf16 autocast speed up training on a CPU? Training steps per second, fp32 against bf16 autocast, of the
three networks the emoji quick run trains, on this CPU and with oneDNN held to older instruction sets.

    python -m benchmarks.studies.cpu_bf16

The networks are fresh ones of the emoji quick configs' shapes and batches: the autoencoder
(configs/emoji_autoencoder_quick.yaml, batch 64 of 3x32x32), the denoiser (configs/emoji_latent_ddpm_quick.yaml,
batch 128 of 4x8x8 latents with class labels) and the judge (pipeline/classifier.py's ResNet, a contrastive step
of 2 x 256 views). One step is forward, loss, backward and AdamW, as the loops do. Each instruction set runs in
its own process (`ONEDNN_MAX_CPU_ISA`, read when oneDNN starts): "native" is the CPU as it is; AVX512_CORE is
AVX-512 without its bf16 instructions (AVX512-BF16, AMX), as on older servers; AVX2 is a laptop's. In each
process fp32 and bf16 alternate, --rounds rounds of --steps steps, and the medians are reported.

Writes cpu-bf16-<date>.json (hardware, commit, command, numbers) and .md.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import REPO, add_commit_option, hardware, provenance, save_result

ISAS = ("native", "AVX512_CORE", "AVX2")
NETWORKS = ("autoencoder", "denoiser", "judge")


def build(network: str):
    """(model, a function from the model to one training loss) for a fresh network of the quick configs."""
    from pipeline.autoencoder import CABAutoencoder
    from pipeline.classifier import build_classifier
    from pipeline.config import AutoencoderTrainConfig, LatentDDPMTrainConfig, parse_config
    from pipeline.latent_training import build_unet

    torch.manual_seed(0)
    ae_cfg = parse_config(AutoencoderTrainConfig, ["--config", str(REPO / "configs/emoji_autoencoder_quick.yaml")])
    autoencoder = CABAutoencoder(**vars(ae_cfg.autoencoder), in_channels=3, sample_size=32, image_size=32)
    if network == "autoencoder":
        x = torch.rand(ae_cfg.train_batch_size, 3, 32, 32) * 2 - 1
        return autoencoder, lambda m: (m(x).float() - x).pow(2).mean()
    if network == "denoiser":
        cfg = parse_config(LatentDDPMTrainConfig, ["--config", str(REPO / "configs/emoji_latent_ddpm_quick.yaml")])
        unet = build_unet(cfg, autoencoder, num_classes=9)
        n, c, s = cfg.train_batch_size, unet.config.in_channels, unet.config.sample_size
        x, t, y = torch.randn(n, c, s, s), torch.randint(0, 1000, (n,)), torch.randint(0, 10, (n,))
        return unet, lambda m: (m(x, t, class_labels=y).sample.float() - x).pow(2).mean()
    judge = build_classifier(3, 9, 32)
    views = torch.rand(512, 3, 32, 32) * 2 - 1
    return judge, lambda m: m.base_model(pixel_values=views).pooler_output.float().pow(2).mean()


def steps_per_second(model, loss_of, bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(steps + 2):  # 2 of warm-up
        if i == 2:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def child(args):
    """One instruction set (this process's ONEDNN_MAX_CPU_ISA): {network: {"fp32": rate, "bf16": rate}}."""
    torch.set_num_threads(args.num_threads)
    out = {}
    for network in NETWORKS:
        model, loss_of = build(network)
        model.train()
        rates = {"fp32": [], "bf16": []}
        for _ in range(args.rounds):
            for precision in rates:
                rates[precision].append(steps_per_second(model, loss_of, precision == "bf16", args.steps))
        out[network] = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of fp32 then bf16; medians are reported")
    parser.add_argument("--num_threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_commit_option(parser)
    args = parser.parse_args()
    if args.child:
        return child(args)
    cpu = {"avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx": torch.cpu._is_amx_tile_supported()}
    rows = []
    for isa in ISAS:
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if isa != "native":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        argv = [sys.executable, "-m", "benchmarks.studies.cpu_bf16", "--child", "--steps", str(args.steps),
                "--rounds", str(args.rounds), "--num_threads", str(args.num_threads)]
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the {isa} run failed: {done.stderr.strip().splitlines()[-1:]}")
        for network, rates in json.loads(done.stdout.strip().splitlines()[-1]).items():
            rows.append({"isa": isa, "network": network, **rates, "bf16_speedup": rates["bf16"] / rates["fp32"]})
    date = datetime.date.today().strftime("%Y%m%d")
    result = {**provenance(f"cpu-bf16-{date}", hardware(torch.device("cpu")), args.commit), "cpu_bf16": cpu,
              "num_threads": args.num_threads, "steps": args.steps, "rounds": args.rounds,
              "load_average_at_start": os.getloadavg(), "rows": rows}
    md = [f"# bf16 autocast against fp32 for CPU training ({result['created'][:10]})", "",
          f"`{result['command']}` at {result['git_commit']}; {os.cpu_count()} CPU cores, {args.num_threads} threads, "
          f"this CPU's bf16 instructions: AVX512-BF16 {cpu['avx512_bf16']}, AMX {cpu['amx']}; load average at "
          f"the start {result['load_average_at_start'][0]:.2f}. Training steps per second, median of {args.rounds} "
          f"rounds of {args.steps}.", "",
          "| oneDNN instructions | network | fp32 steps/s | bf16 steps/s | bf16 speed-up |", "|---|---|---|---|---|"]
    md += [f"| {r['isa']} | {r['network']} | {r['fp32']:.2f} | {r['bf16']:.2f} | {r['bf16_speedup']:.2f}x |"
           for r in rows]
    save_result(result, "\n".join(md) + "\n", args.output)


if __name__ == "__main__":
    main()
