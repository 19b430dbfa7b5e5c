"""How sampling cost grows with batch size and with steps, for any saved pipeline.

    python -m benchmarks.sampling_cost --pipeline runs/demo/pipeline --output benchmarks/results
    python -m benchmarks.sampling_cost --pipeline runs/latent_ddpm --batches 1,10,100,1000,10000 --steps 10,20,50

Times one sampler call (DPM-Solver++ unless --scheduler) per (batch size, steps), after a 2-step
warm-up at that size, the way run_benchmark.py does (bf16 autocast on CUDA, fp32 on the CPU; decoding
and the copy to the CPU included). Writes sampling-cost-<gpu|cpu>-<date>.json (hardware, commit,
command, rows) and .md.
"""

import argparse
import datetime

import torch

from benchmarks.common import (add_commit_option, hardware, int_list, machine_name, pipeline_folder, provenance,
                               save_result)
from benchmarks.sampling import LatentSampler, batch_sweep, check_schedulers
from pipeline.evaluate import scheduler_spec


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", required=True, help="a saved LatentDDPMPipeline folder")
    p.add_argument("--batches", type=int_list, default=[1, 10, 100, 1000], help="batch sizes (default 1,10,100,1000)")
    p.add_argument("--steps", type=int_list, default=[10, 20, 50], help="sampling steps (default 10,20,50)")
    p.add_argument("--scheduler", type=scheduler_spec, default="dpm",
                   help="a pipeline.schedulers spec, e.g. unipc:solver_order=3 (default dpm: DPM-Solver++)")
    p.add_argument("--output", default="benchmarks/results", help="folder for the .json and .md")
    p.add_argument("--name", help="file stem (default sampling-cost-<gpu|cpu>-<date>)")
    p.add_argument("--compile", choices=("none", "default", "reduce-overhead", "max-autotune"), default="none",
                   help="torch.compile the UNet and the decoder with this mode (max-autotune and reduce-overhead use CUDA graphs); "
                   "compilation happens in each size's warm-up call, outside the timing")
    p.add_argument("--channels_last", action="store_true",
                   help="put the UNet and autoencoder weights in channels_last (NHWC) memory format")
    add_commit_option(p)
    return p.parse_args(argv)


def markdown(r) -> str:
    steps = sorted({row["num_inference_steps"] for row in r["rows"]})
    layout = ", channels_last" if r.get("channels_last") else ""
    lines = [f"Sampling cost of `{r['pipeline']}` on {r['hardware']['gpu'] or 'CPU'} "
             f"({r['hardware']['cpu_count']} cores), `{r.get('scheduler', 'dpm')}`, torch.compile "
             f"{r.get('compile', 'none')}{layout}, commit {(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`.", "",
             "| batch | " + " | ".join(f"{s} steps: s / digits per s" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for batch in sorted({row["batch_size"] for row in r["rows"]}):
        cells = [next(f"{row['seconds']:.3g} s / {row['digits_per_s']:,.0f}" for row in r["rows"]
                      if row["batch_size"] == batch and row["num_inference_steps"] == s) for s in steps]
        lines.append(f"| {batch:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    folder = pipeline_folder(args.pipeline)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hw = hardware(device)
    sampler = LatentSampler(folder, device, compile_mode=None if args.compile == "none" else args.compile,
                            channels_last=args.channels_last)
    check_schedulers(sampler, [args.scheduler], args.steps)
    rows = []
    for steps in args.steps:
        rows += batch_sweep(sampler, args.batches, steps, max(args.batches), args.scheduler)  # no out-of-memory search: all asked for
        for row in rows[-len(args.batches):]:
            print(f"batch {row['batch_size']:>6}, {steps:>3} steps: {row['seconds']:8.3f} s, "
                  f"{row['digits_per_s']:10.1f} digits/s", flush=True)
    name = args.name or f"sampling-cost-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "pipeline": str(folder), "compile": args.compile,
              "channels_last": args.channels_last, "scheduler": args.scheduler,
              "parameters": sampler.parameters(), "rows": rows}
    save_result(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
