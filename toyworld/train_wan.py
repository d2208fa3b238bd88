"""Train the toy world's text-to-video model on the Wan 2.1 architecture (CPU) and save it as a Wan folder.

    nice -n 19 python -m toyworld.train_wan --out NEW_FOLDER   (see TRAINING.md for the stages of the shipped src/videograin/toy/wan)

Two phases, deterministic given ``--seed`` (one thread, seeded generators, data drawn from the seed):

1. VAE: AutoencoderKLWan trained to reconstruct world clips (random scenes, each shape moving and
   scaling smoothly within its third; L1 + L2 with the shapes' pixels weighted 10x + a tiny KL term, on
   the decoder's output before its clamp, gradients clipped to norm 1) on all 9 frames (trained on 5,
   it draws frames 5-8 wrong: 29% to 100% of their pixels more than 25/255 off, as it never sees the
   second group's causal cache); ``--decoder-steps`` then trains the decoder alone on the encoder's
   posterior means, as the SD toy's phase 3. Its ``latents_mean`` / ``latents_std`` are set to the
   per-channel statistics of the clips' latents (as Wan's VAE ships them).
2. Flow matching: WanTransformer3DModel and UMT5EncoderModel trained jointly on the frozen VAE's
   normalised latents x₀: x_σ = (1 − σ)·x₀ + σ·ε, target velocity ε − x₀, σ drawn uniformly and then
   shifted as the sampler's grid is (``--shift``), captions drawn afresh (random order, place phrases
   with probability ``--position-prob``, then left to right with ``--places-left-to-right``, empty
   with ``--uncond-prob``) and padded to 512 zero embeddings as the pipeline pads them; with
   ``--flow-shape-weight W`` the latents on and next to the shapes weigh 1 + W in the loss. With
   ``--image-batch N``, each step also trains on N one-frame latents (the clips' first latent frames
   and ``--images`` stills rendered once), as Wan trains on images and videos together: a frame is a
   fifth of a clip's tokens, and class, colour and place are a frame's. Cross-attention runs on the
   caption's rows and one row standing for the padding (``wan_model.fold_text_padding``, exact: the
   pipeline's 512-row function at a fraction of the cost). An exponential moving average of the
   weights is saved.

The VAE is saved to ``OUT/vae`` when phase 1 ends (``--vae-only`` stops there). ``--resume DIR``
starts from a saved folder: its VAE (trained further with ``--vae-steps N``, kept as it is by
default) and, when the folder has them, its text encoder and transformer (``--grow-layers N`` adds
N blocks that start as the identity). The folder gets
``train_log.json``: arguments, losses, per frame the VAE's share of pixels off and of reconstructions
the judge reads as the source, CPU seconds per phase.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videograin import media

from . import judge, world
from .train import _ema_update, _log, _lr
from .wan_model import (
    FLOW_SHIFT, FRAMES, LATENT_CHANNELS, encode_captions, fold_text_padding, make_text_encoder,
    make_tokenizer, make_transformer, make_vae, save_pipeline,
)


def random_clip(rng: np.random.Generator, frames: int = FRAMES, count: int | None = None,
                counts: tuple[float, float, float] = world.COUNTS, same_color: float | None = None
                ) -> tuple[np.ndarray, world.Scene]:
    """One clip (F, H, W, 3) uint8 of a random scene (of ``count`` shapes; default: drawn with the
    probabilities ``counts``; ``same_color`` as ``world.random_scene``'s) whose shapes move (up to 3 px)
    and scale (±10%)."""
    while True:
        scene = world.random_scene(rng, count, counts=counts, same_color=same_color)
        motions = [world.Motion(float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), float(rng.uniform(0.9, 1.1)))
                   for _ in scene.shapes]
        try:
            return world.video(scene, motions, frames)[0], scene
        except ValueError:  # a shape left its third or touched another: draw again
            continue


def clips(n: int, rng: np.random.Generator, counts: tuple[float, float, float] = world.COUNTS,
          same_color: float | None = None) -> tuple[torch.Tensor, list[world.Scene]]:
    """(n, 3, F, H, W) float in [-1, 1] and their scenes (frame 0's, which the captions describe);
    ``counts``: probabilities of one, two, three shapes; ``same_color``: share of two-shape scenes of
    one colour (None: 1 in 5)."""
    drawn = [random_clip(rng, counts=counts, same_color=same_color) for _ in range(n)]
    video = torch.from_numpy(np.stack([c for c, _ in drawn])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return video, [s for _, s in drawn]


def still_images(n: int, rng: np.random.Generator, counts: tuple[float, float, float] = world.COUNTS,
                 same_color: float | None = None) -> tuple[torch.Tensor, list[world.Scene]]:
    """(n, 3, 1, H, W) float in [-1, 1]: one-frame clips of random scenes (drawn as ``clips``'), and the
    scenes."""
    scenes = [world.random_scene(rng, counts=counts, same_color=same_color) for _ in range(n)]
    frames = np.stack([world.render(scene)[0] for scene in scenes])
    return torch.from_numpy(frames).permute(0, 3, 1, 2)[:, :, None].float() / 127.5 - 1, scenes


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """``vae.decode(z).sample`` without its final clamp to [-1, 1], for training: a clamped pixel gets
    no gradient, so a channel pushed past the range on the wrong side cannot come back. Mirrors ``AutoencoderKLWan._decode`` (one latent frame at a time through the causal cache)."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


def train_vae(vae, videos: torch.Tensor, steps: int, batch: int, lr: float, rng: np.random.Generator,
              shape_weight: float = 9.0, decoder_only: bool = False):
    """videos (n, 3, F, H, W) in [-1, 1]. Returns (vae in eval mode, losses). Pixels of the shapes (those
    off the frame's corner colour, the background) weigh ``1 + shape_weight`` in the loss: unweighted,
    the VAE draws the background right and the shapes grey (chroma keeps 0.04 of 0.78 in a single-frame
    probe, against 0.73 with the weight). ``decoder_only``: the encoder frozen, the decoder learns to
    draw the posterior means (what the pipeline decodes), so the latent space stays as it is."""
    vae.train()
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()] if decoder_only else list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses, name = [], "decoder" if decoder_only else "vae"
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, 50)
        x = videos[torch.from_numpy(rng.integers(len(videos), size=batch))]
        if decoder_only:
            with torch.no_grad():
                z, kl = vae.encode(x).latent_dist.mean, 0.0
        else:
            post = vae.encode(x).latent_dist
            z, kl = post.sample(), post.kl().mean()
        err = decode_unclamped(vae, z) - x
        weight = 1 + shape_weight * shape_pixels(x).float()
        loss = (weight * err.abs()).mean() + (weight * err.square()).mean() + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # unclipped, the loss jumps and stalls
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            _log(f"{name} {step:5d} loss {np.mean(losses[-50:]):.4f} cpu {time.process_time():.0f}s")
    return vae.eval(), losses


def shape_pixels(videos: torch.Tensor) -> torch.Tensor:
    """bool (n, 1, F, H, W): the pixels of videos (n, 3, F, H, W) off the frame's corner colour (the background)."""
    return (videos - videos[..., :1, :1]).abs().amax(1, keepdim=True) > 0.2


@torch.no_grad()
def shape_latents(videos: torch.Tensor, latent_shape: torch.Size, chunk: int = 512) -> torch.Tensor:
    """bool (n, 1, T, h, w): the latents whose pixels (frame 0 for latent frame 0, then each latent
    frame's group of frames; each latent's square of pixels) touch a shape, grown by one latent in
    space, so that a shape's edge counts wholly. ``latent_shape`` is (T, h, w)."""
    t, h, w = latent_shape
    frames, size = videos.shape[2], videos.shape[3]
    group, factor = (frames - 1) // (t - 1) if t > 1 else 1, size // h
    out = []
    for i in range(0, len(videos), chunk):
        mask = shape_pixels(videos[i : i + chunk]).float()
        rest = mask[:, :, 1:].unflatten(2, (t - 1, group)).amax(3)
        mask = torch.nn.functional.max_pool3d(torch.cat([mask[:, :, :1], rest], 2), (1, factor, factor))
        out.append(torch.nn.functional.max_pool3d(mask, (1, 3, 3), stride=1, padding=(0, 1, 1)) > 0)
    return torch.cat(out)


@torch.no_grad()
def pixels_off(vae, videos: torch.Tensor, n: int = 256) -> list[float]:
    """Per frame, the share of pixels of the first ``n`` clips that the VAE reconstructs more than 25/255 off."""
    n = min(n, len(videos))
    rec = torch.cat([vae.decode(vae.encode(videos[i : min(i + 32, n)]).latent_dist.mean).sample for i in range(0, n, 32)])
    return (rec - videos[:n]).abs().mul(127.5).amax(1).gt(25).float().mean(dim=(0, 2, 3)).tolist()


@torch.no_grad()
def judged_as_source(vae, videos: torch.Tensor, n: int = 160) -> list[float]:
    """Per frame, the share of the first ``n`` clips whose reconstruction the judge reads exactly as
    the source frame (background, and each shape's colour, class and third): roughly the most that
    direct prompting can score through this VAE."""
    n = min(n, len(videos))
    rec = torch.cat([vae.decode(vae.encode(videos[i : min(i + 32, n)]).latent_dist.mean).sample for i in range(0, n, 32)])

    def read(frame: torch.Tensor):
        background, shapes = judge.detect(media.to_uint8(frame[None])[0])
        return background, sorted((d.color, d.kind, d.place) for d in shapes)

    return [float(np.mean([read(rec[i, :, f]) == read(videos[i, :, f]) for i in range(n)]))
            for f in range(videos.shape[2])]


@torch.no_grad()
def latents_of(vae, videos: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Posterior means (n, C, T, h, w), unnormalised."""
    return torch.cat([vae.encode(videos[i : i + chunk]).latent_dist.mean for i in range(0, len(videos), chunk)])


def grow_transformer(transformer, extra: int):
    """A copy of ``transformer`` with ``extra`` new blocks after its last, each starting as the identity
    (the output projections of its self-attention, cross-attention and feed-forward zero, so its
    residual adds nothing), so a trained model keeps its function and gains depth to train on."""
    from diffusers import WanTransformer3DModel

    grown = WanTransformer3DModel.from_config({**transformer.config, "num_layers": transformer.config.num_layers + extra})
    missing, unexpected = grown.load_state_dict(transformer.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("blocks.") and int(k.split(".")[1]) >= transformer.config.num_layers
                                  for k in missing), (missing, unexpected)
    with torch.no_grad():
        for block in grown.blocks[transformer.config.num_layers :]:
            for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
                linear.weight.zero_()
                linear.bias.zero_()
    return grown


def train_flow(latents: torch.Tensor, scenes: list[world.Scene], args, rng: np.random.Generator, init=None,
               snapshot=None, shapes: torch.Tensor | None = None, images: torch.Tensor | None = None,
               image_scenes: list[world.Scene] | None = None):
    """latents (n, C, T, h, w) normalised; ``shapes`` bool (n, 1, T, h, w) (:func:`shape_latents`): there
    the squared error weighs ``1 + args.flow_shape_weight`` (the loss divided by the batch's mean
    weight, so its scale stays that of the unweighted loss). With ``args.image_batch``, each step
    also draws that many one-frame latents from ``images`` (m, C, 1, h, w) normalised, captioned by
    ``image_scenes``, and the loss is the mean of the clips' and the images' (Wan trains on images and
    videos together). Cross-attention runs on the folded padding (:func:`fold_text_padding`: the same
    function, at a fraction of the cost). Returns (ema text encoder, ema transformer, tokenizer, losses).
    ``snapshot(step, text_encoder, transformer, tokenizer, losses)`` is called with the EMA weights and
    the losses so far every ``args.snapshot_every`` steps."""
    tokenizer = make_tokenizer()
    text_encoder, transformer = init if init is not None else (make_text_encoder(tokenizer),
                                                               make_transformer(args.patch, args.layers,
                                                                                latents.shape[1], args.heads))
    text_encoder.train()
    transformer.train()
    ema_te, ema_tr = copy.deepcopy(text_encoder).eval(), copy.deepcopy(transformer).eval()
    fold_text_padding(transformer)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def batch_loss(pool: torch.Tensor, pool_scenes: list[world.Scene], size: int, weights=None) -> torch.Tensor:
        idx = rng.integers(len(pool), size=size)
        captions = ["" if rng.random() < args.uncond_prob else
                    world.caption(pool_scenes[i], rng, positions=bool(rng.random() < args.position_prob),
                                  places_left_to_right=args.places_left_to_right) for i in idx]
        x0 = pool[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        u = torch.rand(size)
        sigma = args.shift * u / (1 + (args.shift - 1) * u)
        s = sigma.view(-1, 1, 1, 1, 1)
        text = encode_captions(text_encoder, tokenizer, captions, fold_padding=True)
        velocity = transformer((1 - s) * x0 + s * noise, sigma * 1000, text, return_dict=False)[0]
        err = (velocity - (noise - x0)).square()
        if weights is None:
            return err.mean()
        weight = 1 + args.flow_shape_weight * weights[torch.from_numpy(idx)].float()
        return (weight * err).mean() / weight.mean()

    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        loss = batch_loss(latents, scenes, args.batch, shapes if args.flow_shape_weight else None)
        if args.image_batch:
            loss = (loss + batch_loss(images, image_scenes, args.image_batch)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema_tr, transformer, decay)
        _ema_update(ema_te, text_encoder, decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            _log(f"flow {step:5d} loss {np.mean(losses[-50:]):.4f} cpu {time.process_time():.0f}s")
        if snapshot is not None and args.snapshot_every and (step + 1) % args.snapshot_every == 0:
            snapshot(step + 1, ema_te, ema_tr, tokenizer, losses)
    return ema_te, ema_tr, tokenizer, losses


def _counts(text: str) -> tuple[float, float, float]:
    """"0.15,0.75,0.1" -> (0.15, 0.75, 0.1): three probabilities summing to 1."""
    counts = tuple(float(x) for x in text.split(","))
    if len(counts) != 3 or min(counts) < 0 or abs(sum(counts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"--counts takes three probabilities summing to 1, got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder (the shipped model took several stages)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips", type=int, default=4000, help="training clips rendered once")
    p.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default 1500; 0 with --resume)")
    p.add_argument("--vae-frames", type=int, default=FRAMES, help="VAE training clips cut to this many frames (4k + 1)")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--vae-stages", type=int, default=2, help="VAE downsampling stages, each 2x in space and time")
    p.add_argument("--vae-time-stages", type=int, default=None,
                   help="of those, how many (the last) also halve time (default all; Wan 2.1's first stage does not)")
    p.add_argument("--vae-channels", type=int, default=LATENT_CHANNELS, help="latent channels (Wan 2.1's: 16)")
    p.add_argument("--patch", type=int, default=1, help="transformer patch side, in latents")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks")
    p.add_argument("--heads", type=int, default=2, help="transformer heads of 32 (its width: 32 x heads)")
    p.add_argument("--decoder-steps", type=int, default=0, help="then this many steps of the decoder alone")
    p.add_argument("--decoder-lr", type=float, default=1e-3)
    p.add_argument("--vae-shape-weight", type=float, default=9.0, help="extra loss weight of the shapes' pixels")
    p.add_argument("--steps", type=int, default=3000, help="flow-matching steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--image-batch", type=int, default=0,
                   help="one-frame latents drawn each step beside the clips (0: clips only)")
    p.add_argument("--images", type=int, default=0,
                   help="still images rendered once for --image-batch, beside the clips' first frames")
    p.add_argument("--flow-shape-weight", type=float, default=0.0,
                   help="extra flow-loss weight of the latents on and next to the shapes (0: unweighted)")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--shift", type=float, default=FLOW_SHIFT, help="σ shift of the training draws and of the saved sampler's grid")
    p.add_argument("--position-prob", type=float, default=0.5)
    p.add_argument("--counts", type=_counts, default=world.COUNTS,
                   help="probabilities of a training scene holding one, two, three shapes (default %(default)s)")
    p.add_argument("--same-color", type=float, default=None,
                   help="share of two-shape training scenes whose shapes have one colour (default: 1 in 5, "
                        "colours drawn on their own)")
    p.add_argument("--places-left-to-right", action="store_true",
                   help="captions with places name the shapes left to right (as the SD toy's stage 4)")
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--snapshot-every", type=int, default=0, help="save the EMA model to OUT_stepN every N flow steps")
    p.add_argument("--resume", type=Path, default=None, help="start from this saved folder (see above)")
    p.add_argument("--grow-layers", type=int, default=0,
                   help="with --resume: add this many transformer blocks after the last, each starting as the identity")
    p.add_argument("--vae-only", action="store_true", help="stop after phase 1 (OUT/vae saved)")
    args = p.parse_args(argv)
    if args.same_color is not None and not 0 <= args.same_color <= 1:
        p.error(f"--same-color is a share between 0 and 1, got {args.same_color}")
    if args.image_batch and args.flow_shape_weight:
        p.error("--flow-shape-weight weighs clips only: leave it out with --image-batch")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "command": "python -m toyworld.train_wan " + " ".join(argv if argv is not None else sys.argv[1:])}
    videos, scenes = clips(args.clips, rng, args.counts, args.same_color)
    clock = time.process_time()
    vae, init = make_vae(args.vae_stages, args.vae_channels, args.vae_time_stages), None
    if args.resume is not None:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import UMT5EncoderModel

        vae = AutoencoderKLWan.from_pretrained(args.resume, subfolder="vae")
        if (args.resume / "train_log.json").is_file():  # the runs before this one, to reproduce the folder
            log["resumed_from"] = json.loads((args.resume / "train_log.json").read_text())
        if (args.resume / "transformer").is_dir():
            init = (UMT5EncoderModel.from_pretrained(args.resume, subfolder="text_encoder"),
                    grow_transformer(WanTransformer3DModel.from_pretrained(args.resume, subfolder="transformer"),
                                     args.grow_layers))
    vae_steps = args.vae_steps if args.vae_steps is not None else (0 if args.resume else 1500)
    vae, log["vae_losses"] = train_vae(vae, videos[:, :, : args.vae_frames], vae_steps, args.vae_batch,
                                       args.vae_lr, rng, args.vae_shape_weight)
    vae, log["decoder_losses"] = train_vae(vae, videos, args.decoder_steps, args.vae_batch, args.decoder_lr, rng,
                                           args.vae_shape_weight, decoder_only=True)
    log["vae_pixels_off"] = [round(x, 4) for x in pixels_off(vae, videos)]
    log["vae_judged_as_source"] = [round(x, 4) for x in judged_as_source(vae, videos)]
    _log(f"vae, per frame: share of pixels more than 25/255 off {log['vae_pixels_off']}, "
         f"of reconstructions the judge reads as the source {log['vae_judged_as_source']}")
    raw = latents_of(vae, videos)
    mean, std = raw.mean(dim=(0, 2, 3, 4)), raw.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    log["vae_cpu_s"] = time.process_time() - clock
    vae.save_pretrained(args.out / "vae", safe_serialization=True)
    if args.vae_only:
        (args.out / "train_log.json").write_text(json.dumps(log))
        _log(f"saved {args.out / 'vae'}")
        return 0
    clock = time.process_time()
    latents = (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)

    def snapshot(step, text_encoder, transformer, tokenizer, losses):
        folder = save_pipeline(Path(f"{args.out}_step{step}"), vae, text_encoder, tokenizer, transformer,
                               args.shift)
        (folder / "train_log.json").write_text(json.dumps({**log, "steps_done": step, "flow_losses": losses}))
        _log(f"snapshot {folder}")

    shapes = shape_latents(videos, latents.shape[2:]) if args.flow_shape_weight else None
    images, image_scenes = None, None
    if args.image_batch:  # a clip's first latent frame is its first frame's alone (the VAE is causal in time)
        stills, image_scenes = still_images(args.images, rng, args.counts, args.same_color)
        stills = (latents_of(vae, stills) - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
        images, image_scenes = torch.cat([latents[:, :, :1], stills]), scenes + image_scenes
    text_encoder, transformer, tokenizer, log["flow_losses"] = train_flow(latents, scenes, args, rng, init, snapshot,
                                                                          shapes, images, image_scenes)
    log["flow_cpu_s"] = time.process_time() - clock
    save_pipeline(args.out, vae, text_encoder, tokenizer, transformer, args.shift)
    (args.out / "train_log.json").write_text(json.dumps(log))
    _log(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
