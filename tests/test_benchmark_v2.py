"""Benchmark v2: look-alike families, sizes from the spec, a fixed validation split, regeneration."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from reid_models.config import load_settings
from reid_models.data import synth
from reid_models.data.readers import DataError, ReIDSplits, hold_out_validation, read_dataset
from reid_models.data.synth import DomainSpec, generate_domain, pids_for_testing, plan_domain, sample_identity
from reid_models.stages import load_domain, prepare_domain
from tests.conftest import PARAMS

OUTFIT = ("top", "top2", "bottom", "bottom_type")
SMALL = ("shoes", "hair", "hair_style", "bag", "bag_side", "hat", "hat_colour", "long_sleeves", "pattern", "logo_shape")


def test_family_members_share_the_outfit_and_differ_in_a_small_attribute():
    for family in range(20):
        members = [sample_identity(0, "source", family * 3 + i + 1, family_size=3) for i in range(3)]
        base = asdict(members[0])
        for member in members[1:]:
            other = asdict(member)
            assert all(other[key] == base[key] for key in OUTFIT)
        # Each member differs from the family's base outfit somewhere among the small attributes,
        # so no two members of a family are the same person.
        fingerprints = {tuple(asdict(m)[key] for key in SMALL) for m in members}
        assert len(fingerprints) == 3
    unrelated = [sample_identity(0, "source", pid, family_size=1) for pid in range(1, 40)]
    assert len({m.top for m in unrelated}) > 30  # without families, outfits are drawn per identity


def test_no_family_spans_train_and_test():
    spec = DomainSpec(train_ids=7, test_ids=6, family_size=3)
    first_test = pids_for_testing(spec)[0]
    assert (first_test - 1) % spec.family_size == 0
    assert (first_test - 1) // 3 > (spec.train_ids - 1) // 3
    jobs = plan_domain("target", spec, seed=0)
    train = {job.pid for job in jobs if job.split == "train"}
    test = {job.pid for job in jobs if job.split != "train"}
    assert len(train) == 7 and len(test) == 6 and not train & test
    cameras = {pid: {job.cam for job in jobs if job.pid == pid} for pid in train | test}
    assert min(len(cams) for cams in cameras.values()) >= spec.min_cameras
    for pid in test:  # one query per visited camera, at least one gallery image there too
        for cam in cameras[pid]:
            splits = [job.split for job in jobs if job.pid == pid and job.cam == cam]
            assert splits.count("query") == 1 and splits.count("gallery") >= 1


def _splits(train) -> ReIDSplits:
    return ReIDSplits(train=train, query=[("q", 99, 0)], gallery=[("g", 99, 1)], name="t", root="/t")


def test_validation_is_a_fixed_share_of_training_identities():
    train = [(f"{pid}_{cam}_{i}", pid, cam) for pid in range(1, 41) for cam in range(3) for i in range(2)]
    train += [("solo_a", 41, 0), ("solo_b", 41, 0)]  # one camera only: never a query
    held = hold_out_validation(_splits(train), 0.25)
    val_ids = {pid for _, pid, _ in held.val_query + held.val_gallery}
    train_ids = {pid for _, pid, _ in held.train}
    assert val_ids == set(range(32, 42)) and not val_ids & train_ids  # the highest pids: families stay together
    assert len(train_ids) + len(val_ids) == 41
    # Market rule: one query per (identity, camera), the rest gallery; queries have a match elsewhere.
    assert len(held.val_query) == len({(pid, cam) for _, pid, cam in held.val_query})
    assert all(pid != 41 for _, pid, _ in held.val_query)
    # The draw does not depend on anything but the identities: same split every time, every seed.
    assert hold_out_validation(_splits(list(reversed(train))), 0.25).val_query.__len__() == len(held.val_query)
    assert {p for _, p, _ in hold_out_validation(_splits(train), 0.25).val_gallery} == \
        {p for _, p, _ in held.val_gallery}
    assert held.evaluation_split("val") == (held.val_query, held.val_gallery)
    assert held.evaluation_split("test") == (held.query, held.gallery)


def test_no_validation_split_is_a_clear_error():
    splits = hold_out_validation(_splits([("a", 1, 0), ("b", 1, 1)]), 0.0)
    with pytest.raises(DataError, match="data.val_share"):
        splits.evaluation_split("val")
    with pytest.raises(DataError, match="too few"):
        hold_out_validation(_splits([("a", 1, 0), ("b", 2, 1)]), 0.5)


def test_run_seed_does_not_change_the_data(tiny_domains, tmp_path):
    settings = [load_settings(PARAMS, "quick", [f"data.source.path={tiny_domains['source']}",
                                                f"data.target.path={tiny_domains['target']}", f"seed={seed}"])
                for seed in (0, 3)]
    first, second = (load_domain(s.data.target, s.data, check_images=False) for s in settings)
    assert first.train == second.train and first.query == second.query and first.val_query == second.val_query
    assert first.val_query  # the quick profile holds out validation identities too


def test_a_folder_of_another_version_or_size_is_rendered_again(tmp_path, monkeypatch):
    spec = DomainSpec(train_ids=3, test_ids=3, min_cameras=2, images_per_camera=(1, 1),
                      test_images_per_camera=(2, 2), family_size=1)
    path = tmp_path / "source"
    overrides = [f"data.source.path={path}", "data.synth.train_ids=3", "data.synth.source_test_ids=3",
                 "data.synth.min_cameras=2", "data.synth.images_per_camera=[1, 1]",
                 "data.synth.test_images_per_camera=[2, 2]", "data.synth.family_size=1", "data.synth.workers=1"]
    settings = load_settings(PARAMS, "quick", overrides)
    assert settings.data.synth.spec("source") == spec
    generate_domain(path, "source", seed=0, spec=spec, workers=1)
    stamp = (path / "manifest.csv").stat().st_mtime_ns
    prepare_domain("source", settings.data.source, settings.data)
    assert (path / "manifest.csv").stat().st_mtime_ns == stamp  # same version and spec: kept

    monkeypatch.setattr(synth, "SYNTH_VERSION", synth.SYNTH_VERSION + 1)
    prepare_domain("source", settings.data.source, settings.data)
    assert synth.read_info(path)["version"] == synth.SYNTH_VERSION  # an old version is rendered again
    bigger = load_settings(PARAMS, "quick", [*overrides, "data.synth.train_ids=4"])
    prepare_domain("source", bigger.data.source, bigger.data)
    assert read_dataset("synthetic", path).num_train_pids == 4  # so is another size


def test_each_domain_gets_its_own_training_and_test_sizes():
    settings = load_settings(PARAMS, "default", [])
    synth_settings = settings.data.synth
    source, target = synth_settings.spec("source"), synth_settings.spec("target")
    assert (source.train_ids, source.test_ids) == (synth_settings.train_ids, synth_settings.source_test_ids)
    assert (target.train_ids, target.test_ids) == (synth_settings.target_train_ids, synth_settings.test_ids)
    assert target.train_ids != source.train_ids  # the default target has more labelled identities
    unset = load_settings(PARAMS, "default", ["data.synth.target_train_ids=null"]).data.synth
    assert unset.spec("target").train_ids == unset.train_ids
