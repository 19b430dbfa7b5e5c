"""Which transformers image classifier should judge generated images? Train each candidate
from scratch on MNIST with the judge's recipe (pipeline/classifier.py: Adam, one-cycle, batch 128,
light shift augmentation) and report test accuracy and seconds.

    python -m benchmarks.studies.judge --data_dir ../shared/data/mnist --epochs 2

The judge must reach >= 99.3% test accuracy in about a minute on 2 CPU cores, for 1 or 3
channels and sizes 28 to 64; its penultimate activations are the features FID is taken on.
"""

import argparse
import time

import torch

from benchmarks.common import add_commit_option, hardware, provenance, save_result
from pipeline.classifier import CANDIDATES, accuracy, train_classifier
from pipeline.data import load_idx_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=None, help="folder with the four MNIST IDX files")
    p.add_argument("--dataset", default="ylecun/mnist")
    p.add_argument("--epochs", type=float, default=2, help="passes over the 60,000 training digits")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names from CANDIDATES")
    p.add_argument("--output", default="benchmarks/results", help="folder for judge-cpu-<date>.json and .md")
    add_commit_option(p)
    p.add_argument("--max_shift", type=int, default=2, help="random shift augmentation in pixels (0: none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    train_x, train_y = load_idx_dataset("train", dataset=args.dataset, data_dir=args.data_dir)
    test_x, test_y = load_idx_dataset("test", dataset=args.dataset, data_dir=args.data_dir)
    rows = []
    for name in args.candidates.split(","):
        start = time.perf_counter()
        model = train_classifier(train_x, train_y, num_classes=10, architecture=name, epochs=args.epochs,
                                 max_shift=args.max_shift)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        acc = accuracy(model, test_x, test_y)
        score_s = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        rows.append(dict(architecture=name, max_shift=args.max_shift, epochs=args.epochs, test_accuracy=acc, train_seconds=round(seconds, 1),
                         test_images_per_second=round(len(test_x) / score_s), parameters=params))
        print(f"{name:12} {acc:.4f}  {seconds:6.1f} s  {params:,} parameters  "
              f"{len(test_x) / score_s:,.0f} images/s scored", flush=True)

    name = f"judge-cpu-{time.strftime('%Y%m%d-%H%M')}"
    result = dict(provenance(name, hardware(torch.device("cpu")), args.commit), epochs=args.epochs, dataset=args.dataset, threads=torch.get_num_threads(),
                  rows=rows)
    lines = ["| architecture | epochs | shift | test accuracy | train seconds | parameters | images/s scored |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['architecture']} | {r['epochs']:g} | {r['max_shift']} px | {r['test_accuracy']:.2%} | {r['train_seconds']} | {r['parameters']:,} | "
              f"{r['test_images_per_second']:,} |" for r in rows]
    md = (f"# Judge candidates, {args.epochs:g} epochs of MNIST on {torch.get_num_threads()} CPU threads\n\n"
          f"`{result['command']}` at {result['git_commit']}\n\n" + "\n".join(lines) + "\n")
    save_result(result, md, args.output)


if __name__ == "__main__":
    main()
