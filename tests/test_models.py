"""The networks: forward shapes on 32x32 input, the article's layout, the whitening layer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from birdcnn.data import load_split
from birdcnn.models import ARCHITECTURES, FastNet, MaxPool, build, register


@pytest.fixture(scope="module")
def images(cifar_small) -> torch.Tensor:
    """Real CIFAR-10 training images, normalised per channel as training does."""
    x = torch.from_numpy(load_split(cifar_small, "train").images).permute(0, 3, 1, 2).float()
    return (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)


@pytest.mark.parametrize("arch", ["fast", "tiny", "article"])
@pytest.mark.parametrize("num_classes", [2, 10])
def test_forward_shapes(arch, num_classes, images):
    torch.manual_seed(0)
    net = build(arch, num_classes)
    x = images[:8]
    net.train()
    assert net(x).shape == (8, num_classes)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert out.shape == (8, num_classes) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        # Inference layout and precision used by the Classifier: channels_last + bf16 autocast.
        cl = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = cl(x.contiguous(memory_format=torch.channels_last)).float()
        assert y.shape == (8, num_classes)
        assert (y.argmax(1) == out.argmax(1)).float().mean() >= 0.75
    # Gradients reach the first trainable layer.
    net.train()
    net(x).sum().backward()
    first = next(p for p in net.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(39, 39), (19, 20), (9, 8)])
def test_inference_max_pool_gives_the_kernels_values(size, images):
    """MaxPool's strided-slices path (bf16 on the CPU, no gradient) equals PyTorch's kernel, odd sizes
    floored alike; with a gradient it is the kernel, so training's backward is untouched."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 3, padding=1)
    x = nn.functional.interpolate(images[:4], size=size)
    maps = conv(x).detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    pool = MaxPool()
    with torch.no_grad():
        fast = pool(maps)
        assert fast.shape == (4, 16, size[0] // 2, size[1] // 2)
        assert torch.equal(fast, nn.functional.max_pool2d(maps, 2))
    y = maps.float().requires_grad_()
    pool(y).sum().backward()
    assert y.grad.sum().item() == 4 * 16 * (size[0] // 2) * (size[1] // 2)  # one winner per window


def test_all_architectures_are_registered_and_unknown_is_refused():
    assert {"article", "fast", "tiny"} <= set(ARCHITECTURES)
    with pytest.raises(KeyError, match="unknown architecture 'resnet9000'"):
        build("resnet9000", 2)


def test_a_new_architecture_is_one_function():
    @register("test-linear")
    def linear(num_classes: int = 2) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

    try:
        assert build("test-linear", 5)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    finally:
        del ARCHITECTURES["test-linear"]


def test_article_network_is_the_original_layout():
    net = build("article", 2)
    layers = [m for m in net if not isinstance(m, (nn.ReLU, nn.Flatten))]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "Conv2d", "MaxPool2d", "Linear", "Dropout", "Linear"]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (3, 3)), (64, (3, 3))]
    assert layers[5].out_features == 512 and layers[6].p == 0.5 and layers[7].out_features == 2
    assert sum(isinstance(m, nn.ReLU) for m in net) == 4  # after each conv and the dense layer


def test_fast_networks_are_fastnets_with_batch_norm():
    fast, tiny = build("fast", 10), build("tiny", 10)
    assert isinstance(fast, FastNet) and isinstance(tiny, FastNet)
    assert any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    n_fast, n_tiny = (sum(p.numel() for p in n.parameters()) for n in (fast, tiny))
    assert n_tiny < n_fast / 20  # tiny really is small: for tests and quick experiments
    assert not fast[0].weight.requires_grad  # the whitening layer is frozen


@pytest.mark.parametrize("arch", ["fast", "tiny"])
def test_whitening_init_whitens_image_patches(arch, images):
    x = images[:500]
    net = build(arch, 10)
    net.init_whitening(x)
    w = net[0].weight
    assert w.shape == (24, 3, 2, 2)
    # The second half of the filters is the negation of the first (so GELU loses nothing).
    assert torch.allclose(w[12:], -w[:12])
    # The whitened 2x2 patches have diagonal (second-moment) covariance: identity, except that
    # eps damps the directions whose variance is below it (noise, not image structure).
    with torch.no_grad():
        z = nn.functional.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = z.T @ z / len(z)
    raw = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    raw_cov = raw.T @ raw / len(raw)
    eigval = torch.linalg.eigvalsh(raw_cov).flip(0)
    assert torch.allclose(cov.diagonal(), eigval / (eigval + 5e-4), atol=0.02)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.02
    big = eigval > 0.05  # the image-structure directions: whitened to unit variance
    assert big.sum() >= 6
    assert torch.allclose(cov.diagonal()[big], torch.ones(int(big.sum()), dtype=torch.float64), atol=0.02)
    # ... while the raw patches are far from white (neighbouring pixels are strongly correlated).
    assert (raw_cov - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5


def test_test_time_views_average_the_mirrored_and_shifted_images(tiny_model, cifar_small):
    """'flip' averages an image and its mirror; 'flip-translate' also the image moved one pixel
    up-left and down-right (reflect padding), weighted 1/2, 1/4, 1/4 as in airbench."""
    from birdcnn.modelfile import load_model
    import torch.nn.functional as F

    clf = load_model(tiny_model)
    clf.bf16 = False
    u8 = load_split(cifar_small, "test").images[:6]
    x = clf.prepare(u8)
    with torch.no_grad():
        def mirrored(v):
            return 0.5 * (clf.net(v) + clf.net(v.flip(-1)))
        p = F.pad(x, (1, 1, 1, 1), mode="reflect")
        expect_flip = mirrored(x)
        expect_ft = 0.5 * expect_flip + 0.25 * (mirrored(p[..., :32, :32]) + mirrored(p[..., 2:, 2:]))
    assert torch.allclose(clf.logits(u8, tta="flip"), expect_flip, atol=1e-5)
    assert torch.allclose(clf.logits(u8, tta="flip-translate"), expect_ft, atol=1e-5)
    assert not torch.allclose(expect_ft, expect_flip, atol=1e-3)  # the shifted views do count
