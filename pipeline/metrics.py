"""How good are generated images? Numbers from well-kept libraries, each next to what "perfect" looks like.

  * `psnr_ssim`: reconstruction quality of an autoencoder (scikit-image);
  * FID (`torchmetrics.image.fid.FrechetInceptionDistance`) and KID
    (`torchmetrics.image.kid.KernelInceptionDistance`), both given the judge's penultimate
    layer (`pipeline.classifier.JudgeFeatures`) as their feature extractor instead of Inception;
  * precision, recall, density and coverage (`prdc.compute_prdc`, k = 3) on the same features;
  * `class_histogram`, `kl_to_uniform`, mean confidence: does the model cover all classes evenly?
  * `score_images`: all of the above for a set of uint8 images, next to the real-data floor.

The real side is always the test split; its FID statistics and features are computed once per
judge and dataset and cached beside the judge (`reference.npz`). The floor (`Reference.floor_for`)
is what real images score: N of the first 10,000 training images (a fixed random pick) against the
test split, cached per sample count (`floors.json`). FID is biased upward with fewer samples
(with the GPU benchmark's first judge, 2,000 real digits scored 1.7 where 10,000 scored 0.95;
`python -m pipeline.metrics` prints the floor by size), so a set of N < 10,000 images is read
against N real ones; from 10,000 samples on, the floor is the 10,000-image one. KID is unbiased,
so its floor stays near 0 at every size.
"""

import contextlib
import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.classifier import classifier_accuracy, classifier_dir, get_classifier, has_labels, predict
from pipeline.errors import UserError, run_cli
from pipeline.feature_networks import feature_network
from pipeline.judge_data import judge_data, run_judge_data
from pipeline.paths import cache_dir

REFERENCE_FILE = "reference.npz"
FLOORS_FILE = "floors.json"
FLOOR_SIZE = 10_000
NEAREST_K = 3  # prdc's k-NN balls, as in Kynkaanniemi et al. and Naeem et al.
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torchmetrics' defaults; the subset shrinks to N for smaller sets
BATCH = 1000
FID_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


# -----------------------------------------------------------------------------
# reconstruction quality

def psnr_ssim(originals, reconstructions) -> dict:
    """Mean (and per-image) PSNR/SSIM of images in [0,1] (uint8 is rescaled), grayscale or colour.

    Shapes (N,H,W), (N,1,H,W), (N,H,W,1) are grayscale; (N,3,H,W) and (N,H,W,3) are colour, scored
    with scikit-image's `channel_axis`."""
    a, b = _as_unit_float(originals), _as_unit_float(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"originals {a.shape} and reconstructions {b.shape} differ in shape")
    colour = dict(channel_axis=-1) if a.ndim == 4 else {}
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf, which is the truth
        psnr = np.array([peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(a, b)])
    ssim = np.array([structural_similarity(x, y, data_range=1.0, **colour) for x, y in zip(a, b)])
    return dict(psnr=float(psnr.mean()), ssim=float(ssim.mean()), num_images=len(a),
                per_image_psnr=psnr, per_image_ssim=ssim)


def _as_unit_float(images) -> np.ndarray:
    """-> (N,H,W) grayscale or (N,H,W,3) colour float64 in [0, 1]."""
    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim == 4 and x.shape[1] in (1, 3):  # (N,C,H,W), the project's layout -> channels last
        x = x.transpose(0, 2, 3, 1)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    return x


# -----------------------------------------------------------------------------
# class balance

def class_histogram(pred_labels, num_classes=10) -> np.ndarray:
    """Counts of each predicted class, int64 (num_classes,)."""
    return np.bincount(np.asarray(pred_labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def kl_to_uniform(hist) -> float:
    """KL(p || uniform) in nats of a histogram (counts or fractions): 0 = perfectly even, log K = one class."""
    p = np.asarray(hist, np.float64)
    p = p / p.sum()
    nz = p > 0  # 0 log 0 = 0
    return float((p[nz] * np.log(p[nz] * len(p))).sum())


# -----------------------------------------------------------------------------
# distribution distances in the judge's feature space, by torchmetrics and prdc

def prdc_scores(real_features, fake_features, nearest_k=NEAREST_K) -> dict:
    """Precision, recall, density and coverage (Naeem et al. 2020) by `prdc.compute_prdc`, as floats."""
    from prdc import compute_prdc

    real, fake = np.asarray(real_features, np.float32), np.asarray(fake_features, np.float32)
    if min(len(real), len(fake)) <= nearest_k:
        raise ValueError(f"precision/recall with k={nearest_k} needs more than {nearest_k} points in each set")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the two set sizes
        out = compute_prdc(real_features=real, fake_features=fake, nearest_k=nearest_k)
    return {k: float(v) for k, v in out.items()}


class GivenFeatures(torch.nn.Module):
    """The "feature extractor" torchmetrics' FID and KID get for features already computed: it passes them on, so
    that one pass of the feature network serves FID, KID and prdc."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_metric(extractor, real_state=None):
    """torchmetrics' FID on `extractor`'s features (GivenFeatures: features already computed), starting from
    cached real statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    # sync_on_compute=False: the scores are taken on one process (the main one, at the end of a run on several);
    # torchmetrics would otherwise all-gather its state from processes that are not scoring, and hang or fail.
    fid = FrechetInceptionDistance(feature=extractor, reset_real_features=False, sync_on_compute=False)
    if real_state is not None:
        # merge_state adds the cached real sums to a fresh metric's zeros: the public way to restore a state
        fid.merge_state({**fid.metric_state, **{k: torch.as_tensor(real_state[k]) for k in FID_REAL_STATES}})
    return fid


def kid_scores(extractor, real_features, images) -> dict:
    """torchmetrics' KID (polynomial kernel MMD, unbiased) between the test split and `images` (with GivenFeatures:
    their features), seeded."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(images), len(real_features))
    with warnings.catch_warnings():  # "will save all extracted features in buffer": 10,000 x 128 floats here
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=extractor, subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, n),
                                      sync_on_compute=False)  # one process scores, as in fid_metric
    kid.merge_state({"real_features": [torch.as_tensor(real_features, dtype=torch.float32)], "fake_features": []})
    for i in range(0, len(images), BATCH):
        kid.update(torch.as_tensor(images[i:i + BATCH]), real=False)
    with torch.random.fork_rng(devices=[]):  # its random subsets: same images, same KID
        torch.manual_seed(0)
        mean, std = kid.compute()
    return dict(kid=float(mean), kid_std=float(std))


# -----------------------------------------------------------------------------
# scoring generated images against the real-data floor

@dataclass
class Reference:
    """The test split as the judge sees it (features, FID statistics), and the real-data floors."""
    test_features: np.ndarray
    fid_real_state: dict  # FID_REAL_STATES of the test split, float64
    floor: dict  # what FLOOR_SIZE real training images score
    folder: object = None  # where floors.json lives
    train_images: object = None  # callable -> the first FLOOR_SIZE training images, loaded when a floor needs them
    pool_size: int = FLOOR_SIZE  # how many training images the floor draws from (fewer for a small dataset)
    extractor: object = None  # the feature network of FID, KID and prdc; None: the judge's own (JudgeFeatures)
    features: str = "judge"  # its name, for metrics.json: judge, inception or dinov2

    def floor_pick(self, num_samples: int) -> np.ndarray:
        """Which of the first `pool_size` training images make the floor for `num_samples` samples.

        A fixed random subset, not the first N: samples are drawn independently, while neighbouring
        MNIST digits share writers (the first 2,000 score higher than most random 2,000 do)."""
        if num_samples >= self.pool_size:
            return np.arange(self.pool_size)
        return np.random.default_rng(0).permutation(self.pool_size)[:num_samples]

    def floor_for(self, num_samples: int, classifier=None) -> dict:
        """The floor a set of `num_samples` images is read against: real images scored at that size."""
        if num_samples >= self.pool_size:
            return self.floor
        path = self.folder / FLOORS_FILE
        floors = json.loads(path.read_text()) if path.is_file() else {}
        if str(num_samples) not in floors:
            if classifier is None:
                raise ValueError("a floor for a new sample size needs the judge: pass classifier=")
            real = self.train_images()[self.floor_pick(num_samples)]
            floor = _summary(real, classifier, self)
            floor.pop("class_histogram")
            floors = json.loads(path.read_text()) if path.is_file() else {}  # another process may have added some
            floors[str(num_samples)] = floor
            _write_atomic(path, json.dumps(floors, indent=1).encode())
        return floors[str(num_samples)]


def features_of(extractor, images) -> np.ndarray:
    """(N, num_features) float32 features of uint8 images, in batches."""
    with torch.no_grad():
        return torch.cat([extractor(torch.as_tensor(images[i:i + BATCH])).cpu()
                          for i in range(0, len(images), BATCH)]).numpy()


def _summary(images, classifier, reference: Reference) -> dict:
    """FID, KID and prdc on the reference's features; class balance and confidence from the judge's labels, or None
    for a judge of unlabelled data."""
    if reference.extractor is None:
        feats, logits = predict(classifier, images)  # one pass gives both
    else:
        feats = features_of(reference.extractor, images)
        logits = predict(classifier, images)[1] if has_labels(classifier) else None
    given = GivenFeatures(feats.shape[1])  # FID and KID on these same features: no second pass
    fid = fid_metric(given, reference.fid_real_state)
    with torch.no_grad():
        for i in range(0, len(feats), BATCH):
            fid.update(torch.as_tensor(feats[i:i + BATCH]), real=False)
        out = dict(fid=float(fid.compute()))
        out.update(kid_scores(given, reference.test_features, feats))
    out.update(prdc_scores(reference.test_features, feats))
    if logits is None:
        return dict(out, class_histogram=None, kl_to_uniform=None, mean_confidence=None)
    probs = torch.softmax(torch.as_tensor(logits), dim=1)
    hist = class_histogram(probs.argmax(1).numpy(), num_classes=probs.shape[1])
    out.update(class_histogram=[int(c) for c in hist], kl_to_uniform=kl_to_uniform(hist),
               mean_confidence=float(probs.max(1).values.mean()))
    return out


def nearest_distances(images_uint8, pool_uint8, batch_size=250) -> np.ndarray:
    """For each image, the RMS pixel difference (on the 0-1 scale) to its nearest image in `pool` (N, ...) of the
    same shape: 0 for an exact copy. The neighbour is found with one matrix product per batch, its distance then
    computed exactly."""
    if np.asarray(images_uint8).shape[1:] != np.asarray(pool_uint8).shape[1:]:
        raise ValueError(f"images {np.asarray(images_uint8).shape[1:]} and pool {np.asarray(pool_uint8).shape[1:]} "
                         "differ in shape")
    pool = torch.as_tensor(np.asarray(pool_uint8)).reshape(len(pool_uint8), -1).float() / 255
    found = []
    for i in range(0, len(images_uint8), batch_size):
        x = torch.as_tensor(np.asarray(images_uint8[i:i + batch_size])).reshape(-1, pool.shape[1]).float() / 255
        nearest = torch.cdist(x, pool).argmin(dim=1)
        found.append((x - pool[nearest]).pow(2).mean(dim=1).sqrt())
    return torch.cat(found).numpy()


def memorisation(samples_uint8, train_uint8, held_out_uint8) -> dict:
    """The median distance from a sample to its nearest training image, beside the same for held-out real images:
    samples much nearer their training images than real unseen images are copies, not new images."""
    return {"nn_distance": float(np.median(nearest_distances(samples_uint8, train_uint8))),
            "nn_distance_held_out": float(np.median(nearest_distances(held_out_uint8, train_uint8)))}


def score_images(images_uint8, classifier, reference: Reference) -> dict:
    """FID, KID, precision, recall, density, coverage, class histogram, KL to uniform, mean confidence,
    each with its `*_floor`.

    The floor is real images scored at the same sample size (capped at FLOOR_SIZE), so that `fid` and
    `fid_floor` carry the same small-sample bias; `floor_num_samples` says which size.
    """
    images_uint8 = np.asarray(images_uint8)
    if len(images_uint8) < 2 * NEAREST_K:
        raise ValueError(f"{len(images_uint8)} images are too few to score; use at least {2 * NEAREST_K}")
    scores = _summary(images_uint8, classifier, reference)
    scores["num_samples"] = len(images_uint8)
    for name, value in reference.floor_for(len(images_uint8), classifier).items():
        scores[f"{name}_floor"] = value
    scores["floor_num_samples"] = min(len(images_uint8), reference.pool_size)
    return scores


def judge_fingerprint(model) -> str:
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_atomic(path, data: bytes):
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)  # concurrent readers see the old file or the new one


def get_reference(dataset="ylecun/mnist", data_dir=None, classifier=None, features="judge", weights=None) -> Reference:
    """Test-split statistics + the real-data floor for `dataset` (an IDX id or a JudgeData) on `features` (the
    judge's, or a published network's: pipeline/feature_networks.py), cached beside the judge, or per feature
    network and dataset, tied to the network's weights."""

    data = judge_data(dataset, data_dir)
    if classifier is None:
        classifier = get_classifier(data)
    extractor = None if features == "judge" else feature_network(features, weights, classifier.device)
    folder = classifier_dir(data) if extractor is None else cache_dir("reference", features, data.key)
    path = folder / REFERENCE_FILE
    fingerprint = judge_fingerprint(classifier) + ("" if extractor is None else judge_fingerprint(extractor))

    def train_images():
        return data.load("train")[0][:FLOOR_SIZE]

    if path.is_file():
        with np.load(path) as z:
            if str(z["fingerprint"]) == fingerprint:
                pool = int(z["pool_size"]) if "pool_size" in z else FLOOR_SIZE
                return Reference(z["test_features"], {k: z[k] for k in FID_REAL_STATES}, json.loads(str(z["floor"])),
                                 folder, train_images, pool, extractor, features)
    (folder / FLOORS_FILE).unlink(missing_ok=True)  # floors of another judge

    test_x, _ = data.load("test")
    test_feats = predict(classifier, test_x)[0] if extractor is None else features_of(extractor, test_x)
    fid = fid_metric(GivenFeatures(test_feats.shape[1]))
    with torch.no_grad():
        for i in range(0, len(test_feats), BATCH):
            fid.update(torch.as_tensor(test_feats[i:i + BATCH]), real=True)
    real_state = {k: getattr(fid, k).cpu().numpy() for k in FID_REAL_STATES}
    pool = train_images()
    reference = Reference(test_feats, real_state, {}, folder, train_images, len(pool), extractor, features)
    reference.floor = _summary(pool, classifier, reference)
    reference.floor.pop("class_histogram")
    buf = io.BytesIO()
    np.savez(buf, test_features=test_feats, floor=json.dumps(reference.floor), fingerprint=fingerprint,
             pool_size=len(pool), **real_state)
    _write_atomic(path, buf.getvalue())
    return reference


# -----------------------------------------------------------------------------
# python -m pipeline.metrics: the floor by sample size, to read a score taken on fewer images

def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipeline.metrics",
                                description="What N real training images score against the test split, per N.")
    p.add_argument("--sizes", default="1000,2000,5000,10000", help="comma-separated sample sizes (10 to 10000)")
    p.add_argument("--dataset", default=None,
                   help="picks the judge, as in pipeline.evaluate (default: the --pipeline folder's own, else ylecun/mnist)")
    p.add_argument("--data_dir", default=None, help="folder with the four IDX files, if the Hub is unreachable")
    p.add_argument("--pipeline", default=None,
                   help="a run folder: its data (training_config.yaml), at its pipeline's size and channels")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise UserError(f"--sizes {args.sizes!r} is not a list of integers; write e.g. --sizes 1000,2000,10000")
    if not all(10 <= n <= FLOOR_SIZE for n in sizes):
        raise UserError(f"--sizes {args.sizes} must lie between 10 and {FLOOR_SIZE:,}; the floor uses the first "
                        f"{FLOOR_SIZE:,} training images")
    if args.pipeline is not None:
        data = run_judge_data(args.pipeline, args.dataset, args.data_dir)
    else:
        data = judge_data(args.dataset or "ylecun/mnist", args.data_dir)
    classifier = get_classifier(data)
    reference = get_reference(data, classifier=classifier)
    accuracy = classifier_accuracy(data)
    judge = f"judge test accuracy {accuracy:.2%}" if accuracy is not None else "a judge without labels"
    print(f"real-data floor of {data.name} ({judge}): "
          f"N of the first {reference.pool_size:,} training images (a fixed random pick) against the test split")
    print(f"{'N':>7}{'FID':>9}{'KID':>10}{'precision':>11}{'recall':>9}{'density':>9}{'coverage':>10}"
          f"{'KL to uniform':>15}")
    for n in sizes:
        f = reference.floor_for(n, classifier)
        print(f"{n:>7}{f['fid']:9.4g}{f['kid']:10.2g}{f['precision']:11.4f}{f['recall']:9.4f}{f['density']:9.4f}"
              f"{f['coverage']:10.4f}" + (f"{f['kl_to_uniform']:15.4f}" if f["kl_to_uniform"] is not None else
                                          f"{'(no labels)':>15}"))


if __name__ == "__main__":
    run_cli(main)
