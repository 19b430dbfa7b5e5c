"""How long must the autoencoder train? Its scores at every checkpoint of one run.

    python -m benchmarks.studies.autoencoder_steps --autoencoder runs/autoencoder --data_dir DIR

A latent model decoded by an autoencoder cannot score better than real digits passed through that
autoencoder (the `reconstructed` scores of pipeline.evaluate). For every complete checkpoint-N of a
run (train with `--checkpoints_total_limit null` to keep them all) and for the saved model, this
scores PSNR/SSIM over the test split and the judge's FID / precision / recall of the floor's 10,000
reconstructed training digits, next to the real-data floor. Where the reconstructed FID stops
moving, more autoencoder training buys the diffusion model nothing: that is where a run on a time
budget can stop. Writes autoencoder-steps-<gpu|cpu>-<date>.json and .md.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.common import add_commit_option, hardware, machine_name, provenance, save_result
from pipeline.checkpoints import STATE_FILE, checkpoint_folders, checkpoint_is_complete


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autoencoder", required=True, help="the output_dir of a train_autoencoder.py run")
    p.add_argument("--data_dir", help="folder with the four MNIST IDX files (else the Hub / local caches)")
    p.add_argument("--dataset", default="ylecun/mnist", help="the dataset it was trained on (picks the judge)")
    p.add_argument("--batch_size", type=int, default=1000)
    p.add_argument("--output", default="benchmarks/results", help="folder for the .json and .md")
    p.add_argument("--name", help="file stem (default autoencoder-steps-<gpu|cpu>-<date>)")
    add_commit_option(p)
    return p.parse_args(argv)


def run_folder(path) -> Path:
    """--autoencoder as a Path, or exit with a one-line error when it is not a finished autoencoder run."""
    folder = Path(path)
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        name = None
    if name != "CABAutoencoder":
        sys.exit(f"--autoencoder {folder} is not a finished autoencoder run (no CABAutoencoder config.json); "
                 "pass the output_dir of train_autoencoder.py")
    return folder


def weights(checkpoint: Path) -> dict:
    """The model weights of an Accelerate checkpoint. save_state stores the prepared model as it is, so
    under DDP (several processes) every key starts with "module."; strip it to load into a bare model."""
    state = load_file(str(checkpoint / "model.safetensors"))
    return {k.removeprefix("module."): v for k, v in state.items()}


def states(folder: Path):
    """(step, label, state_dict or None for the saved weights) for each complete checkpoint and the final model,
    in training order; a checkpoint at the final step holds the saved weights and is not scored twice."""
    final_step = json.loads((folder / "metrics.json").read_text())["max_train_steps"] \
        if (folder / "metrics.json").is_file() else None
    for path in checkpoint_folders(folder):
        if not checkpoint_is_complete(path):
            print(f"skipping incomplete checkpoint {path}")
            continue
        step = json.loads((path / STATE_FILE).read_text())["global_step"]
        if step != final_step:
            yield step, path.name, weights(path)
    yield final_step, "saved model", None


def markdown(r) -> str:
    floor = r["real_data_floor"]
    lines = [f"Autoencoder `{r['autoencoder']}` by training step, on {r['hardware']['gpu'] or 'CPU'}, commit "
             f"{(r['git_commit'] or 'unknown')[:7]}; `{r['command']}`. Reconstructed: the judge on "
             f"{r['num_samples']:,} training digits after encoding and decoding; real digits score FID "
             f"{floor['fid']:.3f}, precision {floor['precision']:.3f}, recall {floor['recall']:.3f}.", "",
             "| step | test PSNR (dB) | test SSIM | reconstructed FID | precision | recall |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        step = "?" if row["step"] is None else f"{row['step']:,}"
        lines.append(f"| {step} ({row['label']}) | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['fid_reconstructed']:.3f} "
                     f"| {row['precision_reconstructed']:.3f} | {row['recall_reconstructed']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    folder = run_folder(args.autoencoder)
    from pipeline.autoencoder import CABAutoencoder
    from pipeline.classifier import get_classifier
    from pipeline.data import load_idx_dataset
    from pipeline.evaluate import score_reconstructions
    from pipeline.latent_cache import encode_decode
    from pipeline.metrics import FLOOR_SIZE, get_reference, psnr_ssim

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test_x, _ = load_idx_dataset("test", dataset=args.dataset, data_dir=args.data_dir)
    train_x, _ = load_idx_dataset("train", dataset=args.dataset, data_dir=args.data_dir)
    classifier = get_classifier(args.dataset, args.data_dir, device="cpu")  # the benchmark's judge (run_benchmark.py)
    reference = get_reference(args.dataset, args.data_dir, classifier)
    saved = CABAutoencoder.from_pretrained(folder).to(device)
    rows = []
    for step, label, state in states(folder):
        model = saved
        if state is not None:
            model = CABAutoencoder.from_config(saved.config).to(device)
            model.load_state_dict(state)
        scores = psnr_ssim(test_x, encode_decode(model, test_x, args.batch_size)[1])
        rec = score_reconstructions(model, classifier, reference, FLOOR_SIZE, train_x, args.batch_size)
        rows.append({"step": step, "label": label, "psnr": scores["psnr"], "ssim": scores["ssim"], **rec})
        print(f"{label:>16} (step {step}): PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}, "
              f"reconstructed FID {rec['fid_reconstructed']:.3f} (real {reference.floor['fid']:.3f})", flush=True)

    hw = hardware(device)
    name = args.name or f"autoencoder-steps-{machine_name(hw)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M')}"
    result = {**provenance(name, hw, args.commit), "autoencoder": str(folder), "dataset": args.dataset,
              "num_samples": FLOOR_SIZE, "real_data_floor": reference.floor, "rows": rows}
    save_result(result, markdown(result), args.output)
    return result


if __name__ == "__main__":
    main()
