"""PyTorch datasets over ``.kdb`` files: episodes, frame windows, streams and mixtures.

``import kinodb`` never imports torch; ``import kinodb.torch`` does (``pip install
'kinodb[torch]'``). Every dataset pickles by its specification and opens the files
lazily in each DataLoader worker, so ``num_workers > 0`` needs no ``worker_init_fn``.
``docs/torch.md`` is the guide.
"""

from kinodb._optional import require

require("torch", extra="torch")

from kinodb.torch._collate import Batch, SchemaBatchSampler, TensorBatch, collate, pad_collate  # noqa: E402
from kinodb.torch._datasets import KinoDataset, KinoFrameDataset, KinoMapDataset  # noqa: E402
from kinodb.torch._iterable import KinoIterDataset, from_mixture  # noqa: E402
from kinodb.torch._sampler import MixtureSampler  # noqa: E402

__all__ = [
    "Batch",
    "KinoDataset",
    "KinoFrameDataset",
    "KinoIterDataset",
    "KinoMapDataset",
    "MixtureSampler",
    "SchemaBatchSampler",
    "TensorBatch",
    "collate",
    "from_mixture",
    "pad_collate",
]
