"""Benchmarks of m2t_torch against the obvious alternatives, measured side by side in one run.

Three comparisons (issue 3, item 8), each printed as medians and ratios in a markdown table:

(a) ``ema_update_`` over a ResNet-50-shaped parameter set (161 tensors, 25.6M values) vs a Python loop
    ``t = m*t + (1-m)*s`` per parameter vs the floor: one ``lerp_`` over a single flat buffer of the
    same size. Target: ``ema_update_`` <= 1.25x the floor.
(b) ``MomentumBatchNorm2d`` training forward + commit on two concatenated views vs two
    ``nn.BatchNorm2d`` training forwards on the same data (no autograd: the teacher's situation).
    Target: <= 1.3x.
(c) one ``M2Teacher`` training step (forward, backward, SGD) vs the same step with a plain-BN teacher
    (``nn.BatchNorm`` in training mode on the concatenated views). Target: <= 1.05x.

Variants of one comparison are timed interleaved (A, B, C, A, B, C, ...) after a warm-up, so drifts
of the machine affect all of them alike; the table shows medians. On CPU the BN and step sizes are
scaled down so that the whole script runs in about a minute on two cores.

Usage::

    python benchmarks/bench_torch.py --device cpu --repeats 20
    python benchmarks/bench_torch.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from m2t_torch import M2Teacher, MomentumBatchNorm, MomentumBatchNorm2d, ema_update_


def resnet50_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of a torchvision-style ResNet-50 (conv weights, BN weight/bias, fc)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            cout = 4 * width
            shapes += [(width, cin, 1, 1), (width,), (width,), (width, width, 3, 3), (width,), (width,)]
            shapes += [(cout, width, 1, 1), (cout,), (cout,)]
            if b == 0:
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]
            cin = cout
    return [*shapes, (1000, 2048), (1000,)]


class Timer:
    """Interleaved timing of several callables; medians in milliseconds."""

    def __init__(self, device: torch.device) -> None:
        """Time on ``device`` (CUDA work is synchronised around every call)."""
        self.device = device

    def sync(self) -> None:
        """Wait for queued device work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
        """Median milliseconds of each callable over ``repeats`` interleaved rounds."""
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        self.sync()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                self.sync()
                start = time.perf_counter()
                fn()
                self.sync()
                times[name].append(time.perf_counter() - start)
        return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def bench_ema(timer: Timer, device: torch.device, repeats: int) -> list[tuple[str, float]]:
    shapes = resnet50_shapes()
    gen = torch.Generator().manual_seed(0)

    def params() -> nn.ParameterList:
        return nn.ParameterList(
            nn.Parameter(torch.randn(s, generator=gen), requires_grad=False) for s in shapes
        )

    teacher, student = params().to(device), params().to(device)
    numel = sum(p.numel() for p in teacher)
    flat_t = torch.randn(numel, device=device)
    flat_s = torch.randn(numel, device=device)
    m = 0.996
    m_tensor = torch.tensor(m, device=device)

    def loop() -> None:
        with torch.no_grad():
            for t, s in zip(teacher, student, strict=True):
                t.copy_(m * t + (1 - m) * s)

    results = timer.run(
        {
            "floor: one lerp_ over a flat buffer": lambda: flat_t.lerp_(flat_s, 1 - m),
            "ema_update_ (float momentum)": lambda: ema_update_(teacher, student, m),
            "ema_update_ (0-d tensor momentum)": lambda: ema_update_(teacher, student, m_tensor),
            "Python loop m*t + (1-m)*s": loop,
        },
        repeats,
    )
    print(f"(a) EMA over {len(shapes)} tensors, {numel / 1e6:.1f}M values")
    return list(results.items())


def bench_bn(timer: Timer, device: torch.device, repeats: int, small: bool) -> list[tuple[str, float]]:
    batch, channels, size = (32, 64, 28) if small else (64, 256, 56)
    x = torch.randn(2 * batch, channels, size, size, device=device) * 2 + 1
    v1, v2 = x[:batch].clone(), x[batch:].clone()
    layer = MomentumBatchNorm2d(channels, total_steps=1000).to(device)
    bn = nn.BatchNorm2d(channels).to(device)

    def ours() -> torch.Tensor:
        return layer(x)

    def twice() -> tuple[torch.Tensor, torch.Tensor]:
        return bn(v1), bn(v2)

    with torch.no_grad():
        results = timer.run({"2 x nn.BatchNorm2d": twice, "MomentumBatchNorm2d": ours}, repeats)
    print(f"(b) BN training forward on 2 views of [{batch}, {channels}, {size}, {size}] float32, no autograd")
    return list(results.items())


class Block(nn.Module):
    """A ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        """Two 3x3 convolutions with BN, and a 1x1 projection shortcut when the shape changes."""
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


def resnet18(width: int) -> nn.Module:
    """A ResNet-18 layout whose channel widths start at ``width`` (64 is the real one)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def plain_bn_teacher(model: M2Teacher) -> M2Teacher:
    """The same model whose teacher normalises with nn.BatchNorm (training mode) on the joint batch."""
    twin = copy.deepcopy(model)
    for module in list(twin.teacher.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MomentumBatchNorm):
                cls = nn.BatchNorm2d if child.__class__.__name__.endswith("2d") else nn.BatchNorm1d
                bn = cls(child.num_features).to(child.running_mean.device)
                bn.requires_grad_(False)
                setattr(module, name, bn)
    return twin


def bench_step(timer: Timer, device: torch.device, repeats: int, small: bool) -> list[tuple[str, float]]:
    width, batch, size, hidden = (16, 16, 32, 512) if small else (64, 128, 96, 4096)
    torch.manual_seed(0)
    model = M2Teacher(resnet18(width), hidden_dim=hidden, projection_dim=128, total_steps=10**6).to(device)
    plain = plain_bn_teacher(model)
    gen = torch.Generator(device=device).manual_seed(0)
    v1 = torch.randn(batch, 3, size, size, device=device, generator=gen)
    v2 = torch.randn(batch, 3, size, size, device=device, generator=gen)

    def stepper(m: M2Teacher) -> Callable[[], None]:
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step() -> None:
            loss = m(v1, v2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    variants = {"plain-BN teacher": stepper(plain), "M2Teacher (momentum BN)": stepper(model)}
    results = timer.run(variants, repeats)
    print(f"(c) training step, ResNet-18 layout width {width}, 2 views of [{batch}, 3, {size}, {size}]")
    return list(results.items())


def main() -> None:
    """Run the three comparisons and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=["cpu", "cuda"], default=default_device)
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    small = device.type == "cpu"
    repeats = args.repeats or (15 if small else 50)
    timer = Timer(device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, repeats {repeats}")
    if device.type == "cuda":
        print(torch.cuda.get_device_name(device))

    rows = [
        ("(a) EMA", bench_ema(timer, device, repeats), "ema_update_ (float momentum)", 1.25),
        ("(b) BN", bench_bn(timer, device, repeats, small), "MomentumBatchNorm2d", 1.3),
        ("(c) step", bench_step(timer, device, repeats, small), "M2Teacher (momentum BN)", 1.05),
    ]
    print()
    print("| comparison | variant | median ms | ratio to first | target |")
    print("|---|---|---:|---:|---|")
    for label, results, subject, target in rows:
        base = results[0][1]
        for name, ms in results:
            ratio = ms / base
            mark = ""
            if name == subject:
                mark = f"<= {target}x: {'met' if ratio <= target else 'MISSED'}"
            print(f"| {label} | {name} | {ms:.3f} | {ratio:.2f}x | {mark} |")


if __name__ == "__main__":
    main()
