"""Published feature networks for scores that compare with papers: `--features inception` or `--features dinov2`.

  * inception: torchmetrics' FID network (torch-fidelity's InceptionV3 with the 2015 TensorFlow weights, the
    2048-d pool features every FID in the literature uses). The weights come from GitHub on first use, or from
    `--features_weights` (a local copy of pt_inception-2015-12-05-6726825d.pth).
  * dinov2: transformers' `Dinov2Model` (default `facebook/dinov2-small` from the Hub, or a local folder), its
    CLS token on images resized to 224 and normalised as in ImageNet: FD-DINOv2, which Stein et al. (2023)
    found to agree with people better than Inception does.

Both take the project's uint8 images, (N,H,W) or (N,C,H,W), grayscale repeated to three channels, and give
(N, num_features) float32, as the judge's features (pipeline/classifier.py) do; pipeline/metrics.py hands
either to torchmetrics' FID and KID and to prdc. Neither is needed offline: the default judge is trained on
the data itself. A network whose weights cannot be had is one line naming what failed and the way out.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import UserError, first_line

FEATURES = ("judge", "inception", "dinov2")
DINOV2_DEFAULT = "facebook/dinov2-small"
DINOV2_SIZE = 224  # 16x16 patches of 14 px, as dgm-eval feeds DINOv2
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rgb(images) -> torch.Tensor:
    """uint8 (N,H,W) or (N,C,H,W) with 1 or 3 channels -> uint8 (N,3,H,W)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"feature networks take uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures(nn.Module):
    num_features = 2048

    def __init__(self, weights=None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=weights)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        x = _rgb(images).to(next(self.net.parameters()).device)
        return self.net(x).reshape(len(x), -1).float()  # it resizes to 299 itself


class Dinov2Features(nn.Module):
    def __init__(self, weights=None):
        super().__init__()
        from transformers import Dinov2Model

        self.net = Dinov2Model.from_pretrained(weights or DINOV2_DEFAULT).eval()
        self.num_features = self.net.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        x = _rgb(images).to(self.mean.device).float() / 255
        x = F.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic", antialias=True).clamp(0, 1)
        return self.net(pixel_values=(x - self.mean) / self.std).pooler_output.float()


@functools.lru_cache(maxsize=2)  # checked before a long evaluation starts, then used: loaded once
def feature_network(name: str, weights=None, device="cpu") -> nn.Module:
    """The named network on `device`, in eval mode; a UserError in one line when its weights cannot be loaded."""
    networks = {"inception": (InceptionFeatures, "the FID Inception weights (pt_inception-2015-12-05)"),
                "dinov2": (Dinov2Features, f"DINOv2 ({weights or DINOV2_DEFAULT})")}
    if name not in networks:
        raise UserError(f"--features {name!r} is not one of {', '.join(FEATURES)}")
    network, what = networks[name]
    try:
        return network(weights).to(device).eval()
    except Exception as e:  # offline, a missing or damaged file, a folder that is not that network
        raise UserError(f"--features {name}: could not load {what}: {first_line(e)}; pass a local copy with "
                        "--features_weights PATH, or use --features judge (trained on your data, no download)")
