import numpy as np

from pipeline.visualisation import smooth_losses


def test_smoothed_loss_follows_a_fast_early_drop_without_lag():
    # A diffusion loss logged 36 times that falls 5x in its first few points (as the GPU run's did):
    # the smoothed curve drawn over it must stay near it, not trail far above it.
    i = np.arange(36)
    losses = 0.25 * np.exp(-i / 2.0) + 0.05 + 0.002 * np.sin(i)
    smooth = smooth_losses(losses)
    assert smooth.shape == losses.shape
    assert np.all(np.abs(smooth[3:] / losses[3:] - 1) < 0.25)


def test_smoothing_removes_noise_on_a_long_run():
    rng = np.random.default_rng(0)
    clean = np.linspace(1.0, 0.5, 600)
    noisy = clean + rng.normal(0, 0.05, clean.shape)
    smooth = smooth_losses(noisy)
    assert np.abs(smooth - clean)[50:-50].std() < 0.3 * np.abs(noisy - clean).std()
