"""Which data a judge learns from and scores against, and which data a run folder was trained on.

`JudgeData` names the labelled images of a judge: the IDX digits (MNIST, Fashion-MNIST) at 28x28, or any dataset
pipeline/image_data.py reads, at the size and channels the pipeline makes, so that samples and real images look
alike to the judge. `judge_for` gives the JudgeData of a model's own data (or says in one line why there is no
judge: no labels, too few test images); `run_judge_data` does it for a run folder, from the data options its
training_config.yaml saved (`run_data_options`) and the dataset it names (`pick_dataset`).

The judge's model is pipeline/classifier.py; the scores on its features pipeline/metrics.py; this module sits
below both and imports neither.
"""

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard

from pipeline.data import load_idx_dataset
from pipeline.errors import UserError
from pipeline.image_data import DataOptions, describe_source, is_idx, load_images, saved_data_options
from pipeline.latent_cache import load_autoencoder

MIN_JUDGE_TEST = 100  # test images the real statistics (and a labelled judge's accuracy) come from, at least


def dataset_key(dataset: str) -> str:
    """A folder name for a dataset id ("ylecun/mnist" -> "ylecun--mnist")."""
    return dataset.replace("/", "--")


def default_min_accuracy(dataset: str) -> float:
    return 0.89 if "fashion" in dataset.lower() else 0.99


@dataclass
class JudgeData:
    """The images a judge learns from and scores against, with their labels where they have any.

    IDX digits (`source` None) are read by pipeline.data.load_idx_dataset at 28x28; any other dataset by
    pipeline.image_data.load_images from `source` (a training config) at `size` and `channels`, the
    pipeline's output, so that samples and real images look alike to the judge."""
    name: str  # in messages and metrics.json
    key: str  # the judge's cache folder
    data_dir: str | None = None
    source: object = None
    size: int | None = None
    channels: int | None = None

    def load(self, split: str):
        """(uint8 images, int64 labels or None for unlabelled data) of `split`, read once per process."""
        return _load_split(self, split)

    @property
    def min_accuracy(self) -> float | None:
        """The test accuracy a judge must reach; None: a balanced accuracy decided by the classes (`accuracy_bar`)."""
        return default_min_accuracy(self.name) if self.source is None else None

    def __hash__(self):
        return hash((self.key, self.data_dir))


@functools.lru_cache(maxsize=4)
def _load_split(data: JudgeData, split: str):
    if data.source is None:
        return load_idx_dataset(split, dataset=data.name, data_dir=data.data_dir)
    loaded = load_images(split, data.source, data.size, data.channels)
    return loaded.images, loaded.labels


def judge_data(dataset="ylecun/mnist", data_dir=None, source=None, size=None, channels=None) -> JudgeData:
    """The JudgeData for a dataset id (IDX data), or for the data a training config `source` names at the
    pipeline's `size` and `channels`. A JudgeData passes through unchanged."""
    if isinstance(dataset, JudgeData):
        return dataset
    if source is None or is_idx(source):
        return JudgeData(dataset, dataset_key(dataset), data_dir)
    local = source.train_data_dir or (source.dataset if Path(source.dataset).expanduser().is_dir() else None)
    if local:  # an image folder, or a dataset saved on disk: named by its folder, told apart by its full path
        folder = Path(local).expanduser().resolve()
        stem, where = folder.name, str(folder)
    else:
        stem, where = dataset_key(source.dataset), source.dataset
    tag = hashlib.sha256(f"{where}|{source.image_column}|{source.label_column}".encode()).hexdigest()[:8]
    key = f"{stem}-{tag}-{size}px-{channels}ch-{source.background}"
    return JudgeData(describe_source(source), key, None, source, size, channels)


def model_kind(path: Path) -> str:
    """'pipeline' or 'autoencoder', from the files in the folder; anything else is a UserError."""
    if not path.is_dir():
        raise UserError(f"--pipeline {path} is not a folder; pass the output_dir of a training run")
    if (path / "model_index.json").is_file():
        return "pipeline"
    config = path / "config.json"
    if config.is_file():
        try:
            name = json.loads(config.read_text()).get("_class_name")
        except ValueError:
            raise UserError(f"{config} is not valid JSON; restore it or re-run training")
        if name == "CABAutoencoder":
            return "autoencoder"
    raise UserError(f"--pipeline {path} is neither a LatentDDPMPipeline folder (model_index.json) nor a "
                    f"CABAutoencoder folder (config.json); pass the output_dir of a training run")


def trained_on(path: Path) -> tuple[str, str] | None:
    """(dataset, where it was read) for a run folder: its training_config.yaml, else its model card's
    `datasets` (a folder from the Hub); None if neither names one."""
    dataset = saved_data_options(path).get("dataset")
    if isinstance(dataset, str):
        return dataset, str(path / "training_config.yaml")
    card = path / "README.md"
    if card.is_file():
        try:
            datasets = ModelCard.load(card).data.datasets
        except Exception:  # not a model card, or damaged metadata: fall back to the default
            datasets = None
        if isinstance(datasets, str):
            datasets = [datasets]
        if datasets:
            return datasets[0], f"{card} (metadata)"
    return None


def pick_dataset(path: Path, asked: str | None) -> str:
    """--dataset if given (warning when the folder says otherwise), else the folder's own, else MNIST."""
    found = trained_on(path)
    if asked is None:
        if found is None:
            return "ylecun/mnist"
        saved = run_data_options(path, found[0])  # a run on an image folder or IDX files names them, not the default id
        named = describe_source(saved) if saved.train_data_dir or saved.data_dir else found[0]
        print(f"dataset {named}, from {found[1]} (--dataset overrides)")
        return found[0]
    if found is not None and found[0] != asked:
        print(f"warning: --dataset {asked}, but {found[1]} says the model was trained on {found[0]}; "
              "its judge and floor are the ones that fit")
    return asked


def run_data_options(path: Path, dataset: str, data_dir=None, train_data_dir=None) -> DataOptions:
    """The data options of the run in `path` (its training_config.yaml), with `dataset` and the flags given here first."""
    options = DataOptions(**{**saved_data_options(path), "dataset": dataset})
    if data_dir is not None or train_data_dir is not None:
        options.data_dir, options.train_data_dir = data_dir, train_data_dir
    return options


def judge_for(source, dataset, data_dir, autoencoder):
    """(JudgeData, None) for the data a model was trained on, at its autoencoder's size and channels, labelled
    or not; (None, the reason in one line) for data with too few test images to score against."""
    if source is None or is_idx(source):
        return judge_data(dataset, data_dir), None
    cfg = autoencoder.config
    data = judge_data(dataset, source=source, size=cfg.image_size, channels=cfg.in_channels)
    n = len(data.load("test")[0])
    if n < MIN_JUDGE_TEST:
        return None, (f"FID / precision / recall: {data.name} has {n} test images; the real statistics (and a "
                      f"judge's accuracy) need at least {MIN_JUDGE_TEST}: a test split, or 10x as many images for "
                      "the 10% hold-out")
    return data, None


def run_judge_data(path, dataset=None, data_dir=None, train_data_dir=None):
    """The JudgeData of a run folder (a pipeline or an autoencoder): its training data at its size and channels."""
    path = Path(path).expanduser()
    kind = model_kind(path)
    dataset = pick_dataset(path, dataset)
    source = run_data_options(path, dataset, data_dir, train_data_dir)
    autoencoder = load_autoencoder(path / "autoencoder" if kind == "pipeline" else path)
    data, why_not = judge_for(source, dataset, data_dir, autoencoder)
    if data is None:
        raise UserError(why_not)
    return data
