"""A photo folder, walked: every image path under it, sorted, each real folder entered once."""
from __future__ import annotations

import os
from typing import Iterator

from .errors import FileProblem
from .images import IMAGE_SUFFIXES, OtherFiles


def walk_images(root: str | os.PathLike, other: OtherFiles | None = None) -> Iterator[str | FileProblem]:
    """Yield the image paths under `root` (recursively, sorted, following symbolic links) and a
    `FileProblem` for every folder that cannot be read (serious: its photos are missed) or would be
    scanned twice (a symbolic link loop, a second link to a folder: only a warning); `other` counts
    the files passed over as not images (hidden ones aside).

    Each real folder (device, inode) is entered once: a link back to an ancestor is reported as a
    loop instead of being followed forever, and a second link to a folder is not scanned twice.
    """
    root = os.fspath(root)
    st = os.stat(root)
    seen: dict[tuple[int, int], str] = {(st.st_dev, st.st_ino): root}
    stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(root, ((st.st_dev, st.st_ino),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield FileProblem(folder, f"cannot read folder ({e.strerror or e})")
            continue
        subfolders = []
        for e in entries:
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    s = e.stat()
                except OSError as err:
                    yield FileProblem(e.path, f"cannot read folder ({err.strerror or err})")
                    continue
                key = (s.st_dev, s.st_ino)
                if key in ancestors:
                    yield FileProblem(e.path, f"symbolic link loop (back to {seen[key]}): not followed", serious=False)
                elif key in seen:
                    yield FileProblem(e.path, f"same folder as {seen[key]}: not scanned twice", serious=False)
                else:
                    seen[key] = e.path
                    subfolders.append((e.path, ancestors + (key,)))
            elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                # A broken link (or a cycle of links) is a photo we cannot read: report it as one.
                yield e.path
            elif other is not None and not e.name.startswith("."):
                other.add(e.name)
        stack.extend(reversed(subfolders))  # depth-first, in name order

