"""The contact sheet of a search: one self-contained HTML page of the best matches' thumbnails."""
from __future__ import annotations

import base64
import html
import io
import multiprocessing
import os
from pathlib import Path

from PIL import Image

from .atomic import write_text
from .decode_workers import worker_init
from .errors import ImageError, display_path
from .images import open_image
from .search import SearchResult

HTML_LIMIT = 1000      # thumbnails on the contact sheet (the best matches); the rest are counted
THUMB = 200            # thumbnail size in pixels


def _thumbnail(path: str) -> str:
    """A JPEG thumbnail as a data: URI (the page is self-contained), or '' if unreadable now."""
    try:
        im = open_image(path, min_size=THUMB)
    except ImageError:
        return ""
    im.thumbnail((THUMB, THUMB), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_contact_sheet(result: SearchResult, out: str | os.PathLike, workers: int | None = None) -> Path:
    """A self-contained HTML page of the best matches (thumbnails embedded), most confident first."""
    out = Path(out)
    shown = result.matches[:HTML_LIMIT]
    paths = [p for p, _ in shown]
    if workers == 0 or len(paths) < 50:
        thumbs = [_thumbnail(p) for p in paths]
    else:
        with multiprocessing.Pool(workers or os.cpu_count() or 1, initializer=worker_init) as pool:
            thumbs = pool.map(_thumbnail, paths, chunksize=16)
    cards = []
    for (path, p), src in zip(shown, thumbs):
        href = html.escape(Path(path).resolve().as_uri(), quote=True)
        img = f'<img src="{src}" alt="" loading="lazy">' if src else '<div class="gone">unreadable</div>'
        cards.append(f'<a class="card" href="{href}" title="{html.escape(display_path(path), quote=True)}">{img}'
                     f'<b>{100 * p:.1f}%</b><span>{html.escape(display_path(os.path.basename(path)))}</span></a>')
    s = result.summary()
    more = len(result.matches) - len(shown)
    title = f"{s['matched']} photos showing a {result.target}"
    not_shown = f" The {more} less confident matches are not shown." if more > 0 else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>birdcnn search: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ width: {THUMB}px; text-decoration: none; color: #222; background: #fff; padding: 6px;
        box-shadow: 0 1px 3px #0003; display: flex; flex-direction: column; }}
.card img {{ width: {THUMB}px; height: {THUMB}px; object-fit: contain; background: #eee; }}
.card span {{ font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }}
.gone {{ width: {THUMB}px; height: {THUMB}px; background: #eee; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Folder <code>{html.escape(display_path(result.folder))}</code>: {s['scanned']} photos scanned, {s['matched']} with
{html.escape(result.target)} probability &ge; {result.min_probability:.3g}, {result.unreadable()}.
Most confident first; click a photo to open it.{not_shown}</p>
<div class="grid">
{chr(10).join(cards)}
</div></body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, page)

