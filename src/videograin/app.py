"""The web app: ``videograin app`` (Gradio, the ``[app]`` extra), or ``videograin.app:build_app()`` for a Space.

A person uploads a clip (or loads the bundled example), marks each region on a frame with a box or
clicks (or uploads its masks), writes what each region becomes, and presses Edit. The progress bar
follows inversion and editing step by step; Cancel stops the run with nothing written; the result is
shown beside the source, with the output folder as a zip and the ``config.yaml`` that reproduces it
with the CLI. Input errors are the CLI's one-line errors, shown next to their field, and start no run.

The form's values become a config (``config_from_form``) that ``videograin.edit`` runs, so the app
checks and edits exactly as ``videograin edit`` does. Everything it writes lies under its output
folder (default ``out/app``): ``uploads/``, ``previews/``, ``runs/<time>/`` and ``runs/<time>.zip``.
"""

import dataclasses
import datetime
import logging
import re
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageSequence

from . import io, toy, viz
from .config.parse import spec_from_dict
from .config.preflight import model_recommended, preflight, read_model
from .config.spec import DEFAULT_MODEL, METHODS, EditSettings
from .errors import EditCancelled, SpecError, first_line
from .inversion_cache import INVERSIONS, InversionCache
from .masks import make_masks, parse_region
from .method.tokens import PromptError, region_token_spans
from .backbones.recommended import FAMILY_DEFAULTS, Recommended
from .runner import edit

logger = logging.getLogger("videograin")

MAX_REGIONS = 6  # region slots in the form
VIDEO_TYPES = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLICK_MODES = ("box corners", "positive click", "negative click")


def default_model() -> str:
    """The toy model the package ships (offline, CPU); Stable Diffusion 1.5 and others are a --model away."""
    return str(toy.SD_MODEL)


# --------------------------------------------------------------------------- the form, as plain values


@dataclass
class RegionForm:
    """One region of the form: ``where`` in the ``videograin masks --region`` syntax without the name
    (``box=x0,y0,x1,y1[@F]; points=x,y,-x,y[@F]``), or ``mask_files``: its uploaded per-frame PNGs or a zip."""

    name: str
    prompt: str
    where: str = ""
    mask_files: list[str] = dataclasses.field(default_factory=list)


@dataclass
class Form:
    """What the app's fields hold; ``config_from_form`` turns it into a config."""

    video: str | None
    regions: list[RegionForm]
    prompt: str
    source_prompt: str = ""
    negative_prompt: str = ""
    start: int = 0
    frames: int = 16
    stride: int = 1
    width: int | None = None  # None (or 0) and height None: the model's default size
    height: int | None = None
    model: str = DEFAULT_MODEL
    method: str = EditSettings.method
    steps: int | None = None  # None: the model's recommended value (and so for the three below)
    guidance_scale: float | None = None
    seed: int = EditSettings.seed
    modulation_steps: int | None = None
    self_strength: float | None = None
    cross_strength: float | None = None
    blend: bool = EditSettings.blend
    composite: bool = EditSettings.composite
    flow: bool = False
    record_attention: bool = False


def mask_prompt(where: str, field: str) -> dict:
    """A region's ``where`` text -> the config's ``masks:`` mapping {box, points, negative, frame}."""
    try:
        prompt = parse_region(f"region:{where}")
    except SpecError as err:
        raise SpecError(field, err.problem.replace("'region:", "'"),
                        "click on the frame (two box corners, or points) or write box=x0,y0,x1,y1 and/or "
                        "points=x,y,-x,y (minus: a negative click), @F for the frame") from None
    mapping = {"points": [list(p) for p in prompt.points], "negative": [list(p) for p in prompt.negative],
               "frame": prompt.frame}
    return ({"box": list(prompt.box)} if prompt.box else {}) | mapping


def _unpack_images(files: list[str], folder: Path, field: str) -> Path:
    """Uploaded per-frame images (frames or masks), or zips of them -> ``folder`` holding them."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        path = Path(file)
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    name = Path(member.filename).name
                    if not member.is_dir() and name.lower().endswith(IMAGE_TYPES) and not name.startswith("."):
                        (folder / name).write_bytes(archive.read(member))
        elif path.suffix.lower() in IMAGE_TYPES:
            shutil.copy(path, folder / path.name)
        else:
            raise SpecError(field, f"{path.name} is neither an image nor a zip",
                            f"upload one image per frame ({'/'.join(IMAGE_TYPES)}) or one zip of them")
    return folder


def config_from_form(form: Form, uploads: Path) -> dict:
    """The config (the YAML's shape) of an edit described by the form; uploaded masks are unpacked
    under ``uploads``. SpecError for what the form lacks (no video, no regions, a region without a
    place); everything else is checked by ``spec_from_dict`` and ``preflight`` as for the CLI."""
    if not form.video:
        raise SpecError("video.path", "no video loaded", "upload a video (or frames) or press 'Load the example'")
    if not form.regions:
        raise SpecError("regions", "no regions", "press 'Add region', mark it on the frame and write its prompt")
    if bool(form.width) != bool(form.height):
        raise SpecError("video.size", "only one of width and height is given",
                        "give both, or leave both at 0 for the model's default size")
    regions = []
    for i, region in enumerate(form.regions):
        field = f"regions[{i}].masks"
        if region.where.strip() and region.mask_files:
            raise SpecError(field, f"region {region.name!r} has both clicks/a box and uploaded masks",
                            "clear its clicks (the 'where' field) or remove its uploaded masks")
        if region.mask_files:
            masks = str(_unpack_images(region.mask_files, uploads / f"masks-{region.name}", field))
        elif region.where.strip():
            masks = mask_prompt(region.where, field)
        else:
            raise SpecError(field, f"region {region.name!r} is not marked",
                            "click on the frame (box corners or points) for it, or upload its masks")
        regions.append({"name": region.name, "prompt": region.prompt, "masks": masks})
    video = {"path": form.video, "start": int(form.start), "frames": int(form.frames), "stride": int(form.stride)}
    if form.width:
        video["size"] = [int(form.width), int(form.height)]
    given = lambda cast, value: None if value is None else cast(value)  # noqa: E731  (None: recommended)
    edit = {"method": form.method, "steps": given(int, form.steps), "guidance_scale": given(float, form.guidance_scale),
            "seed": int(form.seed), "blend": bool(form.blend), "composite": bool(form.composite),
            "record_attention": bool(form.record_attention),
            "modulation": {"steps": given(int, form.modulation_steps), "self_strength": given(float, form.self_strength),
                           "cross_strength": given(float, form.cross_strength)}}
    if form.flow:
        edit["temporal_aids"] = {"flow": {}}
    return {"model": form.model, "video": video, "source_prompt": form.source_prompt, "prompt": form.prompt,
            "negative_prompt": form.negative_prompt, "regions": regions, "edit": edit}


def compose_prompt(region_prompts: list[str]) -> str:
    """A global prompt holding each region prompt word for word (the user may edit it)."""
    return " and ".join(p.strip() for p in region_prompts if p.strip())


def prompt_checks(tokenizer, prompt: str, region_prompts: list[str]) -> list[str]:
    """What each region row says of its prompt before *Edit*: in the prompt (as the edit's token check
    finds it), not in it, or kept (empty)."""
    checks = []
    for region_prompt in region_prompts:
        if not region_prompt.strip():
            checks.append("kept (no prompt)")
            continue
        try:
            region_token_spans(tokenizer, prompt or "", [region_prompt])
            checks.append("✓ in the prompt")
        except PromptError:
            checks.append("✗ not in the prompt: write it there word for word")
    return checks


def add_click(where: str, mode: str, x: int, y: int, frame: int, corner: tuple[int, int] | None):
    """A click on frame ``frame`` at (x, y) added to a region's ``where`` text. ``mode`` "box corners":
    the first click is kept as ``corner``, the second completes the box. Returns (where, corner)."""
    parts = [p.strip() for p in where.split(";") if p.strip()]
    if mode == "box corners":
        if corner is None:
            return where, (x, y)
        (x0, x1), (y0, y1) = sorted((corner[0], x)), sorted((corner[1], y))
        parts = [p for p in parts if not p.startswith("box=")] + [f"box={x0},{y0},{x1 + 1},{y1 + 1}@{frame}"]
        return "; ".join(parts), None
    sign = "-" if mode == "negative click" else ""
    points = [p for p in parts if p.startswith("points=")]
    others = [p for p in parts if not p.startswith("points=")]
    listed = points[0] + "," if points else "points="
    return "; ".join(others + [f"{listed}{sign}{x},{y}@{frame}"]), None


def draw_prompts(frame: np.ndarray, wheres: list[str], scale: int,
                 corner: tuple[tuple[int, int], int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) frame enlarged ``scale`` times (nearest) with each region's box and clicks drawn
    in its colour (positive clicks filled, negative ones hollow); unreadable ``where`` texts skipped.
    ``corner``: ((x, y), region index) of a box's first corner, drawn as a cross until the second."""
    image = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    colours = viz.region_colors(MAX_REGIONS)
    if corner is not None:
        (x, y), region = corner
        colour, arm = tuple(int(c) for c in colours[region]), max(3, 2 * scale)
        cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
        draw.line((cx - arm, cy, cx + arm, cy), fill=colour, width=max(1, scale // 2))
        draw.line((cx, cy - arm, cx, cy + arm), fill=colour, width=max(1, scale // 2))
    for where, colour in zip(wheres, colours):
        try:
            prompt = parse_region(f"r:{where}") if where and where.strip() else None
        except SpecError:
            continue
        if prompt is None:
            continue
        colour = tuple(int(c) for c in colour)
        if prompt.box is not None:
            x0, y0, x1, y1 = (v * scale for v in prompt.box)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=max(1, scale // 2))
        r = max(2, scale)
        for points, fill in ((prompt.points, colour), (prompt.negative, None)):
            for x, y in points:
                cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=max(1, scale // 3))
    return np.asarray(image)


def _swatch(region: int, active: bool) -> str:
    """A region row's colour swatch (its outline's colour on the frame), marked when clicks go to it."""
    r, g, b = (int(c) for c in viz.region_colors(MAX_REGIONS)[region])
    mark = "<b>clicks mark this region</b>" if active else ""
    return (f"<div style='display:flex;align-items:center;gap:6px'><span style='display:inline-block;width:18px;"
            f"height:18px;background:rgb({r},{g},{b});border:{'3px solid black' if active else '1px solid gray'}'>"
            f"</span>{mark}</div>")


def display_scale(frame: np.ndarray, target: int = 384) -> int:
    """Whole-number enlargement so a small frame shows at about ``target`` pixels (1 for large frames)."""
    return max(1, target // max(frame.shape[:2]))


def enlarged_gif(source: Path, target: Path, fps: float, long_side: int = 512) -> Path:
    """``source`` GIF enlarged (nearest) by a whole number so its long side is about ``long_side``."""
    with Image.open(source) as gif:
        frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    scale = display_scale(frames[0], long_side)
    target.parent.mkdir(parents=True, exist_ok=True)
    io.write_gif(target, frames.repeat(scale, axis=1).repeat(scale, axis=2), fps)
    return target


#: What a quick preview keeps of an edit: at most this many frames and steps, at half the size.
PREVIEW_FRAMES, PREVIEW_STEPS = 8, 10


def quick_preview(form: Form, size: tuple[int, int], multiple: int) -> tuple[Form, str]:
    """``form`` made quick to run: at most PREVIEW_FRAMES frames and PREVIEW_STEPS steps, each side of
    ``size`` (the edit's size) halved to the model's ``multiple`` (at least one multiple); and the
    sentence that says so on the result."""
    w, h = (max(multiple, side // 2 // multiple * multiple) for side in size)
    steps = min(PREVIEW_STEPS, form.steps) if form.steps else PREVIEW_STEPS
    quick = dataclasses.replace(form, frames=min(PREVIEW_FRAMES, int(form.frames)), steps=steps, width=w, height=h)
    return quick, f"quick preview: {quick.frames} frames of {w}x{h}, {steps} steps (Edit runs the full settings)"


def result_frames(folder: Path) -> dict[str, np.ndarray]:
    """A finished run's clips for the frame-by-frame view, uint8 (F, H, W, 3) each: its source and
    regions overlay (source.mp4, masks_overlay.mp4) and its edit (the lossless frames/)."""
    count = len(io.list_images(folder / "frames"))
    return {name: io.read_video(path, 0, count, 1)[0] for name, path in
            (("source", folder / "source.mp4"), ("regions", folder / "masks_overlay.mp4"),
             ("edited", folder / "frames"))}


def compare_frame(clips: dict[str, np.ndarray], index: int, width: int = 768) -> np.ndarray:
    """Frame ``index`` of source | edited side by side, the regions overlay under the source, enlarged
    (nearest) by a whole factor to about ``width`` pixels: uint8 (H', W', 3)."""
    i = min(max(0, int(index)), len(clips["edited"]) - 1)
    top = viz.side_by_side(clips["source"][i : i + 1], clips["edited"][i : i + 1])[0]
    below = np.full_like(top, 255)
    below[:, : clips["regions"].shape[2]] = clips["regions"][i]
    both = np.concatenate([top, np.full((2, top.shape[1], 3), 255, np.uint8), below])
    scale = max(1, width // both.shape[1])
    return both.repeat(scale, 0).repeat(scale, 1)


def zip_folder(folder: Path, archive: Path) -> Path:
    """``archive`` holding ``folder``'s files under ``folder.name/``, written through a temporary file."""
    partial = archive.with_name(f".{archive.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, Path(folder.name) / path.relative_to(folder))
    partial.replace(archive)
    return archive


# --------------------------------------------------------------------------- the app


@dataclass
class _Running:
    """One session's edit in progress: its cancel flag, set when it has ended and whether a cancel ended it."""

    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    ended: threading.Event = dataclasses.field(default_factory=threading.Event)
    cancelled: bool = False


class App:
    """The app's state across sessions: its output folder, the loaded pipelines (one model kept in
    memory), one run at a time and a cancel flag per browser session."""

    def __init__(self, out: Path, model: str | None = None, device: str | None = None):
        self.out = Path(out).resolve()
        self.model = model or default_model()
        self.device = device
        self.pipelines: dict = {}
        self._facts = None  # ``facts()``
        self.running: dict[str, _Running] = {}  # per browser session, while it runs an edit

    def session_folder(self, kind: str, session: str, make: bool = True) -> Path:
        """A new folder ``out/<kind>/<time>-<session>`` (made unless ``make`` is False)."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        folder = self.out / kind / f"{stamp}-{session[:8]}"
        if make:
            folder.mkdir(parents=True)
        return folder

    def recommended(self) -> Recommended:
        """The model's recommended settings (what the form starts from); the family's defaults when its
        config cannot be read (the edit then says why)."""
        try:
            return model_recommended(self.model)
        except (SpecError, OSError):
            return FAMILY_DEFAULTS["sd"]

    def facts(self):
        """The model's config facts (``read_model``: size rules, tokenizer), read once; the SpecError or
        OSError that reading it gave, when it cannot be read (the edit then says why)."""
        if self._facts is None:
            try:
                self._facts = read_model(self.model)
            except (SpecError, OSError) as err:
                self._facts = err
        return self._facts

    def default_size(self, source: tuple[int, int]) -> tuple[int, int]:
        """The size a clip of ``source`` (w, h) is edited at by default: its aspect, the long side at most
        512, the model's multiple; (0, 0) (the runner decides) when the model's config is unreadable."""
        facts = self.facts()
        return (0, 0) if isinstance(facts, Exception) else io.fit_size(source, None, facts.size_multiple)

    def tokenizer(self):
        """The model's tokenizer (for the prompt checks), or None when its config is unreadable."""
        facts = self.facts()
        return None if isinstance(facts, Exception) else facts.tokenizer

    def size_multiple(self) -> int:
        """What the model's frame sides must be multiples of (8 when its config is unreadable)."""
        facts = self.facts()
        return 8 if isinstance(facts, Exception) else facts.size_multiple

    def size_help(self, source: tuple[int, int] | None) -> str:
        """The edit size the model takes: its multiple and, for a loaded clip, the default size."""
        facts = self.facts()
        if isinstance(facts, Exception):
            return f"width and height: multiples of the model's size multiple (its config is not readable: {facts})"
        text = f"width and height: multiples of {facts.size_multiple} (0 and 0: the default"
        if source is not None:
            text += f", {'x'.join(map(str, io.fit_size(source, None, facts.size_multiple)))} for this clip"
        return text + ", the long side at most 512)"

    def upload(self, files: list[str] | None, session: str) -> str:
        """Uploaded files -> a video path: one video file, one zip of frames, or several frame images."""
        if not files:
            raise SpecError("video.path", "nothing uploaded", "drop a video file (or frame images) on the upload box")
        paths = [Path(f) for f in files]
        folder = self.session_folder("uploads", session)
        if len(paths) == 1 and paths[0].suffix.lower() in VIDEO_TYPES:
            return str(shutil.copy(paths[0], folder / paths[0].name))
        frames = _unpack_images(files, folder / "frames", "video.path")
        if not any(frames.iterdir()):
            raise SpecError("video.path", "the upload holds no frame images",
                            f"upload one video ({'/'.join(VIDEO_TYPES)}) or frame images ({'/'.join(IMAGE_TYPES)})")
        return str(frames)

    def run(self, form: Form, session: str, on_step) -> tuple[Path, dict]:
        """Check and run the edit of ``form``; returns (output folder, run.json record). SpecError before
        anything is written; EditCancelled when this session's Cancel was pressed during the run."""
        uploads = self.session_folder("uploads", session, make=False)  # made if the form has mask files
        spec = spec_from_dict(config_from_form(form, uploads), uploads)
        preflight(spec)
        folder = self.out / "runs" / uploads.name
        running = self.running[session] = _Running()
        try:
            record = edit(spec, folder, device=self.device, progress=False, pipelines=self.pipelines,
                          on_step=on_step, cancel=running.cancel, argv=["app"],
                          inversion_cache=InversionCache(self.out / INVERSIONS))
        except EditCancelled:
            running.cancelled = True
            raise
        finally:
            del self.running[session]
            running.ended.set()
        io.write_text(folder / "config.yaml", spec.to_yaml(output=False))
        zip_folder(folder, folder.with_suffix(".zip"))
        return folder, record

    def cancel(self, session: str) -> bool:
        """Stop this session's running edit at its next step and wait until it has stopped; True when
        it was cancelled, False when it runs none (or ended before it could be stopped)."""
        running = self.running.get(session)
        if running is None:
            return False
        running.cancel.set()
        running.ended.wait()
        return running.cancelled


def _error_text(err: Exception) -> str:
    """An error as the page shows it: regions numbered as their rows are (``regions[0]`` is region 1)."""
    text = re.sub(r"regions\[(\d+)\]", lambda m: f"region {int(m[1]) + 1}", str(err))
    return f"**error** — {text}"


def _unknown_event(request, err: KeyError):
    """Gradio's queue looks an event's fn_index up unchecked: an unknown one is the client's mistake (400),
    not a server error with a traceback. Any other KeyError stays a 500, logged."""
    from fastapi.responses import JSONResponse

    if request.url.path.endswith("/queue/join"):
        return JSONResponse({"detail": f"unknown event {err}: no such fn_index in this app"}, status_code=400)
    logger.error("error serving %s", request.url.path, exc_info=err)
    return JSONResponse({"detail": "Internal Server Error"}, status_code=500)


#: ``Blocks.launch(app_kwargs=...)`` of the app: its HTTP error handling
LAUNCH_APP_KWARGS = {"exception_handlers": {KeyError: _unknown_event}}


def build_app(model: str | None = None, out: str | Path = "out/app", device: str | None = None):
    """The Gradio Blocks of the app (``.launch()`` it; ``allowed_paths=[out]`` when ``out`` lies outside
    the working directory). ``model``: hub id or folder (default: ``default_model()``)."""
    import gradio as gr

    app = App(Path(out), model, device)
    defaults = EditSettings()
    recommended = app.recommended()
    with gr.Blocks(title="videograin", analytics_enabled=False) as blocks:
        clip = gr.State(None)  # the loaded clip: {"path", "fps", "pixels": (F, H, W, 3) uint8}
        corner = gr.State(None)
        region_masks = gr.State(None)  # the previewed masks and the regions they were made from (frame_image)
        count = gr.State(0)
        gr.Markdown(f"# videograin\nEdit each region of a clip with its own prompt, in one pass "
                    f"(VideoGrain's ST-Layout attention). Model: `{app.model}`.")

        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Video")
                files = gr.File(label="video (mp4/webm/gif/mov) or frame images", file_count="multiple",
                                elem_id="upload")
                with gr.Row():
                    load_example = gr.Button("Load the example", elem_id="load-example",
                                             visible=(toy.DEMO / "frames").is_dir())
                    load = gr.Button("Load clip", elem_id="load-clip")
                preview_help = gr.Markdown(elem_id="clip-help")
                video_path = gr.Textbox(label="video path", interactive=False, elem_id="video-path")
                with gr.Row():
                    start = gr.Number(0, label="start frame", precision=0, minimum=0)
                    frames = gr.Number(16, label="frames", precision=0, minimum=1, elem_id="frames")
                    stride = gr.Number(1, label="stride", precision=0, minimum=1)
                with gr.Row():
                    width = gr.Number(0, label="width", precision=0, minimum=0, elem_id="width")
                    height = gr.Number(0, label="height", precision=0, minimum=0, elem_id="height")
                size_info = gr.Markdown(app.size_help(None))
                video_error = gr.Markdown(elem_id="video-error")
            with gr.Column():
                gr.Markdown("### 2. Regions\nPick a region and a click mode, then click on the frame.")
                frame_index = gr.Slider(0, 15, 0, step=1, label="frame shown (clicks land on it)")
                preview = gr.Image(label="frame: click to mark regions", interactive=False, elem_id="frame")
                with gr.Row():
                    target = gr.Dropdown([], value=None, label="clicks mark region", elem_id="target",
                                         info="the regions that exist; Add region makes the new one active")
                    mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="click mode")
                masks_preview = gr.Video(label="masks over the clip", elem_id="masks-preview")
                preview_masks = gr.Button("Preview masks", elem_id="preview-masks")

        slots, swatches, checks = [], [], []
        with gr.Column():
            with gr.Row():
                add_region = gr.Button("Add region", elem_id="add-region")
                remove_region = gr.Button("Remove last region", elem_id="remove-region")
            for i in range(MAX_REGIONS):
                with gr.Group(visible=False) as group, gr.Row():
                    swatch = gr.HTML(_swatch(i, False), elem_id=f"region-{i}-swatch", min_height=0)
                    name = gr.Textbox(f"region{i + 1}", label=f"region {i + 1}: name", elem_id=f"region-{i}-name")
                    prompt = gr.Textbox(label="becomes (empty: kept)", elem_id=f"region-{i}-prompt")
                    where = gr.Textbox(label="where: box=x0,y0,x1,y1 / points=x,y,-x,y (@frame)",
                                       elem_id=f"region-{i}-where")
                    upload = gr.File(label="or its masks (PNGs or a zip)", file_count="multiple", height=80)
                    checks.append(gr.Markdown(elem_id=f"region-{i}-check"))
                slots.append((group, name, prompt, where, upload))
                swatches.append(swatch)
            region_error = gr.Markdown(elem_id="region-error")

        composed = gr.State("")  # the prompt as last composed from the regions (kept in step until edited)
        gr.Markdown("### 3. Prompt")
        with gr.Row():
            source_prompt = gr.Textbox(label="source prompt (the clip as it is)", elem_id="source-prompt")
            prompt = gr.Textbox(label="prompt (the edited clip; holds each region prompt word for word)",
                                elem_id="prompt")
            compose = gr.Button("Compose from regions", elem_id="compose", scale=0)
        negative_prompt = gr.Textbox(label="negative prompt")
        prompt_error = gr.Markdown(elem_id="prompt-error")

        with gr.Accordion("4. Settings", open=True):
            with gr.Row():
                gr.Markdown(f"Steps, guidance and the modulation start from the model's recommended settings "
                            f"({recommended.source}).", elem_id="settings-source")
                reset = gr.Button("Reset to recommended", elem_id="reset-settings", scale=0)
            with gr.Row():
                method = gr.Dropdown(list(METHODS), value=defaults.method, label="method",
                                     info="VideoGrain's layout attention, ReAtCo's guidance, or both")
                steps = gr.Number(recommended.steps, label="steps", precision=0, minimum=1, elem_id="steps")
                guidance = gr.Number(recommended.guidance_scale, label="guidance scale")
                seed = gr.Number(defaults.seed, label="seed", precision=0, minimum=0)
            with gr.Row():
                mod_steps = gr.Number(recommended.modulation.steps, label="modulated steps", precision=0, minimum=0,
                                      info="the first N edit steps modulate attention")
                self_strength = gr.Number(recommended.modulation.self_strength, label="self-attention strength")
                cross_strength = gr.Number(recommended.modulation.cross_strength, label="cross-attention strength")
            with gr.Row():
                blend = gr.Checkbox(defaults.blend, label="latent blend (keep what no region edits)")
                composite = gr.Checkbox(defaults.composite, label="composite the source's pixels outside edits")
                flow = gr.Checkbox(False, label="flow-guided attention (temporal aid)")
                attention = gr.Checkbox(False, label="record attention maps")

        with gr.Row():
            run = gr.Button("Edit", variant="primary", elem_id="run")
            quick = gr.Button(f"Quick preview (≤{PREVIEW_FRAMES} frames, ≤{PREVIEW_STEPS} steps, half size)",
                              elem_id="quick")
            cancel = gr.Button("Cancel", elem_id="cancel")
        status = gr.Markdown(elem_id="status")
        result = gr.State(None)  # the last result's clips (``result_frames``)
        with gr.Group():
            result_frame = gr.Slider(0, 1, 0, step=1, label="result frame: source | edited, regions below",
                                     elem_id="result-frame", interactive=True)
            result_view = gr.Image(label="source | edited (the same frame)", elem_id="result-view",
                                   interactive=False)
        with gr.Row():
            source_video = gr.Video(label="source", elem_id="source-video")
            edited_video = gr.Video(label="edited", elem_id="edited-video")
        with gr.Row():
            comparison = gr.Image(label="source | edited", type="filepath", elem_id="comparison")
            grid = gr.Image(label="source, regions, edited", type="filepath", elem_id="grid")
        attention_maps = gr.Gallery(label="attention maps", visible=False)
        downloads = gr.File(label="downloads: the output folder (zip) and config.yaml", elem_id="downloads")

        # -- handlers --------------------------------------------------------------------------
        recommended_fields = {steps: recommended.steps, guidance: recommended.guidance_scale,
                              mod_steps: recommended.modulation.steps,
                              self_strength: recommended.modulation.self_strength,
                              cross_strength: recommended.modulation.cross_strength}
        wheres = [slot[3] for slot in slots]
        errors = {"video": video_error, "regions": region_error, "prompt": prompt_error, "": status}

        def show(message: str = "", where: str = "") -> dict:
            """A message in the status beside Edit (where the eye is) and, for a field's error, in that
            field's box too; the other boxes cleared."""
            return {box: (message if key in (where, "") else "") for key, box in errors.items()}

        def error_box(err: SpecError) -> str:
            """Where an error shows: prompts (a region prompt missing from the prompt too) by the
            prompt, video and region fields by theirs, the rest by the Edit button."""
            if err.field.endswith("prompt"):
                return "prompt"
            return next((key for key in ("video", "regions") if err.field.startswith(key)), "")

        def read_clip(path, start_value, frames_value, stride_value):
            pixels, fps = io.read_video(Path(path), int(start_value), int(frames_value), int(stride_value))
            return {"path": path, "fps": fps, "pixels": pixels}

        def frame_image(state, index, pending, active, drawn, *texts):
            """The frame shown for marking: the previewed masks tinted over it while the regions are as
            they were previewed (``drawn``), each region's box and clicks, a box's pending corner."""
            if state is None:
                return None
            index = min(int(index), len(state["pixels"]) - 1)
            frame = state["pixels"][index]
            if drawn is not None and drawn["wheres"] == [t or "" for t in texts]:
                frame = viz.mask_overlay(frame[None], drawn["masks"][:, index : index + 1])[0]
            marked = None if pending is None or not active else (tuple(pending), int(active) - 1)
            return draw_prompts(frame, list(texts), display_scale(frame), marked)

        def loaded(state):
            pixels = state["pixels"]
            source = (pixels.shape[2], pixels.shape[1])
            return {clip: state, video_path: state["path"], size_info: app.size_help(source),
                    frame_index: gr.Slider(0, len(pixels) - 1, 0, step=1), corner: None, region_masks: None,
                    preview: draw_prompts(pixels[0], [""], display_scale(pixels[0])),
                    **show(f"loaded {len(pixels)} frames of {source[0]}x{source[1]}")}

        def cleared_regions() -> dict:
            """No regions: rows hidden and emptied (a new clip's regions are drawn anew)."""
            rows = {c: v for slot in slots for c, v in zip(slot[1:4], (f"region{slots.index(slot) + 1}", "", ""))}
            return {**rows, **set_count(0)}

        def on_load(uploaded, request: gr.Request):
            """A new clip: its first frames (up to 16) from frame 0, every frame, the model's default size
            for its aspect, no regions; the status says what was reset."""
            try:
                path = app.upload(uploaded, request.session_hash)
                count_of = min(Form.frames, io.count_frames(Path(path)))
                state = read_clip(path, 0, count_of, 1)
            except SpecError as err:
                return show(_error_text(err), "video")
            size = app.default_size((state["pixels"].shape[2], state["pixels"].shape[1]))
            return {**loaded(state), **cleared_regions(), start: 0, frames: count_of, stride: 1, width: size[0],
                    height: size[1], status: f"new clip: {count_of} frames from frame 0, stride 1, edited at "
                                             f"{size[0]}x{size[1]}; the regions were cleared: add one per object"}

        def on_example():
            config = yaml.safe_load((toy.DEMO / "config.yaml").read_text(encoding="utf-8"))
            path = str(toy.DEMO / config["video"]["path"])
            state = read_clip(path, 0, config["video"]["frames"], 1)
            return {**loaded(state), **cleared_regions(), frames: config["video"]["frames"], start: 0, stride: 1,
                    width: config["video"]["size"][0], height: config["video"]["size"][1],
                    source_prompt: config["source_prompt"], **recommended_fields,
                    preview_help: "**loaded the example**: {}. Add a region per shape (two clicks on the frame for "
                                  "a box around each), write what each becomes (e.g. `{}` on the left, `{}` on the "
                                  "right), the prompt (`{}`), press Edit.".format(
                                      config["source_prompt"], *(r["prompt"] for r in config["regions"][:2]),
                                      config["prompt"])}

        def on_reselect(state, start_value, frames_value, stride_value):
            if state is None:
                return show()
            try:
                return loaded(read_clip(state["path"], start_value, frames_value, stride_value))
            except SpecError as err:
                return show(_error_text(err), "video")

        def on_click(data, evt: gr.SelectData):
            """A click on the frame: added to the active region's ``where`` (see ``add_click``); the frame is
            redrawn when it or the pending corner changes (a box's first corner shows as a cross)."""
            state, index = data[clip], int(data[frame_index])
            if state is None:
                return {}
            if not data[target] or int(data[target]) > data[count]:
                return show(_error_text(SpecError("regions", "no region to mark",
                                                  "press 'Add region' first; clicks mark the active region")),
                            "regions")
            slot = int(data[target]) - 1
            frame = state["pixels"][index]
            scale = display_scale(frame)
            x = min(frame.shape[1] - 1, int(evt.index[0]) // scale)
            y = min(frame.shape[0] - 1, int(evt.index[1]) // scale)
            text, pending = add_click(data[wheres[slot]] or "", data[mode], x, y, index, data[corner])
            return {corner: pending, wheres[slot]: text, **show()}

        def set_count(n, active: int | None = None) -> dict:
            """``n`` regions shown; the clicks target menu lists them, ``active`` (default the last) chosen."""
            active = n if active is None else min(active, n)
            return {count: n, target: gr.Dropdown([(f"region {i + 1}", str(i + 1)) for i in range(n)],
                                                  value=str(active) if n else None),
                    **{slot[0]: gr.Group(visible=i < n) for i, slot in enumerate(slots)},
                    **{swatch: _swatch(i, i + 1 == active) for i, swatch in enumerate(swatches)}}

        def on_target(active):
            return {swatch: _swatch(i, str(i + 1) == active) for i, swatch in enumerate(swatches)}

        def form_of(data) -> Form:
            n = data[count]
            regions = [RegionForm((data[s[1]] or "").strip(), data[s[2]] or "", data[s[3]] or "", list(data[s[4]] or []))
                       for s in slots[:n]]
            return Form(video=data[video_path] or None, regions=regions, prompt=data[prompt],
                        source_prompt=data[source_prompt], negative_prompt=data[negative_prompt],
                        start=data[start], frames=data[frames], stride=data[stride], width=data[width] or None,
                        height=data[height] or None, model=app.model, method=data[method], steps=data[steps],
                        guidance_scale=data[guidance], seed=data[seed], modulation_steps=data[mod_steps],
                        self_strength=data[self_strength], cross_strength=data[cross_strength], blend=data[blend],
                        composite=data[composite], flow=data[flow], record_attention=data[attention])

        def on_preview_masks(data, request: gr.Request):
            state = data[clip]
            if state is None:
                return {masks_preview: None, region_masks: None, **show(_error_text(SpecError("video.path", "no clip loaded",
                                                                          "load a video first")), "video")}
            try:
                form = form_of(data)
                marked = [i for i, r in enumerate(form.regions) if r.where.strip()]
                if not marked:
                    raise SpecError("regions", "no region is marked by a box or clicks",
                                    "click on the frame for a region first")
                prompts = []
                for i in marked:
                    r = form.regions[i]
                    mask_prompt(r.where, f"regions[{i}].masks")  # the app's error text for a bad one
                    prompts.append(parse_region(f"{r.name}:{r.where}"))
                    prompts[-1].check(len(state["pixels"]), state["pixels"].shape[2], state["pixels"].shape[1],
                                      f"regions[{i}].masks")
                made, _ = make_masks(state["pixels"], prompts, progress=False)
            except SpecError as err:
                return {masks_preview: None, region_masks: None, **show(_error_text(err), error_box(err))}
            masks = np.zeros((len(form.regions), *made.shape[1:]), dtype=bool)  # each region at its own index
            masks[marked] = made
            path = app.session_folder("previews", request.session_hash) / "masks_overlay.mp4"
            io.write_video(path, viz.mask_overlay(state["pixels"], masks), state["fps"])
            drawn = {"masks": masks, "wheres": [data[w] or "" for w in wheres]}
            return {masks_preview: str(path), region_masks: drawn, **show()}

        def edit_of(data, request: gr.Request, progress, quick_run: bool) -> dict:
            """Edit (or, with ``quick_run``, the quick preview of) the form; the outputs to show."""
            cleared = {source_video: None, edited_video: None, comparison: None, grid: None, downloads: None,
                       attention_maps: gr.Gallery(visible=False), result: None, result_view: None}
            steps_total = max(1, int(data[steps] or 1))

            def on_step(stage: str, done: int, total: int) -> None:
                progress((done, total), desc="inverting" if stage == "invert" else "editing", unit="steps")

            try:
                progress((0, steps_total), desc="checking, making masks, loading the model")
                form, note = form_of(data), ""
                if quick_run:
                    pixels = data[clip]["pixels"] if data[clip] is not None else None
                    size = ((form.width, form.height) if form.width else
                            app.default_size((pixels.shape[2], pixels.shape[1])) if pixels is not None else (0, 0))
                    form, note = quick_preview(form, size, app.size_multiple())
                folder, record = app.run(form, request.session_hash, on_step)
            except SpecError as err:
                return {**cleared, **show(_error_text(err), error_box(err))}
            except EditCancelled:  # the Cancel event, waiting for this end, says so in the status
                return {**cleared, **show(), status: gr.skip()}
            except Exception as err:  # a failure inside the edit: shown, logged, the app stays up
                logger.exception("the edit failed")
                return {**cleared, **show(f"**failed** — {first_line(err)} (the app's log has the traceback)")}
            maps = sorted((folder / "attention").glob("*.png")) if (folder / "attention").is_dir() else []
            seconds = record["timings"]["total"]
            gif = enlarged_gif(folder / "comparison.gif", app.out / "previews" / f"{folder.name}.gif", record["fps"])
            clips = result_frames(folder)
            return {result: clips, result_frame: gr.Slider(0, len(clips["edited"]) - 1, 0, step=1),
                    result_view: compare_frame(clips, 0),
                    source_video: str(folder / "source.mp4"), edited_video: str(folder / "edited.mp4"),
                    comparison: str(gif), grid: str(folder / "comparison.png"),
                    downloads: [str(folder.with_suffix(".zip")), str(folder / "config.yaml")],
                    attention_maps: gr.Gallery([str(p) for p in maps], visible=bool(maps)),
                    **show(f"{note + '. ' if note else ''}done in {seconds:.1f} s: {record['frames']} frames of "
                           f"{record['size'][0]}x{record['size'][1]}, written to `{folder}`. `videograin edit "
                           "config.yaml --out DIR` (the config in the downloads) runs it again.")}

        def on_run(data, request: gr.Request, progress=gr.Progress()):
            return edit_of(data, request, progress, False)

        def on_quick(data, request: gr.Request, progress=gr.Progress()):
            return edit_of(data, request, progress, True)

        def busy_note(request: gr.Request):
            """At once on Edit (outside the queue): say so when another session's edit holds the model."""
            if set(app.running) - {request.session_hash}:
                return "another edit is running (one at a time); yours starts when it ends"
            return gr.skip()

        def on_cancel(request: gr.Request, progress=gr.Progress()):
            """Queued beside the edit (so its status message comes after the edit's last one), it
            waits until the edit has stopped and is the one that writes the status."""
            if request.session_hash not in app.running:
                return "no edit of yours is running"
            progress(None, desc="cancelling: the edit stops at its next step")
            if app.cancel(request.session_hash):
                return "cancelled — the edit stopped at the end of a step; nothing was written"
            return gr.skip()  # it ended on its own first: its status says so

        select_inputs = [start, frames, stride]
        region_fields = [c for slot in slots for c in slot[:4]]
        region_outputs = [count, target, *swatches, *region_fields]
        shown = [clip, video_path, size_info, frame_index, preview, corner, region_masks]  # a clip (re)loaded
        files.upload(on_load, files, [*shown, start, frames, stride, width, height, *region_outputs, *errors.values()])
        load.click(on_reselect, [clip, *select_inputs], [*shown, *errors.values()])
        load_example.click(on_example, None, [*shown, frames, start, stride, width, height, source_prompt, steps,
                                              guidance, mod_steps, self_strength, cross_strength, preview_help,
                                              *region_outputs, *errors.values()])
        redraw = dict(fn=frame_image, inputs=[clip, frame_index, corner, target, region_masks, *wheres],
                      outputs=preview)
        for changed in (frame_index, corner, region_masks, *wheres):
            changed.change(**redraw)
        target.change(on_target, target, swatches)
        preview.select(on_click, {clip, frame_index, mode, target, count, corner, *wheres},
                       [corner, *wheres, *errors.values()])
        add_region.click(lambda n: {**set_count(min(MAX_REGIONS, n + 1)), corner: None}, count,
                         [count, target, corner, *swatches, *[s[0] for s in slots]])
        remove_region.click(lambda n, active: {**set_count(max(0, n - 1), int(active or 0)), corner: None},
                            [count, target], [count, target, corner, *swatches, *[s[0] for s in slots]])
        reset.click(lambda: recommended_fields, None, list(recommended_fields))
        compose.click(lambda n, *texts: [compose_prompt(list(texts[:n]))] * 2, [count, *[s[2] for s in slots]],
                      [prompt, composed])
        region_prompts = [s[2] for s in slots]

        def rows_of(n: int, prompt_text: str, texts: list[str]) -> list[str]:
            """Each row's check of its prompt against ``prompt_text`` (hidden rows: empty)."""
            tokenizer = app.tokenizer()
            rows = prompt_checks(tokenizer, prompt_text, texts) if tokenizer is not None else [""] * n
            return rows + [""] * (MAX_REGIONS - n)

        def on_region_prompt(n, current, last, *texts):
            """A region prompt changed: the prompt follows the regions while it is their composition (or
            empty); every row says whether its prompt occurs in it."""
            texts = list(texts[:n])
            follows = not current or current == last
            now = compose_prompt(texts) if follows else current
            return [now, now if follows else last, *rows_of(n, now, texts)]

        for changed in (*region_prompts, count):
            changed.change(on_region_prompt, [count, prompt, composed, *region_prompts], [prompt, composed, *checks],
                           show_progress="hidden")
        prompt.blur(lambda n, current, *texts: rows_of(n, current, list(texts[:n])), [count, prompt, *region_prompts],
                    checks, show_progress="hidden")
        form_inputs = {clip, count, video_path, prompt, source_prompt, negative_prompt, start, frames, stride, width,
                       height, method, steps, guidance, seed, mod_steps, self_strength, cross_strength, blend,
                       composite, flow, attention, *[c for slot in slots for c in slot[1:]]}
        preview_masks.click(on_preview_masks, form_inputs | {region_masks}, [masks_preview, region_masks,
                                                                               *errors.values()])
        results = [source_video, edited_video, comparison, grid, downloads, attention_maps, result, result_frame,
                   result_view, *errors.values()]
        for button, handler in ((run, on_run), (quick, on_quick)):
            button.click(busy_note, None, status, queue=False)  # first: the run's handler starts after it
            button.click(handler, form_inputs, results, concurrency_limit=1, concurrency_id="edit",
                         show_progress_on=[status])  # one progress bar, beside Edit
        result_frame.change(lambda clips, i: None if clips is None else compare_frame(clips, i),
                            [result, result_frame], result_view, show_progress="hidden")
        cancel.click(on_cancel, None, status, concurrency_limit=None, concurrency_id="cancel")
    return blocks
