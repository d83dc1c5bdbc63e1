"""Writes that fail part-way leave the old file intact and no temporary file behind."""
from __future__ import annotations

import pytest

from birdcnn.atomic import save_figure, write_atomic, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old\n")

    def crash(tmp):
        tmp.write_text("half of the new conte")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, crash)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text(target, "new\n")
    assert target.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1


def test_figures_keep_their_format_from_the_suffix(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, magic in (("a.png", b"\x89PNG"), ("a.pdf", b"%PDF"), ("a.jpg", b"\xff\xd8")):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        out = save_figure(fig, tmp_path / name)
        assert out.read_bytes().startswith(magic), name
        assert not plt.fignum_exists(fig.number)  # closed after saving
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.pdf", "a.png"]
