"""Toy world: the generator's masks, the judge, the committed model and a quick editing benchmark (CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from toyworld import bench, judge, world
from videograin.toy import DEMO, PARTS_MODEL, SD_MODEL, WAN_MODEL


def _scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ world


def test_masks_are_exactly_the_painted_pixels():
    for scene in _scenes(300, seed=11):
        frame, masks = world.render(scene)
        bg = np.array(world.BACKGROUNDS[scene.background], np.uint8)
        assert masks.shape == (len(scene.shapes), world.SIZE, world.SIZE)
        assert (masks.sum(0) <= 1).all(), "shapes overlap"
        assert (masks.sum((1, 2)) > 0).all(), "a shape has no pixels"
        for shape, mask in zip(scene.shapes, masks):
            assert (frame[mask] == world.COLORS[shape.color]).all()
        assert (frame[~masks.any(0)] == bg).all()
        assert ((frame != bg).any(-1) == masks.any(0)).all()


def test_shapes_follow_their_caption():
    rng = np.random.default_rng(3)
    for scene in _scenes(300, seed=12):
        places = sorted(s.place for s in scene.shapes)
        expected = {1: None, 2: ["left", "right"], 3: ["left", "middle", "right"]}[len(scene.shapes)]
        if expected:
            assert places == expected
        text = world.caption(scene, rng)
        for s in scene.shapes:
            assert f"a {s.color} {s.kind} {world.PLACE_PHRASE[s.place]}" in text
        assert text.endswith(f"on a {scene.background} background")
        plain = world.caption(scene, rng, positions=False)
        assert not any(p in plain.split() for p in world.PLACES)


def test_place_captions_left_to_right_name_shapes_in_x_order_others_stay_random():
    rng = np.random.default_rng(4)
    first_named_is_left = {True: [], False: []}
    for scene in _scenes(300, seed=13):
        if len(scene.shapes) < 2:
            continue
        by_x = sorted(scene.shapes, key=lambda s: s.x)
        for positions in (True, False):
            text = world.caption(scene, rng, positions=positions, places_left_to_right=True)
            starts = [text.index(f"a {s.color} {s.kind}") for s in by_x]
            if len(set(starts)) < len(starts):  # two shapes of one colour and class: order unreadable
                continue
            if positions:
                assert starts == sorted(starts), text
            first_named_is_left[positions].append(starts[0] == min(starts))
    assert all(first_named_is_left[True])
    assert 0.3 < np.mean(first_named_is_left[False]) < 0.7  # random order without places


def test_random_scene_counts_set_how_often_a_scene_holds_one_two_or_three_shapes():
    rng = np.random.default_rng(0)
    assert {len(world.random_scene(rng, counts=(0.0, 1.0, 0.0)).shapes) for _ in range(50)} == {2}
    drawn = np.bincount([len(world.random_scene(rng, counts=(0.15, 0.75, 0.1)).shapes) for _ in range(3000)],
                        minlength=4)[1:] / 3000
    assert np.abs(drawn - [0.15, 0.75, 0.1]).max() < 0.03  # 3000 draws: standard error <= 0.009
    default = np.bincount([len(world.random_scene(rng).shapes) for _ in range(3000)], minlength=4)[1:] / 3000
    assert np.abs(default - [0.35, 0.5, 0.15]).max() < 0.03


def test_same_color_sets_how_often_the_two_shapes_of_a_pair_share_a_colour():
    def share(same_color, n=2000):
        rng = np.random.default_rng(0)
        pairs = [world.random_scene(rng, count=2, same_color=same_color).shapes for _ in range(n)]
        return np.mean([a.color == b.color for a, b in pairs])

    assert share(1.0, 200) == 1.0 and share(0.0, 200) == 0.0
    assert abs(share(0.5) - 0.5) < 0.04  # 2000 draws: standard error 0.011
    assert abs(share(None) - 1 / len(world.COLORS)) < 0.03  # colours drawn on their own
    rng = np.random.default_rng(0)
    one = [world.random_scene(rng, count=1, same_color=1.0) for _ in range(100)]  # no pair, no change
    assert len({s.shapes[0].color for s in one}) == len(world.COLORS)


def test_held_out_two_shape_prompts_share_no_prompt_with_the_test_set():
    from toyworld.sample import pair_prompts
    from toyworld.sample_wan import held_out_pair_prompts

    test = pair_prompts(135, 1, left_to_right=True)
    held_out = held_out_pair_prompts(135)
    assert len(held_out) == 135 and not {c[0] for c in held_out} & {c[0] for c in test}
    for text, objs, background in held_out:  # named left to right, as the test prompts
        (cl, kl, pl), (cr, kr, pr) = objs
        assert (pl, pr) == ("left", "right") and text.startswith(f"a {cl} {kl} on the left and a {cr} {kr}")


def test_video_masks_match_frames_and_motion_is_smooth():
    case = bench.CASES[1]
    clip, masks = world.video(case.scene, list(case.motions), frames=12)
    assert clip.shape == (12, world.SIZE, world.SIZE, 3) and masks.shape == (2, 12, world.SIZE, world.SIZE)
    bg = np.array(world.BACKGROUNDS[case.scene.background], np.uint8)
    for f in range(12):
        assert ((clip[f] != bg).any(-1) == masks[:, f].any(0)).all()
        for shape, m in zip(case.scene.shapes, masks[:, f]):
            assert (clip[f][m] == world.COLORS[shape.color]).all()
    ys, xs = np.nonzero(masks[0, 0])
    start = xs.mean()
    centroids = [np.nonzero(masks[0, f])[1].mean() for f in range(12)]
    steps = np.diff(centroids)
    assert centroids[-1] - start > 1.5 and np.abs(steps).max() < 1.0  # moves right, no jumps


def test_tokenizer_has_every_world_word_as_one_token():
    from toyworld.model import make_tokenizer

    tok = make_tokenizer()
    for w in world.WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    ids = tok("a red circle on the left", add_special_tokens=False).input_ids
    assert len(ids) == 6


def test_default_tiny_model_tokenizer_unchanged(tmp_path):
    """Generalising _tokenizer_files over a word list keeps the default (WORDS) files byte for byte."""
    from videograin import testing as tiny_model

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    files_a = tiny_model._tokenizer_files(a)
    files_b = tiny_model._tokenizer_files(b, tiny_model.WORDS)
    for fa, fb in zip(files_a, files_b):
        assert fa.read_bytes() == fb.read_bytes()



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

# ------------------------------------------------------------------------------------------------ judge


def test_judge_reads_rendered_frames_exactly():
    for scene in _scenes(400, seed=13):
        frame, masks = world.render(scene)
        bg, found = judge.detect(frame)
        assert bg == scene.background
        assert sorted((d.color, d.kind, d.place) for d in found) == sorted(
            (s.color, s.kind, s.place) for s in scene.shapes
        )
        for shape, mask in zip(scene.shapes, masks):  # each detection's pixels are exactly its shape's
            match = [d for d in found if (d.mask == mask).all()]
            assert len(match) == 1 and match[0].identity == (shape.color, shape.kind)


def test_parts_lie_inside_their_shape_and_are_read_exactly_with_it():
    """Scenes where every large shape carries a part: the part's pixels are its colour, inside the shape
    with a one-pixel rim of the shape's colour around them; the caption names it; the judge finds each
    shape (its whole outline, part included) with its part's kind and colour, and no part as a shape."""
    rng = np.random.default_rng(17)
    with_parts = 0
    for _ in range(300):
        scene = world.random_scene(rng, count=int(rng.integers(1, 3)), part_prob=1.0)
        frame, masks = world.render(scene)
        bg, found = judge.detect(frame)
        assert bg == scene.background and len(found) == len(scene.shapes)
        for shape, mask in zip(scene.shapes, masks):
            part = world.part_mask(shape)
            if shape.part is not None:
                with_parts += 1
                assert part.sum() >= 8 and (part <= mask).all()
                assert (frame[part] == world.COLORS[shape.part_color]).all()
                rim = mask & ~part
                grown = np.zeros_like(part)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        grown |= np.roll(np.roll(part, dy, 0), dx, 1)
                assert (grown <= mask).all(), "the part touches the shape's edge"
                assert (frame[rim] == world.COLORS[shape.color]).all()
                assert f"a {shape.color} {shape.kind} with a {shape.part_color} {shape.part}" in world.caption(scene)
            else:
                assert shape.r < world.PART_MIN_RADIUS and not part.any()
            d = judge.in_region(found, mask)
            assert (d.mask == mask).all() and d.identity == (shape.color, shape.kind)
            assert d.part_identity == (None if shape.part is None else (shape.part_color, shape.part))
    assert with_parts > 250


def test_judge_reads_every_bench_video_exactly():
    for case in bench.CASES + bench.VALIDATION_CASES:
        clip, region_masks, shape_masks = bench.case_inputs(case)
        for f, (bg, found) in enumerate(judge.detect_video(clip)):
            assert bg == case.scene.background
            for s, shape in enumerate(case.scene.shapes):
                d = judge.in_region(found, shape_masks[s, f])
                assert d is not None and d.identity == (shape.color, shape.kind) and (d.mask == shape_masks[s, f]).all()


def test_judge_tells_shapes_apart_and_ignores_specks():
    frame = np.full((32, 32, 3), world.BACKGROUNDS["white"], np.uint8)
    frame[2:4, 2:4] = world.COLORS["red"]  # 4 px: below MIN_AREA
    assert judge.detect(frame) == ("white", [])
    # a blurred, off-colour square is still a square of the nearest colour
    scene = world.Scene((world.Shape("square", "blue", 16, 16, 6),), "gray")
    frame, _ = world.render(scene)
    noisy = np.clip(frame.astype(int) + np.random.default_rng(0).integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)
    bg, found = judge.detect(noisy)
    assert bg == "gray" and [(d.color, d.kind, d.place) for d in found] == [("blue", "square", "middle")]


def _paint(case, source, shape_masks, colors_kinds):
    """The source clip with each shape repainted as (colour, kind) at its place and size in every frame."""
    out = source.copy()
    out[shape_masks.any(0)] = world.BACKGROUNDS[case.scene.background]
    for f in range(len(out)):
        for s, (color, kind) in enumerate(colors_kinds):
            ys, xs = np.nonzero(shape_masks[s, f])
            shape = world.Shape(kind, color, xs.mean() + 0.5, ys.mean() + 0.5, (xs.max() - xs.min() + 1) / 2)
            out[f][world.shape_mask(shape)] = world.COLORS[color]
    return out


def test_scores_of_a_perfect_and_of_a_swapped_edit():
    """The benchmark's scoring on hand-made outputs: the target scene scores 1, a swapped one leaks."""
    case = next(c for c in bench.CASES if c.name == "instance_shapes")
    source, masks, shape_masks = bench.case_inputs(case)
    good = bench.score(case, source, _paint(case, source, shape_masks, [("red", "square"), ("blue", "triangle")]),
                       masks, shape_masks)
    assert good["instance_accuracy"] == 1.0 and good["leakage"] == 0.0 and good["temporal_stability"] == 1.0
    assert good["background_change"] == 0.0
    swapped = bench.score(case, source, _paint(case, source, shape_masks, [("blue", "triangle"), ("red", "square")]),
                          masks, shape_masks)
    assert swapped["instance_accuracy"] == 0.0 and swapped["leakage"] == 1.0


def test_latents_only_accuracy_scores_the_decoded_latents_and_not_the_composite():
    """run_case with blend scores the composite and, apart, the latents decoded without it: a pipe whose
    composite shows the source but whose latents decode to the target edit scores 0 and 1."""
    import torch

    from videograin import io

    case = next(c for c in bench.CASES if c.name == "instance_shapes")
    source, masks, shape_masks = bench.case_inputs(case)
    target = _paint(case, source, shape_masks, [("red", "square"), ("blue", "triangle")])

    class Pipe:
        def __call__(self, *args, **kwargs):
            frames = source.astype(np.float32)[None] / 255  # "np" output: the source untouched
            return type("Out", (), {"frames": frames, "latents": torch.zeros(1)})()

        def decode_latents(self, latents):
            return io.from_uint8(target)

    _, blended = bench.run_case(Pipe(), case, bench.METHODS[0], True, 2, 5.0)
    assert blended["instance_accuracy"] == 0.0 and blended["instance_accuracy_latents"] == 1.0
    _, plain = bench.run_case(Pipe(), case, bench.METHODS[0], False, 2, 5.0)  # no composite: one output
    assert plain["instance_accuracy"] == plain["instance_accuracy_latents"] == 0.0


def test_random_instance_cases_are_seeded_disjoint_well_formed_and_scored_by_their_targets():
    """bench.random_instance_cases: the same cases from the same seed, none shared between the test and the
    held-out seeds; each source (9 frames, as the Wan toy's) holds two identical shapes the judge reads
    exactly; its two targets differ from each other and from the source shape, the prompt names both and
    no place; painting the targets scores 1, the unedited source 0."""
    test = bench.random_instance_cases(24, bench.RANDOM_TEST_SEED)
    assert test == bench.random_instance_cases(24, bench.RANDOM_TEST_SEED)
    held_out = bench.random_instance_cases(24, bench.RANDOM_VALIDATION_SEED)
    assert not {(c.scene, c.motions, c.prompt) for c in test} & {(c.scene, c.motions, c.prompt) for c in held_out}
    for case in test:
        a, b = case.scene.shapes
        assert (a.kind, a.color) == (b.kind, b.color) and a.x < b.x
        targets = [tuple(r.prompt.split()) for r in case.regions[:2]]
        assert targets[0] != targets[1] and (a.color, a.kind) not in targets, case
        assert all(" ".join(t) in case.prompt for t in targets) and "left" not in case.prompt, case
        source, masks, shape_masks = bench.case_inputs(case, 9)
        for f, (bg, found) in enumerate(judge.detect_video(source)):
            assert bg == case.scene.background
            for s in range(2):
                d = judge.in_region(found, shape_masks[s, f])
                assert d is not None and d.identity == (a.color, a.kind) and (d.mask == shape_masks[s, f]).all()
        assert bench.score(case, source, source, masks, shape_masks)["instance_accuracy"] == 0.0
        painted = _paint(case, source, shape_masks, targets)
        assert bench.score(case, source, painted, masks, shape_masks)["instance_accuracy"] == 1.0, case


def test_part_case_halves_and_scores():
    """The part case's halves split the left shape's box in two (top above bottom, nothing shared or
    lost); painting the top half of the circle red scores 1 and keeps the bottom half, painting the
    whole circle red loses the kept half, and the unedited source scores 0."""
    case = next(c for c in bench.CASES if c.name == "part_half")
    source, masks, shape_masks = bench.case_inputs(case)
    names = [r.name for r in case.regions]
    top, bottom = masks[names.index("left_top")], masks[names.index("left_bottom")]
    box = world.box_masks(shape_masks, margin=1)[0]
    assert not (top & bottom).any() and ((top | bottom) == box).all()
    for f in range(len(source)):
        assert np.nonzero(top[f])[0].max() < np.nonzero(bottom[f])[0].min()
        assert abs(int(top[f].sum()) - int(bottom[f].sum())) <= 2 * box[f].any(0).sum()  # halves within a row
    red = np.array(world.COLORS["red"], np.uint8)
    half = source.copy()
    half[top & shape_masks[0]] = red
    good = bench.score(case, source, half, masks, shape_masks)
    assert good["instance_accuracy"] == 1.0 and good["kept_accuracy"] == 1.0 and good["background_change"] == 0.0
    whole = source.copy()
    whole[shape_masks[0]] = red
    assert bench.score(case, source, whole, masks, shape_masks)["kept_accuracy"] == 0.5  # bottom half lost, right kept
    assert bench.score(case, source, source, masks, shape_masks)["instance_accuracy"] == 0.0


def test_prompt_scoring_separates_class_from_place():
    """A red circle drawn on the left: right for "on the left"; for "on the right" its colour and class
    are right but its third is not, so the sample is wrong only through its place."""
    from toyworld import sample

    frame, _ = world.render(world.Scene((world.Shape("circle", "red", 6.0, 16.0, 5.0),), "gray"))
    cases = [(f"a red circle {world.PLACE_PHRASE[p]} on a gray background", (("red", "circle", p),), "gray")
             for p in ("left", "right")]
    left, right = sample.score(np.stack([frame, frame]), cases)
    assert left["correct"] and left["class_ok"] == [True] and left["place_ok"] == [True]
    assert not right["correct"] and right["class_ok"] == [True] and right["place_ok"] == [False]


# -------------------------------------------------------------------------------------- committed model


needs_model = pytest.mark.skipif(not (SD_MODEL / "model_index.json").is_file(), reason="the SD toy model is not there")


@needs_model
def test_committed_model_loads_with_the_toy_world_geometry():
    from toyworld.model import load_pipeline

    pipe = load_pipeline()
    levels = len(pipe.unet.config.block_out_channels)
    assert pipe.size_multiple == 2 * 2 ** (levels - 1)  # the VAE's 2x and the UNet's downsamplings
    assert pipe.unet.config.sample_size == world.SIZE // 2
    cfg = pipe.scheduler.config
    assert cfg.steps_offset == 1 and not cfg.set_alpha_to_one and not cfg.clip_sample


@needs_model
def test_quick_benchmark_videograin_beats_baseline():
    """Two instance-level cases (same-class shapes edited into different things), blend on, at the
    strengths the demo uses (``bench.tuned(SD_MODEL)``, picked on held-out clips; the paper's default strengths
    beat the baseline by less on this model: README, "Reading the numbers")."""
    from toyworld.model import load_pipeline

    start = time.perf_counter()
    pipe = load_pipeline()
    cases = [c for c in bench.CASES if c.name in bench.QUICK_CASES]
    methods = [m for m in bench.METHODS if m.name == "baseline"] + [bench.tuned(SD_MODEL)]
    results, _, _ = bench.run(pipe, cases, methods, blends=(True,), steps=bench.QUICK_STEPS, log=lambda *_: None)
    base, vg = results["summary"]["baseline+blend"], results["summary"]["videograin_tuned+blend"]
    assert vg["instance_accuracy"] > base["instance_accuracy"], results["summary"]
    assert time.perf_counter() - start < 180


@needs_model
def test_committed_model_draws_the_requested_colour_on_the_requested_background():
    """Smoke test of the model and the plain DDIM loop: on 15 single-object prompts the requested colour
    and background appear in most samples (the full prompt scores are in toyworld/README.md)."""
    from toyworld import sample
    from toyworld.model import load_pipeline

    cases = sample.single_prompts()[::9]
    frames = sample.text_to_image(load_pipeline(), [c[0] for c in cases])
    rows = sample.score(frames, cases)
    hits = [r["background"] == bg and any(f[0] == want[0][0] for f in r["found"]) for r, (_, want, bg) in zip(rows, cases)]
    assert sum(hits) >= 8, rows


@needs_model
def test_demo_config_is_valid_and_its_inputs_load():
    from videograin import io
    from videograin.config.preflight import read_model
    from videograin.config.parse import load_spec

    spec = load_spec(DEMO / "config.yaml")
    assert Path(spec.model) == SD_MODEL
    inputs = io.load_inputs(spec, read_model(spec.model).size_multiple)
    assert tuple(inputs.frames.shape) == (12, 3, 32, 32) and tuple(inputs.masks.shape) == (3, 12, 32, 32)
    assert not (inputs.masks[0] & inputs.masks[1]).any() and (inputs.masks.any(0)).all()


def test_prompt_scores_tell_a_swapped_pair_from_a_right_one():
    """Two-shape prompt scoring on rendered frames: the requested scene is right, the same shapes in
    each other's thirds are "swapped" (and not right), a lone shape is neither."""
    from toyworld import sample

    case = ("a red circle on the left and a blue square on the right on a gray background",
            (("red", "circle", "left"), ("blue", "square", "right")), "gray")

    def frame(*shapes):
        return world.render(world.Scene(tuple(world.Shape(k, c, x, 16.0, 5.0) for k, c, x in shapes), "gray"))[0]

    right = frame(("circle", "red", 7.0), ("square", "blue", 25.0))
    mirrored = frame(("circle", "red", 25.0), ("square", "blue", 7.0))
    alone = frame(("circle", "red", 7.0))
    rows = sample.score(np.stack([right, mirrored, alone]), [case] * 3)
    assert [(r["correct"], r["swapped"]) for r in rows] == [(True, False), (False, True), (False, False)]
    assert rows[1]["class_ok"] == [True, True] and rows[1]["place_ok"] == [False, False]


def test_part_cases_score_the_intended_result_right_and_the_source_wrong():
    """The world renders what each part case asks for (the target scene: parts added or recoloured,
    instance edits drawn); scored as the output it is right on every frame, with no leakage and the
    rest of the shape kept; the unedited source scores no part accuracy. A target with the part on the
    other shape is leakage."""
    from dataclasses import replace

    def target_scene(case):
        shapes = list(case.scene.shapes)
        for region in case.regions:
            what, target = bench.region_target(case, region)
            s = shapes[region.shape] if region.shape is not None else None
            if what == "add_part":
                shapes[region.shape] = replace(s, part=target[1], part_color=target[0])
            elif what == "shape":
                shapes[region.shape] = replace(s, color=target[0], kind=target[1], part=None, part_color=None)
        return replace(case.scene, shapes=tuple(shapes))

    for case in bench.PART_CASES + bench.PART_VALIDATION_CASES:
        source, masks, shape_masks = bench.case_inputs(case)
        for r, region in enumerate(case.regions):  # the part region lies inside its shape's region
            if region.carries:
                shape_region = next(m for o, m in zip(case.regions, masks) if o.shape == region.shape and o.mask == "box")
                assert masks[r].any() and (masks[r] <= shape_region).all()
        target, _ = world.video(target_scene(case), list(case.motions), bench.FRAMES)
        right = bench.score(case, source, target, masks, shape_masks)
        assert (right["part_accuracy"], right["part_leakage"], right["part_kept_accuracy"]) == (1.0, 0.0, 1.0), case.name
        assert bench.score(case, source, source, masks, shape_masks)["part_accuracy"] == 0.0, case.name
    case = bench.PART_CASES[0]  # the dot drawn on the right circle instead of the left one
    wrong = replace(case.scene, shapes=(case.scene.shapes[0], replace(case.scene.shapes[1], part="dot", part_color="red")))
    source, masks, shape_masks = bench.case_inputs(case)
    leaked = bench.score(case, source, world.video(wrong, list(case.motions), bench.FRAMES)[0], masks, shape_masks)
    assert leaked["part_accuracy"] == 0.0 and leaked["part_leakage"] == 1.0


def test_part_prompts_are_scored_right_on_the_scene_they_describe_and_wrong_without_the_part():
    from toyworld import sample

    cases = sample.part_prompts(12)
    centre = {"left": 6.0, "middle": 16.0, "right": 26.0}
    drawn, plain = [], []
    for _, ((color, kind, place),), bg, (part_color, part) in cases:
        shape = world.Shape(kind, color, centre[place], 16.0, 5.0, part, part_color)
        drawn.append(world.render(world.Scene((shape,), bg))[0])
        plain.append(world.render(world.Scene((world.Shape(kind, color, centre[place], 16.0, 5.0),), bg))[0])
    assert all(r["correct"] and r["part_ok"] for r in sample.score_parts(np.stack(drawn), cases))
    rows = sample.score_parts(np.stack(plain), cases)
    assert all(r["shape_ok"] and not r["part_present"] and not r["correct"] for r in rows)
    assert all(" with a " in prompt for prompt, *_ in cases)




@pytest.mark.skipif(not (PARTS_MODEL / "model_index.json").is_file(), reason="the parts toy model is not there")
def test_quick_part_case_videograin_beats_baseline():
    """The part case where modulation matters on model_parts (toyworld/README, "Parts"): the left circle
    becomes a triangle while the right one gains a dot; with the blend, the right one carries the dot
    in more frames at the part-tuned strengths than without modulation, and no other shape does."""
    from toyworld.model import load_pipeline

    pipe = load_pipeline(PARTS_MODEL)
    cases = [c for c in bench.PART_CASES if c.name == "part_and_instance"]
    methods = [m for m in bench.METHODS if m.name == "baseline"] + [bench.Method("parts_tuned", 0.3, 4.0, 0.3)]
    results, _, _ = bench.run(pipe, cases, methods, blends=(True,), steps=25, log=lambda *_: None)
    base, tuned = results["summary"]["baseline+blend"], results["summary"]["parts_tuned+blend"]
    assert tuned["part_accuracy"] > base["part_accuracy"] and tuned["part_leakage"] == 0.0, results["summary"]


@pytest.mark.skipif(not (PARTS_MODEL / "model_index.json").is_file(), reason="the parts toy model is not there")
def test_part_prompt_attention_moves_into_the_part_region_with_modulation():
    """bench.part_attention on model_parts: at every UNet level the part prompt's cross-attention mass
    inside its region (a box of ~6% of the tokens) is about its area share without modulation and
    several times it with the part-tuned modulation (README: 6-12x)."""
    from toyworld.model import load_pipeline

    cases = [c for c in bench.PART_CASES if c.name == "part_add"]
    rows = bench.part_attention(load_pipeline(PARTS_MODEL), cases, bench.Method("parts_tuned", 0.3, 4.0, 0.3))
    assert sorted(r["level"] for r in rows) == [0, 1, 2]
    for r in rows:
        assert 0.02 < r["area_share"] < 0.15, r
        assert r["unmodulated"] < 2 * r["area_share"] and r["modulated"] > 4 * r["area_share"], r




needs_wan_model = pytest.mark.skipif(not (WAN_MODEL / "model_index.json").is_file(),
                                     reason="the Wan toy model is not there")


@needs_wan_model
def test_wan_toy_draws_the_requested_background_and_colour():
    """Smoke test of the Wan toy through WanVideoGrainPipeline's backbone (flow sampling, umT5 prompts
    padded to 512, the causal VAE): on 15 single-object prompts the first frame has the requested
    background and a shape of the requested colour in most samples (the model is weak at classes and
    places: toyworld/README, "On Wan")."""
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


WAN_RESULTS = Path(bench.__file__).parent / "results_wan/sharp_vae_5000/grown_10_blocks/same_color_3000"


@needs_wan_model
def test_the_wan_toy_reproduces_its_published_random_case_results():
    """The shipped Wan toy (videograin.toy.WAN_MODEL, moved from results_wan/.../same_color_3000/model)
    gives, on the first three of the 32 random instance cases, exactly the per-case judge results its
    published table was computed from (random_results.json): baseline and cross-attention modulation
    (the model's recommended strengths: self 0, cross 1). Run at the table's 2 torch threads."""
    import json

    import torch

    from toyworld.sample_wan import load_pipeline
    from toyworld.wan_model import FRAMES

    published = json.loads((WAN_RESULTS / "random_results.json").read_text())
    settings = published["settings"]
    cases = bench.random_instance_cases(32, bench.RANDOM_TEST_SEED)[:3]
    methods = [m for m in bench.METHODS if m.name in ("baseline", "cross_only")]
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["torch_threads"])
    try:
        results, _, _ = bench.run(load_pipeline(WAN_MODEL), list(cases), methods, blends=(True,),
                                  steps=settings["steps"], guidance=settings["guidance_scale"], frames=FRAMES,
                                  log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    for variant in ("baseline+blend", "cross_only+blend"):
        for case in cases:
            got, want = results["per_case"][variant][case.name], published["per_case"][variant][case.name]
            assert got["found"] == want["found"], (variant, case.name)
            assert got["instance_accuracy"] == want["instance_accuracy"], (variant, case.name)


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
    steps, method = 4, bench.Method("videograin", 0.3, 1.0, 0.5)  # modulated steps: 2
    calls = []

    def hook(attn, args, output):
        if isinstance(attn.processor, WanLayoutAttnProcessor) and attn.processor.block == 1:
            calls.append((attn, args, output, attn.processor))

    block = pipe.transformer.blocks[1]
    handles = [layer.register_forward_hook(hook) for layer in (block.attn1, block.attn2)]
    case = next(c for c in bench.CASES if c.name == "instance_shapes")
    source, masks, _ = bench.case_inputs(case, 9)
    with torch.no_grad():
        pipe(source, masks, case.prompt, [r.prompt for r in case.regions], source_prompt=bench.source_prompt(case),
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
    instance_cases = sum(c.level == "instance" for c in bench.CASES)
    assert len(rows) == 2 * len(pipe.transformer.blocks)
    assert all(r["calls"] == instance_cases * 2 for r in rows), rows
    for r in rows:
        assert r["modulated_own"] > r["plain_own"] and r["modulated_other"] < r["plain_other"], r


@needs_wan_model
def test_on_the_wan_toy_self_attention_keeps_instances_apart_and_cross_modulation_is_what_moves():
    """toyworld/README, "Where the DiT's attention goes": on the shipped 10-block Wan toy (it was measured on images_5000, its parent), the
    benchmark's instance cases at the paper's strengths. Without modulation a shape's self-attention gives
    the other shape no more than its share of the tokens in any block and its own region twice its share
    on average, while its cross-attention gives its own region prompt a minority (< 0.2) in every block;
    modulation at least 1.5x that share in every block."""
    from toyworld import wan_attention
    from toyworld.sample_wan import load_pipeline

    rows = wan_attention.measure(load_pipeline(WAN_MODEL), bench.Method("videograin", 0.3, 1.0, 0.3))
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
    """toyworld/demo/config_wan.yaml end to end through the CLI: 9 frames written, and the judge finds
    the left region's shape yellow and the right one's purple in most frames (both squares are blue
    in the source; the Wan toy draws colours, not yet classes: toyworld/README, "On Wan")."""
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
