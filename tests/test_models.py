"""Every registered neural model: forward + backward on a small batch (timm-style zoo test)."""

import pytest
import torch

from wbc.errors import WbcError
from wbc.models.registry import ModelKind, available, count_parameters, get_spec

NEURAL = available(ModelKind.NEURAL)


@pytest.mark.parametrize("name", NEURAL)
def test_forward_backward(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = spec.build(num_classes=5, pretrained=False).train()
    size = spec.img_size if spec.min_img_size == spec.img_size else max(spec.min_img_size, 96)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_risodkar_matches_the_papers_summary():
    model = get_spec("risodkar-cnn").build(num_classes=4)
    assert count_parameters(model) == 973_188
    x = torch.zeros(1, 3, 102, 102)
    shapes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            shapes.append(tuple(x.shape[1:]))
    # Keras (H, W, C) of the paper -> (C, H, W)
    assert shapes == [(64, 98, 98), (64, 49, 49), (256, 24, 24), (256, 11, 11), (128, 5, 5), (128, 4, 4)]


def test_asghar_layers():
    model = get_spec("asghar-cnn").build(num_classes=4)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (3, 3), (1, 1)), (64, (3, 3), (2, 2)),
                                                                          (64, (3, 3), (1, 1))]
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.stride == 1 and p.kernel_size == 2 for p in pools)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in model.features) == 3


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_offline_imagenet_weights_load(name):
    torch.manual_seed(0)
    a = get_spec(name).build(num_classes=3, pretrained=True)
    b = get_spec(name).build(num_classes=3, pretrained=False)
    first = next(iter(a.state_dict()))
    assert not torch.equal(a.state_dict()[first], b.state_dict()[first])


def test_missing_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    import torchvision.models._api as api
    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WbcError, match="--no-pretrained"):
        get_spec("resnet50").build(num_classes=3, pretrained=True)


def test_unknown_model_lists_available():
    with pytest.raises(WbcError, match="available: .*mobilenet_v2"):
        get_spec("alexnet")
