"""The frozen autoencoder and the training latents it produces.

The diffusion loop never touches images: the training split is encoded once, scaled by
the autoencoder's `scaling_factor`, and kept on the accelerator. The encoding is also
cached on disk under a key made from the autoencoder's weights and config, so a resumed
or repeated run skips it, and a different autoencoder can never reuse stale latents.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .autoencoder import CABAutoencoder
from .data import hub_unavailable
from .errors import UserError, first_line
from .image_data import data_digest, is_idx, load_images
from .paths import cache_dir


def load_autoencoder(path_or_id) -> CABAutoencoder:
    """A trained CABAutoencoder from a run folder or a Hub id, with a clear error otherwise."""
    local = Path(path_or_id)
    if local.exists():
        config = local / "config.json"
        if not config.is_file():
            raise UserError(f"--autoencoder {path_or_id} has no config.json; pass the output_dir of train_autoencoder.py")
        try:
            name = json.loads(config.read_text()).get("_class_name")
        except ValueError:
            raise UserError(f"{config} is not valid JSON; re-run train_autoencoder.py or restore the file")
        if name != "CABAutoencoder":
            raise UserError(f"--autoencoder {path_or_id} holds a {name}, not a CABAutoencoder; "
                            "pass the output_dir of train_autoencoder.py")
        if not (local / "diffusion_pytorch_model.safetensors").is_file() and (local / "diffusion_pytorch_model.bin").is_file():
            raise UserError(f"--autoencoder {path_or_id} holds only pickled weights (diffusion_pytorch_model.bin), and "
                            "pickles can run code when loaded: this project loads safetensors only; re-save it with "
                            "save_pretrained(safe_serialization=True)")
        if not (local / "diffusion_pytorch_model.safetensors").is_file():
            raise UserError(f"--autoencoder {path_or_id} lacks diffusion_pytorch_model.safetensors; "
                            "the autoencoder run did not finish: re-run or resume it")
    else:  # not a folder here: a Hub model id, if it can be one and the Hub answers
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        fix = (f"train one first (`python train_autoencoder.py --output_dir {path_or_id}`) or pass "
               "--autoencoder with a finished autoencoder run folder or Hub model id")
        try:
            validate_repo_id(str(path_or_id))
        except HFValidationError:
            raise UserError(f"--autoencoder {path_or_id}: no such folder; {fix}")
        problem = hub_unavailable()
        if problem:
            raise UserError(f"--autoencoder {path_or_id}: no such folder here, and the Hub cannot be asked "
                            f"({problem}); {fix}")
    try:
        return CABAutoencoder.from_pretrained(str(path_or_id), use_safetensors=True)
    except Exception as e:
        raise UserError(f"cannot load the autoencoder {path_or_id}: {first_line(e)}")


def autoencoder_fingerprint(autoencoder) -> str:
    h = hashlib.sha256(json.dumps(dict(autoencoder.config), sort_keys=True, default=str).encode())
    for name, t in sorted(autoencoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_images(autoencoder, images_uint8, device, batch_size=500) -> torch.Tensor:
    """Scaled latents (N, C, h, w) for uint8 images (N, H, W) or (N, C, H, W), encoded in eval mode."""
    autoencoder.eval().to(device)
    out = []
    for i in range(0, len(images_uint8), batch_size):
        x = autoencoder.image_processor.preprocess(images_uint8[i:i + batch_size])
        z = autoencoder.encode(x.to(device)).latents
        out.append(z.float() * autoencoder.config.scaling_factor)
    return torch.cat(out)


@torch.no_grad()
def encode_decode(autoencoder, images_uint8, batch_size=1000):
    """(unscaled latents on the CPU, float reconstructions in [0, 1]) for uint8 images, in eval mode; the
    reconstructions are (N, H, W) for grayscale images, (N, C, H, W) for colour ones, as the images came."""
    autoencoder.eval()
    processor = autoencoder.image_processor
    latents, recons = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = processor.preprocess(images_uint8[i:i + batch_size]).to(autoencoder.device, autoencoder.dtype)
        z = autoencoder.encode(x).latents
        latents.append(z.float().cpu())
        recons.append(processor.postprocess(autoencoder.decode(z).sample.float()).cpu())
    recons = torch.cat(recons)
    return torch.cat(latents), (recons[:, 0] if recons.shape[1] == 1 else recons).numpy()


def cached_latents(accelerator, autoencoder, images_uint8, dataset_key, fingerprint=None) -> torch.Tensor:
    """Training latents on the accelerator; the main process encodes once and caches. `fingerprint`: the
    autoencoder's, when the caller has computed it already."""
    fingerprint = fingerprint or autoencoder_fingerprint(autoencoder)
    key = f"{dataset_key.replace('/', '__')}-{fingerprint}-{len(images_uint8)}"
    path = cache_dir("latents") / f"{key}.safetensors"
    if accelerator.is_main_process and not path.exists():
        latents = encode_images(autoencoder, images_uint8, accelerator.device)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"latents": latents.cpu().contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    accelerator.wait_for_everyone()
    return load_file(str(path))["latents"].to(accelerator.device)


def training_images(accelerator, cfg, autoencoder):
    """The training images a latent model (or its student) learns from, as the autoencoder sees them: the data
    `cfg` names at the autoencoder's image size and channels, the first `max_train_samples`, and with
    `random_flip` their mirror images too (latents are encoded once, so the flips are fixed copies).
    Returns (uint8 images, int64 labels or None, the ImageData read, the latent cache's key for them)."""
    import numpy as np

    from .training import first_samples

    data = load_images("train", cfg, autoencoder.config.image_size, autoencoder.config.in_channels)
    images, labels = first_samples(accelerator, cfg, data.images, data.labels)
    if cfg.random_flip:
        images = np.concatenate([images, images[..., ::-1]])
        labels = None if labels is None else np.concatenate([labels, labels])
    key = cfg.dataset if is_idx(cfg) and not cfg.random_flip else f"images-{data_digest(images)}"
    return images, labels, data, key
