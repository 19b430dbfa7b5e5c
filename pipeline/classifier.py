"""The judge: a small CNN digit classifier whose features score generated digits.

`get_classifier` trains it once per dataset (fixed seed, two epochs, 20 to 75 s on two
CPU cores), checks it on the test split, and caches it under
`cache_dir("classifier", <dataset key>)` with `save_pretrained` (config.json +
safetensors) next to `accuracy.json`. Later calls just load it. A judge that is not
clearly good at the task is refused: >= 99% test accuracy on MNIST, >= 89% on
Fashion-MNIST (where small CNNs top out in the low 90s).

`forward` gives logits (classes, confidence); `features` gives the 128-d penultimate
activations, the embedding used for FID and precision/recall (see pipeline/metrics.py).
"""

import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pipeline.errors import UserError
from pipeline.paths import cache_dir

TRAIN_SEED = 0
ACCURACY_FILE = "accuracy.json"


def dataset_key(dataset: str) -> str:
    """A folder name for a dataset id ("ylecun/mnist" -> "ylecun--mnist")."""
    return dataset.replace("/", "--")


def default_min_accuracy(dataset: str) -> float:
    return 0.89 if "fashion" in dataset.lower() else 0.99


class DigitClassifier(ModelMixin, ConfigMixin):
    """Three conv/BN/ReLU/max-pool stages (28 -> 14 -> 7 -> 3), then 128-d features, then logits."""

    @register_to_config
    def __init__(self, channels: tuple = (16, 32, 64), feature_dim: int = 128,
                 num_classes: int = 10, dropout: float = 0.2):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = 28 // 2 ** len(channels)
        self.fc = nn.Linear(c_in * side * side, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N,1,28,28) float in [0,1] -> (N, feature_dim) penultimate activations."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,1,28,28) float in [0,1] -> (N, num_classes) logits."""
        return self.head(self.drop(self.features(x)))


def digits_to_tensor(images, device="cpu") -> torch.Tensor:
    """uint8 (N,28,28) -> float (N,1,28,28) in [0,1] on `device`."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 digits, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return x.to(device).float().div_(255.0)


@torch.no_grad()
def predict(classifier: DigitClassifier, images, batch_size=1000):
    """uint8 digits -> (features float32 (N,D), logits float32 (N,C)) as numpy, in eval mode."""
    classifier.eval()
    device = next(classifier.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f = classifier.features(digits_to_tensor(images[i:i + batch_size], device))
        feats.append(f.float().cpu())
        logits.append(classifier.head(f).float().cpu())
    if not feats:
        raise UserError("no digits to score; generate at least one sample (--num_samples)")
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def accuracy(classifier, images, labels) -> float:
    _, logits = predict(classifier, images)
    return float((logits.argmax(1) == np.asarray(labels)).mean())


@torch.enable_grad()  # callers may be inside no_grad (e.g. scoring at the end of training)
def train_classifier(images, labels, device="cpu", epochs=2, batch_size=128, max_lr=5e-3,
                     seed=TRAIN_SEED) -> DigitClassifier:
    """Adam with a one-cycle schedule; no augmentation needed for >99% on MNIST."""
    torch.manual_seed(seed)  # weight init
    model = DigitClassifier().to(device).train()
    x, y = digits_to_tensor(images, device), torch.as_tensor(labels, dtype=torch.long, device=device)
    steps_per_epoch = len(x) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=max_lr / 25)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)  # batch order, independent of the device
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def classifier_dir(dataset="ylecun/mnist"):
    return cache_dir("classifier", dataset_key(dataset))


def classifier_accuracy(dataset="ylecun/mnist") -> float:
    """The cached classifier's test accuracy (call after `get_classifier`)."""
    return json.loads((classifier_dir(dataset) / ACCURACY_FILE).read_text())["test_accuracy"]


def get_classifier(dataset="ylecun/mnist", data_dir=None, device="cpu", min_accuracy=None) -> DigitClassifier:
    """The cached judge for `dataset`, training (and checking) it first if there is none."""
    folder = classifier_dir(dataset)
    if (folder / "config.json").is_file() and (folder / ACCURACY_FILE).is_file():
        return DigitClassifier.from_pretrained(folder, use_safetensors=True).to(device).eval()

    from pipeline.data import load_digits
    min_accuracy = default_min_accuracy(dataset) if min_accuracy is None else min_accuracy
    train_x, train_y = load_digits("train", dataset=dataset, data_dir=data_dir)
    test_x, test_y = load_digits("test", dataset=dataset, data_dir=data_dir)
    start = time.time()
    model = train_classifier(train_x, train_y, device=device)
    acc = accuracy(model, test_x, test_y)
    seconds = time.time() - start
    print(f"trained the {dataset} judge classifier in {seconds:.0f}s: test accuracy {acc:.2%}")
    if acc < min_accuracy:
        raise UserError(f"the {dataset} judge classifier reached only {acc:.2%} test accuracy "
                        f"(need >= {min_accuracy:.0%}); check the dataset files (damaged or mislabeled?) "
                        f"and rerun")

    # Write into a private folder, then swap it in, so concurrent readers never see half a model.
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / ACCURACY_FILE).write_text(json.dumps(
        {"dataset": dataset, "test_accuracy": acc, "train_seconds": round(seconds, 1), "seed": TRAIN_SEED},
        indent=2))
    shutil.rmtree(folder, ignore_errors=True)  # also drops reference features of any older judge
    os.replace(tmp, folder)
    return model
