"""Score saved samples with this checkout's scorer and, side by side, with an older checkout's.

    git worktree add /tmp/old-scorer 94aaa02
    python -m benchmarks.studies.rescore --data_dir ../shared/data/mnist --old_checkout /tmp/old-scorer \
        benchmarks/results/h200-20261124-project_samples.npz runs/demo/pipeline/evaluation/samples.npz

Each file holds uint8 images under `images` (what `python -m pipeline.evaluate` writes), or under
its only key, or under the key named after a colon (`samples.npz:project`). The old
scorer runs in a subprocess inside `--old_checkout` with its own judge (trained there into this
machine's cache), so the two columns are two judges on the same images. Absolute FIDs differ
between judges; what must hold is the ordering and the distance to each judge's floor.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_commit_option, hardware, machine_name, provenance, save_result

OLD_SCORER = """
import json, sys
import numpy as np
from pipeline.classifier import classifier_accuracy, get_classifier
from pipeline.metrics import _fingerprint, get_reference, score_digits
data_dir, dataset, *files = sys.argv[1:]
def load(spec):
    path, _, key = spec.partition(".npz:")
    z = np.load(path if not key else path + ".npz")
    return z[key or ("images" if "images" in z.files else z.files[0])]
judge = get_classifier(dataset, data_dir or None)
reference = get_reference(dataset, data_dir or None, judge)
out = {"judge": {"accuracy": classifier_accuracy(dataset), "fingerprint": _fingerprint(judge)}, "scores": {}}
for f in files:
    s = score_digits(load(f), judge, reference)
    out["scores"][f] = {k: v for k, v in s.items() if k != "class_histogram"}
print("RESULT " + json.dumps(out))
"""


def load_images(spec) -> np.ndarray:
    """`file.npz` (key `images`, or its only key) or `file.npz:key`."""
    path, _, key = str(spec).partition(".npz:")
    z = np.load(path if not key else path + ".npz")
    return z[key or ("images" if "images" in z.files else z.files[0])]


def old_scores(checkout, files, data_dir, dataset):
    env = dict(os.environ, PYTHONPATH=str(checkout))
    absolute = [str(Path(f).resolve()) for f in files]  # it runs inside the old checkout
    data_dir = str(Path(data_dir).resolve()) if data_dir else ""
    res = subprocess.run([sys.executable, "-c", OLD_SCORER, data_dir, dataset, *absolute],
                         cwd=checkout, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"the old scorer in {checkout} failed:\n{res.stderr[-2000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line.removeprefix("RESULT "))
    out["scores"] = {str(f): out["scores"][a] for f, a in zip(files, absolute)}
    return out


def new_scores(files, data_dir, dataset):
    from pipeline.classifier import classifier_accuracy, get_classifier
    from pipeline.metrics import get_reference, judge_fingerprint, score_images

    judge = get_classifier(dataset, data_dir)
    reference = get_reference(dataset, data_dir, judge)
    out = {"judge": {"accuracy": classifier_accuracy(dataset), "fingerprint": judge_fingerprint(judge),
                     "architecture": judge.config.model_type}, "scores": {}}
    for f in files:
        s = score_images(load_images(f), judge, reference)
        out["scores"][str(f)] = {k: v for k, v in s.items() if k != "class_histogram"}
        print(f"{f}: FID {s['fid']:.3f} (floor {s['fid_floor']:.3f}), KID {s['kid']:.4f}", flush=True)
    return out


def table(result) -> str:
    new, old = result["new"], result.get("old")
    head = "| samples | N | new judge: FID (floor) | KID (floor) | precision / recall | density / coverage |"
    sep = "|---|---|---|---|---|---|"
    if old:
        head += " old judge: FID (floor) | old precision / recall |"
        sep += "---|---|"
    rows = [head, sep]
    for f, s in new["scores"].items():
        row = (f"| `{f}` | {s['num_samples']:,} | {s['fid']:.3f} ({s['fid_floor']:.3f}) | {s['kid']:.4f} "
               f"({s['kid_floor']:.4f}) | {s['precision']:.3f} / {s['recall']:.3f} | {s['density']:.3f} / "
               f"{s['coverage']:.3f} |")
        if old:
            o = old["scores"][f]
            row += f" {o['fid']:.3f} ({o['fid_floor']:.3f}) | {o['precision']:.3f} / {o['recall']:.3f} |"
        rows.append(row)
    judges = (f"New judge: {new['judge']['architecture']}, test accuracy {new['judge']['accuracy']:.2%}, "
              f"fingerprint `{new['judge']['fingerprint'][:7]}`.")
    if old:
        judges += (f" Old judge: test accuracy {old['judge']['accuracy']:.2%}, fingerprint "
                   f"`{old['judge']['fingerprint'][:7]}`.")
    return "\n".join(rows) + "\n\n" + judges + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help=".npz files of uint8 images: file.npz or file.npz:key")
    p.add_argument("--data_dir", default=None, help="folder with the four IDX files")
    p.add_argument("--dataset", default="ylecun/mnist")
    p.add_argument("--old_checkout", type=Path, default=None, help="a checkout of an older commit to score with too")
    p.add_argument("--output", default="benchmarks/results")
    add_commit_option(p)
    args = p.parse_args(argv)
    for f in args.files:
        if not Path(f.partition(".npz:")[0].removesuffix(".npz") + ".npz").is_file():
            sys.exit(f"{f} does not exist; pass .npz files written by python -m pipeline.evaluate")

    hw = hardware(torch.device("cpu"))
    import time
    name = f"rescore-{machine_name(hw)}-{time.strftime('%Y%m%d-%H%M')}"
    result = dict(provenance(name, hw, args.commit), dataset=args.dataset, new=new_scores(args.files, args.data_dir,
                                                                                          args.dataset))
    if args.old_checkout:
        old_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.old_checkout, capture_output=True,
                                    text=True).stdout.strip()
        result["old"] = dict(old_scores(args.old_checkout, args.files, args.data_dir, args.dataset), commit=old_commit)
    md = (f"# The same samples under two scorers\n\n`{result['command']}` at `{result['git_commit']}`"
          + (f" (old scorer: `{result['old']['commit'][:7]}`)" if args.old_checkout else "")
          + f" on {hw['cpu_count']} CPU cores.\n\n" + table(result))
    save_result(result, md, args.output)


if __name__ == "__main__":
    main()
