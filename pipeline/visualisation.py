"""The reference's pictures: reconstructions, t-SNE, loss curve, sample grids, the
step-by-step denoising strip and the grid-diffusion GIF.

Inputs are images as arrays in [0, 1] (or uint8): grayscale (N, H, W), (N, 1, H, W) or (N, H, W, 1),
colour (N, 3, H, W) or (N, H, W, 3); outputs are files. Grids come from torchvision.utils.make_grid.
"""

import math

import imageio.v2 as imageio
import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402


def _nchw(images) -> torch.Tensor:
    """Any accepted layout -> float tensor (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return x.clamp(0, 1)


def _hwc(images) -> np.ndarray:
    """(N, H, W) for grayscale, (N, H, W, 3) for colour: what matplotlib and scikit-image take."""
    x = _nchw(images)
    return (x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)).numpy()


def tile(images, nrow=None, pad=2) -> np.ndarray:
    """Images -> one uint8 mosaic with `nrow` per row: (H, W) for grayscale, (H, W, 3) for colour."""
    from torchvision.utils import make_grid

    x = _nchw(images)
    grid = make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=pad, pad_value=0.0)
    grid = grid[0] if x.shape[1] == 1 else grid.permute(1, 2, 0)  # make_grid repeats one channel to three
    return (grid.numpy() * 255).round().astype(np.uint8)


def _upscale(mosaic, scale):
    return mosaic.repeat(scale, axis=0).repeat(scale, axis=1)


def save_grid(images, path, nrow=None, scale=3):
    """A sample grid as PNG, upscaled so small images are visible on screen."""
    imageio.imwrite(path, _upscale(tile(images, nrow), scale))


def reconstruction_figure(originals, reconstructions, path, n=8):
    """Originals over reconstructions, each reconstruction titled with its SSIM/PSNR (colour: over all channels)."""
    a, b = _hwc(originals)[:n], _hwc(reconstructions)[:n]
    colour = {"channel_axis": -1} if a.ndim == 4 else {}
    fig, axes = plt.subplots(2, len(a), figsize=(1.6 * len(a), 3.8))
    for i in range(len(a)):
        ssim = structural_similarity(a[i], b[i], data_range=1.0, **colour)
        psnr = peak_signal_noise_ratio(a[i], b[i], data_range=1.0)
        axes[0, i].imshow(a[i], cmap="gray", vmin=0, vmax=1)  # (the colour map is ignored for RGB)
        axes[1, i].imshow(b[i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].set_title(f"SSIM {ssim:.3f}\nPSNR {psnr:.1f}", fontsize=7)
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tsne_figure(latents, labels, path, title, seed=0, class_names=None):
    """t-SNE of flattened latents, coloured by class when there are labels (named by `class_names` if given,
    else by index, as MNIST's digits), plain otherwise."""
    from sklearn.manifold import TSNE

    z = np.asarray(latents, np.float32).reshape(len(latents), -1)
    perplexity = min(30.0, max(5.0, (len(z) - 1) / 3))
    emb = TSNE(n_components=2, perplexity=min(perplexity, len(z) - 1), init="pca",
               random_state=seed).fit_transform(z)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    size = 4 if len(z) > 500 else 14
    if labels is None:
        ax.scatter(emb[:, 0], emb[:, 1], s=size, c="tab:blue")
    else:
        k = len(class_names) if class_names else max(10, int(np.max(labels)) + 1)
        cmap = "tab10" if k <= 10 else "tab20"
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap=cmap, s=size, vmin=-0.5, vmax=k - 0.5)
        bar = fig.colorbar(sc, ax=ax, ticks=range(k), label="class" if class_names else "digit")
        if class_names:
            bar.ax.set_yticklabels(class_names, fontsize=7)
    ax.set_title(f"{title} ({len(z)} {'images' if class_names or labels is None else 'digits'})")
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
    """Rows of images from pure noise (left, x_T) to clean (right, x_0).

    `frames` is the list of decoded states, x_T first; `num_columns` of them are
    picked evenly, always including the first and the last."""
    idx = np.unique(np.linspace(0, len(frames) - 1, num_columns).round().astype(int))
    cols = [_nchw(frames[i])[:num_rows] for i in idx]
    grid = torch.stack(cols, dim=1).reshape(-1, *cols[0].shape[1:])  # row-major: sample, step
    save_grid(grid, path, nrow=len(idx))


def grid_gif(frames, path, nrow=None, fps=8, hold_last=8, scale=2, max_frames=25):
    """A grid of images being denoised: up to `max_frames` evenly spaced steps, x_T first,
    then a pause on the result (noisy frames compress badly, so fewer keep the file small)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    imgs = [_upscale(tile(frames[i], nrow), scale) for i in idx]
    imgs += [imgs[-1]] * hold_last
    imageio.mimsave(path, imgs, duration=1.0 / fps, loop=0)
