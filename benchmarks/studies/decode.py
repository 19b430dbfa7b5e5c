"""Where the autoencoder's decode spends its time on the CPU, and which ways of running it are faster.

    python -m benchmarks.studies.decode --autoencoder runs/demo/autoencoder --data_dir ../shared/data/mnist
    python -m benchmarks.studies.decode --autoencoder runs/demo/autoencoder --data_dir ../shared/data/mnist \
        --pipeline runs/demo/pipeline --rounds 9

Encodes real test digits to latents (so the decoder sees what it sees in sampling), then:

- breaks one decode of --batch latents down by operator type (torch.profiler self time: convolution,
  GroupNorm, SiLU, channel attention's pool/sigmoid/multiply, nearest upsampling, residual add) and by
  decoder resolution (8x8, 16x16, 32x32: each stage profiled on its own, the upsample counted at the
  resolution it produces);
- times variants interleaved (every variant once per round, --rounds rounds, in one process) and
  reports medians: the decoder module in eager fp32 under no_grad (the baseline: the plain decode),
  `LatentDDPMPipeline.decode_latents` as it stands (channels_last latents on the CPU), torch.inference_mode,
  channels_last weights and input, channels_last input only, torch.compile (mode default; its compile
  seconds apart), bf16 autocast, other batch sizes, one thread; with --pipeline, one UNet call at --batch for context;
- checks every variant against the baseline on the first --batch digits: max abs difference of the
  decoder's output and of the [0, 1] images, PSNR of the variant's images against the baseline's, and
  the reconstruction PSNR of both against the original test digits;
- estimates what a lighter decoder would save from the per-stage breakdown, and times untrained
  decoders of lighter shapes (random weights: speed only, not quality).

Writes decode-<gpu|cpu>-<date>.json (hardware, commit, command, numbers) and .md.
"""

import argparse
import copy
import datetime
import math
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from benchmarks.common import add_commit_option, hardware, int_list, machine_name, provenance, save_result
from pipeline.autoencoder import ChannelAttention, CABAutoencoder
from pipeline.data import load_idx_dataset
from pipeline.latent_cache import load_autoencoder
from pipeline.pipeline_latent_ddpm import LatentDDPMPipeline

ALL_VARIANTS = ("eager_fp32", "decode_latents", "inference_mode", "channels_last", "channels_last_input", "compile",
                "bf16_autocast", "batch", "threads_1")

# profiler op name -> category; first match wins (channel attention's 1x1 convolutions count as convolution)
OP_CATEGORIES = (("conv", "Conv2d"), ("group_norm", "GroupNorm"), ("silu", "SiLU"), ("upsample", "upsample"),
                 ("copy", "copy_ (mostly inside upsample_nearest2d)"),
                 ("mean", "channel attention (pool, ReLU, sigmoid, multiply)"),
                 ("sum", "channel attention (pool, ReLU, sigmoid, multiply)"),
                 ("sigmoid", "channel attention (pool, ReLU, sigmoid, multiply)"),
                 ("relu", "channel attention (pool, ReLU, sigmoid, multiply)"),
                 ("mul", "channel attention (pool, ReLU, sigmoid, multiply)"), ("add", "residual add"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoder", required=True, help="a trained CABAutoencoder folder (train_autoencoder.py's output_dir)")
    p.add_argument("--data_dir", required=True, help="folder with the MNIST IDX files (the test split is encoded)")
    p.add_argument("--pipeline", help="a saved pipeline folder: also time one UNet call at --batch, for context")
    p.add_argument("--batch", type=int, default=1000, help="the batch of the baseline and the checks (default 1000)")
    p.add_argument("--batches", type=int_list, default=[250, 2500], help="other batch sizes to time (default 250,2500)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians reported (default 7)")
    p.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(ALL_VARIANTS),
                   help="which variants to time (eager_fp32, the baseline, always is)")
    p.add_argument("--profile_repeats", type=int, default=3, help="decodes per profiled stage (default 3)")
    p.add_argument("--lighter", nargs="*", default=None, metavar="CHANNELS:LAYERS",
                   help="untrained decoder shapes to time, e.g. 8,32,32:1 (default: half the channels of the first "
                        "level's block at 32x32; the second level at the first's width, which also narrows the conv "
                        "after the last upsample; with more than one, one block per level)")
    p.add_argument("--warm_compile_cache", action="store_true",
                   help="let torch.compile use inductor's usual on-disk cache (default: a fresh one, so that the "
                        "compile seconds are those of a first compile)")
    p.add_argument("--note", default="", help="a sentence for the end of the .md (what was done with the result)")
    p.add_argument("--output", default="benchmarks/results", help="folder for the .json and .md")
    p.add_argument("--name", help="file stem (default decode-<gpu|cpu>-<date>)")
    add_commit_option(p)
    return p.parse_args(argv)


# --- timing -----------------------------------------------------------------------------------------------

def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def crop_images(x, ae):
    """What decode_latents makes of a decoder output: clamp, rescale to [0, 1], crop the padding."""
    size, top = ae.config.image_size, (ae.config.sample_size - ae.config.image_size) // 2
    return ((x.float().clamp(-1, 1) + 1) / 2)[:, :, top:top + size, top:top + size]


class Variant:
    """One way of decoding: `run(z)` -> float32 decoder output (or, with images, what decode_latents returns);
    `batch` its batch size, `threads` its threads."""

    def __init__(self, name, run, batch, threads, note="", images=False):
        self.name, self.run, self.batch, self.threads, self.note = name, run, batch, threads, note
        self.images = images  # run(z) returns the [0, 1] cropped images instead of the decoder's output
        self.seconds, self.warmup_seconds = [], None

    def call(self, z):
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.run(z)
        finally:
            torch.set_num_threads(before)

    def outputs(self, z):
        """The variant's output for all of `z`, decoded in chunks of its batch size (the last one may be short)."""
        return torch.cat([self.call(z[i:i + self.batch]).float() for i in range(0, len(z), self.batch)])


def make_variants(ae, names, batch, batches, threads):
    """The baseline runs the decoder module itself (NCHW, fp32, no_grad): the plain decode, whatever
    `CABAutoencoder.decode` does around it; "decode" is `ae.decode`, what the pipeline calls."""
    def plain(decoder, grad_ctx=torch.no_grad, layout=None, autocast=False):
        def run(z):
            with grad_ctx(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()):
                z = z.contiguous(memory_format=layout) if layout else z
                return decoder(z).float().contiguous()
        return run

    pipe = SimpleNamespace(autoencoder=ae, image_size=ae.config.image_size)
    scale = ae.config.scaling_factor

    def through_pipeline(z):  # LatentDDPMPipeline.decode_latents takes scaled latents, returns [0, 1] images
        with torch.no_grad():
            return LatentDDPMPipeline.decode_latents(pipe, z * scale).float().contiguous()

    variants = [Variant("eager_fp32", plain(ae.decoder), batch, threads,
                        "baseline: the decoder module, no_grad, fp32, contiguous (NCHW)")]

    if "decode_latents" in names:
        variants.append(Variant("decode_latents", through_pipeline, batch, threads,
                                "LatentDDPMPipeline.decode_latents as it stands (unscale, decode in channels_last on "
                                "the CPU, clamp, crop)", images=True))
    if "inference_mode" in names:
        variants.append(Variant("inference_mode", plain(ae.decoder, torch.inference_mode), batch, threads))
    if "channels_last" in names:
        nhwc = copy.deepcopy(ae.decoder).to(memory_format=torch.channels_last)
        variants.append(Variant("channels_last", plain(nhwc, layout=torch.channels_last), batch, threads,
                                "weights and input in channels_last"))
    if "channels_last_input" in names:
        variants.append(Variant("channels_last_input", plain(ae.decoder, layout=torch.channels_last), batch, threads,
                                "input only in channels_last (weights as loaded)"))
    if "compile" in names:
        compiled = torch.compile(copy.deepcopy(ae.decoder), mode="default")
        variants.append(Variant("compile", plain(compiled), batch, threads,
                                "torch.compile(decoder), mode default; first call (compile) timed apart"))
    if "bf16_autocast" in names:
        variants.append(Variant("bf16_autocast", plain(ae.decoder, autocast=True), batch, threads,
                                "torch.autocast('cpu', bfloat16)"))
    if "batch" in names:
        variants += [Variant(f"batch_{b}", plain(ae.decoder), b, threads, f"eager fp32 at batch {b}") for b in batches]
    if "threads_1" in names and threads != 1:
        variants.append(Variant("threads_1", plain(ae.decoder), batch, 1, "eager fp32 on one thread"))
    return variants


def interleaved(variants, z, rounds, extra=()):
    """Warm each variant up once (torch.compile compiles here), then time every one once per round."""
    for v in [*variants, *extra]:
        _, v.warmup_seconds = timed(lambda: v.call(z[:v.batch]))
        print(f"warm-up {v.name}: {v.warmup_seconds:.2f} s", flush=True)
    for r in range(rounds):
        for v in [*variants, *extra]:
            _, s = timed(lambda: v.call(z[:v.batch]))
            v.seconds.append(s)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{v.name} {v.seconds[-1]:.3f}" for v in [*variants, *extra]),
              flush=True)


# --- quality ----------------------------------------------------------------------------------------------

def psnr_against(reference, images):
    """PSNR (dB) of `images` against `reference`, both in [0, 1], from the mean squared error over all of them;
    None where they are identical (infinite)."""
    mse = float(((images.double() - reference.double()) ** 2).mean())
    return None if mse == 0 else 10 * math.log10(1.0 / mse)


def mean_psnr(originals, images):
    """Mean over images of each one's PSNR (dB) against its original (uint8 digits, data range 1): what
    pipeline.metrics.psnr_ssim reports, without importing scikit-image."""
    a = torch.as_tensor(originals).double().reshape(len(images), -1) / 255.0
    mse = ((images.double().reshape(len(images), -1) - a) ** 2).mean(dim=1)
    return float((10 * torch.log10(1.0 / mse)).mean())


def quality(ae, raw, reference_raw, originals, images_only=False):
    """Differences from the baseline; with images_only, `raw` already is [0, 1] images and both maxima are theirs."""
    images, reference = raw if images_only else crop_images(raw, ae), crop_images(reference_raw, ae)
    return {"max_abs_diff": float((images - reference).abs().max() if images_only else (raw - reference_raw).abs().max()),
            "max_abs_diff_images": float((images - reference).abs().max()),
            "psnr_vs_baseline_db": psnr_against(reference, images),
            "reconstruction_psnr_db": mean_psnr(originals, images)}


# --- where the time goes ----------------------------------------------------------------------------------

def decoder_stages(ae):
    """[(label, [modules])] of the decoder by the resolution each child produces."""
    stages, size = defaultdict(list), ae.latent_size
    for m in ae.decoder:
        if isinstance(m, torch.nn.Upsample):
            size *= 2
        stages[f"{size}x{size}"].append(m)
    return list(stages.items())


def category(op):
    name = op.lower()
    return next((label for key, label in OP_CATEGORIES if key in name), "other")


def profile_stages(ae, z, repeats):
    """{stage: {category: seconds per decode}}: each stage's children run on their own input under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    table = {}
    with torch.no_grad():
        x = z
        for label, modules in decoder_stages(ae):
            stage = torch.nn.Sequential(*modules)
            stage(x)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(repeats):
                    out = stage(x)
            per_cat = defaultdict(float)
            for e in prof.key_averages():
                per_cat[category(e.key)] += e.self_cpu_time_total / 1e6 / repeats
            table[label] = dict(per_cat)
            x = out
    return table


def stage_seconds(ae, z, rounds):
    """{stage: median seconds per decode}, the stages timed one after another in each round, without the profiler."""
    stages = [(label, torch.nn.Sequential(*mods)) for label, mods in decoder_stages(ae)]
    times = defaultdict(list)
    with torch.no_grad():
        for _ in range(rounds):
            x = z
            for label, stage in stages:
                x, s = timed(lambda: stage(x))
                times[label].append(s)
    return {label: statistics.median(t) for label, t in times.items()}


def conv_macs(ae):
    """{stage: multiply-accumulates of the decoder's convolutions per image}: the static share of each stage."""
    macs = defaultdict(int)
    for label, modules in decoder_stages(ae):
        for m in torch.nn.Sequential(*modules).modules():
            if isinstance(m, torch.nn.Conv2d):
                parent_ca = any(m is c for ca in torch.nn.Sequential(*modules).modules()
                                if isinstance(ca, ChannelAttention) for c in (ca.down, ca.up))
                spatial = 1 if parent_ca else int(label.split("x")[0]) ** 2
                macs[label] += m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * spatial
    return dict(macs)


def lighter_shapes(ae, specs):
    cfg = ae.config
    if specs is None:
        ch = list(cfg.block_out_channels)
        specs = [(tuple([max(ch[0] // 2, 1)] + ch[1:]), cfg.layers_per_block)]  # half the channels of the 32x32 block
        if len(ch) > 1 and ch[1] != ch[0]:  # the second level (and the conv after the last upsample) at the first's width
            specs.append((tuple([ch[0], ch[0]] + ch[2:]), cfg.layers_per_block))
        if cfg.layers_per_block > 1:
            specs.append((tuple(ch), 1))
        return specs
    out = []
    for s in specs:
        channels, _, layers = s.partition(":")
        out.append((tuple(int(c) for c in channels.split(",")), int(layers or cfg.layers_per_block)))
    return out


def lighter_decoders(ae, specs, batch, threads):
    """Untrained decoders of other shapes (same latent and image sizes), as eager fp32 variants for timing."""
    cfg, variants = ae.config, []
    for channels, layers in specs:
        groups = math.gcd(cfg.norm_num_groups, *channels)
        model = CABAutoencoder(in_channels=cfg.in_channels, sample_size=cfg.sample_size, block_out_channels=channels,
                               layers_per_block=layers, latent_channels=cfg.latent_channels, reduction=cfg.reduction,
                               norm_num_groups=groups, image_size=cfg.image_size).eval()

        def run(z, model=model):
            with torch.no_grad():
                return model.decoder(z)

        variants.append(Variant(f"untrained_{'-'.join(map(str, channels))}x{layers}", run, batch, threads,
                                f"random weights, block_out_channels {list(channels)}, layers_per_block {layers}, "
                                f"norm_num_groups {groups}: speed only"))
    return variants


def unet_variants(folder, batch, threads):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(Path(folder) / "unet").eval()
    kwargs = {"class_labels": torch.zeros(batch, dtype=torch.long)} if unet.config.num_class_embeds else {}
    size, channels = unet.config.sample_size, unet.config.in_channels
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), 500, dtype=torch.long)

    def run(_z, autocast=False):
        with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext()):
            return unet(x, t, **kwargs).sample

    return [Variant("unet_call_fp32", run, batch, threads, "one UNet call at the same batch, eager fp32"),
            Variant("unet_call_bf16_autocast", lambda z: run(z, autocast=True), batch, threads,
                    "one UNet call, bf16 autocast")]


# --- report -----------------------------------------------------------------------------------------------

def fmt_db(v):
    return "identical" if v is None else f"{v:.3f}"


def markdown(r) -> str:
    base = r["variants"]["eager_fp32"]
    lines = [f"Decode of `{r['autoencoder']}` on {r['hardware']['gpu'] or 'CPU'} ({r['hardware']['cpu_count']} cores, "
             f"{r['threads']} torch threads), {r['rounds']} interleaved rounds, medians; real test digits encoded "
             f"and decoded; commit {(r['git_commit'] or 'unknown')[:7]}"
             f"{' (uncommitted changes)' if r['git_dirty'] else ''}; `{r['command']}`.", "",
             "| variant | batch | threads | median s / call | digits per s | vs baseline (per digit) | "
             "max abs diff (output / images) | PSNR vs baseline dB | reconstruction PSNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        speed = base["median_s"] / base["batch"] / (v["median_s"] / v["batch"])
        lines.append(f"| {name} | {v['batch']:,} | {v['threads']} | {v['median_s']:.3f} | {v['digits_per_s']:,.0f} | "
                     f"{speed:.2f}x | {v['max_abs_diff']:.2e} / {v['max_abs_diff_images']:.2e} | "
                     f"{fmt_db(v['psnr_vs_baseline_db'])} | {v['reconstruction_psnr_db']:.3f} |")
    if r.get("compile_seconds") is not None:
        cache = "inductor's usual on-disk cache" if r.get("warm_compile_cache") else "a fresh inductor cache"
        lines += ["", f"torch.compile: first call (compilation, {cache}) {r['compile_seconds']:.1f} s."]
    if r["context"]:
        lines += ["", "| context (not a decode) | batch | median s / call | calls per decode of the baseline |",
                  "|---|---|---|---|"]
        for name, v in r["context"].items():
            lines.append(f"| {name} | {v['batch']:,} | {v['median_s']:.3f} | "
                         f"{base['median_s'] / v['median_s']:.2f} |" if v["batch"] == base["batch"] else
                         f"| {name} | {v['batch']:,} | {v['median_s']:.3f} | |")
    cats = sorted({c for stage in r["profile"].values() for c in stage},
                  key=lambda c: -sum(s.get(c, 0) for s in r["profile"].values()))
    total = sum(sum(s.values()) for s in r["profile"].values())
    lines += ["", f"Where one eager fp32 decode of {r['batch']:,} goes (torch.profiler self CPU time per decode, ms; "
              "each stage profiled on its own; the upsample counted at the resolution it produces):", "",
              "| stage | " + " | ".join(cats) + " | stage total | share | conv MACs per digit | stage s (unprofiled) |",
              "|---|" + "---|" * (len(cats) + 4)]
    for stage, per in r["profile"].items():
        st = sum(per.values())
        lines.append(f"| {stage} | " + " | ".join(f"{1000 * per.get(c, 0):.1f}" for c in cats)
                     + f" | {1000 * st:.1f} | {st / total:.0%} | {r['conv_macs'][stage]:,} | "
                       f"{r['stage_seconds'][stage]:.3f} |")
    totals = {c: sum(s.get(c, 0) for s in r["profile"].values()) for c in cats}
    lines.append("| all | " + " | ".join(f"{1000 * totals[c]:.1f} ({totals[c] / total:.0%})" for c in cats)
                 + f" | {1000 * total:.1f} | 100% | {sum(r['conv_macs'].values()):,} | "
                   f"{sum(r['stage_seconds'].values()):.3f} |")
    if r["lighter"]:
        lines += ["", "Lighter decoders (untrained, random weights: speed only; same interleaved rounds):", "",
                  "| decoder | median s / call | vs trained baseline | conv MACs per digit | estimate from the stage "
                  "breakdown |", "|---|---|---|---|---|"]
        for name, v in r["lighter"].items():
            lines.append(f"| {name} ({v['note']}) | {v['median_s']:.3f} | {base['median_s'] / v['median_s']:.2f}x | "
                         f"{v['conv_macs']:,} | {v['estimate']} |")
    lines += ["", r["verdict"]] + (["", r["note"]] if r.get("note") else [])
    return "\n".join(lines) + "\n"


def estimate(r_stage, macs_base, macs_light):
    """Each stage's unprofiled seconds scaled by its conv MACs ratio: what a lighter stage would take if time
    followed the convolutions' arithmetic (it does not quite: norms, activations, upsampling scale with activations)."""
    est = sum(r_stage[s] * macs_light.get(s, 0) / macs_base[s] for s in r_stage)
    return est


def main(argv=None):
    args = parse_args(argv)
    if "compile" not in args.variants or args.warm_compile_cache:
        return run(args)
    cache = tempfile.mkdtemp(prefix="decode-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when torch.compile first compiles
    try:
        return run(args)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(args):
    torch.manual_seed(0)
    device = torch.device("cpu")  # a CPU study: the decode dominates few-step sampling there
    hw = hardware(device)
    threads = torch.get_num_threads()
    ae = load_autoencoder(args.autoencoder).eval()
    n_latents = max(args.batch, *(args.batches if "batch" in args.variants else [args.batch]))
    images, _ = load_idx_dataset("test", data_dir=args.data_dir)
    if len(images) < n_latents:
        raise SystemExit(f"the test split has {len(images)} digits; ask for at most that many (--batch, --batches)")
    originals = images[:args.batch]
    with torch.no_grad():
        x = ae.image_processor.preprocess(images[:n_latents])
        if x.shape[1] != ae.config.in_channels:
            raise SystemExit(f"the autoencoder takes {ae.config.in_channels} channels; the data has {x.shape[1]}")
        z = torch.cat([ae.encode(x[i:i + 1000]).latents for i in range(0, len(x), 1000)])
    print(f"encoded {len(z)} test digits to latents {tuple(z.shape[1:])}", flush=True)

    variants = make_variants(ae, set(args.variants), args.batch, args.batches, threads)
    context = unet_variants(args.pipeline, args.batch, threads) if args.pipeline else []
    specs = lighter_shapes(ae, args.lighter)
    light = lighter_decoders(ae, specs, args.batch, threads)
    interleaved(variants, z, args.rounds, extra=[*context, *light])

    reference = variants[0].outputs(z[:args.batch])
    result_variants = {}
    for v in variants:
        raw = reference if v is variants[0] else v.outputs(z[:args.batch])
        med = statistics.median(v.seconds)
        result_variants[v.name] = {"batch": v.batch, "threads": v.threads, "note": v.note, "median_s": med,
                                   "seconds": v.seconds, "digits_per_s": v.batch / med,
                                   "warmup_s": v.warmup_seconds, **quality(ae, raw, reference, originals, v.images)}
        q = result_variants[v.name]
        print(f"{v.name}: median {med:.3f} s, max abs diff {q['max_abs_diff']:.2e}, "
              f"PSNR vs baseline {fmt_db(q['psnr_vs_baseline_db'])}, recon PSNR {q['reconstruction_psnr_db']:.3f}",
              flush=True)

    print("profiling the decoder's stages", flush=True)
    profile = profile_stages(ae, z[:args.batch], args.profile_repeats)
    stages = stage_seconds(ae, z[:args.batch], args.rounds)
    macs = conv_macs(ae)
    lighter = {}
    for v, (channels, layers) in zip(light, specs):
        model = v.run.__defaults__[0]
        m = conv_macs(model)
        lighter[v.name] = {"block_out_channels": list(channels), "layers_per_block": layers, "note": v.note,
                           "median_s": statistics.median(v.seconds), "seconds": v.seconds,
                           "conv_macs": sum(m.values()),
                           "estimate": f"{estimate(stages, macs, m):.3f} s (stages scaled by conv MACs; "
                                       f"baseline stages sum {sum(stages.values()):.3f} s)"}
    ctx = {v.name: {"batch": v.batch, "median_s": statistics.median(v.seconds), "seconds": v.seconds, "note": v.note}
           for v in context}

    base = result_variants["eager_fp32"]
    wins = [name for name, v in result_variants.items() if name != "eager_fp32" and v["batch"] == base["batch"]
            and v["threads"] == base["threads"] and v["median_s"] <= 0.85 * base["median_s"]
            and (v["max_abs_diff"] <= 1e-4 or abs(v["reconstruction_psnr_db"] - base["reconstruction_psnr_db"]) <= 0.05)]
    verdict = ("Clearly faster (>= 15% on the median) and within 1e-4 max abs of the baseline, or within 0.05 dB "
               f"reconstruction PSNR: {', '.join(wins)}." if wins else
               "No variant is >= 15% faster on the median with outputs within 1e-4 max abs of the baseline "
               "(or reconstruction PSNR within 0.05 dB).")
    name = args.name or f"decode-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "autoencoder": str(args.autoencoder),
              "autoencoder_config": {k: v for k, v in ae.config.items() if not k.startswith("_")},
              "pipeline": args.pipeline, "batch": args.batch, "rounds": args.rounds, "threads": threads,
              "num_latents_encoded": len(z), "variants": result_variants,
              "compile_seconds": result_variants.get("compile", {}).get("warmup_s"),
              "context": ctx, "profile": profile, "stage_seconds": stages, "conv_macs": macs, "lighter": lighter,
              "clear_wins": wins, "verdict": verdict, "note": args.note,
              "warm_compile_cache": args.warm_compile_cache}
    save_result(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
