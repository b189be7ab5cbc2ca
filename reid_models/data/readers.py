"""Dataset readers: turn a folder or a manifest into torchreid's (path, pid, camid) lists.

Three inputs are supported, all ending in the same `ReIDSplits`:

- `market1501`: a folder in Market-1501 layout (`bounding_box_train/`, `bounding_box_test/`,
  `query/`, names like `0002_c1s1_000451_01.jpg`);
- `synthetic`: a folder written by `reid-prune synth` (Market-1501 layout too);
- `csv`: a manifest `path,pid,camid[,split]` with camid 0-based.

`validate_splits` then checks what training and evaluation silently rely on (non-empty splits,
at least two cameras, queries that can be matched, images that decode) so a bad dataset fails
in seconds with a message saying what to fix, instead of hours later inside torchreid.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

Item = tuple[str, int, int]  # (absolute image path, pid, camid 0-based): torchreid's contract
KINDS = ("synthetic", "market1501", "csv")
SPLITS = ("train", "query", "gallery")
MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d)")
MARKET_EXAMPLE = "PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_01.jpg)"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Market-1501 convention, as in torchreid: -1 marks junk boxes (dropped everywhere), 0 marks
# distractors (not a person to learn or to search for, but kept in the gallery as negatives).
JUNK_PID = -1
DISTRACTOR_PID = 0


class DataError(ValueError):
    """A user-fixable problem with a dataset; the message names the file and the fix."""


@dataclass(frozen=True)
class ReIDSplits:
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    name: str
    root: str
    # Held out from the training identities (`hold_out_validation`): where settings are tuned.
    val_query: list[Item] = field(default_factory=list)
    val_gallery: list[Item] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_cameras(self) -> int:
        return len({cam for items in (self.train, self.query, self.gallery) for _, _, cam in items})

    def relabeled_train(self) -> list[Item]:
        """Train items with pids mapped to 0..N-1 in sorted pid order: the classifier's labels."""
        label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in self.train}))}
        return [(path, label[pid], cam) for path, pid, cam in self.train]

    def summary(self) -> str:
        parts = []
        for split in SPLITS:
            items = getattr(self, split)
            pids = len({pid for _, pid, _ in items})
            cams = len({cam for _, _, cam in items})
            parts.append(f"{split} {len(items)} images/{pids} ids/{cams} cams")
        if self.val_query:
            parts.append(f"validation {len(self.val_query) + len(self.val_gallery)} images/"
                         f"{len({pid for _, pid, _ in self.val_gallery + self.val_query})} ids")
        return f"{self.name} ({self.root}): " + ", ".join(parts)

    def evaluation_split(self, split: str) -> tuple[list[Item], list[Item]]:
        """(query, gallery) of `split`: "test" (the reported figures) or "val" (for tuning)."""
        if split == "test":
            return self.query, self.gallery
        if split == "val":
            if not self.val_query:
                raise DataError(f"{self.root}: no validation split; set data.val_share > 0 "
                                "(a share of the training identities is then held out)")
            return self.val_query, self.val_gallery
        raise ValueError(f"unknown split {split!r}; valid: test, val")


def hold_out_validation(splits: ReIDSplits, share: float) -> ReIDSplits:
    """Move `share` of the training identities into a validation query/gallery.

    The held-out identities are those with the highest pids: a fixed choice, the same for every
    seed and setting, and one that keeps the synthetic benchmark's look-alike families (runs of
    consecutive pids) together, so validation, like the test split, ranks people against their
    look-alikes. Market-1501's rule on them: the first image of each (identity, camera) is a
    query, the rest gallery. An identity seen by one camera only cannot be a query; its images
    stay as gallery distractors. At least 2 identities remain for training.
    """
    if share <= 0:
        return splits
    pids = sorted({pid for _, pid, _ in splits.train})
    count = min(max(1, round(share * len(pids))), len(pids) - 2)
    if count < 1:
        raise DataError(f"{splits.root}: {len(pids)} training identities are too few to hold out a validation "
                        "split; add identities or set data.val_share: 0")
    held = set(pids[-count:])
    cameras: dict[int, set[int]] = defaultdict(set)
    for _, pid, cam in splits.train:
        cameras[pid].add(cam)
    train, query, gallery, seen = [], [], [], set()
    for item in splits.train:
        _, pid, cam = item
        if pid not in held:
            train.append(item)
        elif len(cameras[pid]) > 1 and (pid, cam) not in seen:
            seen.add((pid, cam))
            query.append(item)
        else:
            gallery.append(item)
    return replace(splits, train=train, val_query=query, val_gallery=gallery)


# ---------------------------------------------------------------------------------------------
# Market-1501 layout


def _parse_market_name(path: Path) -> tuple[int, int]:
    """(pid, camid 0-based) from a Market-1501 file name, or DataError naming the file."""
    match = MARKET_PATTERN.match(path.name)
    pid, cam = None, None
    if match:
        try:
            pid, cam = int(match.group(1)), int(match.group(2))
        except ValueError:  # e.g. "-_c1...": the regex accepts a lone dash
            pass
    if pid is None or cam is None or cam < 1 or pid < JUNK_PID:
        raise DataError(
            f"{path}: file name does not follow the Market-1501 pattern {MARKET_EXAMPLE} "
            "(PPPP = person id, -1 for junk, 0 for distractors; C = camera 1-9). "
            "Rename the file, or list images in a CSV manifest (path,pid,camid[,split]) "
            "and use kind: csv"
        )
    return pid, cam - 1


def _read_market_dir(folder: Path, split: str) -> list[Item]:
    items: list[Item] = []
    dropped = 0
    # Sorted so that the item order (and everything derived from it) is the same on every machine.
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # tolerate Thumbs.db, readme files and the like
        pid, cam = _parse_market_name(path)
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and split != "gallery"):
            dropped += 1
            continue
        items.append((os.path.abspath(path), pid, cam))
    if dropped:
        log.info("%s: dropped %d junk/distractor images (pid -1 or 0)", folder, dropped)
    return items


def read_market1501(root: str | Path) -> ReIDSplits:
    """Read a Market-1501-layout folder (also a `reid-prune synth` output)."""
    root = Path(root)
    # Market-1501 as downloaded nests everything in one more folder; accept both layouts.
    nested = root / "Market-1501-v15.09.15"
    if not (root / MARKET_DIRS["train"]).is_dir() and nested.is_dir():
        root = nested
    for folder in MARKET_DIRS.values():
        if not (root / folder).is_dir():
            raise DataError(
                f"{root / folder}: folder not found. A Market-1501-layout dataset needs "
                f"{', '.join(d + '/' for d in MARKET_DIRS.values())} inside {root}; "
                "check the dataset path, or use kind: csv with a manifest"
            )
    splits = {split: _read_market_dir(root / d, split) for split, d in MARKET_DIRS.items()}
    result = ReIDSplits(**splits, name=root.name, root=os.path.abspath(root))
    log.info("read %s", result.summary())
    return result


# ---------------------------------------------------------------------------------------------
# CSV manifest


def _int_field(row: dict, column: str, path: Path, line: int) -> int:
    raw = (row.get(column) or "").strip()
    try:
        return int(raw)
    except ValueError:
        raise DataError(
            f"{path}, line {line}, column {column!r}: expected an integer, got {raw!r}; "
            "fix or remove that row"
        ) from None


def read_csv_manifest(path: str | Path, seed: int = 0) -> ReIDSplits:
    """Read a manifest `path,pid,camid[,split]`; image paths are relative to its folder.

    Without a `split` column, identities are split in half (train / test) with `seed`, and each
    test identity gives one query per camera, the rest going to the gallery (Market-1501's rule).
    Rows with pid -1 are junk and dropped; unlike Market file names, pid 0 is an ordinary
    identity here, since manifests commonly number people from 0.
    """
    path = Path(path)
    base = path.parent
    items: list[tuple[Item, str | None]] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        for column in ("path", "pid", "camid"):
            if column not in columns:
                raise DataError(
                    f"{path}, line 1: missing column {column!r} (found {columns or 'no header'}); "
                    "the header must be path,pid,camid[,split]"
                )
        has_split = "split" in columns
        for row in reader:
            line = reader.line_num
            image = (row.get("path") or "").strip()
            if not image:
                raise DataError(f"{path}, line {line}, column 'path': empty; give the image path")
            pid = _int_field(row, "pid", path, line)
            cam = _int_field(row, "camid", path, line)
            if cam < 0:
                raise DataError(
                    f"{path}, line {line}, column 'camid': {cam} is negative; camid is 0-based "
                    "(first camera = 0)"
                )
            split = None
            if has_split:
                split = (row.get("split") or "").strip().lower()
                if split not in SPLITS:
                    raise DataError(
                        f"{path}, line {line}, column 'split': {split!r} is not one of "
                        f"{', '.join(SPLITS)}; fix the value, or drop the column to split "
                        "automatically"
                    )
            if pid == JUNK_PID:
                continue
            # os.path.join keeps absolute paths as they are; abspath normalises "../".
            items.append(((os.path.abspath(os.path.join(base, image)), pid, cam), split))
    splits = _explicit_splits(items) if has_split else _split_by_identity(items, seed)
    result = ReIDSplits(**splits, name=path.stem, root=os.path.abspath(base))
    log.info("read %s", result.summary())
    return result


def _explicit_splits(items: list[tuple[Item, str | None]]) -> dict[str, list[Item]]:
    splits: dict[str, list[Item]] = {split: [] for split in SPLITS}
    for item, split in items:
        splits[split].append(item)
    return splits


def _split_by_identity(items: list[tuple[Item, str | None]], seed: int) -> dict[str, list[Item]]:
    pids = np.array(sorted({item[1] for item, _ in items}))
    np.random.default_rng(seed).shuffle(pids)
    train_pids = {int(pid) for pid in pids[: len(pids) // 2]}
    splits: dict[str, list[Item]] = {split: [] for split in SPLITS}
    seen: set[tuple[int, int]] = set()  # (pid, camid) that already has its query
    for item, _ in items:  # file order decides which image of a camera is the query
        _, pid, cam = item
        if pid in train_pids:
            splits["train"].append(item)
        elif (pid, cam) in seen:
            splits["gallery"].append(item)
        else:
            seen.add((pid, cam))
            splits["query"].append(item)
    return splits


# ---------------------------------------------------------------------------------------------
# Dispatch


def read_dataset(kind: str, path: str | Path, seed: int = 0) -> ReIDSplits:
    """Read a dataset of `kind` (synthetic | market1501 | csv) at `path`."""
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    path = Path(path)
    if not path.exists():
        if kind == "synthetic":
            domain = "target" if "target" in path.name else "source"
            fix = f"run `reid-prune synth --domain {domain} --out {path}` to generate it"
        elif kind == "market1501":
            fix = ("download Market-1501 and point the path at the folder holding "
                   "bounding_box_train/")
        else:
            fix = "write a CSV with header path,pid,camid[,split] there, or fix the path"
        raise DataError(f"{path}: {kind} dataset not found; {fix}")
    if kind == "csv":
        if path.is_dir():
            raise DataError(
                f"{path}: is a folder but kind csv needs a manifest file, "
                f"e.g. {path / 'manifest.csv'}"
            )
        return read_csv_manifest(path, seed=seed)
    return read_market1501(path)


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class ValidationReport:
    skipped_corrupt: int
    queries_without_match: int
    splits: ReIDSplits  # with corrupt images dropped when skip_corrupt=True


def _image_problem(path: str) -> str | None:
    """Why `path` cannot be used as an image, or None when it decodes."""
    try:
        # A full decode, not just verify(): a truncated JPEG passes verify() but breaks loading,
        # and torchreid's read_image retries such a file forever.
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # PIL raises several types for bad files
        return f"{type(error).__name__}: {error}"
    return None


def _check_images(splits: ReIDSplits, skip_corrupt: bool) -> tuple[ReIDSplits, int]:
    paths = sorted({item[0] for split in SPLITS for item in getattr(splits, split)})
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        # A wrong path is a manifest mistake, not a damaged file: never skipped silently.
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise DataError(
            f"{len(missing)} image(s) listed in {splits.root} do not exist: {shown}; "
            "CSV paths are relative to the CSV's folder -- fix the paths or remove those rows"
        )
    bad = {}
    for p in paths:
        problem = _image_problem(p)
        if problem:
            if not skip_corrupt:
                raise DataError(
                    f"{p}: unreadable or corrupt image ({problem}); replace or delete it, "
                    "or set data.skip_corrupt: true to skip such images"
                )
            bad[p] = problem
    if not bad:
        return splits, 0
    log.warning("skipped %d corrupt image(s) in %s, e.g. %s", len(bad), splits.root,
                next(iter(bad)))
    kept = {split: [i for i in getattr(splits, split) if i[0] not in bad] for split in SPLITS}
    return replace(splits, **kept), len(bad)


def _count_unmatched(splits: ReIDSplits) -> int:
    """Queries without a same-pid gallery image from another camera (the protocol skips them)."""
    gallery_cams: dict[int, set[int]] = defaultdict(set)
    for _, pid, cam in splits.gallery:
        gallery_cams[pid].add(cam)
    return sum(1 for _, pid, cam in splits.query if not gallery_cams[pid] - {cam})


def validate_splits(splits: ReIDSplits, check_images: bool = True,
                    skip_corrupt: bool = False) -> ValidationReport:
    """Check a dataset before any training; raise DataError on what would break or mislead."""
    skipped = 0
    if check_images:
        splits, skipped = _check_images(splits, skip_corrupt)

    for split in SPLITS:
        if not getattr(splits, split):
            after = " after skipping corrupt images" if skipped else ""
            raise DataError(
                f"{splits.root}: the {split} split is empty{after}; "
                "a ReID dataset needs train, query and gallery images (check the folder or the "
                "CSV's split column)"
            )

    # Cross-camera matching is the whole task: train needs it to learn camera invariance,
    # and the Market protocol ignores same-camera gallery matches at test time.
    for label, items in (("train", splits.train), ("query+gallery", splits.query + splits.gallery)):
        cams = sorted({cam for _, _, cam in items})
        if len(cams) < 2:
            raise DataError(
                f"{splits.root}: the {label} split has {len(cams)} camera(s) (camid {cams}); "
                "ReID needs images of each person from at least 2 cameras -- check the camera "
                "ids (file names cN / CSV camid column)"
            )

    unmatched = _count_unmatched(splits)
    if unmatched == len(splits.query):
        raise DataError(
            f"{splits.root}: none of the {len(splits.query)} queries has a valid gallery match "
            "(same pid from a different camera), so nothing can be evaluated; put gallery images "
            "of the query identities from other cameras in the gallery"
        )
    if unmatched:
        log.warning("%s: %d of %d queries have no gallery match in another camera; the evaluation "
                    "protocol skips them", splits.root, unmatched, len(splits.query))
    return ValidationReport(skipped_corrupt=skipped, queries_without_match=unmatched, splits=splits)


# ---------------------------------------------------------------------------------------------
# torchreid


def register_with_torchreid(name: str, splits: ReIDSplits) -> type:
    """Register `splits` as torchreid image dataset `name` (for ImageDataManager(sources=name)).

    Registering the same name again replaces our earlier dataset (e.g. a re-run in one process);
    torchreid's built-in names are refused.
    """
    import torchreid.reid.data.datasets as registry  # lazy: importing torchreid takes seconds
    from torchreid.reid.data.datasets.dataset import ImageDataset

    train, query, gallery = splits.relabeled_train(), list(splits.query), list(splits.gallery)

    class SplitsDataset(ImageDataset):
        _junk_pids = [JUNK_PID, DISTRACTOR_PID]  # excluded when combineall=True, as for Market
        reid_prune_splits = splits

        def __init__(self, **kwargs):
            # ImageDataManager also passes root, split_id, cuhk03_*...; the base class ignores them.
            super().__init__(list(train), list(query), list(gallery), **kwargs)

        def show_summary(self) -> None:  # torchreid prints; we log
            log.info("torchreid dataset %r: %s", name, splits.summary())

    SplitsDataset.__name__ = SplitsDataset.__qualname__ = f"SplitsDataset[{name}]"
    table = vars(registry)["__image_datasets"]  # module global; torchreid refuses re-registration
    existing = table.get(name)
    if existing is not None and not hasattr(existing, "reid_prune_splits"):
        raise DataError(
            f"dataset name {name!r} is a torchreid built-in dataset; choose another name")
    if existing is not None:
        table[name] = SplitsDataset
    else:
        registry.register_image_dataset(name, SplitsDataset)
    return SplitsDataset
