"""The web app's logic: ``videograin app`` (Gradio, the ``[app]`` extra), or ``videograin.app_ui:build_app()``
for a Space.

A person uploads a clip (or loads the bundled example), marks each region on a frame with a box or
clicks (or uploads its masks), writes what each region becomes, and presses Edit. The progress bar
follows inversion and editing step by step; Cancel stops the run with nothing written; the result is
shown beside the source, with the output folder as a zip and the ``config.yaml`` that reproduces it
with the CLI. Input errors are the CLI's one-line errors, shown next to their field, and start no run.

The form's values become a config (``config_from_form``) that ``videograin.edit`` runs, so the app
checks and edits exactly as ``videograin edit`` does. Everything it writes lies under its output
folder (default ``out/app``): ``uploads/``, ``previews/``, ``runs/<time>/`` and ``runs/<time>.zip``.
This module holds the app's logic without Gradio (the form, its config, ``App``: the state across
sessions); its pictures are in ``app_pictures``, the page's layout in ``app_ui.Page`` (one method per
panel, built by ``app_ui.build_app``) and its handlers in ``app_handlers.PageHandlers``.
"""

import dataclasses
import datetime
import re
import shutil
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path


from . import media, sizes, toy
from .config.parse import spec_from_dict
from .config.preflight import model_recommended, preflight, read_model
from .config.spec import DEFAULT_MODEL, EditSettings
from .errors import EditCancelled, SpecError
from .inversion_cache import INVERSIONS, InversionCache
from .masks import parse_region
from .method.tokens import PromptError, region_token_spans
from .values import is_edited
from .backbones.recommended import FAMILY_DEFAULTS, Recommended
from .runner import edit


MAX_REGIONS = 6  # region slots in the form
CLICK_MODES = ("box corners", "positive click", "negative click")


def cached_pipelines() -> list[str]:
    """Hub ids of the diffusers pipelines (a model_index.json) in the local Hugging Face cache; none when
    the cache cannot be read. Reads the cache's listing only."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # noqa: BLE001 - no cache, or one it cannot read: nothing to offer
        return []
    return sorted(repo.repo_id for repo in repos if repo.repo_type == "model" and any(
        file.file_name == "model_index.json" for revision in repo.revisions for file in revision.files))


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
        _, prompt = parse_region(f"region:{where}")
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
                    if not member.is_dir() and name.lower().endswith(media.IMAGE_SUFFIXES) and not name.startswith("."):
                        (folder / name).write_bytes(archive.read(member))
        elif path.suffix.lower() in media.IMAGE_SUFFIXES:
            shutil.copy(path, folder / path.name)
        else:
            raise SpecError(field, f"{path.name} is neither an image nor a zip",
                            f"upload one image per frame ({'/'.join(media.IMAGE_SUFFIXES)}) or one zip of them")
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
    return " and ".join(p.strip() for p in region_prompts if is_edited(p))


def prompt_checks(tokenizer, prompt: str, region_prompts: list[str]) -> list[str]:
    """What each region row says of its prompt before *Edit*: in the prompt (as the edit's token check
    finds it), not in it, or kept (empty)."""
    checks = []
    for region_prompt in region_prompts:
        if not is_edited(region_prompt):
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
    parts = [part.strip() for part in where.split(";") if part.strip()]
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


#: What a quick preview keeps of an edit: at most this many frames and steps, at half the size.
PREVIEW_FRAMES, PREVIEW_STEPS = 8, 10


def quick_preview(form: Form, size: tuple[int, int], multiple: int) -> tuple[Form, str]:
    """``form`` made quick to run: at most PREVIEW_FRAMES frames and PREVIEW_STEPS steps, each side of
    ``size`` (the edit's size) halved to the model's ``multiple`` (at least one multiple); and the
    sentence that says so on the result."""
    w, h = sizes.default_size(size, multiple, long_side=max(size) // 2)
    steps = min(PREVIEW_STEPS, form.steps) if form.steps else PREVIEW_STEPS
    quick = dataclasses.replace(form, frames=min(PREVIEW_FRAMES, int(form.frames)), steps=steps, width=w, height=h)
    return quick, f"quick preview: {quick.frames} frames of {w}x{h}, {steps} steps (Edit runs the full settings)"


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
        self._facts: dict = {}  # ``facts()`` by model
        self.running: dict[str, _Running] = {}  # per browser session, while it runs an edit

    def session_folder(self, kind: str, session: str, make: bool = True) -> Path:
        """A new folder ``out/<kind>/<time>-<session>`` (made unless ``make`` is False)."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        folder = self.out / kind / f"{stamp}-{session[:8]}"
        if make:
            folder.mkdir(parents=True)
        return folder

    def models(self) -> list[tuple[str, str]]:
        """The models to choose from, (label, folder or hub id): the bundled toy models, ``--model``, and
        the diffusers pipelines in the Hugging Face cache (nothing is downloaded)."""
        found = [("toy SD (bundled)", str(toy.SD_MODEL)), ("toy SD with parts (bundled)", str(toy.PARTS_MODEL)),
                 ("toy Wan (bundled)", str(toy.WAN_MODEL))]
        found += [(model, model) for model in [self.model, *cached_pipelines()] if model not in dict(found).values()]
        return list(dict.fromkeys(found))

    def recommended(self, model: str | None = None) -> Recommended:
        """A model's recommended settings (default: the app's; what the form starts from); the family's
        defaults when its config cannot be read (the edit then says why)."""
        try:
            return model_recommended(model or self.model)
        except (SpecError, OSError):
            return FAMILY_DEFAULTS["sd"]

    def facts(self, model: str | None = None):
        """A model's config facts (default: the app's; ``read_model``: size rules, tokenizer), read once;
        the SpecError or OSError that reading it gave, when it cannot be read (the edit then says why)."""
        model = model or self.model
        if model not in self._facts:
            try:
                self._facts[model] = read_model(model)
            except (SpecError, OSError) as err:
                self._facts[model] = err
        return self._facts[model]

    def model_help(self, model: str) -> str:
        """What a model asks of a clip, for the form: its frame-count and size rules, its recommended steps."""
        facts = self.facts(model)
        if isinstance(facts, Exception):
            return f"the model cannot be read: {facts}"
        caps, recommended = facts.capabilities, self.recommended(model)
        frames = (f"frames: {caps.frame_chunk}k + 1 (e.g. {caps.frame_chunk * 2 + 1}, {caps.frame_chunk * 4 + 1}); "
                  if caps.frame_chunk > 1 else "")
        return (f"{caps.family.upper()} model: {frames}sides multiples of {caps.size_multiple}; recommended "
                f"{recommended.steps} steps, guidance {recommended.guidance_scale} ({recommended.source})")

    def default_size(self, source: tuple[int, int], model: str | None = None) -> tuple[int, int]:
        """The size a clip of ``source`` (w, h) is edited at by default: its aspect, the long side at most
        512, the model's multiple; (0, 0) (the runner decides) when the model's config is unreadable."""
        facts = self.facts(model)
        return (0, 0) if isinstance(facts, Exception) else sizes.default_size(source, facts.size_multiple)

    def tokenizer(self, model: str | None = None):
        """The model's tokenizer (for the prompt checks), or None when its config is unreadable."""
        facts = self.facts(model)
        return None if isinstance(facts, Exception) else facts.tokenizer

    def size_multiple(self, model: str | None = None) -> int:
        """What the model's frame sides must be multiples of (8 when its config is unreadable)."""
        facts = self.facts(model)
        return 8 if isinstance(facts, Exception) else facts.size_multiple

    def size_help(self, source: tuple[int, int] | None, model: str | None = None) -> str:
        """The edit size the model takes: its multiple and, for a loaded clip, the default size."""
        facts = self.facts(model)
        if isinstance(facts, Exception):
            return f"width and height: multiples of the model's size multiple (its config is not readable: {facts})"
        text = f"width and height: multiples of {facts.size_multiple} (0 and 0: the default"
        if source is not None:
            text += f", {'x'.join(map(str, sizes.default_size(source, facts.size_multiple)))} for this clip"
        return text + ", the long side at most 512)"

    def upload(self, files: list[str] | None, session: str) -> str:
        """Uploaded files -> a video path: one video file, one zip of frames, or several frame images."""
        if not files:
            raise SpecError("video.path", "nothing uploaded", "drop a video file (or frame images) on the upload box")
        paths = [Path(f) for f in files]
        folder = self.session_folder("uploads", session)
        if len(paths) == 1 and paths[0].suffix.lower() in media.VIDEO_SUFFIXES:
            return str(shutil.copy(paths[0], folder / paths[0].name))
        frames = _unpack_images(files, folder / "frames", "video.path")
        if not any(frames.iterdir()):
            raise SpecError("video.path", "the upload holds no frame images",
                            f"upload one video ({'/'.join(media.VIDEO_SUFFIXES)}) or frame images ({'/'.join(media.IMAGE_SUFFIXES)})")
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
        media.write_text(folder / "config.yaml", spec.to_yaml(output=False))
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


def error_text(err: Exception) -> str:
    """An error as the page shows it: regions numbered as their rows are (``regions[0]`` is region 1)."""
    text = re.sub(r"regions\[(\d+)\]", lambda m: f"region {int(m[1]) + 1}", str(err))
    return f"**error** — {text}"


