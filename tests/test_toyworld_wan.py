"""The Wan toy (videograin.toy.WAN_MODEL): its VAE, transformer and training helpers, direct prompting,
attention and demo."""

from __future__ import annotations

import numpy as np
import pytest

from toyworld import judge
from toyworld.cases import CASES, case_inputs, source_prompt
from toyworld.methods import Method
from videograin.toy import DEMO, WAN_MODEL


needs_wan_model = pytest.mark.skipif(not (WAN_MODEL / "model_index.json").is_file(),
                                     reason="the Wan toy model is not there")


def test_wan_vae_training_decode_is_the_vae_decode_before_its_clamp():
    """train_wan.decode_unclamped mirrors AutoencoderKLWan._decode (the causal cache frame by frame)
    without the clamp: clamped, it equals vae.decode, and it does leave [-1, 1] where decode clamps."""
    import torch

    from toyworld.train_wan import decode_unclamped
    from toyworld.wan_model import LATENT_CHANNELS, make_vae

    torch.manual_seed(0)
    vae = make_vae().eval()
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(30)  # push outputs past the range
        z = torch.randn(2, LATENT_CHANNELS, 3, 8, 8)
        stock, raw = vae.decode(z).sample, decode_unclamped(vae, z)
    assert raw.shape == stock.shape == (2, 3, 9, 32, 32)
    assert (raw.abs() > 1).float().mean() > 0.05
    torch.testing.assert_close(raw.clamp(-1, 1), stock, atol=1e-6, rtol=0)


def test_wan_flow_shape_latents_map_pixels_to_their_latents_grown_by_one():
    """train_wan.shape_latents on a hand-made clip: one shape pixel in frame 0 marks latent frame 0, one
    in frame 6 marks latent frame 3 (frames 5-6 with a time factor of 2); each marks its 2x2 latent
    square's latent and its 8 neighbours, clipped at the border; the background marks nothing."""
    import torch

    from toyworld.train_wan import shape_latents

    video = torch.full((1, 3, 9, 32, 32), -0.5)  # gray background
    video[0, :, 0, 10, 21] = torch.tensor([0.7, -0.7, -0.7])  # latent (5, 10)
    video[0, :, 6, 0, 31] = torch.tensor([-0.7, 0.3, -0.7])  # latent (0, 15), the corner
    got = shape_latents(video, torch.Size((5, 16, 16)))
    want = torch.zeros(1, 1, 5, 16, 16, dtype=torch.bool)
    want[0, 0, 0, 4:7, 9:12] = True
    want[0, 0, 3, 0:2, 14:16] = True
    assert got.dtype == torch.bool and torch.equal(got, want)


def test_wan_grown_transformer_keeps_its_function_and_trains_its_new_blocks():
    """train_wan.grow_transformer adds blocks that start as the identity: the grown transformer's
    velocity equals the original's on a random input, and a loss reaches the new blocks' (zeroed)
    output projections, so they can learn."""
    import torch

    from toyworld.train_wan import grow_transformer
    from toyworld.wan_model import TEXT_WIDTH, make_transformer

    torch.manual_seed(0)
    small = make_transformer(patch=2, layers=2, channels=4).eval()
    grown = grow_transformer(small, 2).eval()
    assert len(grown.blocks) == 4
    x, text = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, TEXT_WIDTH)
    with torch.no_grad():
        want = small(x, torch.tensor([500.0]), text, return_dict=False)[0]
    got = grown(x, torch.tensor([500.0]), text, return_dict=False)[0]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    got.square().mean().backward()
    assert all(grown.blocks[i].ffn.net[-1].weight.grad.abs().sum() > 0 for i in (2, 3))


def test_wan_vae_time_stages_leave_the_first_stage_spatial_only():
    """make_vae(2, time_stages=1), as Wan 2.1's first stage: 4x in space, 2x in time, so 9 frames of
    32x32 -> 5 latent frames of 8x8 and back, and the backbone reads the factors (4, 2)."""
    import torch

    from videograin.backbones.wan import vae_factors
    from toyworld.wan_model import make_vae

    vae = make_vae(stages=2, channels=4, time_stages=1).eval()
    assert list(vae.config.temperal_downsample) == [False, True]
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 9, 32, 32)).latent_dist.mean
        assert z.shape == (1, 4, 5, 8, 8) and vae.decode(z).sample.shape == (1, 3, 9, 32, 32)
    assert vae_factors(vae.config) == (4, 2)
    assert list(make_vae(stages=2).config.temperal_downsample) == [True, True]


def test_wan_transformer_heads_set_its_width_and_patch_two_keeps_the_latent_shape():
    """make_transformer(patch=2, heads=4): 128 wide (4 heads of 32, feed-forward 512); a 16x16 latent is
    an 8x8 token grid, and the velocity comes back at the latent's shape."""
    import torch

    from toyworld.wan_model import TEXT_WIDTH, make_transformer

    tr = make_transformer(patch=2, layers=1, channels=4, heads=4).eval()
    assert tr.patch_embedding.out_channels == 128 and tr.blocks[0].ffn.net[0].proj.out_features == 512
    with torch.no_grad():
        tokens = tr.patch_embedding(torch.zeros(1, 4, 5, 16, 16))
        v = tr(torch.randn(1, 4, 5, 16, 16), torch.tensor([500.0]), torch.randn(1, 8, TEXT_WIDTH),
               return_dict=False)[0]
    assert tokens.shape == (1, 128, 5, 8, 8) and v.shape == (1, 4, 5, 16, 16)
    assert make_transformer().patch_embedding.out_channels == 64


def test_wan_folded_text_padding_gives_the_velocity_and_gradients_of_the_512_row_context():
    """wan_model.fold_text_padding + encode_captions(fold_padding=True): captions of different lengths
    (one empty) against the stock cross-attention over the 512-row context, in float64: the same
    velocity, and the same gradients in the transformer and the text encoder."""
    import copy

    import torch

    from toyworld.wan_model import encode_captions, fold_text_padding, make_text_encoder, make_tokenizer, make_transformer

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    encoder = make_text_encoder(tokenizer).double()
    stock = make_transformer(patch=2, layers=2, channels=4).double()
    with torch.no_grad():  # make the text weigh: stock init leaves cross-attention's output small
        for block in stock.blocks:
            block.attn2.to_out[0].weight.mul_(20)
    folded, folded_encoder = fold_text_padding(copy.deepcopy(stock)), copy.deepcopy(encoder)
    captions = ["a red circle on the left and a blue square on the right on a gray background", "a blue square", ""]
    x, t = torch.randn(3, 4, 3, 8, 8, dtype=torch.float64), torch.tensor([100.0, 500.0, 900.0])
    want = stock(x, t, encode_captions(encoder, tokenizer, captions), return_dict=False)[0]
    text = encode_captions(folded_encoder, tokenizer, captions, fold_padding=True)
    got = folded(x, t, text, return_dict=False)[0]
    assert text.shape[1] == tokenizer(captions[0], return_tensors="pt").input_ids.shape[1] + 1
    with torch.no_grad():  # the folded context on the stock attention is another function
        unfolded = stock(x, t, text, return_dict=False)[0]
    assert (unfolded - want).abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    (want * x).sum().backward()
    (got * x).sum().backward()
    for a, b in [(stock, folded), (encoder, folded_encoder)]:
        pairs = [(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()) if p.grad is not None]
        assert len(pairs) > 10
        for ga, gb in pairs:
            torch.testing.assert_close(gb, ga, atol=1e-9, rtol=1e-7)


def test_wan_clip_first_latent_frame_is_its_first_frame_encoded_alone():
    """train_wan's image pool takes a clip's first latent frame as the latent of its first frame alone:
    the Wan VAE is causal in time, so (on random weights, one and two stages) encoding frame 0 by itself
    gives latent frame 0 of the clip, and a still image (train_wan.still_images) one latent frame."""
    import torch

    from toyworld.train_wan import latents_of, still_images
    from toyworld.wan_model import make_vae

    torch.manual_seed(0)
    clip = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    for stages in (1, 2):
        vae = make_vae(stages=stages, channels=4).eval()
        with torch.no_grad():
            whole, first = latents_of(vae, clip), latents_of(vae, clip[:, :, :1])
        assert first.shape[2] == 1 and whole.shape[2] == (9 - 1) // 2**stages + 1
        torch.testing.assert_close(first, whole[:, :, :1], atol=1e-5, rtol=0)
        assert (whole[:, :, 1:2] - first).abs().max() > 1e-3  # later latent frames are not frame 0's
    images, scenes = still_images(3, np.random.default_rng(0))
    assert images.shape == (3, 3, 1, 32, 32) and len(scenes) == 3
    for image, scene in zip(images, scenes):  # each image is its scene, as the judge reads it
        background, shapes = judge.detect(((image[:, 0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
        assert background == scene.background
        assert sorted((d.color, d.kind, d.place) for d in shapes) == sorted((s.color, s.kind, s.place) for s in scene.shapes)


@needs_wan_model
def test_wan_toy_draws_the_requested_background_and_colour():
    """Smoke test of the Wan toy through WanVideoGrainPipeline's backbone (flow sampling, umT5 prompts
    padded to 512, the causal VAE): on 15 single-object prompts the first frame has the requested
    background and a shape of the requested colour in most samples (its full prompt scores:
    toyworld/results/wan/prompts.json)."""
    from toyworld import sample
    from toyworld.sample_wan import load_pipeline, text_to_video

    cases = sample.single_prompts()[::9]
    clips = text_to_video(load_pipeline(WAN_MODEL), [c[0] for c in cases])
    rows = sample.score(clips[:, 0], cases)
    backgrounds = sum(r["background"] == bg for r, (_, _, bg) in zip(rows, cases))
    colours = sum(any(f[0] == want[0][0] for f in r["found"]) for r, (_, want, _) in zip(rows, cases))
    assert backgrounds >= 13 and colours >= 11, rows  # 15 and 15 here


@needs_wan_model
def test_one_step_scores_of_an_oracle_transformer_equal_the_reconstruction():
    """sample_wan.one_step with a transformer that returns the true velocity (x_σ − x₀) / σ of the clip
    it draws: x̂₀ is x₀ at every σ (latent MSE ~0), so each σ scores what the reconstruction scores."""
    import numpy as np
    import torch

    from toyworld.sample_wan import load_pipeline, one_step
    from toyworld.train_wan import random_clip
    from videograin.backbones.wan import WanBackbone

    pipe = load_pipeline(WAN_MODEL)
    clip, _ = random_clip(np.random.default_rng(7))
    x0 = WanBackbone(pipe).encode(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1)
    x0 = x0.transpose(0, 1)[None]  # (1, C, T, h, w)
    pipe.transformer.forward = lambda x, t, text, return_dict: ((x - x0) / (t / 1000),)
    result = one_step(pipe, n=1, sigmas=(0.3, 0.9), seed=7)
    for sigma in ("0.3", "0.9"):
        assert result["sigmas"][sigma]["latent_mse"] < 1e-6, result
        assert result["sigmas"][sigma]["judged_as_source"] == result["reconstruction"], result


@needs_wan_model
def test_caption_sensitivity_of_a_transformer_that_reads_only_its_own_caption():
    """sample_wan.caption_sensitivity with a transformer that returns the true velocity ε − x₀ given the
    clip's own caption and that plus 0.1 given any other: velocity MSE 0 for the true caption and 0.01
    for the class-swapped, colour-swapped and empty ones (each swap changes exactly its one word)."""
    import numpy as np
    import torch

    from toyworld import world
    from toyworld.sample_wan import caption_sensitivity, load_pipeline, swapped_caption
    from toyworld.train_wan import random_clip
    from videograin.backbones.wan import WanBackbone

    pipe = load_pipeline(WAN_MODEL)
    backbone = WanBackbone(pipe)
    clip, scene = random_clip(np.random.default_rng(5), count=1)
    true = world.caption(scene, places_left_to_right=True)
    for field, values in (("kind", world.SHAPES), ("color", list(world.COLORS))):
        changed = [(a, b) for a, b in zip(true.split(), swapped_caption(scene, field).split()) if a != b]
        assert len(changed) == 1 and changed[0][0] == getattr(scene.shapes[0], field), changed
        assert changed[0][1] in values, changed
    x0 = backbone.encode(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1).transpose(0, 1)[None]
    own = backbone.encode_prompt(true)
    pipe.transformer.forward = lambda x, t, text, return_dict: (
        (x - x0) / (t / 1000) + (0.0 if torch.equal(text, own) else 0.1),)
    result = caption_sensitivity(pipe, n=1, sigmas=(0.5,), seed=5)["sigmas"]["0.5"]["velocity_mse"]
    assert result["true"] < 1e-8, result
    for kind in ("class_swapped", "colour_swapped", "empty"):
        assert abs(result[kind] - 0.01) < 1e-4, result


@needs_wan_model
def test_wan_attention_diagnostic_reads_the_conditional_modulated_calls_it_reports():
    """toyworld.wan_attention: the attention it recomputes from a layer's inputs, times v through the
    layer's output projection, is what the layer returned under the (grouped-kernel) modulation, and not
    what plain attention gives; it reads every block's conditional call of each modulated step and no
    other call (the unconditional pass and the inversion run stock processors)."""
    import torch

    from toyworld import wan_attention
    from toyworld.sample_wan import load_pipeline
    from videograin.backbones.wan_processors import WanLayoutAttnProcessor

    pipe = load_pipeline(WAN_MODEL)
    steps, method = 4, Method("videograin", 0.3, 1.0, 0.5)  # modulated steps: 2
    calls = []

    def hook(attn, args, output):
        if isinstance(attn.processor, WanLayoutAttnProcessor) and attn.processor.block == 1:
            calls.append((attn, args, output, attn.processor))

    block = pipe.transformer.blocks[1]
    handles = [layer.register_forward_hook(hook) for layer in (block.attn1, block.attn2)]
    case = next(c for c in CASES if c.name == "instance_shapes")
    source, masks, _ = case_inputs(case, 9)
    with torch.no_grad():
        pipe(source, masks, case.prompt, [r.prompt for r in case.regions], source_prompt=source_prompt(case),
             num_inference_steps=steps, guidance_scale=5.0, modulation=method.modulation(steps), output_type="latent")
    for handle in handles:
        handle.remove()
    assert len(calls) == 2 * 2  # self and cross, two modulated steps
    for attn, args, output, processor in calls:
        with torch.no_grad():
            _, plain, modulated, v, _, lam = wan_attention.attention_probs(attn, args, processor)
            project = lambda probs: attn.to_out[0]((probs @ v).transpose(1, 2).flatten(2).float())  # noqa: E731
            assert lam.abs().max() > 0
            assert torch.allclose(project(modulated), output, atol=1e-4), (project(modulated) - output).abs().max()
            assert (project(plain) - output).abs().max() > 1e-2

    rows = wan_attention.measure(pipe, method, steps=steps)
    instance_cases = sum(c.level == "instance" for c in CASES)
    assert len(rows) == 2 * len(pipe.transformer.blocks)
    assert all(r["calls"] == instance_cases * 2 for r in rows), rows
    for r in rows:
        assert r["modulated_own"] > r["plain_own"] and r["modulated_other"] < r["plain_other"], r


@needs_wan_model
def test_on_the_wan_toy_self_attention_keeps_instances_apart_and_cross_modulation_is_what_moves():
    """On the shipped 10-block Wan toy (toyworld/README.md, "Reading the numbers"), the benchmark's
    instance cases at the paper's strengths. Without modulation a shape's self-attention gives
    the other shape no more than its share of the tokens in any block and its own region twice its share
    on average, while its cross-attention gives its own region prompt a minority (< 0.2) in every block;
    modulation at least 1.5x that share in every block."""
    from toyworld import wan_attention
    from toyworld.sample_wan import load_pipeline

    rows = wan_attention.measure(load_pipeline(WAN_MODEL), Method("videograin", 0.3, 1.0, 0.3))
    self_rows = [r for r in rows if r["kind"] == "self"]
    cross_rows = [r for r in rows if r["kind"] == "cross"]
    assert len(self_rows) == len(cross_rows) == 10
    for r in self_rows:
        assert r["plain_other"] <= r["other_area"], r
    assert np.mean([r["plain_own"] / r["own_area"] for r in self_rows]) >= 2, self_rows
    for r in cross_rows:
        assert r["plain_own"] < 0.2 and r["modulated_own"] >= 1.5 * r["plain_own"], r


@needs_wan_model
def test_the_wan_demo_config_edits_each_square_into_its_regions_colour(tmp_path):
    """The Wan demo config (videograin.toy.DEMO / config_wan.yaml) end to end through the CLI: 9 frames
    written, and the judge finds the left region's shape yellow and the right one's purple in most frames
    (both squares are blue in the source)."""
    from PIL import Image

    from videograin.cli import main

    demo = DEMO
    assert main(["edit", str(demo / "config_wan.yaml"), "--out", str(tmp_path / "out")]) == 0
    frames = sorted((tmp_path / "out" / "frames").glob("*.png"))
    assert len(frames) == 9
    hits = 0
    for i, path in enumerate(frames):
        _, shapes = judge.detect(np.asarray(Image.open(path).convert("RGB")))
        regions = {name: np.asarray(Image.open(demo / "masks" / name / f"{i:05d}.png"))[..., 0] > 127
                   for name in ("left", "right")}
        colours = {name: {d.color for d in shapes if d.mask[region].any()} for name, region in regions.items()}
        hits += colours["left"] == {"yellow"} and colours["right"] == {"purple"}
    assert hits >= 6, hits  # 9 of 9 here


def test_wan_training_captions_equal_the_pipelines_512_token_encoding():
    """wan_model.encode_captions encodes at the longest caption's length and pads with zeros; the
    pipeline encodes 512 tokens and zeroes the padding: the same embeddings."""
    import torch

    from toyworld.wan_model import encode_captions, make_text_encoder, make_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    encoder = make_text_encoder(tokenizer).eval()
    captions = ["a red circle on the left on a gray background", "a blue square", ""]
    full = tokenizer(captions, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = encoder(full.input_ids, full.attention_mask).last_hidden_state * full.attention_mask[..., None]
        got = encode_captions(encoder, tokenizer, captions)
    assert got.shape == (3, 512, encoder.config.d_model) and want[0].abs().sum() > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
