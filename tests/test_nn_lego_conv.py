"""The PyTorch side: our LegoConv2d is the authors' module; folding to dense is exact."""
import pytest
import torch

from lego_tvm import LegoConv2d, fold_lego_to_dense
from lego_tvm.nn.zoo import LegoVGG16, get_model, lego_resnet50
from reference_lego import AuthorsLegoConv2d


@pytest.mark.parametrize("c,n,d,o,ratio", [(8, 16, 3, 2, 0.5), (12, 6, 1, 4, 0.5), (9, 8, 5, 3, 0.25)])
def test_same_parameters_and_initialisation_as_the_authors(c, n, d, o, ratio):
    torch.manual_seed(1)
    theirs = AuthorsLegoConv2d(c, n, d, o, ratio)
    torch.manual_seed(1)
    ours = LegoConv2d(c, n, d, o, ratio)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == \
        {k: v.shape for k, v in ours.state_dict().items()}
    for key, value in theirs.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key


def test_authors_checkpoint_loads_and_gives_the_same_output():
    theirs = AuthorsLegoConv2d(16, 32, 3, 2, 0.5)
    ours = LegoConv2d(16, 32, 3, 2, 0.5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 16, 9, 9)
    assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_stride_and_padding_extension_defaults_to_reference_behaviour():
    layer = LegoConv2d(8, 8, 5)
    assert (layer.stride, layer.padding) == (1, 2)
    strided = LegoConv2d(8, 8, 3, stride=2)
    assert strided(torch.randn(1, 8, 10, 10)).shape == (1, 8, 5, 5)


def test_zero_split_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="channels per split"):
        LegoConv2d(2, 8, 3, n_split=4)


@pytest.mark.parametrize("module", [LegoConv2d(12, 10, 3, 3, 0.5, stride=2),
                                    AuthorsLegoConv2d(13, 8, 3, 2, 0.5)])
def test_fold_to_dense_is_exact(module):
    x = torch.randn(2, module.in_channels, 11, 11)
    dense = fold_lego_to_dense(torch.nn.Sequential(module))
    assert isinstance(dense[0], torch.nn.Conv2d)
    with torch.no_grad():
        assert torch.allclose(dense(x), module(x), rtol=1e-5, atol=1e-5)


def test_vgg16_is_the_released_model():
    model = LegoVGG16()
    lego = [m for m in model.modules() if isinstance(m, LegoConv2d)]
    assert len(lego) == 14
    assert sum(m.lego.numel() for m in lego) == 3_723_264
    assert isinstance(model.features[0], torch.nn.Conv2d)
    assert model.classifier.in_features == 512


def test_resnet50_layout():
    model = lego_resnet50()
    lego = [m for m in model.modules() if isinstance(m, LegoConv2d)]
    assert len(lego) == 48                        # 16 bottlenecks x 3 convs
    assert all(m.n_split == 2 and m.n_lego == m.out_channels // 2 for m in lego)
    assert sorted({m.stride for m in lego}) == [1, 2]
    ordinary = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    assert len(ordinary) == 5                     # stem + 4 shortcut projections
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_get_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown zoo model"):
        get_model("lego_vgg19")


@pytest.mark.parametrize("stride", [1, 2])
def test_batch_folded_formulation_is_exact(stride):
    from lego_tvm.nn.lego_conv import BatchFoldedLegoConv2d

    layer = LegoConv2d(12, 16, 3, 3, 0.5, stride=stride)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        assert torch.allclose(BatchFoldedLegoConv2d(layer)(x), layer(x), rtol=1e-5, atol=1e-5)
