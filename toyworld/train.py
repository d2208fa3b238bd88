"""Train the toy world's text-to-image model on CPU and save it as a Stable Diffusion folder.

    nice -n 19 python -m toyworld.train --out NEW_FOLDER   (the shipped model: src/videograin/toy/sd)

Two phases, deterministic given ``--seed`` (one thread, seeded torch and numpy generators, data order
drawn from the seed):

1. VAE: AutoencoderKL (2x) trained to reconstruct world frames (L1 + L2 + a tiny KL term); its
   latents' scaling factor is set to 1 / std of the dataset's latents.
2. Diffusion: UNet2DConditionModel and CLIPTextModel trained jointly on the frozen VAE's latents
   (epsilon prediction, min-SNR-5 loss weights, optionally floored at high noise by ``--x0-floor``,
   Stable Diffusion's noise schedule), captions drawn
   afresh each time: shapes in random order, with place phrases with probability ``--position-prob``,
   empty with probability ``--uncond-prob`` (for classifier-free guidance). An exponential moving
   average of the weights is what gets saved.

The folder also gets ``train_log.json``: arguments, losses, CPU seconds per phase.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videograin.testing import sd15_scheduler
from videograin.toy import SD_MODEL

from . import world
from .model import make_text_encoder, make_tokenizer, make_unet, make_vae, save_pipeline, token_ids


def _lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    u = (step - warmup) / max(total - warmup, 1)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * u)))


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_vae(images: torch.Tensor, steps: int, batch: int, lr: float, rng: np.random.Generator, vae=None):
    """images (N, 3, H, W) in [-1, 1]. Trains ``vae`` (default: a fresh one). Returns (vae, losses)."""
    vae = make_vae() if vae is None else vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, 50)
        x = images[torch.from_numpy(rng.integers(len(images), size=batch))]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        err = rec - x
        loss = err.abs().mean() + err.square().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            _log(f"vae {step:5d} loss {np.mean(losses[-100:]):.4f} cpu {time.process_time():.0f}s")
    vae.eval()
    return vae, losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + chunk]).latent_dist.mean for i in range(0, len(images), chunk)])


def finetune_decoder(vae, images: torch.Tensor, means: torch.Tensor, steps: int, batch: int, lr: float, seed: int):
    """Phase 3: sharpen the decoder on the encoder's posterior means (what the pipeline decodes), the
    encoder frozen, so the latent space the UNet learned is unchanged. Seeds its own generators, so it
    gives the same result run after phase 2 or on its own (``--decoder-only``)."""
    torch.manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, 50)
        idx = torch.from_numpy(rng.integers(len(images), size=batch))
        x = images[idx]
        err = vae.decode(means[idx]).sample - x
        loss = err.abs().mean() + err.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            _log(f"decoder {step:5d} loss {np.mean(losses[-100:]):.4f} cpu {time.process_time():.0f}s")
    vae.eval()
    return losses


def pixels_off(vae, images: torch.Tensor, means: torch.Tensor, n: int = 2048) -> float:
    """Share of pixels of the first ``n`` frames that the VAE reconstructs more than 25/255 off."""
    with torch.no_grad():
        rec = torch.cat([vae.decode(means[i : i + 256]).sample for i in range(0, n, 256)])
    return float((rec.clamp(-1, 1) - images[:n]).abs().mul(127.5).amax(1).gt(25).float().mean())


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def train_diffusion(latents, scenes, args, rng: np.random.Generator, snapshot=None, init=None, losses_out=None):
    """latents (N, 4, h, w) already scaled. Returns (ema_text_encoder, ema_unet, tokenizer, losses).

    ``init``: optional (text_encoder, unet) to start from (``--resume``); fresh models otherwise."""
    tokenizer = make_tokenizer()
    if init is None:
        text_encoder = make_text_encoder(tokenizer)
        unet = make_unet(tuple(args.channels))
    else:
        text_encoder, unet = init
        text_encoder.train()
        unet.train()
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    alphas = sd15_scheduler().alphas_cumprod.float()
    losses = [] if losses_out is None else losses_out
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps, args.lr, args.warmup, args.lr_floor)
        idx = rng.integers(len(latents), size=args.batch)
        captions = []
        for i in idx:
            text = world.caption(scenes[i], rng, positions=bool(rng.random() < args.position_prob),
                                 places_left_to_right=args.places_left_to_right)
            captions.append("" if rng.random() < args.uncond_prob else text)
        z0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(z0)
        t = torch.randint(0, len(alphas), (args.batch,))
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps = unet(zt, t, encoder_hidden_states=text_encoder(token_ids(tokenizer, captions))[0]).sample
        snr = a.view(-1) / (1 - a.view(-1))
        # min-SNR weights in x0 terms (eps loss = snr · x0 loss), floored at high noise, where the
        # layout (which third a shape is in) is decided but plain eps weights make its error tiny
        weight = snr.clamp(max=args.min_snr).clamp(min=args.x0_floor) / snr
        loss = (weight * (eps - noise).square().mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_te, text_encoder, decay)
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            _log(f"diffusion {step:5d} loss {np.mean(losses[-50:]):.4f} cpu {time.process_time():.0f}s")
        if snapshot is not None and args.snapshot_every and (step + 1) % args.snapshot_every == 0:
            snapshot(step + 1, ema_te, ema_unet, tokenizer)
    return ema_te, ema_unet, tokenizer, losses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=SD_MODEL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=30000, help="training frames rendered once")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--decoder-steps", type=int, default=1200, help="phase 3: decoder-only fine-tuning steps")
    p.add_argument("--decoder-lr", type=float, default=1e-3)
    p.add_argument("--decoder-only", action="store_true",
                   help="run only phase 3 on the model already in --out (same result as in a full run)")
    p.add_argument("--steps", type=int, default=1500, help="diffusion training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64], help="UNet widths, one per level")
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--min-snr", type=float, default=5.0)
    p.add_argument("--x0-floor", type=float, default=0.1,
                   help="lower bound of the loss weight in x0 terms (0: plain min-SNR; see train_diffusion)")
    p.add_argument("--position-prob", type=float, default=0.5)
    p.add_argument("--places-left-to-right", action="store_true",
                   help="captions with places name the shapes left to right (others stay in random order)")
    p.add_argument("--uncond-prob", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=100, help="diffusion learning-rate warmup steps")
    p.add_argument("--lr-floor", type=float, default=0.1, help="cosine schedule ends at lr * floor")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue diffusion training from the model folder given (its EMA weights; fresh "
                        "optimizer; its VAE kept as is, no VAE or decoder phase); saves to --out")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="train a fresh UNet and text encoder (phase 2 only) on the VAE saved in the model folder "
                        "given (its encoder and fine-tuned decoder kept as they are); saves to --out")
    p.add_argument("--snapshot-every", type=int, default=0, help="also save <out>_step<N> every N steps")
    p.add_argument("--part-prob", type=float, default=0.0,
                   help="share of the shapes large enough for a part that carry one (world.random_scene)")
    p.add_argument("--vae-refit-steps", type=int, default=0,
                   help="with --resume: first train the saved VAE (encoder and decoder) this many more steps at "
                        "--vae-refit-lr on this world, then phase 3, then resume the UNet on its new latents")
    p.add_argument("--vae-refit-lr", type=float, default=5e-4)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cpu0 = time.process_time()
    frames, scenes = world.dataset(args.images, args.seed, part_prob=args.part_prob)
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1).contiguous()
    _log(f"{len(images)} frames rendered, cpu {time.process_time() - cpu0:.0f}s")

    if args.decoder_only:
        return _decoder_only(args, images, cpu0)
    if args.resume is not None and args.vae_from is not None:
        raise SystemExit("--resume and --vae-from exclude each other: --resume continues a UNet, --vae-from starts one")
    if args.resume is not None or args.vae_from is not None:
        return _on_saved_vae(args, images, scenes, cpu0, argv)
    vae, vae_losses = train_vae(images, args.vae_steps, args.vae_batch, args.vae_lr, rng)
    means = encode_all(vae, images)
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    latents = means * scale
    vae_err = pixels_off(vae, images, means)
    cpu_vae = time.process_time() - cpu0
    _log(f"vae done: scaling {scale:.4f}, pixels off by > 25/255: {vae_err:.4%}, cpu {cpu_vae:.0f}s")

    def snapshot(step, te, unet, tok):
        save_pipeline(Path(f"{args.out}_step{step}"), vae, te, tok, unet)

    te, unet, tokenizer, losses = train_diffusion(latents, scenes, args, rng, snapshot)
    cpu_diffusion = time.process_time() - cpu0
    save_pipeline(args.out, vae, te, tokenizer, unet)
    decoder_losses = finetune_decoder(vae, images, means, args.decoder_steps, args.vae_batch, args.decoder_lr, args.seed)
    vae.save_pretrained(Path(args.out) / "vae", safe_serialization=True)
    cpu_total = time.process_time() - cpu0
    log = {
        "command": "python -m toyworld.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "vae_scaling_factor": scale,
        "vae_pixels_off": vae_err,
        "vae_pixels_off_after_decoder_finetune": pixels_off(vae, images, means),
        "cpu_seconds": {"data_and_vae": round(cpu_vae, 1), "diffusion": round(cpu_diffusion - cpu_vae, 1),
                        "total": round(cpu_total, 1)},
        "vae_loss_every_100": [round(float(np.mean(vae_losses[i : i + 100])), 5) for i in range(0, len(vae_losses), 100)],
        "loss_every_100": [round(float(np.mean(losses[i : i + 100])), 5) for i in range(0, len(losses), 100)],
        "decoder_loss_every_100": _every_100(decoder_losses),
    }
    (Path(args.out) / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    _log(f"saved {args.out}; cpu {cpu_total:.0f}s")
    return 0


def _every_100(losses: list[float]) -> list[float]:
    return [round(float(np.mean(losses[i : i + 100])), 5) for i in range(0, len(losses), 100)]


def _decoder_only(args, images: torch.Tensor, cpu0: float) -> int:
    from diffusers import AutoencoderKL

    folder = Path(args.out)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    means = encode_all(vae, images)
    before = pixels_off(vae, images, means)
    losses = finetune_decoder(vae, images, means, args.decoder_steps, args.vae_batch, args.decoder_lr, args.seed)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    log_file = folder / "train_log.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else {}
    log["decoder_only_command"] = "python -m toyworld.train " + " ".join(sys.argv[1:])
    log["vae_pixels_off"] = before
    log["vae_pixels_off_after_decoder_finetune"] = pixels_off(vae, images, means)
    log["decoder_loss_every_100"] = _every_100(losses)
    log.setdefault("cpu_seconds", {})["decoder_finetune"] = round(time.process_time() - cpu0, 1)
    log_file.write_text(json.dumps(log, indent=2) + "\n")
    _log(f"decoder fine-tuned in {folder}: pixels off {before:.2%} -> {log['vae_pixels_off_after_decoder_finetune']:.2%}")
    return 0


def _on_saved_vae(args, images: torch.Tensor, scenes, cpu0: float, argv) -> int:
    """Phase 2 again on the latents of the VAE saved in ``--resume`` / ``--vae-from`` (its encoder is what
    phase 1 trained; phase 3 only touched the decoder, so the posterior means are the latents a UNet was
    trained on). ``--resume`` starts from the folder's (EMA) UNet and text encoder; ``--vae-from`` from fresh
    ones of ``--channels``. Data order: its own generator seeded by ``(seed, 2)``, so a resumed run does not
    replay the first run's batches and is deterministic."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = Path(args.resume or args.vae_from)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae").eval()
    init = None
    if args.resume is not None:
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder")
        text_encoder = _on_world_vocabulary(text_encoder, CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
                                            make_tokenizer(), args.seed)
        init = (text_encoder, UNet2DConditionModel.from_pretrained(src, subfolder="unet"))
    refit = {}
    if args.vae_refit_steps:
        if args.resume is None:
            raise SystemExit("--vae-refit-steps needs --resume")
        torch.manual_seed(args.seed + 2)
        _, refit["vae_loss_every_100"] = train_vae(images, args.vae_refit_steps, args.vae_batch, args.vae_refit_lr,
                                                   np.random.default_rng([args.seed, 3]), vae)
        means = encode_all(vae, images)
        vae.register_to_config(scaling_factor=float(1.0 / means.std()))
        refit["decoder_loss_every_100"] = _every_100(
            finetune_decoder(vae, images, means, args.decoder_steps, args.vae_batch, args.decoder_lr, args.seed))
        refit["vae_pixels_off_after_decoder_finetune"] = pixels_off(vae, images, means)
        refit["vae_loss_every_100"] = _every_100(refit["vae_loss_every_100"])
    scale = float(vae.config.scaling_factor)
    latents = encode_all(vae, images) * scale
    cpu_prep = time.process_time() - cpu0
    _log(f"{'resuming' if init else 'fresh UNet'} on {src}'s VAE: latents encoded (scaling {scale:.4f}), cpu {cpu_prep:.0f}s")
    rng = np.random.default_rng([args.seed, 2])
    old_file = src / "train_log.json"
    old_log = old_file.read_text() if old_file.is_file() else "{}"  # read now: --out may be --resume

    def snapshot(step, te, un, tok):
        save_pipeline(Path(f"{args.out}_step{step}"), vae, te, tok, un)
        _write_resume_log(Path(f"{args.out}_step{step}"), old_log, src, args, argv, losses_so_far[0], cpu0, cpu_prep, step,
                          refit)

    losses_so_far = [[]]
    te, un, tokenizer, losses = train_diffusion(latents, scenes, args, rng, snapshot, init=init,
                                                losses_out=losses_so_far[0])
    save_pipeline(args.out, vae, te, tokenizer, un)
    _write_resume_log(Path(args.out), old_log, src, args, argv, losses, cpu0, cpu_prep, args.steps, refit)
    _log(f"saved {args.out}; cpu {time.process_time() - cpu0:.0f}s")
    return 0


def _on_world_vocabulary(text_encoder, old_tokenizer, tokenizer, seed: int):
    """``text_encoder`` with its token embeddings re-indexed from ``old_tokenizer``'s vocabulary to
    ``tokenizer``'s: a token both know keeps its learned row (the special tokens move when words are
    added), a new word gets a random row of the learned rows' scale."""
    old_vocab, vocab = old_tokenizer.get_vocab(), tokenizer.get_vocab()
    if old_vocab == vocab:
        return text_encoder
    old = text_encoder.get_input_embeddings().weight.detach()
    rows = torch.randn(len(vocab), old.shape[1], generator=torch.Generator().manual_seed(seed + 3)) * old.std()
    for token, i in vocab.items():
        if token in old_vocab:
            rows[i] = old[old_vocab[token]]
    new = sorted(set(vocab) - set(old_vocab), key=vocab.get)
    _log(f"text encoder: {len(new)} new tokens {new}, {len(vocab)} in all")
    text_encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(rows, freeze=False))
    config = text_encoder.config
    config.vocab_size = len(vocab)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return text_encoder


def _write_resume_log(folder: Path, old_log: str, src: Path, args, argv, losses, cpu0: float, cpu_prep: float,
                      step: int, refit: dict) -> None:
    log = json.loads(old_log)
    log.setdefault("resumed", []).append({
        "command": "python -m toyworld.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "from": str(src),
        "unet": "continued" if args.resume is not None else "fresh (only the VAE comes from there)",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps_done": step,
        "cpu_seconds": {"data_and_latents": round(cpu_prep, 1), "diffusion": round(time.process_time() - cpu0 - cpu_prep, 1)},
        "loss_every_100": _every_100(losses),
        **({"vae_refit": refit} if refit else {}),
    })
    (folder / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
