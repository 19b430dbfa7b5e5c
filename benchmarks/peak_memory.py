"""Run one of the training scripts unchanged, then record its wall time and peak GPU memory.

    python -m benchmarks.peak_memory REPORT.json train_autoencoder.py --config configs/autoencoder.yaml ...

`torch.cuda.max_memory_allocated()` only sees allocations of its own process, so the
benchmark cannot read a training subprocess's peak from outside. This wrapper runs the
script as `__main__` inside the subprocess (as `python SCRIPT ARGS` would; run from the repository
root, which `-m` puts first on the path, so the script finds the `pipeline` package) and
writes the number when it ends, also when it fails. The peak covers the whole script,
including the figures it draws after training.
"""

import json
import runpy
import sys
import time
from pathlib import Path

def main():
    report, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    start, status = time.perf_counter(), "failed"
    try:
        runpy.run_path(script, run_name="__main__")
        status = "ok"
    finally:
        import torch

        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        Path(report).write_text(json.dumps({
            "script": script, "status": status, "wall_seconds": time.perf_counter() - start,
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        }))


if __name__ == "__main__":
    main()
