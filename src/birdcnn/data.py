"""Labelled image data as in-memory uint8 arrays: CIFAR-10 (official archive) or class folders.

Sources (`--data`):
  * ``cifar10``: the official python archive, downloaded once into the cache and md5-verified.
  * a path to the official archive (``cifar-10-python.tar.gz``) or its extracted folder.
  * a folder of class-named sub-folders (``DIR/<class>/*.jpg``), with ``DIR/train`` and
    ``DIR/test`` splits when present (torchvision's ImageFolder layout), or a .tar/.tar.gz of one.

Decoded folders are cached as uint8 .npz files (keyed by the folder's listing), so a second
run does not decode 60,000 JPEGs again.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import sys
import tarfile
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

from .atomic import write_atomic
from .decode_workers import InProcessPool
from .errors import DataError, FileProblem, ImageError, display_path
from .images import OtherFiles, is_image_path, load_views

if TYPE_CHECKING:
    from .modelfile import Zoomed

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CACHE_VERSION = 1


@dataclass
class Dataset:
    """Images (N, H, W, 3 uint8) with integer labels into `classes`."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    fingerprint: str = ""
    paths: list[str] | None = None
    skipped: list[FileProblem] = field(default_factory=list)  # unreadable files (and folders)
    source_classes: list[str] | None = None  # the classes this data can hold, when fewer than `classes`
    other: OtherFiles = field(default_factory=OtherFiles)  # files passed over as not images, by suffix

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "Dataset":
        paths = [self.paths[i] for i in idx] if self.paths is not None else None
        return Dataset(self.images[idx], self.labels[idx], self.classes, self.fingerprint, paths)


def cache_dir() -> Path:
    root = (os.environ.get("BIRDCNN_CACHE")
            or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "birdcnn"))
    return Path(root)


# ---------------------------------------------------------------- CIFAR-10 official archive

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (what CIFAR batches hold), never code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _safe_unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any failure means a bad file
        raise DataError(f"{name}: not a valid CIFAR-10 batch ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: not a valid CIFAR-10 batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_members(read: "callable", names: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for n in names:
        batch = _safe_unpickle(read(n), f"{where}:{n}")
        data = np.asarray(batch.get("data"), dtype=np.uint8)
        lab = np.asarray(batch.get("labels"), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DataError(f"{where}:{n}: unexpected CIFAR-10 batch shape {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _cifar_batch_names(split: str) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]


def _load_cifar_archive(path: Path, split: str) -> Dataset:
    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def read(n: str) -> bytes:
                if n not in members:
                    raise DataError(f"{path}: CIFAR-10 archive lacks {n}")
                return tar.extractfile(members[n]).read()

            classes = CIFAR10_CLASSES
            if "batches.meta" in members:
                classes = [c.decode() if isinstance(c, bytes) else str(c)
                           for c in _safe_unpickle(read("batches.meta"), f"{path}:batches.meta")["label_names"]]
            images, labels = _read_cifar_members(read, _cifar_batch_names(split), str(path))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated archive ({e})") from None
    return Dataset(images, labels, classes, fingerprint=f"cifar10-python:{_file_hash(path)[:16]}:{split}")


def _load_cifar_folder(folder: Path, split: str) -> Dataset:
    def read(n: str) -> bytes:
        p = folder / n
        if not p.is_file():
            raise DataError(f"{folder}: CIFAR-10 folder lacks {n}")
        return p.read_bytes()

    classes = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        classes = [c.decode() for c in _safe_unpickle(read("batches.meta"), f"{folder}/batches.meta")["label_names"]]
    images, labels = _read_cifar_members(read, _cifar_batch_names(split), str(folder))
    digest = hashlib.sha256(b"".join(read(n)[:4096] for n in _cifar_batch_names(split))).hexdigest()
    return Dataset(images, labels, classes, fingerprint=f"cifar10-python:{digest[:16]}:{split}")


def _file_hash(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str) -> Path:
    """Download `url` to `dest` via a .part file; a wrong checksum is removed, never used."""
    if dest.exists():
        if _file_hash(dest, "md5") == md5:
            return dest
        dest.unlink()  # a corrupt or partial earlier download
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DataError(f"cannot download {url} ({getattr(e, 'reason', e)}); offline? "
                        f"pass --data PATH to a local copy of the archive or a class-folder dataset") from None
    got = _file_hash(part, "md5")
    if got != md5:
        part.unlink()
        raise DataError(f"{url}: checksum mismatch (md5 {got}, expected {md5}); the download was removed")
    part.replace(dest)
    return dest


# ---------------------------------------------------------------- class folders

def class_names(*roots: Path) -> list[str]:
    return sorted({d.name for r in roots for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")})


class _LinkToNothing(type(Path())):
    """A listed image that is a link to nothing (dangling, or a loop of links). It stays listed so
    that decoding skips and reports it like any unreadable image; `stat` describes the link itself,
    so listing it cannot fail, and fixing the link changes the listing (the cache key)."""

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return super().stat(follow_symlinks=False)


def _walk_files(folder: str | Path, unreadable: list[FileProblem] | None = None) -> Iterator[os.DirEntry]:
    """The files under `folder` in os.walk's order (a folder's files by name, then its sub-folders
    by name), links to folders not followed, as os.walk does; the entries tell links apart for free.
    A folder that cannot be read (no permission, a path over the system's limit) is passed over,
    as os.walk does, and added to `unreadable`."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        if unreadable is not None:
            unreadable.append(FileProblem(os.fspath(folder), f"cannot read folder ({e.strerror or e})"))
        return
    subfolders = []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            yield e
        elif not e.is_symlink():
            subfolders.append(e.path)
    for sub in subfolders:
        yield from _walk_files(sub, unreadable)


class ClassFolderListing(NamedTuple):
    classes: list[str]
    files: list[tuple[Path, int]]  # (image file, class index); links to nothing included: decoding reports them
    other: OtherFiles              # files passed over as not images, by suffix: str() is the one-line report
    unreadable: list[FileProblem]  # folders that could not be read: to report as skipped


def scan_class_folder(root: Path, classes: list[str] | None = None) -> ClassFolderListing:
    """The image files of each class folder under `root` (recursively), and the other files counted."""
    classes = classes or class_names(root)
    files: list[tuple[Path, int]] = []
    other, unreadable = OtherFiles(), []
    for i, c in enumerate(classes):
        for e in _walk_files(root / c, unreadable):
            if not is_image_path(e.name):
                if not e.name.startswith("."):  # .DS_Store and the like: hidden, so not reported
                    other.add(e.name)
            elif e.is_symlink() and not os.path.exists(e.path):
                files.append((_LinkToNothing(e.path), i))
            else:
                files.append((Path(e.path), i))
    return ClassFolderListing(classes, files, other, unreadable)


def list_class_folder(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, image files with class indices) of `root`: `scan_class_folder` without the counts."""
    listing = scan_class_folder(root, classes)
    return listing.classes, listing.files


def _decode_one(args: tuple[str, int, int | None]) -> tuple[np.ndarray, np.ndarray | None] | FileProblem:
    path, size, zoom_size = args
    try:
        return load_views(path, size, zoom_size)
    except ImageError as e:
        return FileProblem(e.path, e.problem)


class Decoded(NamedTuple):
    images: np.ndarray             # (N, size, size, 3) uint8, the readable files in order
    ok: list[int]                  # their indices in the paths given
    problems: list[FileProblem]    # the unreadable ones
    zoomed: Zoomed | None = None  # the photos' zoom views (indices into images), with a zoom_size


def decode_views(paths: list[Path], size: int, zoom_size: int | None = None, workers: int | None = None,
                 desc: str = "decoding") -> Decoded:
    """Decode image files in parallel into the model's views (`images.load_views`): each file is
    decoded once, also into its zoom view when it is a photo and `zoom_size` is given."""
    from tqdm import tqdm

    from .modelfile import stack_zoomed

    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(str(p), size, zoom_size) for p in paths]
    out = np.empty((len(paths), size, size, 3), np.uint8)
    ok, problems, zooms = [], [], []
    show = len(paths) > 2000
    with ProcessPoolExecutor(workers) if len(paths) > 500 and workers > 1 else InProcessPool() as ex:
        results = ex.map(_decode_one, jobs, chunksize=256)
        for i, r in enumerate(tqdm(results, total=len(jobs), desc=desc, disable=not show, unit="img")):
            if isinstance(r, FileProblem):
                problems.append(r)
            else:
                out[len(ok)], zoom = r
                zooms.append(zoom)
                ok.append(i)
    return Decoded(out[: len(ok)], ok, problems, stack_zoomed(zooms))


def decode_files(paths: list[Path], size: int, workers: int | None = None,
                 desc: str = "decoding") -> tuple[np.ndarray, list[int], list[FileProblem]]:
    """Decode image files in parallel to (N, size, size, 3) uint8; returns (images, ok_indices, problems)."""
    images, ok, problems, _ = decode_views(paths, size, None, workers, desc)
    return images, ok, problems


def _load_class_folder(root: Path, classes: list[str] | None, size: int) -> Dataset:
    found, files, other, unreadable = scan_class_folder(root, classes)
    if not files:
        raise DataError(f"{root}: no images found (expected class sub-folders such as {root}/bird/*.jpg)")
    listing = "\n".join(f"{p.relative_to(root)}\t{p.stat().st_size}\t{p.stat().st_mtime_ns}\t{y}" for p, y in files)
    # os.fsencode, not .encode(): a name that is not UTF-8 (Latin-1 "été") holds lone surrogates
    # that only surrogateescape turns back into its bytes. UTF-8 names give the same bytes either way.
    key = hashlib.sha256(os.fsencode(f"v{_CACHE_VERSION}\n{root.resolve()}\n{size}\n{listing}")).hexdigest()[:24]
    fingerprint = f"folder:{hashlib.sha256(os.fsencode(listing)).hexdigest()[:16]}"
    cached = cache_dir() / "arrays" / f"{key}.npz"
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as z:
                # Paths are stored as the file system's bytes (older caches: text); fsdecode takes both.
                # A cache without skipped_path/skipped_problem (written before they were kept apart:
                # "path: problem" text cannot be split back, a path may hold ": ") is rebuilt below.
                pairs = zip(z["skipped_path"], z["skipped_problem"], strict=True)
                skipped = [FileProblem(os.fsdecode(p), str(m)) for p, m in pairs]
                return Dataset(z["images"], z["labels"], [str(c) for c in z["classes"]], fingerprint,
                               [str(os.fsdecode(p)) for p in z["paths"]], skipped + unreadable, other=other)
        except Exception:  # noqa: BLE001 - a damaged (or older) cache is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    images, ok, problems = decode_files([p for p, _ in files], size, desc=f"decoding {root.name}")
    if not ok:
        raise DataError(f"{root}: none of the {len(files)} image files could be read (first: {problems[0]})")
    # (unreadable folders are not in the listing, so not in the cache: reported on every load)
    labels = np.array([files[i][1] for i in ok], dtype=np.int64)
    paths = [str(files[i][0]) for i in ok]
    ds = Dataset(images, labels, found, fingerprint, paths, problems + unreadable, other=other)
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Paths as bytes: exactly the names on disk, whatever their encoding. `skipped` ("path: problem"
    # text) is what an older birdcnn reads; this one reads the two fields apart.
    write_atomic(cached, lambda tmp: np.savez(tmp, images=images, labels=labels, classes=np.array(found),
                                              paths=np.array([os.fsencode(p) for p in paths], dtype=bytes),
                                              skipped=np.array([str(f) for f in problems], dtype=str),
                                              skipped_path=np.array([os.fsencode(f.path) for f in problems],
                                                                    dtype=bytes),
                                              skipped_problem=np.array([f.problem for f in problems], dtype=str)))
    return ds


# Archive members refused by tarfile's 'data' filter, as people would say it. Any of them refuses
# the whole archive: it was not made as a folder of photos.
_UNSAFE_MEMBERS = {
    tarfile.AbsolutePathError: "has an absolute path",
    tarfile.OutsideDestinationError: "has a path leading out of the archive (..)",
    tarfile.AbsoluteLinkError: "is a link to an absolute path",
    tarfile.LinkOutsideDestinationError: "is a link leading out of the archive",
    tarfile.SpecialFileError: "is a device or other special file",
}
# Errors that belong to one member's name (too long for this file system, a file where a folder
# was): that member is left out and reported as an unreadable image; the others are extracted.
_MEMBER_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EEXIST, errno.ENOTDIR, errno.EISDIR}
_UNEXTRACTED = ".unextracted.json"  # beside .complete: the members left out, reported on every run


def _extract_members(tar: tarfile.TarFile, path: Path, into: Path) -> list[tuple[str, str]]:
    """Extract every member of `tar` (the user's archive `path`) under `into`; returns the
    (member name, problem) of those left out. Nothing is ever written outside `into`."""
    left_out = []
    for m in tar:
        # The filter would strip a leading "/" and extract the member anyway: refused like "..".
        why = _UNSAFE_MEMBERS[tarfile.AbsolutePathError] if m.name.startswith("/") else None
        try:
            if why is None:
                tar.extract(m, into, set_attrs=not m.isdir(), filter="data")
        except tarfile.FilterError as e:
            why = _UNSAFE_MEMBERS.get(type(e), f"is refused ({e})")
        except OSError as e:
            if e.errno not in _MEMBER_ERRNOS:
                raise
            left_out.append((m.name, f"cannot extract ({e.strerror or e})"))
        if why is not None:
            raise DataError(f"{display_path(path)}: unsafe archive, not extracted: member {display_path(m.name)} {why}")
    return left_out


def _extract_archive(path: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Extract a tar of class folders once into the cache (keyed by content hash); returns the
    folder and the (member name, problem) of members that could not be extracted."""
    import shutil

    digest = _file_hash(path)[:24]
    dest = cache_dir() / "extracted" / digest
    if (dest / ".complete").exists():
        try:
            return dest, [(str(n), str(p)) for n, p in json.loads((dest / _UNEXTRACTED).read_text())]
        except (OSError, ValueError, TypeError):
            return dest, []  # none left out (or extracted by an older version)
    tmp = dest.with_name(digest + f".{os.getpid()}.tmp")
    try:
        with tarfile.open(path) as tar:
            left_out = _extract_members(tar, path, tmp)
    except DataError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{display_path(path)}: corrupt or truncated archive ({e})") from None
    tmp.mkdir(parents=True, exist_ok=True)  # an archive of nothing: _check_extracted says so
    if left_out:  # json's \udcxx escapes keep names that are not UTF-8 exactly
        (tmp / _UNEXTRACTED).write_text(json.dumps(left_out))
    (tmp / ".complete").touch()
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest, left_out


def _folder_root(folder: Path) -> Path:
    """An extracted archive often wraps everything in one top folder: step into it (not into a
    lone train/ or test/ split: that is the data's layout, not a wrapper)."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in SPLITS:
        return entries[0]
    return folder


def _is_cifar_folder(folder: Path) -> Path | None:
    for cand in (folder, folder / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


CIFAR_BATCH_FILES = ("data_batch_", "test_batch", "batches.meta", "readme.html")  # the official archive


SPLITS = ("train", "test")


def _has_split_folders(folder: Path) -> bool:
    """Whether `folder` holds train/ and/or test/ folders of class folders (ImageFolder's layout),
    rather than class folders one of which happens to be called "test"."""
    return any((folder / s).is_dir() and class_names(folder / s) for s in SPLITS)


@dataclass(frozen=True)
class ResolvedSource:
    """What a `--data` source is, found without decoding an image (shared by train and evaluate)."""

    kind: str                    # "cifar-archive", "cifar-folder" or "class-folders"
    path: Path                   # the archive, the folder of CIFAR batches, or the folder of class folders
    split_folders: bool = False  # class folders in train/ and/or test/ sub-folders
    archive: Path | None = None  # the user's archive that `path` was extracted from (into the cache)
    # Archive members that could not be extracted: (where in the cache it would be, the archive and
    # "member: problem").
    unextracted: tuple[tuple[Path, FileProblem], ...] = ()

    @property
    def name(self) -> Path:
        """The source as the user knows it, for messages: the archive, not its copy in the cache."""
        return self.archive or self.path

    @property
    def has_test_split(self) -> bool:
        return self.kind != "class-folders" or (self.split_folders and (self.path / "test").is_dir())

    def class_folder(self, split: str) -> tuple[Path, list[str]]:
        """(folder of class folders for `split`, class names); both splits share one class list,
        so a class missing from test/ cannot shift the labels."""
        if not self.split_folders:
            return self.path, class_names(self.path)
        present = [s for s in SPLITS if (self.path / s).is_dir()]
        if split not in present:
            other = present[0]
            hint = ("training needs train/<class>/ folders of images beside it" if split == "train"
                    else "to measure on the training images, give its train/ folder as the data")
            raise DataError(f"{self.name}: no {'training' if split == 'train' else 'test'} split: "
                            f"it has a {other}/ folder of class folders but no {split}/ ({hint})")
        return self.path / split, class_names(*(self.path / s for s in present))

    def unextracted_under(self, root: Path) -> list[FileProblem]:
        """The problems of the archive members that would lie under `root` (a split's folder),
        to be reported with that split's unreadable images."""
        return [problem for where, problem in self.unextracted if where.is_relative_to(root)]


def _check_extracted(r: ResolvedSource) -> None:
    """An archive without class folders of images is refused naming the archive, not the copy
    extracted into the cache (stops at the first image: a big archive costs one folder read)."""
    roots = [r.path / s for s in SPLITS if (r.path / s).is_dir()] if r.split_folders else [r.path]
    classes = [root / c for root in roots for c in class_names(root)]
    if not classes:
        raise DataError(f"{r.name}: no class folders inside (expected e.g. bird/*.jpg and not_bird/*.jpg, "
                        f"or train/ and test/ folders holding them)")
    other = OtherFiles()
    for folder in classes:
        for e in _walk_files(folder):
            if is_image_path(e.name):
                return
            if not e.name.startswith("."):
                other.add(e.name)
    found = f" (found only {other})" if other else ""
    raise DataError(f"{r.name}: no images in its class folders ({', '.join(sorted({c.name for c in classes}))}){found}")


def resolve_source(source: str | Path | ResolvedSource) -> ResolvedSource:
    """Find what `source` is: ``cifar10`` (downloaded), a CIFAR archive or folder, or class folders
    (a folder or a .tar/.tar.gz of one, extracted once into the cache)."""
    if isinstance(source, ResolvedSource):
        return source
    if str(source) == "cifar10":
        return ResolvedSource("cifar-archive",
                              download(CIFAR10_URL, cache_dir() / "cifar-10-python.tar.gz", CIFAR10_MD5))
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (use 'cifar10' to download CIFAR-10)")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path}: not a folder or a .tar/.tar.gz archive")
        try:
            with tarfile.open(path) as tar:
                # The first file tells: listing all 60,000 names of a JPEG tar would take seconds.
                first = next((m for m in tar if m.isfile()), None)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated archive ({e})") from None
        if first is not None and Path(first.name).name.startswith(CIFAR_BATCH_FILES):
            return ResolvedSource("cifar-archive", path)
        archive, (extracted, left_out) = path, _extract_archive(path)
        path = _folder_root(extracted)
        unextracted = tuple((extracted / name, FileProblem(str(archive), f"{display_path(name)}: {problem}"))
                            for name, problem in left_out)
    else:
        archive, unextracted = None, ()
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    if (cifar := _is_cifar_folder(path)) is not None:
        return ResolvedSource("cifar-folder", cifar)
    r = ResolvedSource("class-folders", path, _has_split_folders(path), archive, unextracted)
    if archive is not None:
        _check_extracted(r)
    return r


def load_split(source: str | Path | ResolvedSource, split: str = "train", size: int = 32) -> Dataset:
    """Load `split` ("train" or "test") of a data source as a `Dataset` of size x size images.

    A class folder without train/ and test/ sub-folders is used whole for either split.
    """
    if split not in ("train", "test"):
        raise ValueError(split)
    r = resolve_source(source)
    if r.kind == "cifar-archive":
        return _check_size(_load_cifar_archive(r.path, split), size)
    if r.kind == "cifar-folder":
        return _check_size(_load_cifar_folder(r.path, split), size)
    root, classes = r.class_folder(split)
    ds = _load_class_folder(root, classes, size)
    ds.skipped += r.unextracted_under(root)
    if ds.other and root not in _told_other:
        # Once per folder: a photo source is loaded twice (at the model's size and for crops).
        _told_other.add(root)
        where = display_path(r.name) + (f" ({split}/)" if r.split_folders else "")
        print(f"warning: {where}: passed over {len(ds.other)} files that are not images: {ds.other}", file=sys.stderr)
    return ds


_told_other: set[Path] = set()  # class folders whose non-image files were reported (see load_split)


def _check_size(ds: Dataset, size: int) -> Dataset:
    if ds.images.shape[1] != size:
        import torch
        import torch.nn.functional as F
        x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        ds.images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return ds


# ---------------------------------------------------------------- turning labels into "bird or not"

def to_binary(ds: Dataset, positive: str) -> Dataset:
    """Relabel as [not_<positive>, <positive>]."""
    if positive not in ds.classes:
        raise DataError(f"positive class {positive!r} is not among the data's classes: {', '.join(ds.classes)}")
    pos = ds.classes.index(positive)
    labels = (ds.labels == pos).astype(np.int64)
    return Dataset(ds.images, labels, [f"not_{positive}", positive], ds.fingerprint + f":binary-{positive}", ds.paths,
                   ds.skipped, other=ds.other)


def add_extra_positive(ds: Dataset, folder: str | Path, positive: str) -> Dataset:
    """Merge every image under `folder` (recursively) in as the positive class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (--extra-positive)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
    if not files:
        raise DataError(f"{folder}: no images found (--extra-positive)")
    size = ds.images.shape[1]
    images, ok, problems = decode_files(files, size, desc=f"decoding {folder.name}")
    pos = ds.classes.index(positive)
    paths = (ds.paths or [""] * len(ds)) + [str(files[i]) for i in ok]
    digest = hashlib.sha256(os.fsencode("\n".join(str(files[i]) for i in ok))).hexdigest()[:12]  # fsencode: any name
    return Dataset(np.concatenate([ds.images, images]), np.concatenate([ds.labels, np.full(len(ok), pos, np.int64)]),
                   ds.classes, ds.fingerprint + f"+extra:{digest}", paths, ds.skipped + problems)


def balanced_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-sample weights that make every class equally likely to be drawn."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return 1.0 / np.maximum(counts, 1)[labels]


def balanced_negative_weights(labels: np.ndarray, groups: np.ndarray, positive: int) -> np.ndarray:
    """Per-sample weights that, within each group (a --data source), draw every class but `positive`
    equally often, while each group's not-positive images keep their total share and positive images
    keep theirs: an open-world test has one photo per kind of thing, not a source's few big classes."""
    w = np.ones(len(labels), np.float64)
    for g in np.unique(groups):
        neg = (groups == g) & (labels != positive)
        if not neg.any():
            continue
        classes, inverse, counts = np.unique(labels[neg], return_inverse=True, return_counts=True)
        w[neg] = neg.sum() / len(classes) / counts[inverse]
    return w


def split_validation(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random (train, val) index split; the validation part chooses threshold and temperature."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def describe(ds: Dataset) -> str:
    counts = np.bincount(ds.labels, minlength=len(ds.classes))
    return json.dumps({c: int(k) for c, k in zip(ds.classes, counts)})
