"""The scorer on real MNIST: the judge is good, real digits score near the floor, damaged
digits score far worse, and each metric agrees with its definition on small cases.

The judge (a transformers ResNet trained from scratch) is trained once per test session (about a
minute on two cores) into the session's private cache and shared by every test here. FID and KID
come from torchmetrics, precision/recall/density/coverage from prdc: the tests check that they are
wired up right (known Gaussians, a set against itself), not the libraries' own maths.
"""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from transformers import AutoModelForImageClassification

from pipeline.classifier import JudgeFeatures, accuracy, classifier_dir, get_classifier
from pipeline.data import load_idx_dataset
from pipeline.errors import UserError
from pipeline.metrics import (FID_REAL_STATES, class_histogram, fid_metric, get_reference, kid_scores, kl_to_uniform,
                              prdc_scores, psnr_ssim, score_images)

N = 2000  # digits per scored set: enough for stable FID/PR in 128-d, quick to score


@pytest.fixture(scope="session")
def digits(mnist_dir):
    return {split: load_idx_dataset(split, data_dir=mnist_dir) for split in ("train", "test")}


@pytest.fixture(scope="session")
def judge(mnist_dir, digits):
    classifier = get_classifier(data_dir=mnist_dir)  # into conftest's private cache
    reference = get_reference(data_dir=mnist_dir, classifier=classifier)
    return classifier, reference, classifier_dir()


@pytest.fixture(scope="session")
def scored(judge, digits):
    """Scores of four sets of N digits: real (training digits outside the floor's 10k), blurred, noise, all ones."""
    classifier, reference, _ = judge
    images, labels = digits["train"]
    real = images[20_000:20_000 + N]
    blurred = np.round(gaussian_filter(real.astype(np.float64), sigma=(0, 1.0, 1.0))).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    ones = images[labels == 1][:N]
    sets = dict(real=real, blurred=blurred, noise=noise, ones=ones)
    return {name: score_images(x, classifier, reference) for name, x in sets.items()}


# -----------------------------------------------------------------------------
# the judge

def test_classifier_is_a_trustworthy_judge_and_is_cached(judge, digits):
    classifier, _, folder = judge
    test_x, test_y = digits["test"]
    acc = accuracy(classifier, test_x, test_y)
    assert acc >= 0.993
    assert json.loads((folder / "accuracy.json").read_text())["test_accuracy"] == pytest.approx(acc)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    # A second call loads the saved judge (no retraining): identical weights, identical answers. The folder is
    # a plain transformers model: anyone can load it with AutoModelForImageClassification.
    reloaded = get_classifier()
    plain = AutoModelForImageClassification.from_pretrained(folder)
    assert not reloaded.training and type(plain) is type(classifier)
    x = torch.as_tensor(test_x[:256]).unsqueeze(1).float() / 127.5 - 1
    with torch.no_grad():
        want = classifier(pixel_values=x).logits
        assert torch.equal(want, reloaded(pixel_values=x).logits)
        assert torch.equal(want, plain.eval()(pixel_values=x).logits)
        feats = JudgeFeatures(plain)(torch.as_tensor(test_x[:256]))
    assert feats.shape == (256, JudgeFeatures(plain).num_features)
    assert torch.allclose(plain.classifier(feats), want, atol=1e-5)  # features are the head's input


# -----------------------------------------------------------------------------
# the scorer on real and damaged digits

def test_real_digits_score_near_the_floor(judge, scored):
    reference, real = judge[1], scored["real"]
    floor = reference.floor
    assert 0 < floor["fid"] < 3  # train vs test in the judge's feature space: nearly the same distribution
    # N digits are read against N real digits: FID's small-sample bias is in both numbers.
    assert real["floor_num_samples"] == N and real["fid_floor"] == reference.floor_for(N)["fid"]
    assert real["fid_floor"] > floor["fid"]  # 2k samples score worse than 10k of the same real digits
    assert abs(real["fid"] - real["fid_floor"]) < 1.5  # other real digits, same size: at the floor
    assert reference.floor_for(10_000) == reference.floor_for(60_000) == floor  # 10k and up: the 10k floor
    assert real["precision"] > 0.75 and real["recall"] > 0.75
    assert floor["precision"] > 0.75 and floor["recall"] > 0.75
    assert real["kl_to_uniform"] < 0.02
    assert real["mean_confidence"] > 0.97


def test_blurred_and_noise_score_far_worse(scored):
    real, blurred, noise = scored["real"], scored["blurred"], scored["noise"]
    assert blurred["fid"] > 10 and blurred["fid"] > 20 * real["fid"]  # this judge: real 0.36, blurred 12.4
    assert blurred["kid"] > 5 * blurred["kid_std"] and abs(real["kid"]) < real["kid_std"]
    assert blurred["coverage"] < 0.5 * real["coverage"]
    assert noise["fid"] > 2 * blurred["fid"]
    assert blurred["recall"] < 0.3 < real["recall"]  # blur loses the variety of strokes
    # Noise covers none of the real variety. Its precision is not reliably near 0: the judge maps nearly all
    # noise images to one point, and whether that point falls inside some outlier digit's k-NN ball depends
    # on the judge's exact weights (0.75 with a judge trained on one CPU, < 0.02 on others). Below real digits'.
    assert noise["recall"] < 0.02 and noise["precision"] < real["precision"]


def test_class_balance_flags_a_single_class_set(scored):
    assert scored["real"]["kl_to_uniform"] < 0.02
    ones = scored["ones"]
    assert ones["class_histogram"][1] > 0.98 * N
    assert ones["kl_to_uniform"] > 2.0  # log(10) = 2.30 is all one class
    assert ones["recall"] < 0.3  # one digit covers little of the real data


def test_score_schema(scored):
    s = scored["real"]
    for key in ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "kl_to_uniform",
                "mean_confidence"):
        assert isinstance(s[key], float) and isinstance(s[key + "_floor"], float), key
    assert s["num_samples"] == N and isinstance(s["floor_num_samples"], int)
    assert len(s["class_histogram"]) == 10 and sum(s["class_histogram"]) == N
    assert all(isinstance(c, int) for c in s["class_histogram"])
    json.dumps(s, allow_nan=False)  # straight into metrics.json


def test_reference_is_cached_and_reused(judge, mnist_dir):
    classifier, reference, folder = judge
    assert (folder / "reference.npz").is_file()
    again = get_reference(data_dir=mnist_dir, classifier=classifier)
    assert again.floor == reference.floor and np.array_equal(again.test_features, reference.test_features)
    for key in FID_REAL_STATES:
        assert np.array_equal(again.fid_real_state[key], reference.fid_real_state[key])
    assert reference.test_features.shape == (10_000, JudgeFeatures(classifier).num_features)
    assert int(reference.fid_real_state["real_features_num_samples"]) == 10_000
    # floors by size are cached too: a second read of the 2,000 floor gives the same numbers without the judge
    assert again.floor_for(N) == reference.floor_for(N, classifier)
    assert (folder / "floors.json").is_file()


def test_floor_by_size_cli_prints_the_cached_judges_floors(judge, mnist_dir, capsys):
    from pipeline.metrics import main
    reference = judge[1]
    main(["--sizes", "500,2000,10000", "--data_dir", str(mnist_dir)])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [500, 2000, 10_000]
    fids = [float(r[1]) for r in rows]
    assert fids[0] > fids[1] > fids[2]  # fewer real digits, more small-sample bias
    assert fids[2] == pytest.approx(reference.floor["fid"], rel=1e-3)  # 10k: the floor every result is read against
    for bad in ("2000,abc", "5,2000", "20000"):
        with pytest.raises(UserError, match="--sizes"):
            main(["--sizes", bad, "--data_dir", str(mnist_dir)])


# -----------------------------------------------------------------------------
# each metric against its definition

class Flat(torch.nn.Module):
    """A feature extractor that hands torchmetrics the vectors it is given: for metrics on known Gaussians."""
    num_features = 6

    def forward(self, x):
        return x.double()


def test_fid_of_two_known_gaussians_matches_the_closed_form():
    # N(0, diag(s_a^2)) and N(m, diag(s_b^2)): FID = |m|^2 + sum (s_a - s_b)^2 for diagonal covariances.
    rng = np.random.default_rng(0)
    s_a, s_b = np.linspace(0.5, 2.0, 6), np.linspace(1.5, 0.7, 6)
    m = np.linspace(-1, 1, 6)
    a = rng.normal(size=(200_000, 6)) * s_a
    b = rng.normal(size=(200_000, 6)) * s_b + m
    want = (m ** 2).sum() + ((s_a - s_b) ** 2).sum()

    fid = fid_metric(Flat())
    fid.update(torch.as_tensor(a), real=True)
    real_state = {k: getattr(fid, k).numpy() for k in FID_REAL_STATES}  # what get_reference caches
    fid.update(torch.as_tensor(b), real=False)
    assert float(fid.compute()) == pytest.approx(want, rel=0.02)
    # a fresh metric restored from the cached real statistics gives the same distance
    restored = fid_metric(Flat(), real_state)
    restored.update(torch.as_tensor(b), real=False)
    assert float(restored.compute()) == pytest.approx(float(fid.compute()), rel=1e-9)
    same = fid_metric(Flat(), real_state)
    same.update(torch.as_tensor(a[:100_000]), real=False)
    assert float(same.compute()) < 0.01 * want  # the same Gaussian: near 0


def test_prdc_on_a_set_against_itself_and_far_away():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 8)).astype(np.float32)
    same = prdc_scores(real, real)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0, abs=0.2)  # k balls around each real point, about k of them
    far = prdc_scores(real, real + 100)  # the same cloud, far away
    assert far == dict(precision=0.0, recall=0.0, density=0.0, coverage=0.0)
    # A tight fake cluster at the real centre: realistic (high precision) but not varied (low recall).
    tight = prdc_scores(real, 0.05 * rng.normal(size=(500, 8)).astype(np.float32))
    assert tight["precision"] > 0.9 and tight["recall"] < 0.2 and tight["coverage"] < 0.2
    with pytest.raises(ValueError):
        prdc_scores(real, real[:3])


def test_kid_of_real_against_real_is_zero_within_its_spread(judge, digits):
    classifier, reference, _ = judge
    real = digits["train"][0][20_000:22_000]
    kid = kid_scores(JudgeFeatures(classifier), reference.test_features, real)
    assert abs(kid["kid"]) < kid["kid_std"] + 1e-4
    noise = np.random.default_rng(0).integers(0, 256, size=real.shape, dtype=np.uint8)
    far = kid_scores(JudgeFeatures(classifier), reference.test_features, noise)
    assert far["kid"] > 100 * max(kid["kid_std"], 1e-4)
    assert kid_scores(JudgeFeatures(classifier), reference.test_features, real) == kid  # seeded subsets


def test_class_histogram_and_kl():
    assert class_histogram([0, 0, 1, 9], num_classes=10).tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert kl_to_uniform([5] * 10) == pytest.approx(0)
    assert kl_to_uniform([0, 7, 0, 0]) == pytest.approx(np.log(4))
    assert kl_to_uniform([1, 3]) == pytest.approx(0.25 * np.log(0.5) + 0.75 * np.log(1.5))


def test_psnr_ssim_identical_and_against_skimage(digits):
    x = digits["test"][0][:50].astype(np.float64) / 255
    same = psnr_ssim(x, x.copy())
    assert same["ssim"] == pytest.approx(1.0) and same["psnr"] == np.inf and same["num_images"] == 50

    noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.1, x.shape), 0, 1)
    got = psnr_ssim(x, noisy)
    want_psnr = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, noisy)]
    want_ssim = [structural_similarity(a, b, data_range=1.0) for a, b in zip(x, noisy)]
    np.testing.assert_allclose(got["per_image_psnr"], want_psnr)
    np.testing.assert_allclose(got["per_image_ssim"], want_ssim)
    assert got["psnr"] == pytest.approx(np.mean(want_psnr)) and got["ssim"] == pytest.approx(np.mean(want_ssim))
    assert 15 < got["psnr"] < 30 and got["ssim"] < 0.9
    # uint8 input means 0-255, and (N,1,H,W) is accepted
    assert psnr_ssim(digits["test"][0][:50], noisy[:, None])["psnr"] == pytest.approx(got["psnr"])


def test_psnr_ssim_on_colour_images_uses_the_channel_axis():
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, 32, 32))  # (N,C,H,W), the project's layout
    noisy = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    got = psnr_ssim(x, noisy)
    last = x.transpose(0, 2, 3, 1), noisy.transpose(0, 2, 3, 1)
    want = [structural_similarity(a, b, data_range=1.0, channel_axis=-1) for a, b in zip(*last)]
    np.testing.assert_allclose(got["per_image_ssim"], want)
    assert psnr_ssim(*last)["psnr"] == pytest.approx(got["psnr"])  # (N,H,W,C) reads the same
    assert got["per_image_psnr"][0] == pytest.approx(peak_signal_noise_ratio(last[0][0], last[1][0], data_range=1.0))


# -----------------------------------------------------------------------------
# the autoencoder branch of `python -m pipeline.evaluate`, in-process

def test_evaluate_autoencoder_folder_writes_psnr_ssim_and_judge_scores(judge, tmp_path, mnist_dir):
    from pipeline.autoencoder import CABAutoencoder
    from pipeline.evaluate import main

    torch.manual_seed(0)
    ae_dir = tmp_path / "ae"
    CABAutoencoder(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, reduction=4).save_pretrained(ae_dir)
    out = tmp_path / "eval"
    main(["--pipeline", str(ae_dir), "--output_dir", str(out), "--data_dir", str(mnist_dir), "--device", "cpu"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 10_000
    assert isinstance(metrics["psnr"], float) and isinstance(metrics["ssim"], float)
    assert metrics["psnr"] < 20 and metrics["ssim"] < 0.5  # an untrained autoencoder reconstructs badly
    assert (out / "reconstructions.png").is_file()
    # ... and the judge sees it: 10,000 reconstructed training digits against the 10,000-digit floor
    assert metrics["floor_num_samples"] == 10_000 and metrics["fid_floor"] == judge[1].floor["fid"]
    assert metrics["fid_reconstructed"] > 10 * metrics["fid_floor"]
    assert metrics["recall_reconstructed"] < metrics["recall_floor"]


def test_evaluate_autoencoder_honours_num_samples_and_writes_beside_training(judge, tmp_path, mnist_dir):
    from pipeline.autoencoder import CABAutoencoder
    from pipeline.evaluate import main

    torch.manual_seed(0)
    ae_dir = tmp_path / "ae"
    CABAutoencoder(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, reduction=4).save_pretrained(ae_dir)
    main(["--pipeline", str(ae_dir), "--num_samples", "500", "--data_dir", str(mnist_dir), "--device", "cpu"])
    metrics = json.loads((ae_dir / "evaluation" / "metrics.json").read_text())  # the folder training writes to
    assert metrics["num_images"] == 500 and metrics["floor_num_samples"] == 500
    assert metrics["fid_floor"] == pytest.approx(judge[1].floor_for(500)["fid"])


def test_perfect_reconstructions_score_exactly_the_floor(judge, mnist_dir):
    # The reconstructed column must use the floor's own digits: an autoencoder that returns its input
    # scores what real digits score, at every sample size.
    from pipeline.autoencoder import CABAutoencoder, DecoderOutput, EncoderOutput
    from pipeline.evaluate import score_reconstructions

    class Identity(torch.nn.Module):
        device, dtype = torch.device("cpu"), torch.float32
        config = CABAutoencoder().config  # the input size and padding of the real thing
        image_processor = CABAutoencoder().image_processor

        def encode(self, x):
            return EncoderOutput(latents=x)  # as CABAutoencoder.encode returns

        def decode(self, z):
            return DecoderOutput(sample=z)

    classifier, reference, _ = judge
    train_images, _ = load_idx_dataset("train", data_dir=mnist_dir)
    for n in (500, 10_000):
        got = score_reconstructions(Identity(), classifier, reference, n, train_images)
        for key in ("fid", "precision", "recall", "kl_to_uniform", "mean_confidence"):
            assert got[f"{key}_reconstructed"] == pytest.approx(reference.floor_for(n)[key], abs=1e-6), (n, key)


def test_evaluate_rejects_a_folder_that_is_no_model(tmp_path):
    from pipeline.evaluate import main

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(UserError, match="neither a LatentDDPMPipeline folder"):
        main(["--pipeline", str(tmp_path)])
    with pytest.raises(UserError, match="is not a folder"):
        main(["--pipeline", str(tmp_path / "missing")])


def test_classifier_trains_inside_no_grad(mnist_dir):
    # Scoring at the end of training runs under torch.no_grad(); a first-time judge must still train.
    from pipeline.classifier import train_classifier

    images, labels = load_idx_dataset("train", data_dir=mnist_dir)
    with torch.no_grad():
        model = train_classifier(images[:512], labels[:512], epochs=1, batch_size=128)
    assert not model.training


def test_memorisation_distance_is_zero_for_copies_and_positive_for_held_out_images(mnist_dir):
    from pipeline.metrics import memorisation, nearest_distances

    train, _ = load_idx_dataset("train", data_dir=mnist_dir)
    test, _ = load_idx_dataset("test", data_dir=mnist_dir)
    pool = train[:3000]
    assert (nearest_distances(pool[:300], pool) == 0).all()  # exactly: a set against itself
    m = memorisation(pool[:300], pool, test[:300])
    assert m["nn_distance"] == 0 < m["nn_distance_held_out"] < 0.5
    # one training digit copied into every sample is a copy too, however the rest of the set looks
    assert memorisation(np.repeat(pool[:1], 10, axis=0), pool, test[:10])["nn_distance"] == 0
    rgb = np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)  # colour, (N, 3, H, W)
    assert memorisation(rgb[:5], rgb, rgb[5:10])["nn_distance_held_out"] == 0
    assert memorisation(rgb[:5] ^ 1, rgb, rgb[:5])["nn_distance"] == pytest.approx(1 / 255, rel=1e-3)
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_distances(rgb[:, 0], rgb)
