"""BaseVideoGrainPipeline: check -> encode -> layout -> invert -> edit -> decode, on any backbone.

Each stage is a short method written against ``backbones.base.Backbone``; ``pipeline_sd.VideoGrainPipeline``
(Stable Diffusion) and ``pipeline_wan.WanVideoGrainPipeline`` (Wan) declare their components and
backbone. The method's math lives in method/, the backbone's calls in backbones/, the inversion in
pipeline_inversion.py, the edit's plan in edit_plan.py and the argument checks in call_checks.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import formats
from .backbones.base import Backbone, Capabilities
from .backbones.recommended import Recommended, recommended_settings, resolve_modulation
from .call_checks import check_call
from .edit_plan import EditPlan
from .inversion_cache import InversionCache
from .method.inversion_free import inversion_free_latents, start_step
from .method.layout import Layout, composite_applies, composite_weights, temporal_keys
from .method.recorder import AttentionRecorder
from .method.sampling import Callback, sample_latents, temporal_windows, windowed_denoise_fn
from .method.settings import InversionFree, Modulation, ReAtCoSettings, TemporalAidSettings, Window
from .method.tokens import region_token_spans, word_token_indices
from .pipeline_inversion import InversionMixin
from .sizes import edit_size
from .values import is_edited

logger = logging.getLogger(__name__)


@dataclass
class VideoGrainPipelineOutput(BaseOutput):
    """What an edit returns. frames: the edited video in ``output_type`` (a batch of one: "pil" a list
    of one list of PIL images, "np" (1, F, H, W, 3) and "pt" (1, F, 3, H, W) float in [0, 1], "latent"
    (1, F, C, h, w)); latents: the edited latents (F, C, h, w) before decoding; timings in seconds per
    stage; recorder: the cross-attention maps (``record_attention``); layout: the region layout on the
    model's tokens; guidance: ReAtCo's L_IR and L_OR per guided step."""

    frames: list | np.ndarray | torch.Tensor
    latents: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    recorder: AttentionRecorder | None = None
    layout: Layout | None = None
    guidance: list[dict] = field(default_factory=list)


class BaseVideoGrainPipeline(DiffusionPipeline, InversionMixin):
    """The stages of a VideoGrain edit (check -> encode -> layout -> invert -> edit -> decode) against
    ``self.backbone``; a subclass declares a model family's components in its ``__init__`` (so
    ``from_pretrained`` loads them) and returns its backbone."""

    _callback_tensor_inputs = ["latents"]

    @property
    def backbone(self) -> Backbone:
        raise NotImplementedError

    @property
    def capabilities(self) -> Capabilities:
        """What this model supports (``backbones.base.Capabilities``)."""
        return self.backbone.capabilities

    @property
    def recommended(self) -> Recommended:
        """The model's recommended settings (its folder's videograin.json, else its family's defaults):
        what ``__call__`` uses for the arguments a caller leaves unset."""
        return recommended_settings(self.name_or_path or "", self.capabilities.family)

    @property
    def size_multiple(self) -> int:
        return self.capabilities.size_multiple

    @property
    def num_levels(self) -> int:
        return self.capabilities.num_levels

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) in [-1, 1] -> latents (T, C, h, w) float32 (T latent frames)."""
        return self.backbone.encode(frames)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (T, C, h, w) -> frames (F, 3, H, W) float32 in [-1, 1] on the CPU."""
        return self.backbone.decode(latents)

    def enable_vae_slicing(self) -> None:
        """Encode and decode one frame at a time (less memory; diffusers' VAE slicing)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode and decode large frames in overlapping tiles (diffusers' VAE tiling)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    @contextmanager
    def _progress(self, total: int, desc: str, latent_frames: int):
        """The diffusers progress bar of ``total`` steps over ``latent_frames`` latent frames, labelled,
        with the video frames denoised per second after each step; the user's other settings kept
        (e.g. disable)."""
        saved = getattr(self, "_progress_bar_config", None)
        self._progress_bar_config = {**(saved or {}), "desc": desc, "unit": "step"}
        frames = (latent_frames - 1) * self.capabilities.temporal_factor + 1
        try:
            with self.progress_bar(total=total) as bar:
                update = bar.update

                def update_with_rate(n: int = 1) -> None:
                    update(n)
                    elapsed = bar.format_dict["elapsed"]
                    if elapsed > 0:
                        bar.set_postfix_str(f"{bar.n * frames / elapsed:.1f} frames/s", refresh=False)

                bar.update = update_with_rate
                yield bar
        finally:
            if saved is None:
                del self._progress_bar_config
            else:
                self._progress_bar_config = saved

    # -- 1. check ---------------------------------------------------------------------------------

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (from a step callback or another thread) to skip the remaining
        steps: the call returns the latents it has reached, decoded (the inversion's last latents when
        it stopped there, with no edit step run)."""
        return getattr(self, "_interrupt", False)

    def check_inputs(self, prompt, region_prompts, output_type: str, generator, num_frames: int,
                     callback_on_step_end_tensor_inputs: list[str] | None = None, **arguments) -> str:
        """Raise ValueError/TypeError naming the argument for any call argument that cannot work, before
        any model runs (``call_checks.check_call``: the rules the config shares). Returns the prompt as
        one string."""
        return check_call(self, prompt, region_prompts, output_type, generator, num_frames,
                          callback_on_step_end_tensor_inputs, **arguments)

    def prepare_video(self, video, height: int | None, width: int | None, name: str = "video") -> torch.Tensor:
        """Any supported video (see ``formats``) -> float32 (F, 3, H, W) in [0, 1] at the edit size."""
        frames = formats.video_01(video, name)
        size = edit_size((frames.shape[-1], frames.shape[-2]), width, height, self.size_multiple,
                         self.backbone.native_size)
        return formats.resize_01(frames, size)

    def _control(self, control_images, scale: float, size: tuple[int, int]):
        """The backbone's structure control from condition images in any video format, resized to
        ``size`` (w, h) as [0, 1] floats; None without images."""
        if control_images is not None:
            control_images = formats.resize_01(formats.video_01(control_images, "control_images"), size)
        return self.backbone.control(control_images, scale)

    def _check_spans(self, frames: torch.Tensor, prompt: str, region_prompts: list[str]):
        """Each region prompt's token span (None when empty), after the backbone's size rules."""
        self.backbone.check_size(*frames.shape[:1], *frames.shape[-2:])
        return region_token_spans(self.backbone.tokenizer, prompt, region_prompts)

    def temporal_aids(self, frames: torch.Tensor, latent_size: tuple[int, int], settings: TemporalAidSettings | None):
        """The runtime aids of an edit (see ``Backbone.temporal_aids``)."""
        return self.backbone.temporal_aids(frames, latent_size, settings)

    @torch.no_grad()
    def __call__(
        self,
        video,
        masks,
        prompt: str,
        region_prompts: list[str],
        source_prompt: str = "",
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_scale_2: float | None = None,
        modulation: Modulation | None = Modulation(),
        blend: bool = True,
        composite: bool = True,
        record_attention: bool | str = False,
        reatco: ReAtCoSettings | None = None,
        words: list[str | None] | None = None,
        window: Window | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        temporal_aids: TemporalAidSettings | None = None,
        control_images=None,
        control_scale: float = 1.0,
        solver: str | None = None,
        inversion: str | None = None,
        inversion_free: InversionFree | None = None,
        inversion_cache: InversionCache | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        callback_on_invert_step: Callable | None = None,
    ) -> VideoGrainPipelineOutput | tuple:
        """Edit ``video`` so that region r of ``masks`` shows ``region_prompts[r]`` inside the scene
        described by ``prompt`` (each region prompt written word for word in it).

        ``video``: a list of PIL images, a uint8 array or a float array in [0, 1] (numpy (F, H, W, 3),
        torch (F, 3, H, W)); ``masks``: one mask sequence per region at any size (see ``formats``).
        Both are resized to ``height`` x ``width`` (default: the aspect kept, the long side at most the
        model's resolution, rounded to its size multiple).

        ``guidance_scale_2``: the second expert's guidance on a two-expert model (Wan 2.2 A14B; None:
        ``guidance_scale``, as diffusers' WanPipeline).
        ``num_inference_steps``, ``guidance_scale`` and the fields of ``modulation`` left None take the
        model's recommended values (``self.recommended``: its folder's videograin.json, else the
        family's defaults; ``Modulation()``, the default, is the recommended modulation).
        A region with an empty prompt is kept (latent blend preserves it) but still separates the
        others in self-attention. ``modulation=None`` turns VideoGrain's ST-Layout attention off (with
        ``reatco=None`` too: the plain inversion + target-prompt baseline). ``reatco`` adds ReAtCo's
        RAD guidance towards each region's word of interest (``words[r]``, None: its prompt's last
        word) and, with ``reatco.irjs``, IRJS in place of the latent blend (noise from ``generator``:
        one, or a list of one per latent frame). ``window`` denoises overlapping temporal windows of
        latent frames separately (averaged on overlaps; on SD a latent frame is a frame). ``composite``
        (with blend or IRJS): after decoding, pixels away from the edited regions are the source
        frames' (feathered over a margin of the VAE's factor), and so are kept regions (empty prompt)
        wherever no edited region covers them. ``latents`` (T, C, h, w): the noisy latents the edit
        starts from (default: the video's inversion, which still runs for the latent blend).
        ``temporal_aids``: FLATTEN flow-guided attention (flow of the video) and PnP injection. ``control_images`` (same formats as ``video``):
        ControlNet conditions (needs ``self.controlnet``). ``solver``: the samplers' step rule ("euler";
        "midpoint" on flow models: second order, two model evaluations per step), for the inversion and
        the edit. ``inversion``: "ode" inverts the source and edits from its trajectory; "none" (flow
        models) edits without inversion (FlowEdit, ``method.inversion_free``; its settings
        ``inversion_free``, default ``InversionFree()``). Both None: the model's recommended.
        ``inversion_cache``: an ``InversionCache`` the source's inversion is read from when an earlier
        call stored it (same weights, frames, size, source prompt, steps, solver, control), and stored in.
        ``record_attention``: True records the
        cross-attention maps; "compare" also without modulation.
        ``callback_on_step_end(pipe, step, t, callback_kwargs) -> dict`` runs after every edit step
        with the tensors named in ``callback_on_step_end_tensor_inputs`` (default ["latents"]); the
        latents it returns replace the pipeline's; ``callback_on_invert_step(pipe, step, t)`` runs after
        every inversion step (progress). ``pipe._interrupt = True``, from a callback or another
        thread, stops inversion or editing where it is (see ``interrupt``). With ``return_dict=False``
        the result is ``(frames,)``.
        """
        self._interrupt = False
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        frames = self.prepare_video(video, height, width).mul(2).sub_(1)  # 1. check; in [-1, 1]
        num_frames, size = frames.shape[0], (frames.shape[-1], frames.shape[-2])
        prompt = self.check_inputs(
            prompt, region_prompts, output_type, generator, num_frames, tensor_inputs,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
            modulation=modulation, reatco=reatco, window=window, temporal_aids=temporal_aids,
            control_images=control_images, record_attention=record_attention, words=words, latents=latents,
            blend=blend, composite=composite, callback_on_step_end=callback_on_step_end,
            callback_on_invert_step=callback_on_invert_step, source_prompt=source_prompt, negative_prompt=negative_prompt,
            solver=solver, inversion=inversion, inversion_free=inversion_free,
        )
        recommended = self.recommended
        num_inference_steps = num_inference_steps if num_inference_steps is not None else recommended.steps
        guidance_scale = guidance_scale if guidance_scale is not None else recommended.guidance_scale
        modulation = resolve_modulation(modulation, recommended)
        solver = solver if solver is not None else recommended.solver
        inversion = inversion if inversion is not None else recommended.inversion
        masks = formats.region_masks(masks, len(region_prompts), num_frames, size)
        spans = self._check_spans(frames, prompt, region_prompts)
        backbone = self.backbone
        control = self._control(control_images, control_scale, size)
        token_indices = word_token_indices(backbone.tokenizer, prompt, spans, words or [None] * len(spans))
        timings: dict[str, float] = {}

        clock = time.perf_counter()
        source_latents = self.encode_frames(frames)  # 2. encode
        timings["encode"] = time.perf_counter() - clock
        if latents is not None and tuple(latents.shape) != tuple(source_latents.shape):
            raise ValueError(f"latents must be {tuple(source_latents.shape)} (the video's), got {tuple(latents.shape)}")
        latent_size = tuple(source_latents.shape[-2:])
        windows = self._windows(window, num_frames, len(source_latents))
        temporal = temporal_keys(modulation, windows[0].stop - windows[0].start, self.capabilities.temporal_modes)
        masks = masks.to(self._execution_device)
        layout = backbone.layout(masks, spans, latent_size, temporal)  # 3. layout

        aids = self.temporal_aids(frames, latent_size, temporal_aids)
        schedule = backbone.schedule(num_inference_steps)  # shared by inversion and editing
        clock = time.perf_counter()
        if inversion == "none":  # the blend keeps the clean source outside the regions (method.inversion_free)
            trajectory = [source_latents] * (len(schedule) + 1)
        else:
            trajectory = self._cached_inversion(  # 4. invert
                inversion_cache, source_latents, source_prompt, num_inference_steps, temporal, aids, control, schedule,
                callback_on_invert_step, solver, (formats.video_01(control_images, "control_images")
                                                  if control_images is not None else None, control_scale),
                temporal_aids, windows,
            )
        timings["invert"] = time.perf_counter() - clock

        clock = time.perf_counter()  # 5. edit
        guidance: list[dict] = []
        edited_latents, recorder = trajectory[0], None  # an interrupted inversion: nothing to edit
        if not self.interrupt:
            plan = EditPlan.build(self.backbone, masks, spans, prompt, region_prompts, negative_prompt,
                                  (guidance_scale, guidance_scale_2 or 0.0), schedule, windows,
                                  layout, latent_size, record_attention, trajectory, aids, control)
            denoise = plan.denoise_fn((guidance_scale, guidance_scale_2), modulation, temporal)
            callback = self._step_end(plan.step_callback(source_latents, blend, reatco, generator),
                                      callback_on_step_end, tensor_inputs)
            guide = plan.rad_guide(prompt, modulation, temporal, reatco, token_indices, guidance)
            if inversion == "none":
                edited_latents = self._edit_inversion_free(
                    plan, denoise, source_latents, source_prompt, negative_prompt, inversion_free or InversionFree(),
                    (guidance_scale, guidance_scale_2), temporal, callback, generator)
            else:
                start = trajectory[0] if latents is None else latents.to(trajectory[0])
                with backbone.attention_processors(), self._progress(num_inference_steps, "edit", len(start)) as bar:
                    edited_latents = sample_latents(denoise, start, plan.schedule, callback, progress=bar, guide=guide,
                                                    interrupt=lambda: self.interrupt, solver=solver)
            if record_attention:
                recorder = AttentionRecorder.merge(list(zip(plan.windows, plan.recorders)), layout.num_frames)
        timings["edit"] = time.perf_counter() - clock

        clock = time.perf_counter()  # 6. decode
        if output_type == "latent":
            video_out = edited_latents.unsqueeze(0)
        else:
            out = self.decode_latents(edited_latents)
            if composite_applies(composite, blend, reatco):
                edited = [is_edited(p) for p in region_prompts]
                for chunk in formats.frame_chunks(len(out)):  # in place: a long clip holds one decoded copy
                    weights = composite_weights(masks[:, chunk].cpu(), edited, self.capabilities.vae_factor)
                    out[chunk] = weights * out[chunk] + (1 - weights) * frames[chunk]
            video_out = formats.postprocess(out, output_type, in_place=True)  # the decoded copy is ours
        timings["decode"] = time.perf_counter() - clock
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video_out,)
        return VideoGrainPipelineOutput(video_out, edited_latents, timings, recorder, layout, guidance)

    # -- 5. edit: its parts -----------------------------------------------------------------------

    def _windows(self, window: Window | None, num_frames: int, latent_frames: int) -> list[slice]:
        """The temporal windows (of latent frames) of an edit of ``num_frames`` frames: ``window``'s, or
        the model's trained length when it names none (``Capabilities.default_window``)."""
        if window is None:
            window = self.capabilities.default_window(num_frames)
            if window is not None:
                logger.info("%d frames are more than the %d the model was trained on: edited in windows of %d latent "
                            "frames, %d apart (set window to change this)", num_frames,
                            self.capabilities.trained_frames, window.size, window.stride)
        return temporal_windows(latent_frames, window.size, window.stride) if window else [slice(0, latent_frames)]

    def _edit_inversion_free(self, plan: EditPlan, target_fn, source, source_prompt: str, negative_prompt: str,
                             settings: InversionFree, guidance: tuple[float, float | None], temporal, callback,
                             generator) -> torch.Tensor:
        """The edited latents of inversion-free editing (``method.inversion_free``): ``target_fn`` the
        edit's denoiser, the source's the same per window without layout, under the source prompt at
        ``settings.source_guidance`` (None: the edit's); noise drawn from ``generator``."""
        scale = settings.source_guidance if settings.source_guidance is not None else guidance[0]
        uncond = plan.uncond
        if uncond is None and scale > 1:
            uncond = self.backbone.encode_prompt(negative_prompt)
        second = {} if guidance[1] is None else {"guidance_scale_2": guidance[1]}
        cond = self.backbone.encode_prompt(source_prompt)
        source_fn = windowed_denoise_fn([
            (w, self.backbone.denoise_fn(cond, uncond, scale, w.stop - w.start, plan.schedule, temporal=temporal,
                                         kernels=plan.kernels, **second))
            for w in plan.windows
        ])

        def noise() -> torch.Tensor:
            return randn_tensor(source.shape, generator=generator, device=torch.device("cpu"),
                                dtype=torch.float32).to(source)

        steps = len(plan.schedule) - start_step(len(plan.schedule), settings.skip)
        with self.backbone.attention_processors(), self._progress(steps, "edit", len(source)) as bar:
            return inversion_free_latents(source_fn, target_fn, source, plan.schedule, settings.skip, noise,
                                          settings.draws, callback, progress=bar, interrupt=lambda: self.interrupt)

    def _step_end(self, method_callback: Callback | None, user_callback, tensor_inputs: list[str]) -> Callback | None:
        """The method's step callback, then the user's ``callback_on_step_end`` (diffusers' contract:
        ``(pipe, step, t, {"latents": ...}) -> dict``; returned latents replace the pipeline's)."""
        if user_callback is None:
            return method_callback

        def step_end(step: int, t: int, latents: torch.Tensor) -> torch.Tensor:
            if method_callback is not None:
                latents = method_callback(step, t, latents)
            given = {"latents": latents}
            returned = user_callback(self, step, t, {name: given[name] for name in tensor_inputs}) or {}
            return returned.get("latents", latents)

        return step_end
