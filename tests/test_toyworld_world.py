"""The toy world: its renderer (frames, masks, captions, motion) and its judge, read against the
geometry they were drawn from."""

from __future__ import annotations

import numpy as np

from toyworld import judge, world
from toyworld.cases import CASES


def _scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [world.random_scene(rng) for _ in range(n)]


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
    case = CASES[1]
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
