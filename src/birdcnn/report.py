"""What `birdcnn evaluate` shows people: the table it prints, the JSON, and the pictures (curves,
confusion heat maps, a reliability diagram, the four galleries of hits and mistakes) with
report.html, one page that embeds them all (so it can be mailed or opened from anywhere, no
server needed). The PNGs and metrics.json lie beside it.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot state, renders with Agg
from PIL import Image, ImageDraw, ImageFont

from . import metrics as M
from .atomic import write_bytes, write_text
from .errors import ImageError
from .evaluate import GROUPS, Evaluation, Extremes
from .images import fit_square, open_image

TILE = 128  # gallery tile side: CIFAR's 32 px scaled 4x, big enough to see what the model saw
COLS = 8


def _png(obj: Figure | Image.Image) -> bytes:
    buf = io.BytesIO()
    if isinstance(obj, Figure):
        obj.savefig(buf, format="png", dpi=obj.dpi)
    else:
        obj.save(buf, format="png")
    return buf.getvalue()


def _undefined(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35", wrap=True)


# ---------------------------------------------------------------- the table and the JSON

def fmt(v: float | int | None, digits: int = 4) -> str:
    """A metric for people: 'n/a' when undefined, never a silent 0."""
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


BIRD_ROWS = [("accuracy", "accuracy", "right answers, of all images"),
             ("balanced_accuracy", "balanced accuracy", "mean of the recall of {pos} and of not-{pos}"),
             ("precision", "precision", "of the images called {pos}, the share that are"),
             ("recall", "recall", "of the {pos} images, the share found"),
             ("f1", "F1", "harmonic mean of precision and recall"),
             ("average_precision", "average precision", "area under the precision-recall curve"),
             ("roc_auc", "ROC AUC", "chance a {pos} scores above a not-{pos}"),
             ("ece", "calibration error", "mean |probability - observed frequency| (ECE)")]


def format_table(ev: Evaluation) -> str:
    """The short table `birdcnn evaluate` prints."""
    b, pos = ev.bird, ev.positive
    lines = [f"{ev.n} images ({b['positives']} {pos}, {ev.n - b['positives']} not {pos}) from {ev.data}"
             f"{' (test split)' if ev.split == 'test' else ''}, model {ev.model}",
             f"{pos} vs not {pos} at threshold {ev.threshold:.4f}: {ev.threshold_rule}"]
    if ev.target is not None:
        (kind, goal), t = next(iter(ev.target.items())), ev.target["threshold"]
        lines.append(f"threshold for {kind} >= {goal}: {fmt(t)}")
    lines.append("")
    for key, label, _ in BIRD_ROWS:
        lines.append(f"  {label:<19}{fmt(b[key]):>8}")
    if ev.n:
        lines[-len(BIRD_ROWS)] += f"   (always saying 'not {pos}' would score {1 - b['positives'] / ev.n:.4f})"
    lines += ["", f"  {'':<14}{'called ' + pos:>16}{'called not ' + pos:>20}",
              f"  {pos:<14}{str(b['tp']) + ' TP':>16}{str(b['fn']) + ' FN':>20}",
              f"  {'not ' + pos:<14}{str(b['fp']) + ' FP':>16}{str(b['tn']) + ' TN':>20}"]
    if ev.classes is not None:
        cl = ev.classes
        lines += ["", f"{len(cl['names'])} classes: accuracy {fmt(cl['accuracy'])}, calibration error {fmt(cl['ece'])}"]
        items = [f"{name:<11}{fmt(a, 3):>6}" for name, a in cl["per_class"].items()]
        lines += ["  " + "   ".join(items[i:i + 4]) for i in range(0, len(items), 4)]
    elif ev.classes_note:
        lines += ["", ev.classes_note]
    flagged = [(name, f) for name, f in ev.false_alarms.items() if f["flagged"]]
    if len(ev.false_alarms) > 1:
        lines += ["", f"false alarms per folder ({len(flagged)} of {len(ev.false_alarms)} kinds of not-{pos} "
                      f"have some{'; highest rates' if len(flagged) > 12 else ''}):"]
        lines += [f"  {name[:24]:<25}{f['flagged']:>5} of {f['n']:<6}{100 * f['rate']:6.1f}%"
                  for name, f in flagged[:12]]
    if ev.skipped:
        lines += ["", f"skipped {len(ev.skipped)} unreadable images (listed on stderr and in metrics.json)"]
    return "\n".join(lines)


def to_json(obj: dict) -> str:
    """Indented JSON with each list of numbers on one line (a 10x10 confusion matrix stays 10 lines)."""
    text = json.dumps(obj, indent=2)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


# ---------------------------------------------------------------- curves and matrices

def plot_pr(ev: Evaluation) -> Figure:
    """Precision against recall over every threshold, with the operating point marked."""
    fig = Figure(figsize=(5.5, 4.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    pos, b, y = ev.positive, ev.bird, ev.is_positive
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel=f"recall (share of {pos} images found)",
           ylabel=f"precision (share of '{pos}' calls right)",
           title=f"Precision-recall: AP {fmt(b['average_precision'])}")
    ax.grid(alpha=0.3)
    if not y.any():
        _undefined(ax, f"undefined: no {pos} images in the data")
        return fig
    precision, recall, _ = M.precision_recall_curve(y, ev.scores)
    ax.plot(np.r_[0.0, recall], np.r_[precision[0], precision], drawstyle="steps-pre", lw=1.8, label="model")
    ax.axhline(y.mean(), ls="--", c="0.5", lw=1, label=f"guessing ({y.mean():.3f} are {pos})")
    if b["precision"] is not None:
        ax.plot(b["recall"], b["precision"], "o", ms=9, c="crimson",
                label=f"threshold {ev.threshold:.3f}: P {b['precision']:.3f}, R {b['recall']:.3f}")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_roc(ev: Evaluation) -> Figure:
    """True positive rate against false positive rate, with the operating point marked."""
    fig = Figure(figsize=(5.5, 4.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    pos, b, y = ev.positive, ev.bird, ev.is_positive
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel=f"false positive rate (share of not-{pos} called {pos})",
           ylabel="true positive rate (recall)", title=f"ROC: AUC {fmt(b['roc_auc'])}")
    ax.grid(alpha=0.3)
    if b["roc_auc"] is None:
        _undefined(ax, f"undefined: the data needs both {pos} and not-{pos} images")
        return fig
    fpr, tpr, _ = M.roc_curve(y, ev.scores)
    ax.plot(fpr, tpr, lw=1.8, label="model")
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1, label="guessing")
    ax.plot(b["fp"] / (b["fp"] + b["tn"]), b["tp"] / (b["tp"] + b["fn"]), "o", ms=9, c="crimson",
            label=f"threshold {ev.threshold:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _heatmap(ax, counts: np.ndarray, rows: list[str], cols: list[str], annotate: bool = True) -> None:
    """Counts coloured by the share of their row (what fraction of each true class went where)."""
    totals = counts.sum(1)
    share = counts / np.maximum(totals[:, None], 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45 if len(cols) > 2 else 0,
                  ha="right" if len(cols) > 2 else "center")
    ax.set_yticks(range(len(rows)), rows)
    if annotate:
        small = len(rows) > 2
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                pct = f"{100 * share[i, j]:.1f}%" if totals[i] else "n/a"  # an empty row has no shares
                text = f"{counts[i, j]}" if small else f"{counts[i, j]}\n{pct}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if small else 11,
                        color="white" if share[i, j] > 0.5 else "black")


def plot_confusion_bird(ev: Evaluation) -> Figure:
    pos, b = ev.positive, ev.bird
    fig = Figure(figsize=(4.8, 4.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    _heatmap(ax, np.array([[b["tp"], b["fn"]], [b["fp"], b["tn"]]]), [pos, f"not {pos}"], [pos, f"not {pos}"])
    ax.set(xlabel="called", ylabel="truth", title=f"{pos} vs not {pos} at threshold {ev.threshold:.3f}")
    return fig


def plot_confusion_classes(ev: Evaluation) -> Figure:
    cl = ev.classes
    names, counts = cl["names"], np.array(cl["confusion"])
    side = 3 + 0.55 * len(names)
    fig = Figure(figsize=(side + 1, side), dpi=110, layout="constrained")
    ax = fig.subplots()
    _heatmap(ax, counts, names, names, annotate=len(names) <= 20)
    ax.set(xlabel="predicted class", ylabel="true class", title=f"{len(names)} classes: accuracy {fmt(cl['accuracy'])}")
    return fig


def _reliability(ax, confidence: np.ndarray, correct: np.ndarray, what: str, ece: float | None) -> None:
    r = M.reliability_bins(confidence, correct)
    edges, m = r["edges"], r["count"] > 0
    width = edges[1] - edges[0]
    ax.bar(edges[:-1][m], r["frequency"][m], width=width, align="edge", color="tab:blue", alpha=0.75,
           edgecolor="white", label="observed frequency")
    ax.plot(r["confidence"][m], r["frequency"][m], "o", c="navy", ms=4, label="(mean probability, frequency)")
    ax.plot([0, 1], [0, 1], ls="--", c="crimson", lw=1.2, label="perfect calibration")
    for x, n in zip(edges[:-1][m], r["count"][m]):
        ax.text(x + width / 2, 0.01, str(n), rotation=90, ha="center", va="bottom", fontsize=6.5, color="0.2")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"predicted {what}", ylabel="observed frequency",
           title=f"{what}: ECE {fmt(ece)}")
    ax.legend(loc="upper left", fontsize=7)


def plot_reliability(ev: Evaluation) -> Figure:
    """Do probabilities mean what they say? Bars: how often the event happened in each probability
    bin (image counts at the bottom); a calibrated model follows the diagonal."""
    multi = ev.class_confidence is not None
    fig = Figure(figsize=(10 if multi else 5.5, 4.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2 if multi else 1, squeeze=False)[0]
    _reliability(axes[0], ev.scores, ev.is_positive, f"p({ev.positive})", ev.bird["ece"])
    if multi:
        _reliability(axes[1], ev.class_confidence, ev.class_correct, "top-class probability", ev.classes["ece"])
    return fig


# ---------------------------------------------------------------- galleries

def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _tile(array: np.ndarray, path: str | None, tile: int) -> Image.Image:
    """The image as the model saw it (central square), at up to `tile` px: re-read from its file
    when there is one (a large photo then shows its detail), else the decoded array."""
    im = Image.fromarray(array)
    if path is not None:
        try:
            big = open_image(path, min_size=tile)
            im = fit_square(big, min(min(big.size), tile))
        except ImageError:
            pass  # changed since it was read: keep the decoded copy
    if im.width != tile:  # small images scale up in crisp pixels, others smoothly
        im = im.resize((tile, tile), Image.Resampling.NEAREST if 2 * im.width <= tile else Image.Resampling.BICUBIC)
    return im


def _probability(p: float) -> str:
    """A percentage with two significant digits of its distance from 0% or 100%: the most confident
    images differ only there (0.0031% vs 0.27%, 99.9970% vs 99.2%)."""
    d = 100 * min(p, 1 - p)
    if d < 1e-4:
        return "<0.0001%" if p < 0.5 else ">99.9999%"
    return f"{100 * p:.{max(1, 1 - math.floor(math.log10(d)))}f}%"


def render_gallery(g: Extremes, title: str, subtitle: str, class_names: list[str], positive: str,
                   mistakes: bool, tile: int = TILE, cols: int = COLS) -> Image.Image:
    """A grid of images, each captioned with p(positive) and its true class."""
    n, pad, cap, head = len(g.scores), 6, 34, 54
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    width = max(cols * (tile + pad) + pad, 560)
    height = head + (rows * (tile + cap + pad) if n else 40) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill="black", font=_font(17))
    draw.text((pad, 30), subtitle, fill=(90, 90, 90), font=_font(12))
    if not n:
        draw.text((pad, head + 8), "none", fill=(90, 90, 90), font=_font(14))
    colour = (190, 20, 30) if mistakes else (20, 120, 40)
    small = _font(12)
    for i in range(n):
        x, y = pad + (i % cols) * (tile + pad), head + (i // cols) * (tile + cap + pad)
        sheet.paste(_tile(g.images[i], g.paths[i], tile), (x, y))
        draw.text((x, y + tile + 2), f"p({positive}) {_probability(g.scores[i])}", fill=colour, font=small)
        draw.text((x, y + tile + 17), class_names[g.labels[i]][:18], fill=(60, 60, 60), font=small)
    return sheet


def gallery_texts(ev: Evaluation, group: str) -> tuple[str, str]:
    pos, t, b = ev.positive, ev.threshold, ev.bird
    title = {"tp": f"True positives: {b['tp']} {pos} images called {pos}",
             "tn": f"True negatives: {b['tn']} other images called not {pos}",
             "fp": f"False positives: {b['fp']} other images called {pos}",
             "fn": f"False negatives: {b['fn']} {pos} images missed"}[group]
    shown = len(ev.galleries[group].scores)
    most = "highest" if group in ("tp", "fp") else "lowest"
    sub = f"threshold {t:.4f}; {most} p({pos}) first (the most confident); showing {shown} of {b[group]}"
    return title, sub


# ---------------------------------------------------------------- the report folder

def write_report(ev: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, the pictures and report.html into `out`; returns {name: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, bytes] = {"pr_curve": _png(plot_pr(ev)), "roc_curve": _png(plot_roc(ev)),
                                  "confusion_bird": _png(plot_confusion_bird(ev)),
                                  "reliability": _png(plot_reliability(ev))}
    if ev.classes is not None:
        pictures["confusion_classes"] = _png(plot_confusion_classes(ev))
    for group in GROUPS:
        title, sub = gallery_texts(ev, group)
        pictures[f"gallery_{group}"] = _png(render_gallery(ev.galleries[group], title, sub, ev.data_classes,
                                                           ev.positive, mistakes=group in ("fp", "fn")))
    files = {}
    for name, data in pictures.items():
        files[name] = out / f"{name}.png"
        write_bytes(files[name], data)
    files["metrics"] = out / "metrics.json"
    write_text(files["metrics"], to_json(ev.summary()) + "\n")
    files["report"] = out / "report.html"
    write_text(files["report"], report_html(ev, pictures))
    return files


def _img(pictures: dict[str, bytes], name: str, alt: str) -> str:
    data = base64.b64encode(pictures[name]).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.5em 0}
td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:100%}\
figcaption{color:#666;font-size:.85em}
.note{color:#555}"""


def report_html(ev: Evaluation, pictures: dict[str, bytes]) -> str:
    """The report page, every picture embedded as a data: URI."""
    e, b, pos = html.escape, ev.bird, ev.positive
    rows = "".join(f"<tr><td>{e(label)}</td><td class=num>{fmt(b[key])}</td>"
                   f"<td class=note>{e(note.format(pos=pos))}</td></tr>" for key, label, note in BIRD_ROWS)
    baseline = f"{1 - b['positives'] / ev.n:.4f}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>birdcnn evaluation</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>How good is the model at telling {e(pos)} from not {e(pos)}?</h1>",
             f"<p>Model <code>{e(ev.model)}</code> on <code>{e(ev.data)}</code>"
             f"{' (test split)' if ev.split == 'test' else ''}: "
             f"{ev.n} images, {b['positives']} of them {e(pos)}. "
             f"Threshold {ev.threshold:.4f}: {e(ev.threshold_rule)}.</p>"]
    if ev.target is not None:
        (kind, goal), t = next(iter(ev.target.items())), ev.target["threshold"]
        parts.append(f"<p>Threshold for {e(kind)} &ge; {goal}: {fmt(t)}.</p>")
    parts += [f"<h2>{e(pos)} vs not {e(pos)}</h2>",
              f"<p class=note>Accuracy alone misleads: always answering &ldquo;not {e(pos)}&rdquo; "
              f"would score {baseline} here.</p>",
              f"<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>{rows}</table>",
              f"<table><tr><th></th><th>called {e(pos)}</th><th>called not {e(pos)}</th></tr>"
              f"<tr><th>{e(pos)}</th><td class=num>{b['tp']} TP</td><td class=num>{b['fn']} FN</td></tr>"
              f"<tr><th>not {e(pos)}</th><td class=num>{b['fp']} FP</td><td class=num>{b['tn']} TN</td></tr></table>",
              "<h2>Curves and calibration</h2>",
              _img(pictures, "pr_curve", "precision-recall curve, operating point in red"),
              _img(pictures, "roc_curve", "ROC curve, operating point in red"),
              _img(pictures, "confusion_bird", f"{pos} vs not {pos} confusion matrix"),
              _img(pictures, "reliability", "reliability diagram: a calibrated model follows the diagonal")]
    if ev.classes is not None:
        cl = ev.classes
        per = "".join(f"<tr><td>{e(c)}</td><td class=num>{fmt(a)}</td></tr>" for c, a in cl["per_class"].items())
        parts += [f"<h2>All {len(cl['names'])} classes</h2>",
                  f"<p>Accuracy {fmt(cl['accuracy'])}; calibration error (ECE) {fmt(cl['ece'])}.</p>",
                  f"<table><tr><th>class</th><th>accuracy</th></tr>{per}</table>",
                  _img(pictures, "confusion_classes", "confusion matrix (rows: true class; colour: share of the row)")]
    elif ev.classes_note:
        parts.append(f"<p class=note>{e(ev.classes_note)}</p>")
    if len(ev.false_alarms) > 1:
        fa = "".join(f"<tr><td>{e(c)}</td><td class=num>{f['flagged']}</td><td class=num>{f['n']}</td>"
                     f"<td class=num>{100 * f['rate']:.1f}%</td></tr>" for c, f in ev.false_alarms.items())
        parts += [f"<h2>Which kinds of things are mistaken for {e(pos)}?</h2>",
                  f"<p class=note>Every folder not named {e(pos)} counts as not {e(pos)}; the false-positive gallery "
                  f"below names each image's folder.</p>",
                  f"<table><tr><th>folder</th><th>called {e(pos)}</th><th>images</th><th>rate</th></tr>{fa}</table>"]
    parts.append("<h2>The images: mistakes first</h2>")
    for group in ("fp", "fn", "tp", "tn"):
        title, _ = gallery_texts(ev, group)
        parts.append(_img(pictures, f"gallery_{group}", title))
    if ev.skipped:
        items = "".join(f"<li><code>{e(s)}</code></li>" for s in ev.skipped)
        parts.append(f"<h2>Skipped</h2><details><summary>{len(ev.skipped)} unreadable images skipped</summary>"
                     f"<ul>{items}</ul></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
