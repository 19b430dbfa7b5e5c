"""The reference's pictures: reconstructions, t-SNE, loss curve, sample grids, the
step-by-step denoising strip and the grid-diffusion GIF.

Inputs are digits as arrays (N, 28, 28) in [0, 1] (or uint8); outputs are files.
"""

import math

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402


def _squeeze(images) -> np.ndarray:
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.ndim == 4:  # (N,1,H,W) or (N,H,W,1)
        x = x[:, 0] if x.shape[1] == 1 else x[..., 0]
    return np.clip(x, 0, 1)


def tile(images, nrow=None, pad=2) -> np.ndarray:
    """Digits (N, H, W) -> one uint8 mosaic with `nrow` digits per row."""
    x = _squeeze(images)
    n, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad), np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = x[i]
    return (out * 255).round().astype(np.uint8)


def save_grid(images, path, nrow=None, scale=3):
    """A sample grid as PNG, upscaled so digits are visible on screen."""
    mosaic = tile(images, nrow)
    imageio.imwrite(path, np.kron(mosaic, np.ones((scale, scale), np.uint8)))


def reconstruction_figure(originals, reconstructions, path, n=8):
    """Originals over reconstructions, each reconstruction titled with its SSIM/PSNR."""
    a, b = _squeeze(originals)[:n], _squeeze(reconstructions)[:n]
    fig, axes = plt.subplots(2, len(a), figsize=(1.6 * len(a), 3.8))
    for i in range(len(a)):
        ssim = structural_similarity(a[i], b[i], data_range=1.0)
        psnr = peak_signal_noise_ratio(a[i], b[i], data_range=1.0)
        axes[0, i].imshow(a[i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(b[i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].set_title(f"SSIM {ssim:.3f}\nPSNR {psnr:.1f}", fontsize=7)
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tsne_figure(latents, labels, path, title, seed=0):
    """t-SNE of flattened latents, coloured by digit class."""
    from sklearn.manifold import TSNE

    z = np.asarray(latents, np.float32).reshape(len(latents), -1)
    perplexity = min(30.0, max(5.0, (len(z) - 1) / 3))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=4 if len(z) > 500 else 14, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_title(f"{title} ({len(z)} digits)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def smooth_losses(losses, points_per_window=15):
    """Centred moving average over about 1/15 of the run; the ends average what the window holds.

    Centred, so that it does not lag: a trailing average of a loss that falls fast early on sits
    far above the loss it summarises. Each logged value is already a mean over its logging interval.
    """
    losses = np.asarray(losses, np.float64)
    window = max(1, round(len(losses) / points_per_window))
    kernel = np.ones(window)
    return np.convolve(losses, kernel, mode="same") / np.convolve(np.ones_like(losses), kernel, mode="same")


def loss_curve(steps, losses, path, title="training loss"):
    """Raw loss faintly, a centred moving average on top; log scale."""
    steps, losses = np.asarray(steps), np.asarray(losses, np.float64)
    smooth = smooth_losses(losses)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps, smooth, lw=1.5, label="smoothed")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def denoising_strip(frames, path, num_columns=10, num_rows=8):
    """Rows of digits from pure noise (left, x_T) to clean (right, x_0).

    `frames` is the list of decoded states, x_T first; `num_columns` of them are
    picked evenly, always including the first and the last."""
    idx = np.unique(np.linspace(0, len(frames) - 1, num_columns).round().astype(int))
    cols = [_squeeze(frames[i])[:num_rows] for i in idx]
    grid = np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])  # row-major: sample, step
    save_grid(grid, path, nrow=len(idx))


def grid_gif(frames, path, nrow=None, fps=8, hold_last=8, scale=2, max_frames=25):
    """A grid of digits being denoised: up to `max_frames` evenly spaced steps, x_T first,
    then a pause on the result (noisy frames compress badly, so fewer keep the file small)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    imgs = [np.kron(tile(frames[i], nrow), np.ones((scale, scale), np.uint8)) for i in idx]
    imgs += [imgs[-1]] * hold_last
    imageio.mimsave(path, imgs, duration=1.0 / fps, loop=0)
