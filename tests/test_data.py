"""Data sources (class folders, archives, the official CIFAR-10 format), safe loading, the cache,
and turning labels into bird vs not-bird."""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from birdcnn import data as D
from birdcnn.errors import DataError, FileProblem
from birdcnn.images import HEIF_PLUGIN, fit_square, load_for_model, readable_suffixes
from birdcnn.train import TrainConfig, prepare_data

CLASSES = D.CIFAR10_CLASSES


# ---------------------------------------------------------------- class folders

def test_class_folder_with_splits(cifar_small):
    train, test = D.load_split(cifar_small, "train"), D.load_split(cifar_small, "test")
    assert train.classes == test.classes == sorted(CLASSES)
    assert train.images.shape == (600, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (200, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [60] * 10 and np.bincount(test.labels).tolist() == [20] * 10
    assert train.fingerprint != test.fingerprint
    # Labels and pixels match the files they came from.
    for i in (0, 123, 599):
        path = Path(train.paths[i])
        assert path.parent.name == train.classes[train.labels[i]]
        assert np.array_equal(train.images[i], load_for_model(path, 32))


def test_class_folder_without_splits_is_used_whole(cifar_small):
    folder = cifar_small / "test"  # bird/, cat/, ... directly inside
    a, b = D.load_split(folder, "train"), D.load_split(folder, "test")
    assert len(a) == len(b) == 200 and a.fingerprint == b.fingerprint
    assert np.array_equal(a.images, b.images)


def test_splits_share_one_class_list(cifar_small, tmp_path):
    # test/ lacks 'cat': 'dog' must keep the label it has in train/, not shift down by one.
    for split, classes in (("train", ["bird", "cat", "dog"]), ("test", ["bird", "dog"])):
        for c in classes:
            shutil.copytree(cifar_small / split / c, tmp_path / split / c)
    train, test = D.load_split(tmp_path, "train"), D.load_split(tmp_path, "test")
    assert train.classes == test.classes == ["bird", "cat", "dog"]
    assert set(test.labels.tolist()) == {0, 2}


def test_other_sizes_and_unreadable_files_are_reported(photos, tmp_path):
    shutil.copytree(photos, tmp_path / "photos")
    (tmp_path / "photos" / "bird" / "broken.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "photos" / "bird" / "notes.txt").write_text("ignored: not an image suffix")
    ds = D.load_split(tmp_path / "photos", "train", size=48)
    assert ds.classes == ["bird", "not_bird"] and np.bincount(ds.labels).tolist() == [10, 30]
    assert ds.images.shape == (40, 48, 48, 3)
    assert len(ds.skipped) == 1 and ds.skipped[0].path.endswith("broken.jpg")
    assert "not an image" in ds.skipped[0].problem and str(ds.skipped[0]).startswith(ds.skipped[0].path + ": ")


def test_skipped_files_keep_path_and_problem_apart_through_the_cache(cifar_small, tmp_path, monkeypatch):
    # A name may hold ": ": the cache keeps the path and the problem as two fields, not one line to split.
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(cifar_small / "test" / "bird", tmp_path / "data" / "bird")
    shutil.copytree(cifar_small / "test" / "cat", tmp_path / "data" / "cat")
    bad = tmp_path / "data" / "bird" / "a: b.jpg"
    bad.write_bytes(b"not really a jpeg")
    first = D.load_split(tmp_path / "data", "train")
    [cached] = (tmp_path / "cache" / "arrays").glob("*.npz")
    again = D.load_split(tmp_path / "data", "train")  # from the cache
    assert first.skipped == again.skipped and [f.path for f in again.skipped] == [str(bad)]
    assert again.skipped[0].problem.startswith("not an image")
    # A cache written before the two fields were kept (only "path: problem" text) is decoded again.
    with np.load(cached) as z:
        old = {k: z[k] for k in z.files if k not in ("skipped_path", "skipped_problem")}
    np.savez(cached, **old)
    assert D.load_split(tmp_path / "data", "train").skipped == first.skipped
    with np.load(cached) as z:
        assert [os.fsdecode(p) for p in z["skipped_path"]] == [str(bad)]


def test_links_to_nothing_are_skipped_and_reported(cifar_small, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    for c in ("bird", "cat"):
        shutil.copytree(cifar_small / "test" / c, tmp_path / "data" / c)
    (tmp_path / "data" / "bird" / "dangling.jpg").symlink_to("gone.jpg")
    (tmp_path / "data" / "cat" / "loop.jpg").symlink_to("loop.jpg")
    ds = D.load_split(tmp_path / "data", "train")
    assert len(ds) == 40 and sorted(ds.skipped) == [
        FileProblem(f"{tmp_path}/data/bird/dangling.jpg", "broken symbolic link"),
        FileProblem(f"{tmp_path}/data/cat/loop.jpg", "symbolic link loop")]
    # The link mended: the listing (the cache key) changes, and the photo is used.
    shutil.copy(cifar_small / "test" / "bird" / "0000.jpg", tmp_path / "data" / "bird" / "gone.jpg")
    mended = D.load_split(tmp_path / "data", "train")
    assert len(mended) == 42 and len(mended.skipped) == 1 and mended.fingerprint != ds.fingerprint


def test_any_suffix_pillow_reads_and_other_files_counted(cifar_small, tmp_path):
    bird = tmp_path / "data" / "bird"
    bird.mkdir(parents=True)
    with Image.open(cifar_small / "test" / "bird" / "0000.jpg") as im:
        im.save(bird / "a.ppm")
        im.save(bird / "b.pgm")
        im.save(bird / "c.heic", format="JPEG")  # a JPEG named .heic: read by its content when listed
    for name in ("notes.txt", "more.txt", "sub/deep.txt", "README", ".DS_Store", "scan.pdf"):
        (bird / name).parent.mkdir(exist_ok=True)
        (bird / name).write_text("not an image")
    listing = D.scan_class_folder(tmp_path / "data")
    names = [p.name for p, _ in listing.files]
    assert names == (["a.ppm", "b.pgm", "c.heic"] if HEIF_PLUGIN else ["a.ppm", "b.pgm"])
    assert dict(listing.other.counts) == {".txt": 3, "(no suffix)": 1, ".pdf": 1,
                                          **({} if HEIF_PLUGIN else {".heic": 1})}
    assert str(listing.other) == ("3 .txt, 1 (no suffix), 1 .pdf" if HEIF_PLUGIN else
                                  "3 .txt, 1 (no suffix), 1 .heic (install birdcnn[heif] to read HEIC), 1 .pdf")
    assert D.list_class_folder(tmp_path / "data") == (listing.classes, listing.files)
    ds = D.load_split(tmp_path / "data", "train")
    assert len(ds) == len(names) and not ds.skipped


def test_readable_suffixes_are_what_pillow_opens():
    suffixes = readable_suffixes()
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".avif"} <= suffixes
    assert not {".pdf", ".mpg", ".eps", ".h5", ".txt", ".json"} & suffixes  # save-only, video, Ghostscript, stubs
    assert ({".heic", ".heif"} <= suffixes) == HEIF_PLUGIN


def test_real_heic_with_pillow_heif(photo, tmp_path):
    pytest.importorskip("pillow_heif", reason="optional: pip install birdcnn[heif]")
    photo.save(tmp_path / "photo.heic", quality=90)
    assert (tmp_path / "photo.heic").read_bytes()[4:12] == b"ftypheic"  # really HEIC, not a renamed JPEG
    expected = np.asarray(fit_square(photo, 32), dtype=float)
    assert np.abs(load_for_model(tmp_path / "photo.heic", 32) - expected).mean() < 8


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_lone_split_folder_is_a_split(cifar_small, tmp_path, split):
    # data/test/<class>/ alone is the test split (not one class called "test"); the missing split is named.
    for c in ("bird", "cat"):
        shutil.copytree(cifar_small / split / c, tmp_path / "data" / split / c)
    r = D.resolve_source(tmp_path / "data")
    assert r.split_folders and r.has_test_split == (split == "test")
    ds = D.load_split(r, split)
    assert ds.classes == ["bird", "cat"] and len(ds) == (120 if split == "train" else 40)
    other = {"train": "test", "test": "train"}[split]
    with pytest.raises(DataError, match=f"data: no {'training' if other == 'train' else 'test'} split: "
                                        f"it has a {split}/ folder of class folders but no {other}/"):
        D.load_split(r, other)
    # The same in an archive: a lone test/ inside is not a wrapper to step into.
    arc = tar_folder(tmp_path / "data", tmp_path / "lone.tar.gz", ".")
    r = D.resolve_source(arc)
    assert r.split_folders and r.archive == arc and r.name == arc and len(D.load_split(r, split)) == len(ds)
    with pytest.raises(DataError, match=f"^{arc}: no "):
        D.load_split(r, other)


def test_a_class_called_test_is_still_a_class(cifar_small, tmp_path):
    # test/ holding photos, not class folders, is a class of its own.
    for c in ("bird", "test"):
        shutil.copytree(cifar_small / "test" / "bird", tmp_path / "data" / c)
    r = D.resolve_source(tmp_path / "data")
    assert not r.split_folders and D.load_split(r, "train").classes == ["bird", "test"]


@pytest.mark.parametrize("members, words", [
    ({"photos/a.jpg": "bird/0000.jpg", "photos/b.jpg": "bird/0001.jpg"}, "no class folders inside"),
    ({"bird/a.txt": None, "cat/b.txt": None}, "no images in its class folders (bird, cat) (found only 2 .txt)"),
])
def test_archive_without_class_folders_of_images_names_the_archive(cifar_small, tmp_path, members, words):
    arc = tmp_path / "mine.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        for name, src in members.items():
            path = cifar_small / "test" / src if src else tmp_path / "note"
            path.exists() or path.write_text("not an image")
            tar.add(path, arcname=name)
    with pytest.raises(DataError) as info:
        D.resolve_source(arc)
    assert str(info.value).startswith(f"{arc}: {words}") and "extracted" not in str(info.value)


def tar_folder(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return dest


@pytest.mark.parametrize("wrapped", [True, False])
def test_tar_of_class_folders_equals_the_folder(cifar_small, tmp_path, wrapped):
    # A .tar.gz with train/ and test/ inside (wrapped in one top folder, or not).
    arc = tar_folder(cifar_small, tmp_path / "small.tar.gz", "cifar_small" if wrapped else ".")
    for split in ("train", "test"):
        a, b = D.load_split(arc, split), D.load_split(cifar_small, split)
        assert a.classes == b.classes
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_tar_of_class_folders_without_splits(cifar_small, tmp_path):
    arc = tar_folder(cifar_small / "test", tmp_path / "flat.tar.gz", "flat")
    ds = D.load_split(arc, "train")
    assert len(ds) == 200 and ds.classes == sorted(CLASSES)
    assert np.array_equal(ds.images, D.load_split(cifar_small / "test", "train").images)


# ---------------------------------------------------------------- the official CIFAR-10 python format

def write_official_cifar(cifar_small: Path, root: Path, batch_transform=None) -> tuple[Path, dict]:
    """Write real CIFAR images in the official python format: cifar-10-batches-py/ with
    data_batch_1..5, test_batch (pickled dicts, bytes keys, data (N, 3072) uint8 as R, G, B planes)
    and batches.meta. Returns (folder, {split: (images NHWC, labels)})."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    rng = np.random.default_rng(0)
    for split, names, per_class in (("train", [f"data_batch_{i}" for i in range(1, 6)], 6),
                                    ("test", ["test_batch"], 4)):
        images, labels = [], []
        for b, name in enumerate(names):
            files = [(p, y) for y, c in enumerate(CLASSES)
                     for p in sorted((cifar_small / split / c).iterdir())[b * per_class:(b + 1) * per_class]]
            files = [files[i] for i in rng.permutation(len(files))]  # batches are shuffled, as the official ones
            arr = np.stack([load_for_model(p, 32) for p, _ in files])
            labs = [y for _, y in files]
            batch = {b"batch_label": f"{name} of the test archive".encode(), b"labels": labs,
                     b"data": arr.transpose(0, 3, 1, 2).reshape(len(arr), 3072),
                     b"filenames": [p.name.encode() for p, _ in files]}
            if batch_transform:
                batch = batch_transform(batch)
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
            images.append(arr)
            labels += labs
        expected[split] = (np.concatenate(images), np.array(labels))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, expected


@pytest.fixture(scope="module")
def official(cifar_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    folder, expected = write_official_cifar(cifar_small, root)
    archive = tar_folder(folder, root / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    return folder, archive, expected


@pytest.mark.parametrize("form", ["archive", "batches folder", "parent folder"])
def test_official_cifar_format(official, form):
    folder, archive, expected = official
    source = {"archive": archive, "batches folder": folder, "parent folder": folder.parent}[form]
    for split in ("train", "test"):
        ds = D.load_split(source, split)
        images, labels = expected[split]
        assert ds.classes == CLASSES  # the file's order (batches.meta), not sorted
        assert np.array_equal(ds.images, images) and np.array_equal(ds.labels, labels)
        assert ds.fingerprint.startswith("cifar10-python:") and ds.fingerprint.endswith(split)
    assert len(D.load_split(source, "train")) == 300 and len(D.load_split(source, "test")) == 40


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_training_data_from_the_official_format(official, form):
    # Training finds the official test split beside the training batches.
    source = official[1] if form == "archive" else official[0]
    mixed = prepare_data(TrainConfig(data=str(source), arch="tiny", val_size=30).resolved())
    train, val, [(_, test)] = mixed.train, mixed.val, mixed.tests
    assert (len(train), len(val), len(test)) == (270, 30, 40)
    assert train.classes == test.classes == CLASSES


def test_official_cifar_other_input_size(official):
    ds = D.load_split(official[1], "test", size=24)
    assert ds.images.shape == (40, 24, 24, 3) and ds.images.dtype == np.uint8


def test_official_cifar_missing_batch(official, tmp_path):
    shutil.copytree(official[0], tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        D.load_split(tmp_path, "train")
    assert len(D.load_split(tmp_path, "test")) == 40  # the test split is still readable


class RunsACommand:
    """Pickles as a call to os.system: what a malicious 'CIFAR batch' would contain."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_malicious_pickle_is_refused_not_executed(cifar_small, tmp_path, form):
    marker = tmp_path / "PWNED"
    folder, _ = write_official_cifar(cifar_small, tmp_path / "evil",
                                     batch_transform=lambda b: {**b, b"data": RunsACommand(marker)})
    source = tar_folder(folder, tmp_path / "evil.tar.gz", "cifar-10-batches-py") if form == "archive" else folder
    for split in ("train", "test"):
        with pytest.raises(DataError, match="refusing to load") as info:
            D.load_split(source, split)
        assert str(source) in str(info.value)
    assert not marker.exists()
    # Sanity: the payload is real (plain pickle would run it).
    pickle.loads(pickle.dumps(RunsACommand(marker)))
    assert marker.exists()


def test_corrupt_archives_are_refused(official, tmp_path):
    data = official[1].read_bytes()
    (tmp_path / "truncated.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.tar.gz"):
        D.load_split(tmp_path / "truncated.tar.gz", "train")
    (tmp_path / "notes.tar.gz").write_text("not an archive")
    with pytest.raises(DataError, match="notes.tar.gz: not a folder or a .tar"):
        D.load_split(tmp_path / "notes.tar.gz", "train")


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (p / "bird").mkdir(parents=True), "no images found"),
])
def test_missing_or_empty_sources(tmp_path, make, words):
    source = tmp_path / "data"
    make(source)
    with pytest.raises(DataError, match=words) as info:
        D.load_split(source, "train")
    assert str(source) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- download with checksum

def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_accepts_a_matching_file(official, tmp_path):
    src = official[1]
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    assert D.download(src.as_uri(), dest, md5(src)) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert not dest.with_name(dest.name + ".part").exists()
    # Already there and valid: kept, not downloaded again (even from a URL that no longer works).
    assert D.download((tmp_path / "gone.tar.gz").as_uri(), dest, md5(src)) == dest
    assert len(D.load_split(dest, "test")) == 40


def test_download_refuses_and_removes_a_mismatching_file(official, tmp_path):
    src = official[1]
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        D.download(src.as_uri(), dest, "0" * 32)
    assert "removed" in str(info.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_download_replaces_a_corrupt_earlier_download(official, tmp_path):
    src = official[1]
    dest = tmp_path / "cifar-10-python.tar.gz"
    dest.write_bytes(src.read_bytes()[:1000])  # an interrupted earlier download
    D.download(src.as_uri(), dest, md5(src))
    assert md5(dest) == md5(src)


def test_download_failure_is_a_clear_error(tmp_path):
    dest = tmp_path / "x.tar.gz"
    with pytest.raises(DataError, match="cannot download .*offline"):
        D.download((tmp_path / "nothing-here.tar.gz").as_uri(), dest, "0" * 32)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


# ---------------------------------------------------------------- the uint8 cache

def test_decoded_folders_are_cached(cifar_small, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    first = D.load_split(cifar_small, "test")
    cached = list((tmp_path / "cache" / "arrays").glob("*.npz"))
    assert len(cached) == 1
    second = D.load_split(cifar_small, "test")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert first.classes == second.classes and first.paths == second.paths
    assert first.fingerprint == second.fingerprint
    # The second load reads the cache instead of decoding: mark the cached pixels and see them.
    with np.load(cached[0]) as z:
        arrays = dict(z)
    arrays["images"] = np.zeros_like(arrays["images"])
    np.savez(cached[0], **arrays)
    assert D.load_split(cifar_small, "test").images.max() == 0
    # A damaged cache file is rebuilt from the images, never trusted.
    cached[0].write_bytes(b"garbage")
    assert np.array_equal(D.load_split(cifar_small, "test").images, first.images)


def test_cache_is_keyed_by_the_folder_listing(cifar_small, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    shutil.copytree(cifar_small / "test", folder)
    before = D.load_split(folder, "train")
    (folder / "bird" / "0000.jpg").unlink()  # the data changed: the cache must not be reused
    after = D.load_split(folder, "train")
    assert len(after) == len(before) - 1 and after.fingerprint != before.fingerprint
    assert len(list((tmp_path / "cache" / "arrays").glob("*.npz"))) == 2


def test_names_that_are_not_text_are_cached_exactly(cifar_small, tmp_path, monkeypatch):
    # A Latin-1 "été" on a UTF-8 system: Python holds it with lone surrogates, which UTF-8 cannot
    # encode (the cache key and the stored paths used to raise UnicodeEncodeError).
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    shutil.copytree(cifar_small / "test", folder)
    latin1 = folder / "bird" / os.fsdecode(b"\xe9t\xe9.jpg")
    (folder / "bird" / "0000.jpg").rename(latin1)
    first = D.load_split(folder, "train")
    second = D.load_split(folder, "train")  # from the cache
    assert len(list((tmp_path / "cache" / "arrays").glob("*.npz"))) == 1
    assert str(latin1) in first.paths and second.paths == first.paths and second.fingerprint == first.fingerprint
    assert np.array_equal(second.images[first.paths.index(str(latin1))], load_for_model(latin1, 32))


def test_files_that_are_not_images_are_counted_and_reported_once(cifar_small, tmp_path, capsys):
    for c in ("bird", "cat"):
        shutil.copytree(cifar_small / "test" / c, tmp_path / "data" / c)
    for name in ("bird/notes.txt", "cat/b.txt", "cat/clip.mov", "cat/.DS_Store"):
        (tmp_path / "data" / name).write_text("not an image")
    ds = D.load_split(tmp_path / "data", "train")
    assert len(ds) == 40 and str(ds.other) == "2 .txt, 1 .mov" and str(D.to_binary(ds, "bird").other) == str(ds.other)
    # A photo source is loaded again at another size (training crops): one line, not two.
    assert str(D.load_split(tmp_path / "data", "train", size=48).other) == "2 .txt, 1 .mov"
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: {tmp_path / 'data'}: passed over 3 files that are not images: 2 .txt, 1 .mov"]


def test_archive_member_that_cannot_be_extracted_is_reported_every_time(cifar_small, tmp_path):
    arc = tmp_path / "long.tar.gz"
    long = "x" * 300 + ".jpg"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(cifar_small / "test", arcname="data")
        info = tarfile.TarInfo(f"data/bird/{long}")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    for _ in range(2):  # extracted, then from the cache: the member is still reported
        ds = D.load_split(arc, "train")
        assert len(ds) == 200 and [str(f) for f in ds.skipped] == [
            f"{arc}: data/bird/{long}: cannot extract (File name too long)"]


def test_unsafe_archive_member_refuses_the_archive(cifar_small, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDCNN_CACHE", str(tmp_path / "cache"))
    arc = tmp_path / "evil.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(cifar_small / "test" / "bird", arcname="data/bird")
        info = tarfile.TarInfo("../../../evil.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError) as e:
        D.resolve_source(arc)
    assert str(e.value) == (f"{arc}: unsafe archive, not extracted: "
                            "member ../../../evil.jpg has a path leading out of the archive (..)")
    assert not (tmp_path / "evil.jpg").exists() and not any((tmp_path / "cache" / "extracted").iterdir())


# ---------------------------------------------------------------- bird vs not bird

def test_positive_class_makes_a_binary_problem(cifar_small):
    ds = D.load_split(cifar_small, "test")
    binary = D.to_binary(ds, "bird")
    assert binary.classes == ["not_bird", "bird"]
    bird = ds.classes.index("bird")
    assert np.array_equal(binary.labels, (ds.labels == bird).astype(np.int64))
    assert binary.labels.sum() == 20 and np.array_equal(binary.images, ds.images)
    assert D.to_binary(ds, "cat").classes == ["not_cat", "cat"]
    with pytest.raises(DataError, match="'eagle' is not among"):
        D.to_binary(ds, "eagle")


def test_extra_positive_images_are_merged(cifar_small, photos):
    ds = D.load_split(cifar_small, "test")
    merged = D.add_extra_positive(ds, photos / "bird", "bird")
    assert len(merged) == len(ds) + 10
    assert (merged.labels[len(ds):] == ds.classes.index("bird")).all()
    assert np.array_equal(merged.images[len(ds):][0], load_for_model(sorted((photos / "bird").iterdir())[0], 32))
    assert merged.fingerprint != ds.fingerprint and merged.fingerprint.startswith(ds.fingerprint)
    with pytest.raises(DataError, match="no such folder"):
        D.add_extra_positive(ds, photos / "nope", "bird")


def test_prepare_data_binary_with_extra_positive(cifar_small, photos):
    cfg = TrainConfig(data=str(cifar_small), arch="article", extra_positive=str(photos / "bird"),
                      val_size=100).resolved()
    assert cfg.classes == "binary"  # the article's recipe
    mixed = prepare_data(cfg)
    train, val, [(_, test)] = mixed.train, mixed.val, mixed.tests
    assert train.classes == val.classes == test.classes == ["not_bird", "bird"]
    assert len(train) == 500 + 10 and len(val) == 100 and len(test) == 200
    assert len(mixed.train_source) == len(train) and mixed.infos[-1].counts == {"bird": 10}
    plain_train = prepare_data(TrainConfig(data=str(cifar_small), arch="article", val_size=100).resolved()).train
    assert train.labels.sum() == plain_train.labels.sum() + 10  # the extras are birds, in training only
    assert test.labels.sum() == 20


def test_balanced_sampling_weights_draw_classes_equally(cifar_small):
    ds = D.to_binary(D.load_split(cifar_small, "train"), "bird")  # 60 birds, 540 others
    w = D.balanced_weights(ds.labels, 2)
    assert w.shape == (600,)
    assert np.isclose(w[ds.labels == 0].sum(), w[ds.labels == 1].sum())
    draws = torch.multinomial(torch.from_numpy(w), 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = ds.labels[draws.numpy()].mean()
    assert 0.47 < share < 0.53  # birds drawn half the time, not 10%
    # A class with no examples does not divide by zero.
    assert np.isfinite(D.balanced_weights(np.array([0, 0, 2]), 3)).all()


def test_negative_balance_evens_not_bird_classes_within_each_source(cifar_small):
    # Source 0: CIFAR's 60 birds and 540 others over 9 classes; source 1: 30 birds, 90 cats, 10 ants.
    cifar = D.load_split(cifar_small, "train")
    bird, cat, ant = cifar.classes.index("bird"), cifar.classes.index("cat"), 10
    labels = np.concatenate([cifar.labels, np.full(30, bird), np.full(90, cat), np.full(10, ant)])
    groups = np.concatenate([np.zeros(len(cifar), np.int64), np.ones(130, np.int64)])
    w = D.balanced_negative_weights(labels, groups, bird)
    assert np.all(w[labels == bird] == 1)  # birds keep their share
    for g in (0, 1):  # every source keeps its share
        assert np.isclose(w[groups == g].sum(), (groups == g).sum())
    second = groups == 1
    assert np.isclose(w[second & (labels == cat)].sum(), 50) and np.isclose(w[second & (labels == ant)].sum(), 50)
    # CIFAR's classes were already even, so its weights stay 1.
    assert np.allclose(w[groups == 0], 1)


def test_validation_split_is_fixed_and_disjoint():
    tr, val = D.split_validation(100, 10, seed=3)
    tr2, val2 = D.split_validation(100, 10, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(val, val2)
    assert len(val) == 10 and len(set(tr) | set(val)) == 100 and not set(tr) & set(val)
    assert not np.array_equal(val, D.split_validation(100, 10, seed=4)[1])
