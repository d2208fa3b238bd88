"""What the web app's page does: what it shows (messages, the frame being marked, the form's values) and
its event handlers, each taking its inputs' values and returning its outputs' updates. ``app_ui.Page``
lays the components out and wires them to these."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np

from . import media, toy, viz
from .app import (
    MAX_REGIONS, App, Form, RegionForm, error_text, add_click, compose_prompt, mask_prompt, prompt_checks, quick_preview,
)
from .app_pictures import swatch, compare_frame, display_scale, draw_prompts, enlarged_gif, result_frames
from .config.parse import load_spec
from .errors import EditCancelled, SpecError, first_line
from .masks import make_masks, parse_region

logger = logging.getLogger("videograin")


class PageHandlers:
    """The behaviour of ``app_ui.Page``: the components are the page's attributes (made by its
    ``build``), ``app`` its App; no per-session data (Gradio passes that in, ``gr.State``)."""

    app: App

    # -- what the page shows -------------------------------------------------------------------------

    @property
    def errors(self) -> dict:
        """The message boxes by what they are for ("": the status beside Edit)."""
        return {"video": self.video_error, "regions": self.region_error, "prompt": self.prompt_error, "": self.status}

    @property
    def recommended_fields(self) -> dict:
        return self.fields_of(self.recommended)

    def fields_of(self, recommended) -> dict:
        """The settings fields at ``recommended``'s values."""
        return {self.steps: recommended.steps, self.guidance: recommended.guidance_scale,
                self.mod_steps: recommended.modulation.steps, self.self_strength: recommended.modulation.self_strength,
                self.cross_strength: recommended.modulation.cross_strength}

    def show(self, message: str = "", where: str = "") -> dict:
        """A message in the status beside Edit (where the eye is) and, for a field's error, in that
        field's box too; the other boxes cleared."""
        return {box: (message if key in (where, "") else "") for key, box in self.errors.items()}

    @staticmethod
    def error_box(err: SpecError) -> str:
        """The field box an error also shows in: prompts by the prompt, video and region fields by theirs."""
        if err.field.endswith("prompt"):
            return "prompt"
        return next((key for key in ("video", "regions") if err.field.startswith(key)), "")

    def frame_image(self, state, index, pending, active, drawn, *texts):
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

    def loaded(self, state, model: str | None = None) -> dict:
        """What a (re)loaded clip shows: its first frame, its size help (for ``model``), no pending marks."""
        pixels = state["pixels"]
        source = (pixels.shape[2], pixels.shape[1])
        return {self.clip: state, self.video_path: state["path"], self.size_info: self.app.size_help(source, model),
                self.frame_index: gr.Slider(0, len(pixels) - 1, 0, step=1), self.corner: None,
                self.region_masks: None, self.preview: draw_prompts(pixels[0], [""], display_scale(pixels[0])),
                **self.show(f"loaded {len(pixels)} frames of {source[0]}x{source[1]}")}

    def set_count(self, n: int, active: int | None = None) -> dict:
        """``n`` regions shown; the clicks target menu lists them, ``active`` (default the last) chosen."""
        active = n if active is None else min(active, n)
        return {self.count: n, self.corner: None,
                self.target: gr.Dropdown([(f"region {i + 1}", str(i + 1)) for i in range(n)],
                                         value=str(active) if n else None),
                **{slot[0]: gr.Group(visible=i < n) for i, slot in enumerate(self.slots)},
                **{box: swatch(i, i + 1 == active) for i, box in enumerate(self.swatches)}}

    def cleared_regions(self) -> dict:
        """No regions: rows hidden and emptied (a new clip's regions are drawn anew)."""
        rows = {c: v for i, slot in enumerate(self.slots) for c, v in zip(slot[1:4], (f"region{i + 1}", "", ""))}
        return {**rows, **self.set_count(0)}

    def form_of(self, data) -> Form:
        """The form's values (``data``: the inputs of ``form_inputs``) as a Form."""
        regions = [RegionForm((data[s[1]] or "").strip(), data[s[2]] or "", data[s[3]] or "", list(data[s[4]] or []))
                   for s in self.slots[: data[self.count]]]
        return Form(video=data[self.video_path] or None, regions=regions, prompt=data[self.prompt],
                    source_prompt=data[self.source_prompt], negative_prompt=data[self.negative_prompt],
                    start=data[self.start], frames=data[self.frames], stride=data[self.stride],
                    width=data[self.width] or None, height=data[self.height] or None, model=data[self.model],
                    method=data[self.method], steps=data[self.steps], guidance_scale=data[self.guidance],
                    seed=data[self.seed], modulation_steps=data[self.mod_steps],
                    self_strength=data[self.self_strength], cross_strength=data[self.cross_strength],
                    blend=data[self.blend], composite=data[self.composite], flow=data[self.flow],
                    record_attention=data[self.attention])

    def rows_of(self, n: int, model: str, prompt: str, texts: list[str]) -> list[str]:
        """Each row's check of its prompt against ``prompt`` with ``model``'s tokens (hidden rows: empty)."""
        tokenizer = self.app.tokenizer(model)
        rows = prompt_checks(tokenizer, prompt, texts) if tokenizer is not None else [""] * n
        return rows + [""] * (MAX_REGIONS - n)

    # -- handlers: the clip ----------------------------------------------------------------------------

    def on_load(self, uploaded, model, request: gr.Request) -> dict:
        """A new clip: its first frames (up to 16) from frame 0, every frame, the model's default size
        for its aspect, no regions; the status says what was reset."""
        try:
            path = self.app.upload(uploaded, request.session_hash)
            count = min(Form.frames, media.count_frames(Path(path)))
            state = read_clip(path, 0, count, 1)
        except SpecError as err:
            return self.show(error_text(err), "video")
        size = self.app.default_size((state["pixels"].shape[2], state["pixels"].shape[1]), model)
        return {**self.loaded(state, model), **self.cleared_regions(), self.start: 0, self.frames: count, self.stride: 1,
                self.width: size[0], self.height: size[1],
                self.status: f"new clip: {count} frames from frame 0, stride 1, edited at {size[0]}x{size[1]}; "
                             "the regions were cleared: add one per object"}

    def on_example(self) -> dict:
        """The bundled example, its selection and size, the model's recommended settings; what to do next
        under the button."""
        spec = load_spec(toy.DEMO_CONFIG)  # through the config gate, as `videograin demo` reads it
        video = spec.video
        state = read_clip(str(video.path), 0, video.frames, 1)
        regions = [r.prompt for r in spec.regions[:2]]
        return {**self.loaded(state), **self.cleared_regions(), **self.recommended_fields, self.model: self.app.model,
                self.model_help: self.app.model_help(self.app.model), self.frames: video.frames,
                self.start: 0, self.stride: 1, self.width: video.size[0], self.height: video.size[1],
                self.source_prompt: spec.source_prompt,
                self.clip_help: f"**loaded the example**: {spec.source_prompt}. Add a region per shape (two "
                                f"clicks on the frame for a box around each), write what each becomes (e.g. "
                                f"`{regions[0]}` on the left, `{regions[1]}` on the right), the prompt "
                                f"(`{spec.prompt}`), press Edit."}

    def on_reselect(self, state, start, frames, stride, model) -> dict:
        if state is None:
            return self.show()
        try:
            return self.loaded(read_clip(state["path"], start, frames, stride), model)
        except SpecError as err:
            return self.show(error_text(err), "video")

    # -- handlers: regions -------------------------------------------------------------------------------

    def on_click(self, data, evt: gr.SelectData) -> dict:
        """A click on the frame: added to the active region's ``where`` (see ``add_click``); the frame is
        redrawn when it or the pending corner changes (a box's first corner shows as a cross)."""
        state, index = data[self.clip], int(data[self.frame_index])
        if state is None:
            return {}
        if not data[self.target] or int(data[self.target]) > data[self.count]:
            return self.show(error_text(SpecError("regions", "no region to mark",
                                                   "press 'Add region' first; clicks mark the active region")),
                             "regions")
        slot = int(data[self.target]) - 1
        frame = state["pixels"][index]
        scale = display_scale(frame)
        x = min(frame.shape[1] - 1, int(evt.index[0]) // scale)
        y = min(frame.shape[0] - 1, int(evt.index[1]) // scale)
        text, pending = add_click(data[self.wheres[slot]] or "", data[self.mode], x, y, index, data[self.corner])
        return {self.corner: pending, self.wheres[slot]: text, **self.show()}

    def on_target(self, active) -> dict:
        return {box: swatch(i, str(i + 1) == active) for i, box in enumerate(self.swatches)}

    def on_preview_masks(self, data, request: gr.Request) -> dict:
        """The marked regions' masks over the clip (a video), and tinted over the frame being marked."""
        state = data[self.clip]
        if state is None:
            return {self.masks_preview: None, self.region_masks: None,
                    **self.show(error_text(SpecError("video.path", "no clip loaded", "load a video first")), "video")}
        form = self.form_of(data)
        marked = [i for i, r in enumerate(form.regions) if r.where.strip()]
        try:
            made = _marked_masks(state["pixels"], form, marked)
        except SpecError as err:
            return {self.masks_preview: None, self.region_masks: None,
                    **self.show(error_text(err), self.error_box(err))}
        masks = np.zeros((len(form.regions), *made.shape[1:]), dtype=bool)  # each region at its own index
        masks[marked] = made
        path = self.app.session_folder("previews", request.session_hash) / "masks_overlay.mp4"
        media.write_video(path, viz.mask_overlay(state["pixels"], masks), state["fps"])
        drawn = {"masks": masks, "wheres": [data[w] or "" for w in self.wheres]}
        return {self.masks_preview: str(path), self.region_masks: drawn, **self.show()}

    def on_region_prompt(self, n, model, current, last, *texts) -> list:
        """A region prompt changed: the prompt follows the regions while it is their composition (or
        empty); every row says whether its prompt occurs in it."""
        texts = list(texts[:n])
        follows = not current or current == last
        now = compose_prompt(texts) if follows else current
        return [now, now if follows else last, *self.rows_of(n, model, now, texts)]

    def on_prompt(self, n, model, current, *texts) -> list[str]:
        return self.rows_of(n, model, current, list(texts[:n]))

    def on_model(self, model, state) -> dict:
        """Another model: its rules in the hints, the settings at its recommended values."""
        source = None if state is None else (state["pixels"].shape[2], state["pixels"].shape[1])
        recommended = self.app.recommended(model)
        return {**self.fields_of(recommended), self.model_help: self.app.model_help(model),
                self.settings_source: source_note(recommended), self.size_info: self.app.size_help(source, model)}

    # -- handlers: the edit ------------------------------------------------------------------------------

    def edit_of(self, data, request: gr.Request, progress, quick_run: bool) -> dict:
        """Edit (or, with ``quick_run``, the quick preview of) the form; the outputs to show."""
        cleared = {self.source_video: None, self.edited_video: None, self.comparison: None, self.grid: None,
                   self.downloads: None, self.attention_maps: gr.Gallery(visible=False), self.result: None,
                   self.result_view: None}

        def on_step(stage: str, done: int, total: int) -> None:
            progress((done, total), desc="inverting" if stage == "invert" else "editing", unit="steps")

        try:
            progress((0, max(1, int(data[self.steps] or 1))), desc="checking, making masks, loading the model")
            form, note = self.form_of(data), ""
            if quick_run:
                form, note = quick_preview(form, self.edit_size(form, data[self.clip]),
                                           self.app.size_multiple(form.model))
            folder, record = self.app.run(form, request.session_hash, on_step)
        except SpecError as err:
            return {**cleared, **self.show(error_text(err), self.error_box(err))}
        except EditCancelled:  # the Cancel event, waiting for this end, says so in the status
            return {**cleared, **self.show(), self.status: gr.skip()}
        except Exception as err:  # a failure inside the edit: shown, logged, the app stays up
            logger.exception("the edit failed")
            return {**cleared, **self.show(f"**failed** — {first_line(err)} (the app's log has the traceback)")}
        return self.results(folder, record, note)

    def edit_size(self, form: Form, state) -> tuple[int, int]:
        """The size the form edits at: its width and height, else the model's default for the clip."""
        if form.width:
            return form.width, form.height
        pixels = state["pixels"] if state is not None else None
        return self.app.default_size((pixels.shape[2], pixels.shape[1]), form.model) if pixels is not None else (0, 0)

    def results(self, folder: Path, record: dict, note: str) -> dict:
        """What a finished run shows: the frame view, videos, pictures, downloads and the status."""
        maps = sorted((folder / "attention").glob("*.png")) if (folder / "attention").is_dir() else []
        gif = enlarged_gif(folder / "comparison.gif", self.app.out / "previews" / f"{folder.name}.gif", record["fps"])
        clips = result_frames(folder)
        seconds, (width, height) = record["timings"]["total"], record["size"]
        return {self.result: clips, self.result_frame: gr.Slider(0, len(clips["edited"]) - 1, 0, step=1),
                self.result_view: compare_frame(clips, 0), self.source_video: str(folder / "source.mp4"),
                self.edited_video: str(folder / "edited.mp4"), self.comparison: str(gif),
                self.grid: str(folder / "comparison.png"),
                self.downloads: [str(folder.with_suffix(".zip")), str(folder / "config.yaml")],
                self.attention_maps: gr.Gallery([str(p) for p in maps], visible=bool(maps)),
                **self.show(f"{note + '. ' if note else ''}done in {seconds:.1f} s: {record['frames']} frames of "
                            f"{width}x{height}, written to `{folder}`. `videograin edit config.yaml --out DIR` "
                            "(the config in the downloads) runs it again.")}

    def on_run(self, data, request: gr.Request, progress=gr.Progress()) -> dict:
        return self.edit_of(data, request, progress, False)

    def on_quick(self, data, request: gr.Request, progress=gr.Progress()) -> dict:
        return self.edit_of(data, request, progress, True)

    def busy_note(self, request: gr.Request):
        """At once on Edit (outside the queue): say so when another session's edit holds the model."""
        if set(self.app.running) - {request.session_hash}:
            return "another edit is running (one at a time); yours starts when it ends"
        return gr.skip()

    def on_cancel(self, request: gr.Request, progress=gr.Progress()):
        """Queued beside the edit (so its status message comes after the edit's last one), it waits until
        the edit has stopped and is the one that writes the status."""
        if request.session_hash not in self.app.running:
            return "no edit of yours is running"
        progress(None, desc="cancelling: the edit stops at its next step")
        if self.app.cancel(request.session_hash):
            return "cancelled — the edit stopped at the end of a step; nothing was written"
        return gr.skip()  # it ended on its own first: its status says so


def source_note(recommended) -> str:
    return f"Steps, guidance and the modulation start from the model's recommended settings ({recommended.source})."


def read_clip(path, start, frames, stride) -> dict:
    """The selected frames of a clip as the page keeps them: {"path", "fps", "pixels" (F, H, W, 3) uint8}."""
    pixels, fps = media.read_video(Path(path), int(start), int(frames), int(stride))
    return {"path": path, "fps": fps, "pixels": pixels}


def _marked_masks(pixels: np.ndarray, form: Form, marked: list[int]) -> np.ndarray:
    """The masks (len(marked), F, H, W) of the regions ``marked`` by a box or clicks, from the weights-free
    tracker; SpecError naming the region (as its row) for a bad one, or when none is marked."""
    if not marked:
        raise SpecError("regions", "no region is marked by a box or clicks", "click on the frame for a region first")
    prompts = []
    for i in marked:
        region = form.regions[i]
        mask_prompt(region.where, f"regions[{i}].masks")  # the app's error text for a bad one
        prompts.append(parse_region(f"{region.name}:{region.where}")[1])
        prompts[-1].check(len(pixels), pixels.shape[2], pixels.shape[1], f"regions[{i}].masks")
    return make_masks(pixels, prompts, progress=False)[0]
