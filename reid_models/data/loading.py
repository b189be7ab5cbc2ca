"""From `(path, pid, camid)` lists to batches: decoded-image cache, augmentation, P x K sampler.

Images are decoded and resized once into a uint8 tensor: ReID boxes are small (128x64 is 24 KB),
so even Market-1501's 12,936 training images fit in ~320 MB, and JPEG decoding no longer costs
a CPU core every epoch.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2
from tqdm import tqdm

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Item = tuple[str, int, int]  # torchreid's contract: (path, pid, camid)


def load_images(paths: Sequence[str], height: int, width: int, progress: bool = True) -> torch.Tensor:
    """Decode and resize every image once: N x 3 x height x width, uint8."""
    images = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc="decoding images", disable=not progress, leave=False)):
        with Image.open(path) as img:
            img = img.convert("RGB").resize((width, height), Image.BILINEAR)
            images[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return images


class TrainAugment:
    """Flip, pad-crop and random erasing (torchvision's defaults), then normalisation, of one
    uint8 image. Every random draw comes from the generator passed in, never from torch's
    process-wide RNG: scenarios running in threads share that one, and reseeding or drawing from
    it in one thread would change another's augmentations."""

    def __init__(self, height: int, width: int, flip: bool, pad_crop: int, erasing: float) -> None:
        self.height, self.width, self.flip, self.pad_crop, self.erasing = height, width, flip, pad_crop, erasing
        self.normalise = test_transform()

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        def uniform(low: float = 0.0, high: float = 1.0) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        def below(bound: int) -> int:
            return int(torch.randint(bound, (), generator=generator))

        if self.flip and uniform() < 0.5:
            image = image.flip(-1)
        if self.pad_crop:
            padded = torch.nn.functional.pad(image, [self.pad_crop] * 4)
            top = below(padded.shape[1] - self.height + 1)
            left = below(padded.shape[2] - self.width + 1)
            image = padded[:, top:top + self.height, left:left + self.width]
        image = self.normalise(image)
        if self.erasing and uniform() < self.erasing:
            # Zeros: the dataset mean after normalisation. Area 2-33%, aspect 0.3-3.3, 10 tries.
            _, height, width = image.shape
            for _ in range(10):
                area = height * width * uniform(0.02, 0.33)
                aspect = math.exp(uniform(math.log(0.3), math.log(3.3)))
                h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if h < height and w < width:
                    top, left = below(height - h + 1), below(width - w + 1)
                    image[:, top:top + h, left:left + w] = 0
                    break
        return image


def train_transform(height: int, width: int, flip: bool, pad_crop: int, erasing: float) -> TrainAugment:
    return TrainAugment(height, width, flip, pad_crop, erasing)


def test_transform() -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageSet(Dataset):
    """Cached images with labels; returns (image, label, camid)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], camids: Sequence[int], transform) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.camids = torch.as_tensor(camids, dtype=torch.long)
        self.transform = transform

    @classmethod
    def from_items(cls, items: Sequence[Item], height: int, width: int, transform, progress: bool = True) -> "ImageSet":
        images = load_images([path for path, _, _ in items], height, width, progress)
        return cls(images, [pid for _, pid, _ in items], [cam for _, _, cam in items], transform)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]):
        """`key`: an index, or (index, augmentation seed) as `SeededBatches` yields. A random
        transform draws from a generator of that seed (of the index when none is given)."""
        index, seed = key if isinstance(key, tuple) else (key, key)
        image = self.images[index]
        if isinstance(self.transform, TrainAugment):
            image = self.transform(image, torch.Generator().manual_seed(int(seed)))
        else:
            image = self.transform(image)
        return image, self.labels[index], self.camids[index]


def relabel(pids: Sequence[int]) -> list[int]:
    """Map identity ids to 0..N-1 in sorted order (the classifier's targets)."""
    mapping = {pid: label for label, pid in enumerate(sorted(set(pids)))}
    return [mapping[pid] for pid in pids]


class IdentityBatchSampler(Sampler[list[int]]):
    """P identities x K images per batch, so every batch holds positives for the triplet loss.

    Randomness comes from (seed, epoch) only: call `set_epoch` and an interrupted run that
    resumes at epoch e sees exactly the batches it would have seen.
    """

    def __init__(self, labels: Sequence[int], ids_per_batch: int, images_per_id: int, seed: int = 0,
                 batches_per_epoch: int | None = None) -> None:
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_label[int(label)].append(index)
        if len(self.by_label) < ids_per_batch:
            raise ValueError(
                f"ids_per_batch={ids_per_batch} but the training set has only {len(self.by_label)} "
                f"identities; lower pretrain.ids_per_batch"
            )
        self.p, self.k, self.seed, self.epoch = ids_per_batch, images_per_id, seed, 0
        chunks = sum(max(1, len(v) // self.k) for v in self.by_label.values())
        # A fixed count (scenarios: equal images seen on any domain) or one pass over the data.
        self.fixed_length = batches_per_epoch is not None
        self.batches_per_epoch = batches_per_epoch or max(1, chunks // self.p)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _chunks(self, rng: np.random.Generator) -> dict[int, list[list[int]]]:
        chunks: dict[int, list[list[int]]] = {}
        for label, indices in self.by_label.items():
            # Identities with fewer than K images are sampled with replacement up to K.
            picked = rng.permutation(indices) if len(indices) >= self.k else rng.choice(indices, self.k)
            usable = max(self.k, len(picked) // self.k * self.k)
            chunks[label] = [list(map(int, picked[i:i + self.k])) for i in range(0, usable, self.k)]
        return chunks

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = self._chunks(rng)
        for _ in range(self.batches_per_epoch):
            available = [label for label, rest in chunks.items() if rest]
            if len(available) < self.p:
                if not self.fixed_length:
                    break
                chunks = self._chunks(rng)  # a fixed-length epoch starts another pass over the data
                available = list(chunks)
            batch = []
            for label in rng.choice(available, self.p, replace=False):
                batch += chunks[int(label)].pop()
            yield batch


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """An identity batch sampler's batches with an augmentation seed beside every index, drawn
    from (sampler seed, epoch) alone: augmentations are then the same whatever else runs in the
    process, and a run resumed at epoch e sees the ones it would have seen."""

    def __init__(self, batches: IdentityBatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.batches.seed, self.batches.epoch, 1])
        for batch in self.batches:
            yield list(zip(batch, rng.integers(0, 2**63 - 1, len(batch)).tolist()))
