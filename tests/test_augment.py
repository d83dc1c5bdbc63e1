"""Synthetic training data: batched flips, shifts, rotations and blur on real CIFAR images."""
from __future__ import annotations

import pytest
import torch

from birdcnn.augment import Augment, alternating_flip, random_blur, random_flip, random_rotate, random_shift
from birdcnn.data import load_split

OFF = dict(flip=False, shift=0, rotate=0.0, blur=0.0)


@pytest.fixture(scope="module")
def batch(cifar_small) -> torch.Tensor:
    """64 real CIFAR-10 images as a float (N, 3, 32, 32) batch in [0, 1]."""
    ds = load_split(cifar_small, "test")
    return torch.from_numpy(ds.images[::3][:64]).permute(0, 3, 1, 2).float() / 255


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("settings", [
    dict(),  # the fast recipe's defaults: flip + 2 px shift
    dict(flip=True, shift=0, rotate=25.0, blur=3.0),  # the article's recipe
    dict(flip=True, shift=4, rotate=10.0, blur=1.0, blur_p=1.0),
])
def test_shapes_dtypes_and_memory_format_are_kept(batch, settings):
    for x in (batch, batch.contiguous(memory_format=torch.channels_last), batch.to(torch.bfloat16)):
        y = Augment(**settings)(x, gen(0))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y.float()).all()
    y = Augment(**settings)(batch[:1], gen(0))  # a batch of one works too
    assert y.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("settings", [dict(), dict(flip=True, shift=2, rotate=25.0, blur=3.0)])
def test_same_seed_same_result_different_draws_differ(batch, settings):
    aug = Augment(**settings)
    a, b, c = aug(batch, gen(1)), aug(batch, gen(1)), aug(batch, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Per-image parameters: within one batch, images are transformed differently.
    d = aug(batch[:1].expand(32, -1, -1, -1).contiguous(), gen(3))
    assert len({tuple(img.flatten()[:200].tolist()) for img in d}) > 4


def test_every_switch_off_is_identity(batch):
    assert torch.equal(Augment(**OFF)(batch, gen(0)), batch)
    # Blur enabled but applied to no image, and rotation by 0, are identities too.
    assert torch.equal(Augment(**{**OFF, "blur": 2.0, "blur_p": 0.0})(batch, gen(0)), batch)
    # Blur with sigma 0 keeps the image (identity kernel) up to rounding.
    assert torch.allclose(random_blur(batch, 0.0, 1.0, gen(0)), batch, atol=1e-6)


def test_flip_mirrors_about_half_the_images(batch):
    y = random_flip(batch, gen(4))
    flipped = torch.tensor([torch.equal(y[i], batch[i].flip(-1)) for i in range(len(batch))])
    kept = torch.tensor([torch.equal(y[i], batch[i]) for i in range(len(batch))])
    assert (flipped | kept).all()  # every image is either exactly mirrored or untouched
    assert 16 <= int(flipped.sum()) <= 48  # p = 0.5 over 64 images
    # The mirror is horizontal: rows are kept, columns reversed.
    i = int(flipped.nonzero()[0])
    assert torch.equal(y[i, :, :, 0], batch[i, :, :, -1])


def test_alternating_flip_shows_each_image_both_ways_over_two_epochs(batch):
    first = torch.rand(len(batch), generator=gen(5)) < 0.5
    even, odd = alternating_flip(batch, first, 4), alternating_flip(batch, first, 7)
    for i in range(len(batch)):
        mirrored = batch[i].flip(-1)
        assert torch.equal(even[i], mirrored if first[i] else batch[i])
        assert torch.equal(odd[i], batch[i] if first[i] else mirrored)


def test_shift_moves_content_by_at_most_pad_pixels(batch):
    pad = 3
    y = random_shift(batch, pad, gen(5))
    xp = torch.nn.functional.pad(batch, (pad,) * 4, mode="reflect")
    offsets = []
    for i in range(len(batch)):
        # The output is exactly one of the (2 pad + 1)^2 crops of the reflect-padded image.
        found = [(dy - pad, dx - pad) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                 if torch.equal(y[i], xp[i, :, dy:dy + 32, dx:dx + 32])]
        assert found, f"image {i} is not a shifted crop"
        offsets.append(found[0])
    assert len(set(offsets)) > 10  # many different shifts were drawn
    dy, dx = next(o for o in offsets if o[0] != 0 and o[1] != 0)
    i = offsets.index((dy, dx))
    # Content really moves: pixel (r, c) of the output is pixel (r + dy, c + dx) of the input.
    assert torch.equal(y[i, :, 8, 8], batch[i, :, 8 + dy, 8 + dx])


def test_rotation_changes_images_but_keeps_statistics(batch):
    y = random_rotate(batch, 25.0, gen(6))
    changed = (y - batch).abs().flatten(1).mean(1)
    assert (changed > 1e-3).float().mean() > 0.9  # nearly every image is rotated
    assert abs(y.mean().item() - batch.mean().item()) < 0.02
    assert y.min() >= -1e-5 and y.max() <= 1 + 1e-5  # bilinear + reflection: no new extremes
    assert abs(y.std().item() - batch.std().item()) < 0.05
    # A rotated image still looks like its source (correlation), not like another image.
    a, b, other = y[0].flatten(), batch[0].flatten(), batch[1].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > torch.corrcoef(torch.stack([a, other]))[0, 1]


def test_small_rotation_is_nearly_identity(batch):
    y = random_rotate(batch, 0.5, gen(7))
    assert (y - batch).abs().mean() < 0.02


def test_blur_smooths_images_and_keeps_mean(batch):
    y = random_blur(batch, 2.0, 1.0, gen(8))
    assert abs(y.mean().item() - batch.mean().item()) < 0.01  # a normalised kernel keeps brightness

    def roughness(t: torch.Tensor) -> torch.Tensor:  # mean absolute difference of neighbours
        return (t[..., 1:] - t[..., :-1]).abs().flatten(1).mean(1)

    assert (roughness(y) <= roughness(batch) + 1e-6).all()
    assert roughness(y).mean() < 0.8 * roughness(batch).mean()


def test_blur_probability_selects_a_fraction(batch):
    y = random_blur(batch, 2.0, 0.5, gen(9))
    blurred = ((y - batch).abs().flatten(1).amax(1) > 1e-4).sum().item()
    assert 16 <= blurred <= 48


def test_augment_to_dict_round_trips():
    a = Augment(flip=False, shift=3, rotate=25.0, blur=3.0, blur_p=0.25)
    assert Augment(**a.to_dict()) == a
