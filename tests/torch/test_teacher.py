"""M2Teacher: the normative step, the optimizer never touches the teacher, teacher_norm modes, resume."""

import copy
import io

import pytest
import torch
from torch import nn

from m2t_core.testing import assert_close
from m2t_torch import M2Teacher, MomentumBatchNorm, ema_update_
from m2t_torch.functional import symmetric_loss, teacher_momentum_schedule

TOTAL = 8


def backbone():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    model = M2Teacher(backbone(), hidden_dim=16, projection_dim=8, total_steps=TOTAL, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    return model, opt


def views(k, batch=4):
    g = torch.Generator().manual_seed(1000 + k)
    base = torch.randn(batch, 3, 6, 6, generator=g)
    return base + 0.3 * torch.randn(batch, 3, 6, 6, generator=g), 2 * base - 1


def train_step(model, opt, k):
    loss = model(*views(k))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_step_runs_ema_then_teacher_then_student_per_view():
    model, opt = make()
    train_step(model, opt, 0)
    ref = copy.deepcopy(model)
    v1, v2 = views(1)
    loss = model(v1, v2)

    m = teacher_momentum_schedule(TOTAL)(1)
    ema_update_(ref.teacher.backbone, ref.student.backbone, m)  # 2. EMA first
    ema_update_(ref.teacher.projector, ref.student.projector, m)
    with torch.no_grad():
        z1, z2 = ref.teacher(torch.cat([v1, v2])).chunk(2)  # 3. one teacher forward, both views
    p1, p2 = ref.student(v1, v2)  # 4. student per view
    assert_close(loss, symmetric_loss(p1, p2, z1, z2))
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        if name != "step":
            assert_close(a, b, err_msg=name)
    assert int(model.step) == 2
    for m_ in model.teacher.modules():
        if isinstance(m_, MomentumBatchNorm):
            assert int(m_.num_batches_tracked) == 2  # α_k and m_k advance together


def test_student_normalises_each_view_with_its_own_statistics():
    model, _ = make()
    v1, v2 = views(0)
    lone = copy.deepcopy(model.student)
    p1, p2 = model.student(v1, v2)
    assert_close(p1, lone(v1)[0])
    assert_close(p2, lone(v2)[0])
    q1 = copy.deepcopy(model.student)(torch.cat([v1, v2]))[0][:4]  # concatenated: other statistics
    assert not torch.allclose(p1, q1, atol=1e-4)


def test_optimizer_over_model_parameters_never_touches_the_teacher():
    model, opt = make()
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert teacher_ids
    assert not teacher_ids & {id(p) for p in model.parameters()}
    assert {n for n, _ in model.named_parameters()} == {
        f"student.{n}" for n, _ in model.student.named_parameters()
    }
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.requires_grad_(True)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    for k in range(3):
        before = [p.detach().clone() for p in model.teacher.parameters()]
        student = [p.detach().clone() for p in model.student.backbone.parameters()] + [
            p.detach().clone() for p in model.student.projector.parameters()
        ]
        m = 0.0 if k == 0 else teacher_momentum_schedule(TOTAL)(k)
        train_step(model, opt, k)
        for p, b, s in zip(model.teacher.parameters(), before, student, strict=True):
            assert p.grad is None
            assert_close(p, m * b + (1 - m) * s)  # the EMA and nothing else


def test_first_step_copies_a_student_changed_after_construction():
    model, opt = make()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.fill_(0.25)  # e.g. pretrained weights loaded into the backbone afterwards
    train_step(model, opt, 0)
    for p in model.teacher_backbone.parameters():
        assert torch.all(p == 0.25)


def test_evaluation_mode_returns_the_loss_and_changes_nothing():
    model, opt = make()
    train_step(model, opt, 0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(*views(5))
    assert loss.dim() == 0
    assert 0 <= float(loss) <= 8
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_momentum_teacher_uses_momentum_bn_with_the_schedule():
    model, opt = make(alpha_start=0.2, alpha_end=0.9, correction="official")
    layers = [m for m in model.teacher.modules() if isinstance(m, MomentumBatchNorm)]
    assert len(layers) == 2  # backbone BN2d and projector BN1d
    assert all(
        (m.alpha_start, m.alpha_end, m.total_steps, m.correction, m.num_views)
        == (0.2, 0.9, TOTAL, "official", 2)
        for m in layers
    )
    assert not any(isinstance(m, MomentumBatchNorm) for m in model.student.modules())
    for k in range(3):
        train_step(model, opt, k)
    assert all(int(m.num_batches_tracked) == 3 for m in layers)


def _capture(module):
    seen = {}
    module.register_forward_hook(
        lambda mod, inp, out: seen.update(x=inp[0].detach().clone(), y=out.detach().clone())
    )
    return seen


def test_batch_teacher_normalises_with_per_view_batch_statistics_and_no_history():
    model, opt = make(teacher_norm="batch")
    bn = model.teacher.backbone[1]
    assert isinstance(bn, MomentumBatchNorm)
    assert (bn.alpha_start, bn.alpha_end) == (0.0, 0.0)
    train_step(model, opt, 0)
    with torch.no_grad():
        bn.running_mean.fill_(100.0)  # any history: the batch teacher must ignore it
    seen = _capture(bn)
    train_step(model, opt, 1)
    x1, x2 = seen["x"].chunk(2)
    for x, y in ((x1, seen["y"][:4]), (x2, seen["y"][4:])):
        ref = nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, training=True)
        assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert_close(bn.running_mean, (x1.mean((0, 2, 3)) + x2.mean((0, 2, 3))) / 2)


def test_eman_teacher_keeps_eval_batchnorm_with_ema_statistics():
    model, opt = make(teacher_norm="eman")
    bns = [m for m in model.teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2
    assert not any(isinstance(m, MomentumBatchNorm) for m in model.teacher.modules())
    model.train()
    assert all(not m.training for m in bns)
    t_bn, s_bn = model.teacher.backbone[1], model.student.backbone[1]
    with torch.no_grad():
        s_bn.running_mean.uniform_(-1, 1)  # the student's statistics differ from the teacher's copy
    initial = s_bn.running_mean.clone()
    train_step(model, opt, 0)
    # Step 0 copies the student before the student's forward moves its own statistics.
    assert torch.equal(t_bn.running_mean, initial)
    assert not torch.equal(s_bn.running_mean, initial)
    teacher_before = (t_bn.running_mean.clone(), t_bn.running_var.clone())
    student_before = (s_bn.running_mean.clone(), s_bn.running_var.clone())
    seen = _capture(t_bn)
    train_step(model, opt, 1)
    m = teacher_momentum_schedule(TOTAL)(1)
    assert_close(t_bn.running_mean, m * teacher_before[0] + (1 - m) * student_before[0])
    assert_close(t_bn.running_var, m * teacher_before[1] + (1 - m) * student_before[1])
    ref = nn.functional.batch_norm(
        seen["x"], t_bn.running_mean, t_bn.running_var, t_bn.weight, t_bn.bias, training=False
    )
    assert_close(seen["y"], ref)  # evaluation-mode normalisation with the EMA statistics


def test_feature_dim_inference_and_errors():
    assert M2Teacher(backbone(), hidden_dim=8, projection_dim=4, total_steps=3).feature_dim == 6
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    assert M2Teacher(linear, hidden_dim=8, projection_dim=4, total_steps=3).feature_dim == 10
    conv = nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1))
    model = M2Teacher(conv, hidden_dim=8, projection_dim=4, total_steps=3)
    assert model.feature_dim == 5
    assert model(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)).dim() == 0  # [N, 5, 1, 1] is flattened
    with pytest.raises(ValueError, match="pass feature_dim="):
        M2Teacher(nn.Sequential(nn.Embedding(10, 4), nn.Flatten()), total_steps=3)
    wrong = M2Teacher(backbone(), feature_dim=7, hidden_dim=8, projection_dim=4, total_steps=3)
    with pytest.raises(ValueError, match=r"features of shape \(8, 6\).*feature_dim=7"):
        wrong(*views(0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="teacher_norm must be one of"):
        M2Teacher(backbone(), total_steps=3, teacher_norm="sync")
    with pytest.raises(ValueError, match="sync_stats must be one of"):
        M2Teacher(backbone(), total_steps=3, sync_stats="all")
    with pytest.raises(ValueError, match="total_steps is required"):
        M2Teacher(backbone())
    with pytest.raises(TypeError, match=r"backbone must be an nn\.Module"):
        M2Teacher(lambda x: x, total_steps=3)
    model, _ = make()
    with pytest.raises(ValueError, match=r"same shape, got \(4, 3, 6, 6\) and \(2, 3, 6, 6\)"):
        model(views(0)[0], views(0)[1][:2])


def test_teacher_backbone_gives_evaluation_features():
    model, opt = make()
    train_step(model, opt, 0)
    model.eval()
    x = views(3)[0]
    feats = model.teacher_backbone(x)
    assert feats.shape == (4, 6)
    bn = model.teacher_backbone[1]
    conv = model.teacher_backbone[0](x)
    ref = (conv - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    ref = torch.relu(ref * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)).mean((2, 3))
    assert_close(feats, ref)


def test_resume_from_checkpoint_is_bit_identical(one_thread):
    steps, split = 6, 3
    model_a, opt_a = make(seed=0)
    for k in range(steps):
        train_step(model_a, opt_a, k)

    model_b, opt_b = make(seed=0)
    for k in range(split):
        train_step(model_b, opt_b, k)
    buffer = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    del model_b, opt_b

    model_c, opt_c = make(seed=123)  # a different initialisation: everything must come from the file
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["opt"])
    assert int(model_c.step) == split
    for k in range(split, steps):
        train_step(model_c, opt_c, k)

    state_a, state_c = model_a.state_dict(), model_c.state_dict()
    assert state_a.keys() == state_c.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_c[name]), name
    opt_state_a, opt_state_c = opt_a.state_dict()["state"], opt_c.state_dict()["state"]
    assert opt_state_a.keys() == opt_state_c.keys()
    for i in opt_state_a:
        assert torch.equal(opt_state_a[i]["momentum_buffer"], opt_state_c[i]["momentum_buffer"]), i
    # the check can fail: a run that skips one step differs
    model_d, opt_d = make(seed=0)
    for k in [*range(split), *range(split + 1, steps)]:
        train_step(model_d, opt_d, k)
    assert not all(torch.equal(state_a[n], model_d.state_dict()[n]) for n in state_a)


def test_autocast_step_keeps_statistics_in_float32():
    model, opt = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(*views(0))
    assert loss.dtype == torch.float32
    loss.backward()
    opt.step()
    for m in model.teacher.modules():
        if isinstance(m, MomentumBatchNorm):
            assert m.running_mean.dtype == torch.float32
            assert torch.isfinite(m.running_var).all()
            assert int(m.num_batches_tracked) == 1


def test_channels_last_model_runs_and_matches():
    model, _ = make()
    twin = copy.deepcopy(model)
    v1, v2 = views(0)
    loss = model.to(memory_format=torch.channels_last)(
        v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
    )
    assert_close(loss, twin(v1, v2), rtol=1e-5, atol=1e-5)
