"""The `videograin` command: edit, reconstruct, eval, batch, report, masks, segment, app, convert-config,
make-tiny-model.

Argument parsing only: each command calls one library function (runner.edit, eval.evaluate.evaluate_files,
segment.segment_job, masks.masks_job, config.official.convert_config / convert_folder, batch.run_batch,
report.write_report, app_ui.build_app, testing.make_tiny_model). Input errors end with one line and exit
code 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path


from . import __version__, runner
from .config.parse import resolve_model
from .loading import resolve_device
from .errors import SpecError

logger = logging.getLogger("videograin")

#: Notices of third-party libraries that say nothing about the user's run (transformers without
#: torchvision falls back to its PIL image processors, which this project uses anyway).
KNOWN_NOTICES = ("requires torchvision (not installed)",)


class _DropKnownNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in KNOWN_NOTICES)


def _edit(args) -> dict:
    """`videograin edit` and `videograin reconstruct`: the config with the flags' overrides, run."""
    if args.steps is not None and args.steps < 1:
        raise SpecError("--steps", f"must be >= 1, got {args.steps}", "pass a positive number of steps")
    edit_only = args.command == "edit"
    return runner.edit(
        args.config, args.out, overwrite=args.overwrite, model=args.model, device=args.device, command=args.command,
        reconstruct=edit_only and args.reconstruct, evaluate=edit_only and args.eval,
        clip=args.clip if edit_only else None, progress=not args.quiet,
        argv=sys.argv if args.argv is None else args.argv,
        steps=args.steps, seed=args.seed, prompt=args.prompt, guidance_scale=args.guidance_scale, method=args.method,
    )


def _eval(args) -> dict:
    """`videograin eval`: metrics of an edited video against its source, written as JSON."""
    from .eval.evaluate import evaluate_files, format_table

    evaluation, record, out = evaluate_files(
        args.edited, args.source, args.config, prompt=args.prompt, regions=args.regions, resize=args.resize,
        out=args.out, clip=args.clip, pickscore=args.pickscore, flow=args.flow, device=args.device)
    print(format_table(evaluation))
    logger.info("wrote %s", out)
    return record


def _batch(args) -> int:
    """`videograin batch`: exit code 0 when every job is done or skipped, 1 when any failed."""
    from .batch import load_jobs, run_batch

    jobs = load_jobs(args.jobs)
    address = None if args.ray in (None, "auto", "local") else args.ray
    rows = run_batch(jobs, args.out, evaluate=args.eval, force=args.force, retries=args.retries, device=args.device,
                     use_ray=args.ray is not None, ray_address=address, gpus_per_job=args.gpus_per_job,
                     cpus_per_job=args.cpus_per_job, progress=not args.quiet)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    logger.info("batch: %d done, %d skipped, %d failed; results in %s (results.csv, results.md, report.html)",
                counts["done"], counts["skipped"], counts["failed"], Path(args.out).resolve())
    return 1 if counts["failed"] else 0


def _report(args) -> None:
    from .report import write_report

    folder = Path(args.folder)
    if not folder.is_dir():
        raise SpecError("FOLDER", f"{folder} is not a folder", "give a batch's --out or a folder of edit outputs")
    rows = write_report(folder)
    logger.info("report of %d edits: %s", len(rows), folder / "report.html")


def _app(args) -> None:
    """`videograin app`: serve the web app until Ctrl-C; Gradio's own files go under --out too."""
    import os

    out = Path(args.out).resolve()
    model = None if args.model is None else resolve_model(args.model, Path.cwd())
    device = resolve_device(args.device)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(out / ".gradio"))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from .app_ui import LAUNCH_APP_KWARGS, build_app
    except ImportError as err:
        raise SpecError("app", f"Gradio is not installed ({err})", "pip install 'videograin[app]'") from None
    out.mkdir(parents=True, exist_ok=True)
    build_app(model, out, device).queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out)],
                                                 quiet=args.quiet, app_kwargs=LAUNCH_APP_KWARGS)


def _convert_config(args) -> None:
    """`videograin convert-config`: an official VideoGrain config -> this project's spec YAML; a folder
    of them -> one spec each and a job list (jobs.yaml) for `videograin batch`."""
    from .config.official import convert_config

    if Path(args.official).is_dir():
        from .config.official import convert_folder

        convert_folder(args.official, args.out, root=args.root, prompt_index=args.index, overwrite=args.overwrite)
        return
    result = convert_config(args.official, args.out, root=args.root, prompt_index=args.index, overwrite=args.overwrite)
    logger.info("wrote %s (%d regions; %d official option(s) not applied, listed at its top)",
                result.path, len(result.spec.regions), len(result.unsupported))


def _parser() -> argparse.ArgumentParser:
    """Every command and its flags, as `--help` shows them."""
    parser = argparse.ArgumentParser(prog="videograin", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"videograin {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="only errors and warnings, no progress bars")
    common.add_argument("--verbose", action="store_true", help="debug messages too")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("edit", "edit a video as the config describes"),
        ("reconstruct", "invert and re-sample with the source prompt, no edit (inversion fidelity)"),
        ("demo", "a real edit offline, anywhere: the toy model and demo clip the package ships (two blue "
                 "squares -> a yellow triangle and a purple circle)"),
    ]:
        sub = commands.add_parser(name, parents=[common], help=help_text)
        if name == "demo":
            sub.add_argument("--wan", action="store_true", help="on the Wan toy model (the first 9 frames)")
            sub.add_argument("--out", default="out/toyworld_demo", help="output folder (default: %(default)s)")
        else:
            sub.add_argument("config", help="edit config (YAML)")
            sub.add_argument("--out", help="output folder (overrides `output:` in the config)")
        sub.add_argument("--model", help="hub id or local diffusers folder (overrides `model:`)")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
        sub.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        sub.add_argument("--steps", type=int, help="denoising steps (overrides edit.steps)")
        sub.add_argument("--seed", type=int, help="overrides edit.seed (only ReAtCo's IRJS draws noise)")
        sub.add_argument("--prompt", help="overrides prompt (region prompts must still occur in it)")
        sub.add_argument("--guidance-scale", type=float, help="overrides edit.guidance_scale")
        sub.add_argument("--method", help="overrides edit.method: videograin, reatco or videograin+reatco")
        if name != "reconstruct":
            sub.add_argument("--reconstruct", action="store_true", help="also write reconstruction.mp4")
            sub.add_argument("--eval", action="store_true", help="compute the metrics after the edit into run.json")
            sub.add_argument("--clip", help="CLIP model id or folder for --eval (default openai/clip-vit-large-patch14)")
    evaluate = commands.add_parser("eval", parents=[common],
                                   help="metrics of an edit (CLIP-T/F, Warp-Err, masked PSNR/SSIM, ...)")
    evaluate.add_argument("--edited", required=True,
                          help="output folder of `videograin edit`, or an edited video (mp4, webm, gif, ...) or "
                               "folder of frames from any method")
    evaluate.add_argument("--source", help="source video or frames folder (default: the folder's source.mp4, else "
                                           "the config's video)")
    evaluate.add_argument("--config", help="the edit's config (default: the folder's run.json; optional with --source)")
    evaluate.add_argument("--prompt", help="target prompt for CLIP-T and PickScore (default: the config's)")
    evaluate.add_argument("--regions", nargs="+", metavar="NAME=MASK_DIR:PROMPT",
                          help="regions for masked fidelity and instance accuracy (default: the config's); "
                               "an empty PROMPT marks a kept region")
    evaluate.add_argument("--resize", action="store_true",
                          help="without a config: compare at the source's size when the sizes differ")
    evaluate.add_argument("--out", help="metrics JSON to write (default: metrics.json in an output folder, else "
                          "NAME.metrics.json next to the edited video or frames folder NAME)")
    evaluate.add_argument("--clip", help="CLIP model id or folder (default openai/clip-vit-large-patch14)")
    evaluate.add_argument("--pickscore", default="yuvalkirstain/PickScore_v1", help="PickScore model id or folder")
    evaluate.add_argument("--flow", choices=["dis", "raft"], default="dis", help="optical flow for Warp-Err")
    evaluate.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    segment = commands.add_parser("segment", parents=[common], help="mask-free layout: K-means segments of the "
                                  "inversion's self-attention features, written as mask folders")
    segment.add_argument("config", help="config (YAML); only model, video and source_prompt are read")
    segment.add_argument("--k", type=int, required=True, help="number of segments (clusters), at least 2")
    segment.add_argument("--out", help="output folder (default: segments/ next to the config)")
    segment.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    segment.add_argument("--steps", type=int, default=50, help="DDIM inversion steps (default 50)")
    segment.add_argument("--model", help="hub id or local diffusers folder (overrides `model:`)")
    segment.add_argument("--level", type=int, help="UNet level of the features, 0 = highest resolution "
                         "(default: the coarsest level with self-attention)")
    segment.add_argument("--seed", type=int, default=0, help="K-means seed (default 0)")
    segment.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    tiny = commands.add_parser("make-tiny-model", parents=[common],
                               help="write a tiny random-weight SD-style (or Wan) model (offline)")
    tiny.add_argument("folder")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--controlnet", action="store_true", help="also write a tiny ControlNet to FOLDER/controlnet")
    kind = tiny.add_mutually_exclusive_group()
    kind.add_argument("--wan", action="store_true", help="a tiny Wan 2.1 text-to-video model instead of SD")
    kind.add_argument("--wan22", action="store_true", help="a tiny Wan 2.2 A14B-style model (two experts)")
    kind.add_argument("--ti2v", action="store_true", help="a tiny Wan 2.2 TI2V-5B-style model (48-channel VAE, 16x)")
    convert = commands.add_parser("convert-config", parents=[common],
                                  help="convert an official VideoGrain config (knightyxp/VideoGrain)")
    convert.add_argument("official", help="official config YAML (e.g. config/instance_level/.../x.yaml), or a folder "
                         "of them (-> one spec each and a jobs.yaml for `videograin batch`)")
    convert.add_argument("--out", help="spec YAML to write (default: <name>.videograin.yaml in the current folder); "
                         "for a folder: the folder to write into (default: converted/)")
    convert.add_argument("--root", help="folder its relative paths start from: the official repository root "
                         "(default: the current folder)")
    convert.add_argument("--index", type=int, default=0, help="which editing_config.editing_prompts entry (default 0)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    batch = commands.add_parser("batch", parents=[common], help="many edits: a folder of configs, config paths or "
                                "a YAML job list, in this process or on Ray; results.csv/.md and report.html")
    batch.add_argument("jobs", nargs="+", metavar="JOBS", help="configs, folders of configs, or job lists (YAML with `jobs:`)")
    batch.add_argument("--out", required=True, help="folder of the jobs' output folders and the results")
    batch.add_argument("--eval", action="store_true", help="compute each edit's metrics into its run.json")
    batch.add_argument("--force", action="store_true", help="redo jobs already done with the same config")
    batch.add_argument("--retries", type=int, default=1, help="more tries of a job that fails at run time (default 1)")
    batch.add_argument("--device", help="cpu or cuda (default: cuda when available; with --ray, each worker's)")
    batch.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                       help="run the jobs as Ray tasks: `--ray` alone joins a running cluster (`ray start --head`) "
                            "or starts a local one; `--ray ADDRESS` joins that one (needs the [cluster] extra)")
    batch.add_argument("--gpus-per-job", type=float, help="GPUs per Ray worker (default 1 when the cluster has GPUs)")
    batch.add_argument("--cpus-per-job", type=int, default=1, help="CPU threads per job (default 1)")
    masks = commands.add_parser("masks", parents=[common], help="mask sequences from a box or clicks on one frame "
                                "(SAM 2, or the weights-free flow tracker), in the folders `regions[].masks` reads")
    masks.add_argument("video", help="video file or folder of frames")
    masks.add_argument("--region", action="append", required=True, metavar="NAME:PROMPTS",
                       help="NAME:box=x0,y0,x1,y1[@F] and/or points=x,y,-x,y[@F] (minus: a negative click, @F: the "
                            "frame, default 0), joined by ';'; once per region")
    masks.add_argument("--out", required=True, help="folder to write: <name>/00000.png ..., masks_overlay.mp4, "
                       "masks.png, masks.json")
    masks.add_argument("--overwrite", action="store_true", help="replace a previous masks folder")
    masks.add_argument("--engine", default="auto", help="auto (SAM 2 when its weights are here, else flow), sam2, flow")
    masks.add_argument("--model", default="facebook/sam2.1-hiera-tiny", help="SAM 2 hub id or local folder")
    masks.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    masks.add_argument("--frames", type=int, help="number of frames (default: all from --start)")
    masks.add_argument("--stride", type=int, default=1, help="take every N-th frame (default 1)")
    masks.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    app = commands.add_parser("app", parents=[common], help="the web app (Gradio; needs the [app] extra): upload, "
                              "mark regions by clicks or boxes, prompt, edit, compare, download")
    app.add_argument("--model", help="hub id or local diffusers folder (default: the bundled toy-world model in a "
                     "checkout of the project, else Stable Diffusion 1.5)")
    app.add_argument("--out", default="out/app", help="folder for everything the app writes (default out/app)")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    app.add_argument("--port", type=int, default=7860)
    app.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    report = commands.add_parser("report", parents=[common],
                                 help="rebuild results.csv/.md and report.html from a folder of output folders")
    report.add_argument("folder", help="a batch's --out, or any folder holding edit output folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `videograin` command line ``argv`` (default: sys.argv); returns the exit code: 0, 1 when
    a batch job failed, 2 for an input error (one line naming the field and the fix), 130 interrupted."""
    args = _parser().parse_args(argv)
    args.argv = argv
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("videograin").setLevel(level)
    logging.getLogger("transformers.utils.import_utils").addFilter(_DropKnownNotices())
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
    try:
        return _run(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (_interrupt): the output folders cleaned up on the way out
        print("interrupted; nothing written", file=sys.stderr)
        return 130


def _run(args) -> int:
    """The library call of ``args.command``; its exit code."""
    if args.command == "make-tiny-model":
        from .testing import make_tiny_model, make_tiny_wan_model

        folder = Path(args.folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise SpecError("folder", f"{folder} exists and is not an empty folder", "give a new or empty folder")
        variant = "2.1" if args.wan else "2.2-a14b" if args.wan22 else "2.2-ti2v" if args.ti2v else None
        if variant and args.controlnet:
            raise SpecError("--controlnet", "there is no tiny ControlNet for Wan", "drop --controlnet")
        made = (make_tiny_wan_model(args.folder, args.seed, variant) if variant
                else make_tiny_model(args.folder, args.seed, args.controlnet))
        logger.info("wrote %s", made)
    elif args.command == "convert-config":
        _convert_config(args)
    elif args.command == "eval":
        _eval(args)
    elif args.command == "segment":
        from .segment import segment_job

        segment_job(args.config, args.out, k=args.k, steps=args.steps, seed=args.seed, level=args.level,
                    model=args.model, device=args.device, overwrite=args.overwrite)
    elif args.command == "batch":
        return _batch(args)
    elif args.command == "report":
        _report(args)
    elif args.command == "masks":
        from .masks import masks_job

        masks_job(args.video, args.region, args.out, start=args.start, frames=args.frames, stride=args.stride,
                  engine=args.engine, model=args.model, device=args.device, overwrite=args.overwrite,
                  progress=not args.quiet)
    elif args.command == "app":
        _app(args)
    else:
        if args.command == "demo":
            from . import toy

            args.command, args.config = "edit", str(toy.DEMO_WAN_CONFIG if args.wan else toy.DEMO_CONFIG)
        _edit(args)
    return 0


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: a KeyboardInterrupt, once; a second one while the outputs are cleaned up on the
    way out is ignored (it would cut the cleanup short and leave the process dead by a signal)."""
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
