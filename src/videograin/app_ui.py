"""The web app's page (Gradio): its panels, laid out by ``Page.build``, and its controls wired by
``Page.wire`` to the handlers of ``app_handlers.PageHandlers``. The logic without Gradio (the form as
plain values, the config it becomes, the app's state across sessions) is in :mod:`videograin.app`, its
pictures in :mod:`videograin.app_pictures`; this module is imported only when a page is built
(``build_app``), so the core runs without the ``[app]`` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from . import toy
from .app import CLICK_MODES, MAX_REGIONS, PREVIEW_FRAMES, PREVIEW_STEPS, App, Form, compose_prompt
from .app_pictures import swatch, compare_frame
from .config.spec import METHODS, EditSettings
from .app_handlers import PageHandlers, source_note

logger = logging.getLogger("videograin")


class Page(PageHandlers):
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
                self.settings_source = gr.Markdown(source_note(recommended), elem_id="settings-source")
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
