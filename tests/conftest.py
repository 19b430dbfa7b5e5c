from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The four MNIST IDX files ship in ../shared beside the checkout (CI has it too).
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir():
    if not MNIST_DIR.is_dir():
        pytest.fail(f"MNIST IDX files expected at {MNIST_DIR} (../shared/data/mnist beside the repo)")
    return MNIST_DIR


@pytest.fixture(scope="session", autouse=True)
def _offline_and_private_cache(tmp_path_factory):
    # Tests never reach the Hub and never touch the user's cache. For the whole session, so that the
    # session and module fixtures (set up before any per-test fixture) and the scripts they start see it too.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("LATENT_DIGITS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread is faster than two fighting over the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(script, args, env=None, check=True, timeout=600):
    """Run one of the training scripts as a user would; fail with its output if it fails."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
                         timeout=timeout, env=env)
    if check and res.returncode != 0:
        pytest.fail(f"{script} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def kill_9_once(script, args, marker, timeout=240):
    """Start a training script and SIGKILL it as soon as `marker` (a checkpoint folder) exists."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


TINY_AE = ["--autoencoder.block_out_channels", "[8, 16, 16]", "--autoencoder.layers_per_block", "1",
           "--autoencoder.norm_num_groups", "4", "--autoencoder.reduction", "4"]


def tiny_ae_args(mnist_dir, out, steps=40):
    return ["--config", str(REPO / "configs/autoencoder_quick.yaml"), "--output_dir", str(out),
            "--data_dir", str(mnist_dir), "--max_train_samples", "2048", "--max_eval_samples", "300",
            "--max_train_steps", str(steps), "--train_batch_size", "32", "--logging_steps", "5",
            "--validation_steps", "20", "--checkpointing_steps", "20", "--tsne_num_points", "100", *TINY_AE]


@pytest.fixture(scope="session")
def tiny_autoencoder_run(mnist_dir, tmp_path_factory):
    """One short real autoencoder training run, shared by the tests that need a trained one."""
    out = tmp_path_factory.mktemp("runs") / "autoencoder"
    run_script("train_autoencoder.py", tiny_ae_args(mnist_dir, out))
    return out
