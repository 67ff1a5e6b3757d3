"""convert_momentum_bn on a ResNet-style model: every BatchNorm replaced, values copied, rest untouched."""

import copy

import pytest
import torch
from torch import nn

from m2t_core.testing import assert_close
from m2t_torch import MomentumBatchNorm, MomentumBatchNorm1d, MomentumBatchNorm2d, convert_momentum_bn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.down is None else self.down(x)))


def resnet_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8, 8, 1),
        Block(8, 16, 2),
        nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2)),  # exercised separately below
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.BatchNorm1d(16, affine=False),
    )


def trained(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(100)
                if m.affine:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    return model


def test_every_batchnorm_is_replaced_and_copied():
    model = trained(resnet_like())
    original = copy.deepcopy(model)
    model[4].bn1.weight.requires_grad_(False)
    conv_weight = model[0].weight
    result = convert_momentum_bn(model, total_steps=50, num_views=2, correction="official")
    assert result is model
    kinds = {name: type(m) for name, m in model.named_modules()}
    before = {name: type(m) for name, m in original.named_modules()}
    assert kinds.keys() == before.keys()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    expected = {
        nn.BatchNorm1d: MomentumBatchNorm1d,
        nn.BatchNorm2d: MomentumBatchNorm2d,
        nn.BatchNorm3d: MomentumBatchNorm,
    }
    for name, cls in before.items():
        assert kinds[name] is expected.get(cls, cls), name
    old = dict(original.named_modules())
    for name, m in model.named_modules():
        if isinstance(m, MomentumBatchNorm):
            bn = old[name]
            assert (m.num_features, m.eps, m.affine) == (bn.num_features, bn.eps, bn.affine)
            assert (m.total_steps, m.num_views, m.correction) == (50, 2, "official")
            assert torch.equal(m.running_mean, bn.running_mean)
            assert torch.equal(m.running_var, bn.running_var)
            assert int(m.num_batches_tracked) == 0  # the α schedule starts at its beginning
            if m.affine:
                assert torch.equal(m.weight, bn.weight)
                assert torch.equal(m.bias, bn.bias)
    assert not model[4].bn1.weight.requires_grad
    assert model[4].bn2.weight.requires_grad
    assert model[0].weight is conv_weight  # other modules are left alone, not copied


def test_converted_model_in_eval_mode_computes_what_the_original_did():
    model = trained(resnet_like())
    del model[5]  # the 3d block does not fit a 2d pipeline
    original = copy.deepcopy(model).eval()
    convert_momentum_bn(model, total_steps=10).eval()
    x = torch.randn(3, 3, 8, 8)
    assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)


def test_training_flag_device_and_dtype_are_kept():
    bn = nn.BatchNorm2d(4).double().eval()
    layer = convert_momentum_bn(bn, alpha_start=0.5, alpha_end=0.5)
    assert isinstance(layer, MomentumBatchNorm2d)
    assert not layer.training
    assert layer.weight.dtype == torch.float64
    assert layer.running_var.dtype == torch.float64


def test_sync_batchnorm_and_untracked_statistics():
    sync = nn.SyncBatchNorm(3, track_running_stats=False)
    layer = convert_momentum_bn(sync, alpha_start=0.0, alpha_end=0.0)
    assert type(layer) is MomentumBatchNorm
    assert torch.equal(layer.running_mean, torch.zeros(3))
    assert torch.equal(layer.running_var, torch.ones(3))


def test_bad_arguments_are_rejected_before_anything_changes():
    model = resnet_like()
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['momentum'\]"):
        convert_momentum_bn(model, momentum=0.1)
    with pytest.raises(ValueError, match="total_steps is required"):
        convert_momentum_bn(model)
    assert isinstance(model[1], nn.BatchNorm2d)


def test_uninitialised_lazy_batchnorm_is_an_error():
    with pytest.raises(ValueError, match="lazy batch norm"):
        convert_momentum_bn(nn.Sequential(nn.LazyBatchNorm1d()), total_steps=3)
