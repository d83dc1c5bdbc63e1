"""`birdcnn serve`: a web page and a JSON API over one loaded model (FastAPI + uvicorn).

    GET  /              the page: drop photos, see label and probability, ask for heat map / Grad-CAM
    POST /api/predict   multipart `files` (one or many): one `predict --json` record per file
    POST /api/locate    multipart `file`: boxes in photo pixels, photo size, threshold, heat map PNG
    POST /api/explain   multipart `file`: Grad-CAM overlay PNG and the top classes
    GET  /api/health    the model (name, path, classes, positive class, threshold), limits, version
    GET  /openapi.json  the API description (no /docs: FastAPI's Swagger page loads from a CDN)

Uploads go to a private temporary folder and through the same code as the commands (`classify`,
`locate_file`, `explain`), so the server answers exactly what `birdcnn predict` would. A bad
file in a predict request is a `{"path", "error"}` record, as in `predict --json`; a bad file
for locate/explain, or a bad request, is a 4xx `{"error", "file"}`. The network (and matplotlib,
which is not thread-safe) serve one request at a time behind a lock, so concurrent requests
queue and each response holds only its own files' results.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and they name classes imported inside `create_app` (fastapi is imported only when serving).

import argparse
import base64
import io
import socket
import tempfile
import threading
import warnings
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from .errors import BirdcnnError, display_path
from .images import MAX_PIXELS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 25.0
DEFAULT_MAX_FILES = 32
DEFAULT_MAX_MEGAPIXELS = 64.0
TOP_CLASSES = 5
FORM_OVERHEAD = 64 * 1024     # multipart headers around the files, per request
DRAIN_LIMIT = 256 * 2**20     # an over-long body is read and dropped up to this, so the client sees the 413
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Every limit is checked before a pixel is decoded."""

    max_files: int = DEFAULT_MAX_FILES
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB   # per file
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def max_body_bytes(self) -> int:
        """A whole request: the most files at the most bytes each, plus the form around them."""
        return self.max_files * (self.max_upload_bytes + FORM_OVERHEAD)


class ApiError(Exception):
    """A refused request or file, answered as `{"error": ..., "file": ...}` with `status`."""

    def __init__(self, status: int, error: str, file: str | None = None):
        super().__init__(error)
        self.status, self.error, self.file = status, error, file

    def body(self) -> dict:
        return {"error": self.error, "file": self.file}


# ---------------------------------------------------------------- uploads -> files the commands read

def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


def _upload_name(upload) -> str:
    """The client's file name, as one printable line (it is only ever echoed, never a path here)."""
    return display_path(upload.filename or "") or "(unnamed)"


def _save_upload(upload, dest: Path, limits: Limits) -> ApiError | None:
    """Copy an upload to `dest`, refusing (413) one over the per-file byte limit. The rest of a
    refused file is only counted, to name its size: it is already on this machine."""
    size, limit = 0, limits.max_upload_bytes
    with dest.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size <= limit:
                out.write(chunk)
    if size > limit:
        return ApiError(413, f"too large ({_mb(size)}; limit {_mb(limit)} per file)", _upload_name(upload))
    return None


def _check_pixels(path: Path, name: str, limits: Limits) -> ApiError | None:
    """Refuse (413) a photo over the pixel limit from its header alone, before it is decoded.
    A file Pillow cannot even open passes here: `open_image` then says what is wrong with it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:
        return ApiError(413, f"too large (over twice the {limits.max_megapixels:g} MP limit): "
                             "possible decompression bomb", name)
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    if w * h > limits.max_pixels:
        return ApiError(413, f"too large ({w}x{h} pixels; limit {limits.max_megapixels:g} MP)", name)
    return None


def _stage(upload, dest: Path, limits: Limits) -> ApiError | None:
    """Write one upload to `dest` and check its limits: None when it may be decoded."""
    return _save_upload(upload, dest, limits) or _check_pixels(dest, _upload_name(upload), limits)


def _png_base64(rgb) -> str:
    """An (H, W, 3) float array in [0, 1] (explain's pictures) as a base64 PNG."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- the work behind each endpoint

class Service:
    """The loaded model and the lock that makes requests take turns on it."""

    def __init__(self, model, model_path: Path, limits: Limits):
        self.model = model
        self.model_path = model_path
        self.limits = limits
        self.lock = threading.Lock()

    def health(self) -> dict:
        from . import __version__

        m = self.model
        return {"status": "ok", "version": __version__,
                "model": {"name": m.meta.get("name") or self.model_path.stem, "path": display_path(self.model_path),
                          "arch": m.meta.get("arch")},
                "device": str(m.device), "classes_count": len(m.classes), "classes": m.classes,
                "positive_class": m.positive, "threshold": m.threshold,
                "window_threshold": m.window_threshold([m.positive_index]), "limits": asdict(self.limits)}

    def predict(self, uploads: list) -> list[dict]:
        """One `predict --json` record per upload, in order; a refused file is `{"path", "error"}`."""
        from .predict import classify

        if len(uploads) > self.limits.max_files:
            raise ApiError(400, f"too many files: {len(uploads)} (limit {self.limits.max_files} per request)")
        with tempfile.TemporaryDirectory(prefix="birdcnn-serve-") as tmp:
            refused: dict[int, str] = {}
            paths = []
            for i, upload in enumerate(uploads):
                paths.append(Path(tmp) / str(i))
                if problem := _stage(upload, paths[-1], self.limits):
                    refused[i] = problem.error
            with self.lock:
                found = iter(classify([p for i, p in enumerate(paths) if i not in refused], self.model))
            records = [{"path": None, "error": refused[i]} if i in refused else next(found) for i in range(len(paths))]
        # The upload's name in the place `path` has in `predict --json`'s records.
        return [{**record, "path": _upload_name(upload)} for record, upload in zip(records, uploads)]

    def _one(self, upload, tmp: str) -> tuple[Path, str]:
        """Stage the single upload of locate/explain, or raise its ApiError."""
        path, name = Path(tmp) / "0", _upload_name(upload)
        if problem := _stage(upload, path, self.limits):
            raise problem
        return path, name

    def locate(self, upload, target: str | None, min_probability: float | None, top: int) -> dict:
        """`locate --json`'s record for one upload, with the heat-map picture as a base64 PNG."""
        from .locate import locate_file, save_heatmap

        try:
            self.model.class_indices(target)  # an unknown class word is the request's fault, before any upload is read
        except BirdcnnError as e:
            raise ApiError(400, str(e).replace("see --help", "see GET /api/health")) from None
        with tempfile.TemporaryDirectory(prefix="birdcnn-serve-") as tmp:
            path, name = self._one(upload, tmp)
            with self.lock:
                try:
                    res = locate_file(path, self.model, target=target, min_probability=min_probability, top=top)
                except BirdcnnError as e:
                    raise ApiError(422, getattr(e, "problem", str(e)), name) from None
                picture = save_heatmap(res, Path(tmp) / "heatmap.png", title=name)
            return {"image": name, **res.as_dict(), "threshold": res.min_probability,
                    "heatmap_png": base64.b64encode(picture.read_bytes()).decode("ascii")}

    def explain(self, upload) -> dict:
        """The prediction, the top classes and the Grad-CAM overlay (as `birdcnn explain` draws it)."""
        import numpy as np

        from .explain import explain, overlay

        with tempfile.TemporaryDirectory(prefix="birdcnn-serve-") as tmp:
            path, name = self._one(upload, tmp)
            with self.lock:
                try:
                    e = explain(path, self.model)
                except BirdcnnError as err:  # an unreadable photo, or a network with nothing to explain
                    raise ApiError(422, getattr(err, "problem", str(err)), name) from None
        top = np.argsort(-e.probs)[:TOP_CLASSES]
        cam = e.trace.gradcam
        return {"image": name, **{k: e.record[k] for k in ("label", "bird_probability", "is_bird")},
                "top_classes": [{"class": e.classes[i], "probability": round(float(e.probs[i]), 6)} for i in top],
                "gradcam_layer": e.trace.cam_step.name if e.trace.cam_step else None,
                "gradcam_png": _png_base64(overlay(e.photo, cam, e.box)) if cam is not None else None}


# ---------------------------------------------------------------- the HTTP layer

class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is parsed.

    The refused body is still read (and dropped, up to DRAIN_LIMIT): a server that answers and
    closes while the client is still sending makes most clients report a reset connection, not
    the 413."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits, self.limit = app, limits, limits.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            if int(length) <= DRAIN_LIMIT:
                await self._drain(receive)
            return await self._refuse(scope, receive, send, int(length))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                from fastapi import HTTPException

                if message.get("more_body"):
                    await self._drain(receive)
                raise HTTPException(413, self._message(None))  # re-raised by FastAPI's body parsing as is
            return message

        await self.app(scope, counted, send)

    def _message(self, length: int | None) -> str:
        size = _mb(length) if length else f"over {_mb(self.limit)}"
        return (f"request too large ({size}; limit {self.limits.max_files} files of "
                f"{self.limits.max_upload_mb:g} MB each)")

    async def _drain(self, receive) -> None:
        """Read the rest of the body (up to DRAIN_LIMIT) and drop it."""
        read, more = 0, True
        while more and read <= DRAIN_LIMIT:
            message = await receive()
            read += len(message.get("body", b""))
            more = message.get("more_body", False) and message["type"] == "http.request"

    async def _refuse(self, scope, receive, send, length: int) -> None:
        from fastapi.responses import JSONResponse

        await JSONResponse({"error": self._message(length), "file": None}, status_code=413)(scope, receive, send)


def _page() -> str:
    return (resources.files("birdcnn") / "assets" / "web" / "index.html").read_text(encoding="utf-8")


def _validation_message(errors: list[dict]) -> str:
    """FastAPI's list of validation errors as one sentence; a missing or wrong upload says which field."""
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        field = "files" if "files" in loc else "file" if "file" in loc else None
        if field:
            what = ("one or more photos as multipart field 'files'" if field == "files"
                    else "one photo as multipart field 'file'")
            problem = "no file uploaded" if err.get("type") == "missing" else f"field {field!r} holds text, not a file"
            return f"{problem} (send {what}, e.g. curl -F {field}=@photo.jpg)"
    return "; ".join(f"{'.'.join(map(str, e.get('loc', ())[1:])) or 'request'}: {e.get('msg', 'invalid')}"
                     for e in errors)


def create_app(model, model_path: str | Path, limits: Limits = Limits()):
    """The FastAPI application serving `model` (a loaded `Classifier`; `model_path`: where it came from)."""
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from PIL import Image
    from pydantic import BaseModel
    from starlette.exceptions import HTTPException

    from . import __version__

    service = Service(model, Path(model_path), limits)

    @asynccontextmanager
    async def lifespan(app):
        # Pillow's own bomb guard at the served limit, for as long as the server runs.
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limits.max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before

    class ErrorBody(BaseModel):
        error: str
        file: str | None = None

    errors: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 413, 422)}
    app = FastAPI(title="birdcnn", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Is there a bird in this photo? Errors are {\"error\", \"file\"} with a 4xx status.")
    app.add_middleware(BodyLimit, limits=limits)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _validation_message(exc.errors()), "file": None}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail), "file": None}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        # A fault of the server's own, not the request's: JSON like every other answer; Starlette
        # re-raises after it, so the traceback is still logged (only here: user errors never get one).
        return JSONResponse({"error": f"internal error ({type(exc).__name__})", "file": None}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return _page()

    @app.get("/api/health")
    def health() -> dict:
        """The model served (name, path, classes, positive class, thresholds), the limits, the version."""
        return service.health()

    @app.post("/api/predict", responses=errors)
    def predict(files: Annotated[list[UploadFile], File(description="one or more photos")]) -> list[dict]:
        """One record per file, in order, with the fields of `birdcnn predict --json` (`path` is the
        uploaded file's name); a file that cannot be used is `{"path", "error"}`."""
        return service.predict(files)

    @app.post("/api/locate", responses=errors)
    def locate(file: Annotated[UploadFile, File(description="one photo")],
               target: Annotated[str | None, Query(alias="for", description="class(es), comma-separated")] = None,
               min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
               top: Annotated[int, Query(ge=1, le=50)] = 5) -> dict:
        """Where the bird is: boxes `[x0, y0, x1, y1]` in photo pixels with probabilities, the photo
        `size`, the `threshold` a window needed, and `heatmap_png` (base64) with the boxes drawn."""
        return service.locate(file, target, min_probability, top)

    @app.post("/api/explain", responses=errors)
    def explain(file: Annotated[UploadFile, File(description="one photo")]) -> dict:
        """The prediction, the top classes and `gradcam_png` (base64): where the network sees the
        positive class, on the part of the photo it reads."""
        return service.explain(file)

    return app


# ---------------------------------------------------------------- the command

def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), or one line saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as e:
        raise BirdcnnError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None


def _positive(kind: type):
    """argparse type: a number of `kind` above 0 (NaN and inf refused too)."""
    what = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what} above 0, not {text}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--model", help="model file (.json/.safetensors or a run folder; default: the shipped model)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, mps or auto (default: CUDA, then MPS, then CPU)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help=f"largest file accepted (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--max-files", type=_positive(int), default=DEFAULT_MAX_FILES, metavar="N",
                   help=f"most files in one request (default {DEFAULT_MAX_FILES})")
    p.add_argument("--max-megapixels", type=_positive(float), default=DEFAULT_MAX_MEGAPIXELS, metavar="MP",
                   help=f"largest photo accepted, in millions of pixels (default {DEFAULT_MAX_MEGAPIXELS:g}, "
                        f"at most {MAX_PIXELS // 1_000_000}); checked before decoding")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .devices import check_device
    from .modelfile import default_model_path, load_model

    if args.max_megapixels * 1_000_000 > MAX_PIXELS:
        raise BirdcnnError(f"--max-megapixels must be at most {MAX_PIXELS // 1_000_000}, not {args.max_megapixels:g}")
    if not 0 <= args.port <= 65535:
        raise BirdcnnError(f"--port must be from 0 to 65535, not {args.port}")
    with listen(args.host, args.port) as sock:  # first: a busy port is said before the model loads
        model_path = Path(args.model) if args.model else default_model_path()
        model = load_model(model_path, check_device(args.device))
        app = create_app(model, model_path, Limits(args.max_files, args.max_upload_mb, args.max_megapixels))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"birdcnn serve: http://{shown}:{port}/ ({display_path(model_path)} on {model.device}; Ctrl-C to stop)",
              flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])  # info: one access line a request
    return 0
