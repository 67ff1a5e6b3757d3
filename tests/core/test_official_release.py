"""The reference reproduces the original PyTorch release's momentum BN (DESIGN §2, issue 2).

``ReleaseMomentumBN`` re-enacts, in NumPy, the behaviour of the release as DESIGN §2 describes it:
the layer is called once per view (NCHW), normalises each view with ``torch.var``-style unbiased
moments multiplied by n/(n−1) once more, mixed with the same history; it keeps the first view's
moments, and after the second view commits their average (lazy update); then its torch-convention
momentum (weight on the *current* batch) decays by a cosine from 1 to 0 over ``total_iters``.
"""

import math

import numpy as np
import pytest

from m2t_core import init_stats, momentum_batch_norm, stats_momentum_schedule
from m2t_core.testing import assert_close


class ReleaseMomentumBN:
    def __init__(self, num_features, total_iters, eps=1e-5):
        self.running_mean = np.zeros(num_features)
        self.running_var = np.ones(num_features)
        self.momentum = 1.0  # torch convention: weight on the current batch
        self.total_iters = total_iters
        self.cur_iter = 0
        self.eps = eps
        self.pending = None

    def __call__(self, x):
        n = x.size / x.shape[1]
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3), ddof=1)  # torch.var: unbiased
        m = self.momentum
        tmp_mean = m * mean + (1 - m) * self.running_mean
        tmp_var = m * var * n / (n - 1) + (1 - m) * self.running_var  # the second Bessel factor
        y = (x - tmp_mean[None, :, None, None]) / np.sqrt(tmp_var[None, :, None, None] + self.eps)
        if self.pending is None:
            self.pending = (mean, var)
        else:
            mean0, var0 = self.pending
            self.running_mean = m * (mean + mean0) / 2 + (1 - m) * self.running_mean
            self.running_var = m * (var + var0) / 2 * n / (n - 1) + (1 - m) * self.running_var
            self.pending = None
            self.cur_iter += 1
            self.momentum = (math.cos(math.pi * self.cur_iter / self.total_iters) + 1) / 2
        return y


@pytest.mark.parametrize(("total", "batch", "hw"), [(5, 4, 3), (12, 2, 1), (7, 3, 2)])
def test_official_correction_with_cosine_alpha_reproduces_release(total, batch, hw):
    rng = np.random.default_rng(total)
    channels = 3
    release = ReleaseMomentumBN(channels, total)
    stats = init_stats(channels, np.float64)
    alpha = stats_momentum_schedule(total)
    for k in range(total):
        # Drifting, offset inputs: the history matters and the mix is visible in every step.
        v1 = rng.standard_normal((batch, channels, hw, hw)) * (1 + 0.3 * k) + 2.0 - 0.5 * k
        v2 = rng.standard_normal((batch, channels, hw, hw)) * (1 + 0.3 * k) + 2.0 - 0.5 * k
        y1, y2 = release(v1), release(v2)  # both views normalised against the same history
        y, stats = momentum_batch_norm(
            np.concatenate([v1, v2]), stats, alpha=alpha(k), num_views=2, axis=1, correction="official"
        )
        assert_close(y, np.concatenate([y1, y2]), err_msg=f"step {k} outputs")
        assert_close(stats.mean, release.running_mean, err_msg=f"step {k} mean")
        assert_close(stats.var, release.running_var, err_msg=f"step {k} var")
        assert int(stats.step) == release.cur_iter == k + 1
    assert alpha(0) == 0.0
    assert alpha(total) == 1.0
