"""CABAutoencoder: a convolutional autoencoder with Channel Attention Blocks.

It compresses images in [-1, 1] with `in_channels` channels (1 for digits, 3 for colour),
`image_size` x `image_size` padded to `sample_size` (28x28 digits padded to 32x32 by default),
into small latents (4x8x8 by default) for the diffusion model; the pipeline crops the padding
off what it decodes. Like diffusers' AutoencoderKL, its config carries a
`scaling_factor`: after training it is set to 1/std of the training latents, so the
diffusion stage sees unit-variance inputs; `encode` returns unscaled latents and the
caller multiplies (and divides before `decode`). As in diffusers' VQModel and AutoencoderKL,
`encode` returns an `EncoderOutput` (`.latents`) and `decode` a `DecoderOutput` (`.sample`),
or plain tuples with `return_dict=False`.

This file is self-contained (torch + diffusers only) because it is shipped inside every
saved pipeline folder, where it must import without this repo.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput


@dataclass
class EncoderOutput(BaseOutput):
    """`latents`: unscaled latents (N, latent_channels, 8, 8); multiply by `config.scaling_factor` for the UNet."""

    latents: torch.Tensor


@dataclass
class DecoderOutput(BaseOutput):
    """`sample`: decoded images (N, in_channels, sample_size, sample_size) in about [-1, 1] (clamp for display)."""

    sample: torch.Tensor


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool, 1x1 down, ReLU, 1x1 up, sigmoid, multiply."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.down = nn.Conv2d(channels, max(channels // reduction, 1), 1)
        self.up = nn.Conv2d(max(channels // reduction, 1), channels, 1)

    def forward(self, x):
        w = x.mean(dim=(2, 3), keepdim=True)
        w = torch.sigmoid(self.up(F.relu(self.down(w))))
        return x * w


class ResidualCAB(nn.Module):
    """Two 3x3 convolutions with GroupNorm/SiLU, channel attention, and a residual path."""

    def __init__(self, in_ch, out_ch, reduction, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.cab = ChannelAttention(out_ch, reduction)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + self.cab(h)


def _stage(in_ch, out_ch, n, reduction, groups):
    return nn.Sequential(*[ResidualCAB(in_ch if i == 0 else out_ch, out_ch, reduction, groups) for i in range(n)])


class ImageProcessor:
    """Image geometry, in one place: `image_size` x `image_size` images go to the models centred in
    `sample_size` x `sample_size` inputs in [-1, 1], padded with the background (-1; the odd pixel after), and come
    back cropped, in [0, 1]. `CABAutoencoder.image_processor` builds it from the autoencoder's config, so the data
    loading, the latent cache, the pipeline, the evaluation and the web demo pad and crop alike."""

    def __init__(self, image_size: int, sample_size: int | None = None, multiple: int = 8):
        self.image_size = image_size
        self.sample_size = sample_size or -(-image_size // multiple) * multiple  # the next multiple: 28 -> 32
        self.top = (self.sample_size - image_size) // 2

    @staticmethod
    def size_multiple(num_levels: int) -> int:
        """Model sides are multiples of this for an autoencoder of `num_levels` levels: it halves num_levels - 1
        times and the UNet at least once more (at least 8, so 28x28 digits are padded to 32x32)."""
        return max(8, 2 ** num_levels)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, H, W) or (N, C, H, W) in 0-255, or float in [0, 1] -> float (N, C, sample_size, sample_size)
        in [-1, 1], padded."""
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        elif x.is_floating_point():
            x = x * 2 - 1
        else:
            raise TypeError(f"images must be uint8 (0-255) or float in [0, 1], got {x.dtype}")
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"images are {tuple(x.shape[-2:])}, not the {self.image_size}x{self.image_size} this "
                             "autoencoder takes")
        pad = (self.top, self.sample_size - self.image_size - self.top)
        return F.pad(x, pad * 2, value=-1.0)

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, C, sample_size, sample_size) in about [-1, 1] -> (N, C, image_size, image_size) in [0, 1]:
        clamp, rescale, crop the padding."""
        x = (x.clamp(-1, 1) + 1) / 2
        return x[..., self.top:self.top + self.image_size, self.top:self.top + self.image_size]


class CABAutoencoder(ModelMixin, ConfigMixin):
    """Encoder: conv, [CAB blocks, stride-2 conv] per level, conv to latent channels.
    Decoder: the mirror image with nearest-neighbour upsampling."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 32,
        block_out_channels: tuple = (64, 128, 128),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        reduction: int = 8,
        norm_num_groups: int = 16,
        scaling_factor: float = 1.0,
        image_size: int = 28,  # the images inside the padding; folders saved before it was recorded hold 28x28 digits
    ):
        super().__init__()
        if not 0 < image_size <= sample_size:
            raise ValueError(f"image_size {image_size} must be between 1 and sample_size {sample_size}")
        ch, g, r = list(block_out_channels), norm_num_groups, reduction

        # Encoder: full resolution first, one stride-2 conv between consecutive levels.
        enc = [nn.Conv2d(in_channels, ch[0], 3, padding=1)]
        for i, c in enumerate(ch):
            enc.append(_stage(ch[max(i - 1, 0)], c, layers_per_block, r, g))
            if i < len(ch) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [nn.GroupNorm(g, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        # Decoder: the same levels in reverse, upsampling between them.
        rev = ch[::-1]
        dec = [nn.Conv2d(latent_channels, rev[0], 3, padding=1)]
        for i, c in enumerate(rev):
            dec.append(_stage(rev[max(i - 1, 0)], c, layers_per_block, r, g))
            if i < len(rev) - 1:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [nn.GroupNorm(g, rev[-1]), nn.SiLU(), nn.Conv2d(rev[-1], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(self.config.image_size, self.config.sample_size)

    @property
    def latent_size(self) -> int:
        return self.config.sample_size // 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple:
        """(N, in_channels, sample_size, sample_size) in [-1, 1] -> unscaled latents (N, latent_channels, 8, 8), as `.latents`."""
        z = self.encoder(x)
        return EncoderOutput(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Unscaled latents -> images in about [-1, 1] (clamp for display), as `.sample`."""
        x = self.decoder(z)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction as a plain tensor: what the training loss and validation compare with `x`."""
        return self.decoder(self.encoder(x))
