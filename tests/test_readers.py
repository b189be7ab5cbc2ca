"""Dataset readers, validation and torchreid registration, on tiny datasets built in tmp_path."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from reid_models.data.readers import (
    DataError,
    ReIDSplits,
    read_csv_manifest,
    read_dataset,
    read_market1501,
    register_with_torchreid,
    validate_splits,
)
from reid_models.data.synth import CAMERAS, DomainSpec, generate_domain

TINY = DomainSpec(train_ids=3, test_ids=3, min_cameras=2, images_per_camera=(2, 2), test_images_per_camera=(2, 2))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """A tiny synthetic domain; read-only for the tests (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("synth") / "d"
    return generate_domain(out, "source", seed=0, spec=TINY, workers=1)


def write_jpeg(path: Path, colour=(120, 60, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), colour).save(path, format="JPEG")
    return str(path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tiny_market(root: Path, cams=(1, 2)) -> Path:
    """2 train ids and 2 test ids, each seen by every camera in `cams`."""
    for pid in (1, 2):
        for cam in cams:
            write_jpeg(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000100_01.jpg")
    for pid in (3, 4):
        for cam in cams:
            write_jpeg(root / "query" / f"{pid:04d}_c{cam}s1_000200_01.jpg")
            write_jpeg(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_000300_02.jpg")
    return root


def relative(splits: ReIDSplits, split: str) -> set[tuple[str, int, int]]:
    return {(os.path.relpath(p, splits.root), pid, cam) for p, pid, cam in getattr(splits, split)}


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading


def test_market_reader_on_synthetic(synth_dir):
    splits = read_dataset("synthetic", synth_dir)
    with open(synth_dir / "manifest.csv") as handle:
        rows = list(csv.DictReader(handle))
    counts = Counter(row["split"] for row in rows)
    assert (len(splits.train), len(splits.query), len(splits.gallery)) == (
        counts["train"], counts["query"], counts["gallery"])
    assert splits.num_train_pids == TINY.train_ids
    every = splits.train + splits.query + splits.gallery
    assert all(os.path.isabs(p) and os.path.isfile(p) for p, _, _ in every)
    assert {cam for _, _, cam in every} <= set(range(len(CAMERAS["source"]))) and 0 in {cam for _, _, cam in every}
    assert splits.num_cameras == len({cam for _, _, cam in every})
    # file name cN <-> camid N-1
    assert all(f"_c{cam + 1}s" in os.path.basename(p) for p, _, cam in every)

    labels = splits.relabeled_train()
    assert sorted({pid for _, pid, _ in labels}) == [0, 1, 2]
    assert labels == splits.relabeled_train()  # deterministic
    assert [p for p, _, _ in labels] == [p for p, _, _ in splits.train]

    report = validate_splits(splits)
    assert report.skipped_corrupt == 0 and report.queries_without_match == 0


def test_market_reader_agrees_with_manifest(synth_dir):
    market = read_market1501(synth_dir)
    manifest = read_csv_manifest(synth_dir / "manifest.csv")
    for split in ("train", "query", "gallery"):
        assert relative(market, split) == relative(manifest, split)


def test_csv_without_split_column(synth_dir, tmp_path):
    with open(synth_dir / "manifest.csv") as handle:
        rows = [[str(synth_dir / r["path"]), r["pid"], r["camid"]] for r in csv.DictReader(handle)]
    manifest = write_csv(tmp_path / "nosplit.csv", ["path", "pid", "camid"], rows)

    first, again = read_csv_manifest(manifest, seed=0), read_csv_manifest(manifest, seed=0)
    assert first == again
    train_ids = {pid for _, pid, _ in first.train}
    test_ids = {pid for _, pid, _ in first.query + first.gallery}
    assert len(train_ids) == 3 and len(test_ids) == 3 and not train_ids & test_ids
    assert len(first.train) + len(first.query) + len(first.gallery) == len(rows)

    # One query per (test id, camera): the first of that camera in file order.
    query_keys = [(pid, cam) for _, pid, cam in first.query]
    assert len(query_keys) == len(set(query_keys))
    assert set(query_keys) == {(pid, cam) for _, pid, cam in first.query + first.gallery}
    first_seen: dict[tuple[int, int], str] = {}
    for path, pid, cam in rows:
        first_seen.setdefault((int(pid), int(cam)), os.path.abspath(path))
    assert all(first_seen[(pid, cam)] == p for p, pid, cam in first.query)

    # Another seed may pick other identities, but always a disjoint half.
    other = read_csv_manifest(manifest, seed=1)
    assert len({pid for _, pid, _ in other.train}) == 3
    assert validate_splits(first).queries_without_match == 0


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_folder_named(tmp_path):
    root = tiny_market(tmp_path / "m")
    for path in (root / "query").iterdir():
        path.unlink()
    (root / "query").rmdir()
    with pytest.raises(DataError, match="query"):
        read_market1501(root)
    with pytest.raises(DataError, match=r"reid-prune synth --domain source --out"):
        read_dataset("synthetic", tmp_path / "nowhere")
    with pytest.raises(DataError, match="market1501"):
        read_dataset("mystery", root)


def test_unparsable_file_name(tmp_path):
    root = tiny_market(tmp_path / "m")
    write_jpeg(root / "bounding_box_train" / "person7_cam2.jpg")
    with pytest.raises(DataError, match=r"person7_cam2\.jpg.*PPPP_cCsS_FFFFFF_NN\.jpg"):
        read_market1501(root)


def test_junk_and_distractor_pids(tmp_path):
    root = tiny_market(tmp_path / "m")
    write_jpeg(root / "bounding_box_test" / "-1_c1s1_000400_01.jpg")
    write_jpeg(root / "bounding_box_test" / "0000_c2s1_000400_01.jpg")
    splits = read_market1501(root)
    assert {pid for _, pid, _ in splits.gallery} == {0, 3, 4}  # junk dropped, distractor kept
    assert validate_splits(splits).queries_without_match == 0


def test_corrupt_jpeg(tmp_path, caplog):
    root = tiny_market(tmp_path / "m", cams=(1, 2, 3))
    bad = root / "bounding_box_test" / "0003_c1s1_000500_03.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    splits = read_market1501(root)
    with pytest.raises(DataError, match=r"0003_c1s1_000500_03\.jpg"):
        validate_splits(splits)
    with caplog.at_level(logging.WARNING):
        report = validate_splits(splits, skip_corrupt=True)
    assert report.skipped_corrupt == 1
    assert len(report.splits.gallery) == len(splits.gallery) - 1
    assert str(bad) not in {p for p, _, _ in report.splits.gallery}
    assert "skipped 1 corrupt" in caplog.text
    validate_splits(splits, check_images=False)  # no decoding asked: no error


def test_single_camera(tmp_path):
    splits = read_market1501(tiny_market(tmp_path / "m", cams=(1,)))
    with pytest.raises(DataError, match=r"1 camera"):
        validate_splits(splits)


def test_csv_missing_camid_column(tmp_path):
    image = write_jpeg(tmp_path / "a.jpg")
    manifest = write_csv(tmp_path / "m.csv", ["path", "pid"], [[image, 1]])
    with pytest.raises(DataError, match=r"m\.csv.*'camid'"):
        read_csv_manifest(manifest)


def test_csv_bad_values_name_the_line(tmp_path):
    image = write_jpeg(tmp_path / "a.jpg")
    manifest = write_csv(tmp_path / "m.csv", ["path", "pid", "camid", "split"],
                         [[image, 1, 0, "train"], [image, "x", 0, "train"]])
    with pytest.raises(DataError, match=r"m\.csv, line 3, column 'pid'"):
        read_csv_manifest(manifest)
    manifest = write_csv(tmp_path / "m.csv", ["path", "pid", "camid", "split"],
                         [[image, 1, 0, "train"], [image, 1, 0, "test"]])
    with pytest.raises(DataError, match=r"line 3, column 'split'"):
        read_csv_manifest(manifest)


def test_no_query_with_valid_match(tmp_path):
    # Every query's only gallery image of its identity is from the same camera.
    rows = []
    for pid in (1, 2):
        for cam in (0, 1):
            rows.append([write_jpeg(tmp_path / f"t{pid}{cam}.jpg"), pid, cam, "train"])
    for pid, cam in ((3, 0), (4, 1)):
        rows.append([write_jpeg(tmp_path / f"q{pid}.jpg"), pid, cam, "query"])
        rows.append([write_jpeg(tmp_path / f"g{pid}.jpg"), pid, cam, "gallery"])
    manifest = write_csv(tmp_path / "m.csv", ["path", "pid", "camid", "split"], rows)
    splits = read_csv_manifest(manifest)
    with pytest.raises(DataError, match="valid gallery match"):
        validate_splits(splits)


# ---------------------------------------------------------------------------------------------
# torchreid


def test_register_with_torchreid(synth_dir):
    from torchreid.reid.data.datasets import init_image_dataset

    splits = read_market1501(synth_dir)
    register_with_torchreid("reid_prune_test", splits)
    register_with_torchreid("reid_prune_test", splits)  # re-registering our own name is fine
    dataset = init_image_dataset("reid_prune_test", mode="train", verbose=False, root="unused")
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (
        len(splits.train), len(splits.query), len(splits.gallery))
    assert dataset.num_train_pids == splits.num_train_pids
    assert {pid for _, pid, _, _ in dataset.train} == set(range(splits.num_train_pids))
    item = dataset[0]
    assert item["img"].size == (64, 128) and item["pid"] == dataset.train[0][1]
    with pytest.raises(DataError, match="built-in"):
        register_with_torchreid("market1501", splits)


# ---------------------------------------------------------------------------------------------
# Generator determinism


def test_generate_domain_is_deterministic(tmp_path, synth_dir):
    kwargs = dict(seed=0, spec=TINY)
    again = generate_domain(tmp_path / "again", "source", workers=1, **kwargs)
    parallel = generate_domain(tmp_path / "parallel", "source", workers=2, **kwargs)
    assert tree_hash(again) == tree_hash(synth_dir) == tree_hash(parallel)
    other = generate_domain(tmp_path / "other", "source", workers=1, **{**kwargs, "seed": 1})
    assert tree_hash(other) != tree_hash(synth_dir)
