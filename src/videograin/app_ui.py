"""The web app's page (Gradio): its panels, laid out by ``Page.build``, and what each control does, wired
by ``Page.wire``. The logic without Gradio (the form as plain values, the config it becomes, the app's
state across sessions, the pictures it shows) is in :mod:`videograin.app`; this module is imported
only when a page is built (``videograin.app.build_app``), so the core runs without the ``[app]`` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import numpy as np
import yaml

from . import media, toy, viz
from .app import (
    CLICK_MODES, MAX_REGIONS, PREVIEW_FRAMES, PREVIEW_STEPS, App, Form, RegionForm, error_text, swatch, add_click,
    compare_frame, compose_prompt, display_scale, draw_prompts, enlarged_gif, mask_prompt, prompt_checks,
    quick_preview, result_frames,
)
from .config.spec import METHODS, EditSettings
from .errors import EditCancelled, SpecError, first_line
from .masks import make_masks, parse_region

logger = logging.getLogger("videograin")


class Page:
    """The app's page for ``app``: every component an attribute (``build``), every handler a method
    (``wire`` connects them). Holds no per-session data: Gradio passes that in (``gr.State``)."""

    def __init__(self, app: App):
        self.app = app
        self.recommended = app.recommended()

    # -- layout ------------------------------------------------------------------------------------

    def build(self) -> None:
        """Lay the page out inside an open ``gr.Blocks``."""
        self.clip = gr.State(None)  # the loaded clip: {"path", "fps", "pixels": (F, H, W, 3) uint8}
        self.corner = gr.State(None)  # a box's first corner, until the second click
        self.region_masks = gr.State(None)  # the previewed masks and the regions they came from
        self.count = gr.State(0)  # regions shown
        self.composed = gr.State("")  # the prompt as last composed from the regions
        self.result = gr.State(None)  # the last result's clips (``result_frames``)
        gr.Markdown(f"# videograin\nEdit each region of a clip with its own prompt, in one pass "
                    f"(VideoGrain's ST-Layout attention). Model: `{self.app.model}`.")
        with gr.Row():
            with gr.Column():
                self.video_panel()
            with gr.Column():
                self.frame_panel()
        self.regions_panel()
        self.prompt_panel()
        self.settings_panel()
        self.results_panel()

    def video_panel(self) -> None:
        gr.Markdown("### 1. Video")
        self.files = gr.File(label="video (mp4/webm/gif/mov) or frame images", file_count="multiple",
                             elem_id="upload")
        with gr.Row():
            self.load_example = gr.Button("Load the example", elem_id="load-example",
                                          visible=(toy.DEMO / "frames").is_dir())
            self.load = gr.Button("Load clip", elem_id="load-clip")
        self.clip_help = gr.Markdown(elem_id="clip-help")
        self.video_path = gr.Textbox(label="video path", interactive=False, elem_id="video-path")
        with gr.Row():
            self.start = gr.Number(0, label="start frame", precision=0, minimum=0)
            self.frames = gr.Number(Form.frames, label="frames", precision=0, minimum=1, elem_id="frames")
            self.stride = gr.Number(1, label="stride", precision=0, minimum=1)
        with gr.Row():
            self.width = gr.Number(0, label="width", precision=0, minimum=0, elem_id="width")
            self.height = gr.Number(0, label="height", precision=0, minimum=0, elem_id="height")
        self.size_info = gr.Markdown(self.app.size_help(None))
        self.video_error = gr.Markdown(elem_id="video-error")

    def frame_panel(self) -> None:
        gr.Markdown("### 2. Regions\nPick a region and a click mode, then click on the frame.")
        self.frame_index = gr.Slider(0, 15, 0, step=1, label="frame shown (clicks land on it)")
        self.preview = gr.Image(label="frame: click to mark regions", interactive=False, elem_id="frame")
        with gr.Row():
            self.target = gr.Dropdown([], value=None, label="clicks mark region", elem_id="target",
                                      info="the regions that exist; Add region makes the new one active")
            self.mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="click mode")
        self.masks_preview = gr.Video(label="masks over the clip", elem_id="masks-preview")
        self.preview_masks = gr.Button("Preview masks", elem_id="preview-masks")

    def regions_panel(self) -> None:
        """One row per region slot (hidden until added): swatch, name, prompt, where, masks, check."""
        self.slots, self.swatches, self.checks = [], [], []
        with gr.Column():
            with gr.Row():
                self.add_region = gr.Button("Add region", elem_id="add-region")
                self.remove_region = gr.Button("Remove last region", elem_id="remove-region")
            for i in range(MAX_REGIONS):
                with gr.Group(visible=False) as group, gr.Row():
                    self.swatches.append(gr.HTML(swatch(i, False), elem_id=f"region-{i}-swatch", min_height=0))
                    name = gr.Textbox(f"region{i + 1}", label=f"region {i + 1}: name", elem_id=f"region-{i}-name")
                    becomes = gr.Textbox(label="becomes (empty: kept)", elem_id=f"region-{i}-prompt")
                    where = gr.Textbox(label="where: box=x0,y0,x1,y1 / points=x,y,-x,y (@frame)",
                                       elem_id=f"region-{i}-where")
                    upload = gr.File(label="or its masks (PNGs or a zip)", file_count="multiple", height=80)
                    self.checks.append(gr.Markdown(elem_id=f"region-{i}-check"))
                self.slots.append((group, name, becomes, where, upload))
            self.region_error = gr.Markdown(elem_id="region-error")
        self.wheres = [slot[3] for slot in self.slots]
        self.region_prompts = [slot[2] for slot in self.slots]

    def prompt_panel(self) -> None:
        gr.Markdown("### 3. Prompt")
        with gr.Row():
            self.source_prompt = gr.Textbox(label="source prompt (the clip as it is)", elem_id="source-prompt")
            self.prompt = gr.Textbox(label="prompt (the edited clip; holds each region prompt word for word)",
                                     elem_id="prompt")
            self.compose = gr.Button("Compose from regions", elem_id="compose", scale=0)
        self.negative_prompt = gr.Textbox(label="negative prompt")
        self.prompt_error = gr.Markdown(elem_id="prompt-error")

    def settings_panel(self) -> None:
        recommended, defaults = self.recommended, EditSettings()
        with gr.Accordion("4. Settings", open=True):
            with gr.Row():
                self.model = gr.Dropdown(self.app.models(), value=self.app.model, label="model", elem_id="model",
                                         info="the bundled toy models, --model and the pipelines in the "
                                              "Hugging Face cache")
                self.model_help = gr.Markdown(self.app.model_help(self.app.model), elem_id="model-help")
            with gr.Row():
                self.settings_source = gr.Markdown(_source_note(recommended), elem_id="settings-source")
                self.reset = gr.Button("Reset to recommended", elem_id="reset-settings", scale=0)
            with gr.Row():
                self.method = gr.Dropdown(list(METHODS), value=defaults.method, label="method",
                                          info="VideoGrain's layout attention, ReAtCo's guidance, or both")
                self.steps = gr.Number(recommended.steps, label="steps", precision=0, minimum=1, elem_id="steps")
                self.guidance = gr.Number(recommended.guidance_scale, label="guidance scale", elem_id="guidance")
                self.seed = gr.Number(defaults.seed, label="seed", precision=0, minimum=0)
            with gr.Row():
                self.mod_steps = gr.Number(recommended.modulation.steps, label="modulated steps", precision=0,
                                           minimum=0, info="the first N edit steps modulate attention")
                self.self_strength = gr.Number(recommended.modulation.self_strength, label="self-attention strength")
                self.cross_strength = gr.Number(recommended.modulation.cross_strength,
                                                label="cross-attention strength")
            with gr.Row():
                self.blend = gr.Checkbox(defaults.blend, label="latent blend (keep what no region edits)")
                self.composite = gr.Checkbox(defaults.composite, label="composite the source's pixels outside edits")
                self.flow = gr.Checkbox(False, label="flow-guided attention (temporal aid)")
                self.attention = gr.Checkbox(False, label="record attention maps")

    def results_panel(self) -> None:
        with gr.Row():
            self.run = gr.Button("Edit", variant="primary", elem_id="run")
            self.quick = gr.Button(f"Quick preview (≤{PREVIEW_FRAMES} frames, ≤{PREVIEW_STEPS} steps, half size)",
                                   elem_id="quick")
            self.cancel = gr.Button("Cancel", elem_id="cancel")
        self.status = gr.Markdown(elem_id="status")
        with gr.Group():
            self.result_frame = gr.Slider(0, 1, 0, step=1, label="result frame: source | edited, regions below",
                                          elem_id="result-frame", interactive=True)
            self.result_view = gr.Image(label="source | edited (the same frame)", elem_id="result-view",
                                        interactive=False)
        with gr.Row():
            self.source_video = gr.Video(label="source", elem_id="source-video")
            self.edited_video = gr.Video(label="edited", elem_id="edited-video")
        with gr.Row():
            self.comparison = gr.Image(label="source | edited", type="filepath", elem_id="comparison")
            self.grid = gr.Image(label="source, regions, edited", type="filepath", elem_id="grid")
        self.attention_maps = gr.Gallery(label="attention maps", visible=False)
        self.downloads = gr.File(label="downloads: the output folder (zip) and config.yaml", elem_id="downloads")

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
        config = yaml.safe_load((toy.DEMO / "config.yaml").read_text(encoding="utf-8"))
        video = config["video"]
        state = read_clip(str(toy.DEMO / video["path"]), 0, video["frames"], 1)
        regions = [r["prompt"] for r in config["regions"][:2]]
        return {**self.loaded(state), **self.cleared_regions(), **self.recommended_fields, self.model: self.app.model,
                self.model_help: self.app.model_help(self.app.model), self.frames: video["frames"],
                self.start: 0, self.stride: 1, self.width: video["size"][0], self.height: video["size"][1],
                self.source_prompt: config["source_prompt"],
                self.clip_help: f"**loaded the example**: {config['source_prompt']}. Add a region per shape (two "
                                f"clicks on the frame for a box around each), write what each becomes (e.g. "
                                f"`{regions[0]}` on the left, `{regions[1]}` on the right), the prompt "
                                f"(`{config['prompt']}`), press Edit."}

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
                self.settings_source: _source_note(recommended), self.size_info: self.app.size_help(source, model)}

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

    # -- wiring ------------------------------------------------------------------------------------------

    def wire(self) -> None:
        """Connect every control's events to its handler."""
        self.wire_clip()
        self.wire_regions()
        self.wire_edit()

    def wire_clip(self) -> None:
        region_outputs = [self.count, self.target, *self.swatches, *(c for slot in self.slots for c in slot[:4])]
        shown = [self.clip, self.video_path, self.size_info, self.frame_index, self.preview, self.corner,
                 self.region_masks]  # what a (re)loaded clip changes
        errors = list(self.errors.values())
        self.files.upload(self.on_load, [self.files, self.model], [*shown, self.start, self.frames, self.stride, self.width,
                                                     self.height, *region_outputs, *errors])
        self.load.click(self.on_reselect, [self.clip, self.start, self.frames, self.stride, self.model],
                        [*shown, *errors])
        self.load_example.click(self.on_example, None, [*shown, self.model, self.model_help, self.frames, self.start, self.stride, self.width,
                                                        self.height, self.source_prompt, *self.recommended_fields,
                                                        self.clip_help, *region_outputs, *errors])

    def wire_regions(self) -> None:
        redraw = dict(fn=self.frame_image, outputs=self.preview,
                      inputs=[self.clip, self.frame_index, self.corner, self.target, self.region_masks, *self.wheres])
        for changed in (self.frame_index, self.corner, self.region_masks, *self.wheres):
            changed.change(**redraw)
        self.target.change(self.on_target, self.target, self.swatches)
        self.preview.select(self.on_click, {self.clip, self.frame_index, self.mode, self.target, self.count,
                                            self.corner, *self.wheres}, [self.corner, *self.wheres, *self.errors.values()])
        counted = [self.count, self.target, self.corner, *self.swatches, *(slot[0] for slot in self.slots)]
        self.add_region.click(lambda n: self.set_count(min(MAX_REGIONS, n + 1)), self.count, counted)
        self.remove_region.click(lambda n, active: self.set_count(max(0, n - 1), int(active or 0)),
                                 [self.count, self.target], counted)
        self.compose.click(lambda n, *texts: [compose_prompt(list(texts[:n]))] * 2,
                           [self.count, *self.region_prompts], [self.prompt, self.composed])
        for changed in (*self.region_prompts, self.count):
            changed.change(self.on_region_prompt, [self.count, self.model, self.prompt, self.composed,
                                                   *self.region_prompts],
                           [self.prompt, self.composed, *self.checks], show_progress="hidden")
        self.prompt.blur(self.on_prompt, [self.count, self.model, self.prompt, *self.region_prompts], self.checks,
                         show_progress="hidden")
        self.preview_masks.click(self.on_preview_masks, self.form_inputs | {self.region_masks},
                                 [self.masks_preview, self.region_masks, *self.errors.values()])

    def wire_edit(self) -> None:
        self.reset.click(lambda model: self.fields_of(self.app.recommended(model)), self.model,
                         list(self.recommended_fields))
        self.model.change(self.on_model, [self.model, self.clip], [*self.recommended_fields, self.model_help,
                                                                     self.settings_source, self.size_info])
        results = [self.source_video, self.edited_video, self.comparison, self.grid, self.downloads,
                   self.attention_maps, self.result, self.result_frame, self.result_view, *self.errors.values()]
        for button, handler in ((self.run, self.on_run), (self.quick, self.on_quick)):
            button.click(self.busy_note, None, self.status, queue=False)  # first: the run's handler starts after it
            button.click(handler, self.form_inputs, results, concurrency_limit=1, concurrency_id="edit",
                         show_progress_on=[self.status])  # one progress bar, beside Edit
        self.result_frame.change(lambda clips, i: None if clips is None else compare_frame(clips, i),
                                 [self.result, self.result_frame], self.result_view, show_progress="hidden")
        self.cancel.click(self.on_cancel, None, self.status, concurrency_limit=None, concurrency_id="cancel")

    @property
    def form_inputs(self) -> set:
        """Every component ``form_of`` reads."""
        return {self.clip, self.count, self.video_path, self.prompt, self.source_prompt, self.negative_prompt,
                self.start, self.frames, self.stride, self.width, self.height, self.method, self.steps, self.guidance,
                self.seed, self.mod_steps, self.self_strength, self.cross_strength, self.blend, self.composite,
                self.flow, self.attention, self.model, *(c for slot in self.slots for c in slot[1:])}


def _source_note(recommended) -> str:
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
        prompts.append(parse_region(f"{region.name}:{region.where}"))
        prompts[-1].check(len(pixels), pixels.shape[2], pixels.shape[1], f"regions[{i}].masks")
    return make_masks(pixels, prompts, progress=False)[0]


def build_app(model: str | None = None, out: str | Path = "out/app", device: str | None = None) -> gr.Blocks:
    """The Gradio Blocks of the app (``.launch()`` it, with ``app_kwargs=LAUNCH_APP_KWARGS``;
    ``allowed_paths=[out]`` when ``out`` lies outside the working directory). ``model``: hub id or folder
    (default: ``app.default_model()``)."""
    page = Page(App(Path(out), model, device))
    with gr.Blocks(title="videograin", analytics_enabled=False) as blocks:
        page.build()
        page.wire()
    return blocks


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
