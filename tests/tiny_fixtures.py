"""Session-wide tiny random checkpoints in the official layout (built at test time, never committed)."""
import pytest
import torch

from ursa_core.checkpoint.loader import load_model
from ursa_core.checkpoint.tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "URSA-tiny-FSQ", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_ibq_dir(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny_ibq") / "URSA-tiny-IBQ", seed=1, vae="ibq")


def fresh_copy(src, dst):
    """A writable copy of a checkpoint folder to break on purpose."""
    import shutil
    shutil.copytree(src, dst)
    return dst


def small_size(model):
    s = model.geometry.spatial_stride
    return 4 * s, 4 * s


torch.set_num_threads(2)
