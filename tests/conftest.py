import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from camgap.data.synthetic import write_synthetic
from tests.helpers.zoo import build_tiny_zoo, tree_digest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: results do not depend on the machine's core count, and tests that
    start worker processes do not oversubscribe a small CI machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def float64():
    """torch's default dtype is float64 for the test: models, random inputs and the training path
    (`normalize`, `augment_batch`) compute in float64. Where two code paths must agree exactly
    (a pack against its runs alone), tests compare them so: float64 convolutions run PyTorch's
    own kernels, which compute a grouped convolution group by group as the plain one, whereas
    float32 runs oneDNN, whose grouped and plain kernels round differently on each CPU."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class TinyZoo(NamedTuple):
    zoo: Path
    data: Path


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> TinyZoo:
    """The tiny model set (3 trained + 1 untrained, built, not measured) and its dataset, built
    once per session and shared: read it, never write it (`tiny_zoo_copy` is a private copy).
    Teardown fails if any test changed a file of either."""
    zoo, data = build_tiny_zoo(tmp_path_factory.mktemp("tiny-zoo"), seed=5, lrs=(0.05, 0.01, 0.002))
    digest = tree_digest(zoo, data)
    yield TinyZoo(zoo, data)
    assert tree_digest(zoo, data) == digest, "a test wrote into the shared tiny model set: use tiny_zoo_copy"


@pytest.fixture
def tiny_zoo_copy(tiny_zoo, tmp_path) -> Path:
    """A private copy of the tiny model set (its registry, runs and caches), for tests that
    measure it or change it; the dataset stays shared at `tiny_zoo.data`."""
    return Path(shutil.copytree(tiny_zoo.zoo, tmp_path / "zoo"))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A small synthetic dataset for the training tests (3 classes, 12 train + 6 test images each,
    16 px), written once per session and shared: read it, never write it (checked at teardown)."""
    data = write_synthetic(
        tmp_path_factory.mktemp("synth") / "data", seed=2, classes=3, train_per_class=12, test_per_class=6, size=16
    )
    digest = tree_digest(data)
    yield data
    assert tree_digest(data) == digest, "a test wrote into the shared synthetic dataset"
