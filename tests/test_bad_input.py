"""A corpus of bad input, one row per case: the real command in a fresh process, made to fail
(or, for file names that are not text, to succeed) on input users really have.

Every row expects its exit code, exactly one stderr line naming the file or field (none when
the command succeeds), no traceback, valid UTF-8 on both streams (no raw bytes, no lone
surrogates in JSON), and, where a good file sits beside the bad one, the good file's result.
"""
from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import birdcnn
from birdcnn.cli import main
from birdcnn.devices import check_device
from birdcnn.errors import BirdcnnError
from birdcnn.images import HEIF_PLUGIN as HEIF  # the optional birdcnn[heif]: its opener is registered now
from birdcnn.modelfile import default_model_path, read_metadata, save_model
from birdcnn.models import build

LATIN1 = os.fsdecode(b"\xe9t\xe9.jpg")         # "été" in Latin-1: not text on a UTF-8 system
LATIN1_SHOWN = r"$'\xe9t\xe9.jpg'"              # how every command shows it (bash's quoting)
MISSING_LATIN1 = os.fsdecode(b"\xe9-missing.jpg")
BAD_LATIN1 = os.fsdecode(b"\xe9-bad.jpg")       # not an image, and its name not text
LONG = "x" * 300 + ".jpg"                       # over the 255-byte name limit


def photo(tmp: Path, photos: Path, name: str = "good.jpg") -> str:
    """A small real bird photo (fast to locate and explain), saved as `name` in `tmp`."""
    with Image.open(photos / "bird" / "partridge.jpg") as im:
        im.convert("RGB").resize((192, 128), Image.Resampling.BICUBIC).save(tmp / name, quality=90)
    return name


def model(tmp: Path, **changes) -> str:
    """A copy of the shipped model with its metadata changed; returns the folder to pass as --model."""
    src = default_model_path()
    (tmp / "model").mkdir()
    shutil.copy(src.with_suffix(".safetensors"), tmp / "model" / "model.safetensors")
    meta = {**json.loads(src.read_text()), **changes}
    (tmp / "model" / "model.json").write_text(json.dumps(meta))
    return "model"


def empty_folder(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return name


def classes(tmp: Path, photos: Path, name: str = "data", suffix: str = ".jpg", per_class: int = 4) -> str:
    """`name`/bird and `name`/not_bird holding real photos reduced to 32 px (quick to train on),
    saved as `suffix` (by content: a ".heic" without pillow-heif to write it holds a JPEG)."""
    for c in ("bird", "not_bird"):
        (tmp / name / c).mkdir(parents=True)
        for f in sorted((photos / c).glob("*.jpg"))[:per_class]:
            with Image.open(f) as im:
                small = im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
            out = tmp / name / c / (f.stem + suffix)
            small.save(out, format="JPEG" if suffix == ".heic" and not HEIF else None)
    return name


def one_split(tmp: Path, photos: Path, split: str) -> str:
    """data/`split`/bird and data/`split`/not_bird only: the other split is missing."""
    classes(tmp, photos, f"data/{split}")
    return "data"


def with_link(tmp: Path, photos: Path, target: str) -> str:
    """Class folders with data/bird/bad.jpg a symbolic link to `target` (missing, or itself: a loop)."""
    classes(tmp, photos)
    (tmp / "data" / "bird" / "bad.jpg").symlink_to(target)
    return "data"


def latin1_classes(tmp: Path, photos: Path) -> str:
    """Class folders with, besides 8 good photos, a good one and a broken one named in Latin-1."""
    classes(tmp, photos)
    shutil.copy(photos / "bird" / "partridge.jpg", tmp / "data" / "bird" / LATIN1)
    (tmp / "data" / "not_bird" / BAD_LATIN1).write_bytes(b"not a photo")
    return "data"


def long_link(tmp: Path, photos: Path) -> str:
    """Class folders with data/bird/long.jpg a link to a name over the 255-byte limit: how a folder
    lists a name that long (no file system here stores one)."""
    classes(tmp, photos)
    (tmp / "data" / "bird" / "long.jpg").symlink_to(LONG)
    return "data"


def deep_folder(tmp: Path, photos: Path) -> str:
    """Class folders with, in data/bird, folders nested past the 4096-byte limit on a path: each
    name is fine, the deepest cannot be opened by its path (made one level at a time, by handle)."""
    classes(tmp, photos)
    fd = os.open(tmp / "data" / "bird", os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            fd, parent = os.open("d" * 250, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)
    return "data"


OTHER = ".mov" if HEIF else ".heic"  # a suffix that is not an image here


def with_other_files(tmp: Path, photos: Path) -> str:
    """Class folders with 2 .txt files and a video or an iPhone photo beside the images."""
    classes(tmp, photos)
    for name in ("bird/notes.txt", "not_bird/list.txt", f"bird/IMG_0001{OTHER}"):
        (tmp / "data" / name).write_bytes(b"x")
    return "data"


def tar_member(name: str, data: bytes = b"", link: str | None = None,
               kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    """A file member holding `data`, or with `link` a symbolic (or `kind`: hard) link."""
    info = tarfile.TarInfo(name)
    if link is None:
        info.size = len(data)
    else:
        info.type, info.linkname = kind, link
    return info, data


def one_class(tmp: Path, photos: Path) -> str:
    """A folder of class folders holding birds only."""
    classes(tmp, photos)
    shutil.rmtree(tmp / "data" / "not_bird")
    return "data"


def class_archive(tmp: Path, photos: Path, name: str, extra: list[tuple[tarfile.TarInfo, bytes]]) -> str:
    """`name`: a .tar.gz of class folders (data/bird, data/not_bird: `classes`), then `extra` members."""
    classes(tmp, photos, "src")
    with tarfile.open(tmp / name, "w:gz") as tar:
        tar.add(tmp / "src", arcname="data")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data))
    shutil.rmtree(tmp / "src")
    return name


def archive(tmp: Path, name: str, files: dict[str, bytes]) -> str:
    with tarfile.open(tmp / name, "w:gz") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return name


TRAIN = ["--arch", "tiny", "--epochs", "0.5", "--batch-size", "4", "--val-size", "2", "--out", "run"]  # seconds
# A device this machine lacks: plain CUDA on a CPU-only machine, else one past the last GPU.
NO_DEVICE = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
# Impossible numbers for `train`: (option, value, what the option must be).
BAD_NUMBERS = [
    ("--lr", "-1", "a number above 0"), ("--lr", "nan", "a number above 0"), ("--epochs", "0", "a number above 0"),
    ("--epochs", "inf", "a number above 0"), ("--batch-size", "0", "a whole number above 0"),
    ("--label-smoothing", "1", "a number in [0, 1)"), ("--val-size", "-5", "a whole number above 0"),
    ("--target-precision", "0", "a number in (0, 1]"), ("--target-precision", "1.5", "a number in (0, 1]"),
    ("--blur-p", "-0.1", "a number in [0, 1]"), ("--shift", "-1", "a whole number 0 or more"),
    ("--rotate", "-1", "a number 0 or more"), ("--blur", "-1", "a number 0 or more"),
    ("--source-weights", "-2", "a number above 0"),
]


@dataclass(frozen=True)
class Case:
    make: Callable[[Path, Path], list[str]]   # (tmp_path, photos) -> the command's arguments; makes the input
    code: int
    error: str | None                         # what the one stderr line contains; None: stderr is empty
    output: str | None = None                 # what stdout contains: the good file's result
    writes: str | None = None                 # a file the command must have written, in tmp_path
    log: str | None = None                    # the command logs progress on stderr, which holds this; `error`
                                              # is then one line of it (None: no line holds an error or warning)
    page: tuple[str, ...] = ()                # what the file in `writes` holds


CASES = {
    # 1: file names that are not text in the file system's encoding
    "1 predict --json: name not UTF-8": Case(
        lambda t, p: ["predict", photo(t, p, LATIN1), MISSING_LATIN1, "--json"],
        1, r"$'\xe9-missing.jpg': no such file", output=json.dumps(LATIN1_SHOWN)),
    "1 locate: name not UTF-8": Case(
        lambda t, p: ["locate", photo(t, p, LATIN1), "--out", "heat.png", "--scales", "0.5", "--stride", "0.5"],
        0, None, output=f"{LATIN1_SHOWN} (192x128)", writes="heat.png"),
    "1 explain: name not UTF-8": Case(
        lambda t, p: ["explain", photo(t, p, LATIN1), "--out", "explained"],
        0, None, output=f"{LATIN1_SHOWN}: ", writes="explained/explain.png"),
    "1 augment-preview: name not UTF-8": Case(
        lambda t, p: ["augment-preview", photo(t, p, LATIN1), "--n", "2", "--out", "aug.png"],
        0, None, output="wrote aug.png", writes="aug.png"),
    # ... in training and evaluation folders (the decoded-array cache keys and stores such names),
    # and on search's contact sheet; the broken one is named as bash quotes it
    "1 train: names not UTF-8": Case(
        lambda t, p: ["train", "--data", latin1_classes(t, p), *TRAIN], 0,
        r"$'data/not_bird/\xe9-bad.jpg': not an image", log="data: 7 training images", writes="run/model.json"),
    "1 evaluate: names not UTF-8": Case(
        lambda t, p: ["evaluate", "--data", latin1_classes(t, p), "--json", "--out", "ev"], 1,
        r"$'data/not_bird/\xe9-bad.jpg': not an image", output='"n": 9'),
    "1 search --html: names not UTF-8": Case(
        lambda t, p: ["search", latin1_classes(t, p), "--html", "b.html", "--min-probability", "0"], 1,
        r"$'data/not_bird/\xe9-bad.jpg': not an image", log="9 show a bird", output=r"$'data/bird/\xe9t\xe9.jpg'",
        writes="b.html", page=(html.escape(LATIN1_SHOWN), "/data/bird/%E9t%E9.jpg", "1 unreadable")),
    # 2: a name too long for the file system is that file's error, not the batch's
    "2 predict: name too long": Case(
        lambda t, p: ["predict", LONG, photo(t, p)], 1, f"{LONG}: cannot read", output="good.jpg: "),
    "2 locate: name too long": Case(lambda t, p: ["locate", LONG, "--out", "heat.png"], 2, f"{LONG}: cannot read"),
    "2 predict --model: name too long": Case(
        lambda t, p: ["predict", photo(t, p), "--model", "m" * 300 + ".json"], 2, "m" * 300 + ".json: cannot read"),
    # ... in a training or evaluation folder (through a link), or as an archive member: that one
    # file is reported, the others used, and the summaries count it
    "2 train: name too long in the folder": Case(
        lambda t, p: ["train", "--data", long_link(t, p), *TRAIN], 0,
        "data/bird/long.jpg: cannot read (File name too long)", log="data: 6 training images", writes="run/model.json"),
    "2 evaluate: name too long in the folder": Case(
        lambda t, p: ["evaluate", "--data", long_link(t, p), "--json", "--out", "ev"], 1,
        "data/bird/long.jpg: cannot read (File name too long)", output='"n": 8'),
    "2 search: name too long in the folder": Case(
        lambda t, p: ["search", long_link(t, p)], 1, "data/bird/long.jpg: cannot read (File name too long)",
        log="1 unreadable"),
    "2 train: path too long": Case(
        lambda t, p: ["train", "--data", deep_folder(t, p), *TRAIN], 0,
        "cannot read folder (File name too long)", log="data: 6 training images", writes="run/model.json"),
    "2 evaluate: path too long": Case(
        lambda t, p: ["evaluate", "--data", deep_folder(t, p), "--json", "--out", "ev"], 1,
        "cannot read folder (File name too long)", output='"n": 8'),
    "2 search: path too long": Case(
        lambda t, p: ["search", deep_folder(t, p)], 1, "cannot read folder (File name too long)",
        log="0 unreadable, 1 unreadable folder"),
    "2 train: archive member's name too long": Case(
        lambda t, p: ["train", "--data", class_archive(t, p, "long.tar.gz", [tar_member(f"data/bird/{LONG}", b"x")]),
                      *TRAIN], 0,
        f"long.tar.gz: data/bird/{LONG}: cannot extract (File name too long)", log="data: 6 training images",
        writes="run/model.json"),
    "2 evaluate: archive member's name too long": Case(
        lambda t, p: ["evaluate", "--data", class_archive(t, p, "long.tar.gz", [tar_member(f"data/bird/{LONG}", b"x")]),
                      "--json", "--out", "ev"], 1,
        f"long.tar.gz: data/bird/{LONG}: cannot extract (File name too long)", output='"n": 8'),
    # 4: a folder named like a photo, with nothing in it
    "4 predict: empty folder x.jpg": Case(
        lambda t, p: ["predict", empty_folder(t, "x.jpg"), photo(t, p)], 1, "x.jpg: folder holds no images",
        output="good.jpg: "),
    # 5: --out without a picture format
    "5 locate --out without suffix": Case(
        lambda t, p: ["locate", photo(t, p), "--out", "where"], 2, "where: --out must end in one of .jpeg, .jpg"),
    # 7, 8: model metadata of the wrong type, or impossible (the full list is test_bad_metadata below)
    "7 model input_size 0": Case(
        lambda t, p: ["predict", photo(t, p), "--model", model(t, input_size=0)], 2, "metadata 'input_size' must be"),
    "8 model temperature 0": Case(
        lambda t, p: ["predict", photo(t, p), "--model", model(t, temperature=0)], 2, "metadata 'temperature' must be"),
    # 3: links to nothing in a training folder are skipped and reported; the good files are used
    "3 train: dangling link": Case(
        lambda t, p: ["train", "--data", with_link(t, p, "gone.jpg"), *TRAIN], 0,
        "data/bird/bad.jpg: broken symbolic link", log="data: 6 training images", writes="run/model.json"),
    "3 train: link loop": Case(
        lambda t, p: ["train", "--data", with_link(t, p, "bad.jpg"), *TRAIN], 0,
        "data/bird/bad.jpg: symbolic link loop", log="data: 6 training images", writes="run/model.json"),
    "3 evaluate: dangling link": Case(
        lambda t, p: ["evaluate", "--data", with_link(t, p, "gone.jpg"), "--json", "--out", "ev"], 1,
        "data/bird/bad.jpg: broken symbolic link", output='"n": 8'),
    # 3: files that are not images are counted by type, as search counts them
    "3 train: files that are not images": Case(
        lambda t, p: ["train", "--data", with_other_files(t, p), *TRAIN], 0,
        f"warning: data: passed over 3 files that are not images: 2 .txt, 1 {OTHER}", log="data: 6 training images",
        writes="run/model.json"),
    "3 evaluate: files that are not images": Case(
        lambda t, p: ["evaluate", "--data", with_other_files(t, p), "--json", "--out", "ev"], 0,
        f"birdcnn evaluate: passed over 3 files that are not images: 2 .txt, 1 {OTHER}", output='"n": 8'),
    # 9: a single class is refused before training, with the reason, and no model is saved
    "9 train: one class only": Case(
        lambda t, p: ["train", "--data", one_class(t, p), *TRAIN], 2,
        "only one class ('bird'): a classifier needs at least two"),
    # 6: a device this machine lacks is refused before the data is looked at (--data does not exist)
    "6 train --device: not on this machine": Case(
        lambda t, p: ["train", "--data", "nope", "--device", NO_DEVICE], 2, f"--device {NO_DEVICE}: "),
    **{f"6 {cmd} --device: not on this machine": Case(
        lambda t, p, c=cmd: [c, *(["--data", "nope"] if c == "evaluate" else ["nope"]), "--device", NO_DEVICE], 2,
        f"birdcnn {cmd}: error: --device {NO_DEVICE}: ")
        for cmd in ("predict", "search", "locate", "explain", "evaluate")},
    # 10: impossible numbers are refused while parsing, naming the option, in one line (no usage block)
    **{f"10 train {opt} {value}": Case(
        lambda t, p, a=(opt, value): ["train", "--data", "nope", *a], 2,
        f"birdcnn train: error: argument {opt}: must be {words}, not {value}") for opt, value, words in BAD_NUMBERS},
    "10 train --source-weights: one of several": Case(
        lambda t, p: ["train", "--data", "a", "--data", "b", "--source-weights", "1", "0"], 2,
        "birdcnn train: error: argument --source-weights: must be a number above 0, not 0"),
    "10 evaluate --threshold 2": Case(
        lambda t, p: ["evaluate", "--data", "nope", "--threshold", "2"], 2,
        "birdcnn evaluate: error: argument --threshold: must be between 0 and 1, not 2.0"),
    "10 train: an option it does not have": Case(
        lambda t, p: ["train", "--data", "nope", "--lr-decay", "3"], 2,
        "birdcnn train: error: unrecognized arguments: --lr-decay 3"),
    # 12: train/ and test/ each work alone (ImageFolder's layout), and a missing split is named
    "12 evaluate: only a test/ split": Case(
        lambda t, p: ["evaluate", "--data", one_split(t, p, "test"), "--json", "--out", "ev"], 0, None,
        output='"split": "test"'),
    "12 train: only a test/ split": Case(
        lambda t, p: ["train", "--data", one_split(t, p, "test")], 2,
        "data: no training split: it has a test/ folder of class folders but no train/"),
    "12 evaluate: only a train/ split": Case(
        lambda t, p: ["evaluate", "--data", one_split(t, p, "train")], 2,
        "data: no test split: it has a train/ folder of class folders but no test/"),
    "12 train: only a train/ split": Case(
        lambda t, p: ["train", "--data", one_split(t, p, "train"), *TRAIN], 0, None,
        log="data: 6 training images", writes="run/model.json"),
    # 13: any format Pillow reads, whatever its suffix says
    "13 evaluate: .ppm photos": Case(
        lambda t, p: ["evaluate", "--data", classes(t, p, suffix=".ppm"), "--json", "--out", "ev"], 0, None,
        output='"n": 8'),
    "13 search: .ppm photos": Case(
        lambda t, p: ["search", classes(t, p, suffix=".ppm")], 0, None, log="8 photos scanned"),
    **({"13 evaluate: .heic photos (pillow-heif)": Case(
        lambda t, p: ["evaluate", "--data", classes(t, p, suffix=".heic"), "--json", "--out", "ev"], 0, None,
        output='"n": 8')} if HEIF else {
        "13 train: archive of .heic photos only, no pillow-heif": Case(
            lambda t, p: ["train", "--data", archive(t, "heic.tar.gz", {
                f"{c}/{i}.heic": (p / c / f).read_bytes()
                for c in ("bird", "not_bird") for i, f in enumerate(sorted(os.listdir(p / c))[:2])})], 2,
            "heic.tar.gz: no images in its class folders (bird, not_bird) "
            "(found only 4 .heic (install birdcnn[heif] to read HEIC))")}),
    # 14: an archive without class folders of images is named as given, not as its copy in the cache
    "14 train: .tar.gz of loose photos": Case(
        lambda t, p: ["train", "--data", archive(t, "loose.tar.gz", {
            "photos/a.jpg": (p / "bird" / "cock.jpg").read_bytes(),
            "photos/b.jpg": (p / "bird" / "crane.jpg").read_bytes()})],
        2, "error: loose.tar.gz: no class folders inside"),
    "14 evaluate: .tar.gz of class folders without images": Case(
        lambda t, p: ["evaluate", "--data", archive(t, "notes.tar.gz", {"bird/a.txt": b"a", "bird/b.txt": b"b",
                                                                        "cat/README": b"c"})],
        2, "error: notes.tar.gz: no images in its class folders (bird, cat) (found only 2 .txt, 1 (no suffix))"),
    # 15: a newline in a name stays on its line
    "15 predict: newline in names": Case(
        lambda t, p: ["predict", photo(t, p, "a\nb.jpg"), "c\nd.jpg"], 1, r"$'c\nd.jpg': no such file",
        output=r"$'a\nb.jpg': "),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, photos, tmp_path):
    case = CASES[name]
    args = case.make(tmp_path, photos)
    r = subprocess.run([sys.executable, "-m", "birdcnn", *args], cwd=tmp_path, capture_output=True, timeout=300)
    out, err = r.stdout.decode("utf-8"), r.stderr.decode("utf-8")  # strict: raw bytes or surrogates fail here
    assert "Traceback" not in err, err
    assert r.returncode == case.code, err
    lines = err.splitlines()
    if case.log is not None:
        assert case.log in err, err
        words = [case.error] if case.error else ["error", "warning"]
        assert sum(any(w in line for w in words) for line in lines) == (1 if case.error else 0), err
    elif case.error is None:
        assert err == ""
    else:
        assert len(lines) == 1 and case.error in err, err
    assert "\\udc" not in out  # no lone surrogates escaped into JSON
    if case.output is not None:
        assert case.output in out, out
    if case.writes is not None:
        assert (tmp_path / case.writes).stat().st_size > 0
        written = (tmp_path / case.writes).read_text(encoding="utf-8") if case.page else ""
        assert all(words in written for words in case.page), case.page


# 17: no path taken from an archive member is used to write outside the cache. The archive is
# extracted into BIRDCNN_CACHE/extracted/<hash>.<pid>.tmp, so "../../../" leads to tmp_path: were a
# member written there, the test would see it. Each member comes after good class folders.
ESCAPES = {
    "../ path": (lambda t: [tar_member("../../../evil.jpg", b"x")],
                 "member ../../../evil.jpg has a path leading out of the archive (..)"),
    "absolute path": (lambda t: [tar_member(f"{t}/abs-evil.jpg", b"x")],
                      "member {tmp}/abs-evil.jpg has an absolute path"),
    "link out, then a file through it": (
        lambda t: [tar_member("data/bird/up", link="../../../../.."), tar_member("data/bird/up/through.jpg", b"x")],
        "member data/bird/up is a link leading out of the archive"),
    "absolute link, then a file through it": (
        lambda t: [tar_member("data/bird/abs", link=str(t)), tar_member("data/bird/abs/through.jpg", b"x")],
        "member data/bird/abs is a link to an absolute path"),
    "hard link out": (lambda t: [tar_member("data/bird/hard.jpg", link="../../../evil.tar.gz", kind=tarfile.LNKTYPE)],
                      "member data/bird/hard.jpg is a link leading out of the archive"),
}


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("name", ESCAPES)
def test_archive_members_write_nothing_outside_the_cache(name, command, photos, tmp_path):
    members, words = ESCAPES[name]
    words = words.format(tmp=tmp_path)
    class_archive(tmp_path, photos, "evil.tar.gz", members(tmp_path))
    before = sorted(tmp_path.rglob("*"))
    env = {**os.environ, "BIRDCNN_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "birdcnn", command, "--data", "evil.tar.gz", "--out", "out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr == f"birdcnn {command}: error: evil.tar.gz: unsafe archive, not extracted: {words}\n"
    cache = tmp_path / "cache"
    assert sorted(p for p in tmp_path.rglob("*") if cache not in (p, *p.parents)) == before
    extracted = cache / "extracted"
    assert not extracted.exists() or not any(extracted.iterdir())  # the members before it were removed


# 10: argparse's usage is kept where it helps, when no command is given; --help works
def test_usage_only_without_a_command(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and err[0].startswith("usage: birdcnn") and err[-1].endswith("required: COMMAND")
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: birdcnn train")


def test_top_level_help_lists_every_command_without_loading_torch():
    """`birdcnn --help` and `--version` answer at once: no command's module (torch, ~3 s) is loaded."""
    from birdcnn.cli import COMMANDS

    code = ("import sys\nfrom birdcnn.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch loaded:', 'torch' in sys.modules)")
    out = {}
    for flag in ("--help", "--version"):
        r = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "" and r.stdout.endswith("torch loaded: False\n"), r
        out[flag] = r.stdout
    assert out["--version"].startswith(f"birdcnn {birdcnn.__version__}\n")
    listed = out["--help"].split("positional arguments:")[1]
    assert all(re.search(rf"^ +{re.escape(name)}(\s|$)", listed, re.M) for name in COMMANDS), listed


SHIPPED_CLASSES = read_metadata(default_model_path())["classes"]
# Model metadata: every field of the wrong type or with an impossible value is refused, naming
# the field (in-process: the same code as the command, without a process start per row).
BAD_METADATA = {
    "format_version string": ({"format_version": "1"}, "'format_version' must be a whole number"),
    "input_size 0": ({"input_size": 0}, "'input_size' must be a whole number of pixels"),
    "input_size string": ({"input_size": "big"}, "'input_size' must be"),
    "input_size true": ({"input_size": True}, "'input_size' must be"),
    "threshold string": ({"threshold": "high"}, "'threshold' must be a probability"),
    "threshold 5": ({"threshold": 5}, "'threshold' must be a probability from 0 to 1, not 5"),
    "mean strings": ({"mean": ["0.5", "0.5", "0.5"]}, "'mean' must be three numbers"),
    "std 0": ({"std": [0, 0.25, 0.25]}, "'std' must be three numbers above 0"),
    "temperature 0": ({"temperature": 0}, "'temperature' must be a number above 0"),
    "temperature NaN": ({"temperature": float("nan")}, "'temperature' must be a number above 0, not nan"),
    "classes: one fewer than the outputs": ({"classes": SHIPPED_CLASSES[:-1]},
                                            f"'classes' names {len(SHIPPED_CLASSES) - 1} classes but the weights have "
                                            f"{len(SHIPPED_CLASSES)} outputs"),
    "classes repeated": ({"classes": ["bird"] * len(SHIPPED_CLASSES)},
                         "'classes' must be a list of two or more different class names"),
    "arch unknown": ({"arch": "resnet"}, "'arch' must be one of the known architectures"),
    "arch_kwargs not an object": ({"arch_kwargs": [1]}, "'arch_kwargs' must be"),
    "arch_kwargs: fractional widths": ({"arch_kwargs": {"widths": [1.5, 2, 2]}},
                                       "'arch_kwargs' {'widths': [1.5, 2, 2]} do not describe a 'fast' network"),
    "arch_kwargs: two widths": ({"arch_kwargs": {"widths": [8, 16]}}, "do not describe a 'fast' network"),
    "arch_kwargs: a stem stride of 3": ({"arch_kwargs": {"stem_stride": 3}}, "do not describe a 'fast' network"),
    "arch_kwargs: unknown setting": ({"arch_kwargs": {"depth": 50}}, "do not describe a 'fast' network"),
    "input_size too small for the network": ({"input_size": 4}, "'input_size' 4 does not fit the network"),
    "window_scoring: even neighbourhood": ({"window_scoring": {"neighbourhood": 2, "whole_frame": 1.0}},
                                           "'window_scoring' must be {neighbourhood: 1, 3, 5 or 7"),
    "window_scoring: missing key": ({"window_scoring": {"neighbourhood": 3}}, "'window_scoring' must be"),
    "zoom_tta: unknown view set": ({"zoom_tta": ["flip", "rotate"]}, "'zoom_tta' must be a list of view sets"),
}


@pytest.mark.parametrize("name", BAD_METADATA)
def test_bad_metadata(name, photos, tmp_path, capsys):
    changes, words = BAD_METADATA[name]
    code = main(["predict", photo(tmp_path, photos), "--model", str(tmp_path / model(tmp_path, **changes))])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{tmp_path / 'model' / 'model.json'}: " in err and words in err, err


def test_input_size_the_weights_cannot_take(photos, tmp_path, capsys):
    # The article network's dense layer fixes its input size: 32 px weights cannot read 64 px images.
    meta = {"arch": "article", "classes": ["not_bird", "bird"], "positive": "bird", "input_size": 64,
            "mean": [0.5] * 3, "std": [0.25] * 3}
    save_model(build("article", 2), meta, tmp_path / "article.json")
    assert main(["predict", photo(tmp_path, photos), "--model", str(tmp_path / "article.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "article.json: metadata 'input_size' 64 does not fit the network" in err, err


# 6: --device (train checks it up front: the "6 train --device" row above).
def test_unavailable_device_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(BirdcnnError) as info:
        check_device("cuda")
    assert str(info.value) == "--device cuda: CUDA is not available on this machine (available: cpu)"
    with pytest.raises(BirdcnnError, match="--device gpu: unknown device"):
        check_device("gpu")
    assert check_device("auto") == check_device("cpu") == torch.device("cpu")


# 11: the Python API given one path, not a list
def test_classify_takes_a_single_path(photos):
    clf = birdcnn.load_model()
    path = photos / "bird" / "partridge.jpg"
    for one in (str(path), path):
        records = birdcnn.classify(one, clf)
        assert len(records) == 1 and records[0]["path"] == str(path) and records[0]["label"] == "bird"
