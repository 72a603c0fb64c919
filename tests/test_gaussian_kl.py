"""grpo_jax.study.gaussian_kl: forward fit = moment matching; reverse fit locks on a mode."""

import jax
import numpy as np
import pytest

from grpo_jax.study import gaussian_kl


def test_forward_fit_is_moment_matching_and_reverse_fit_locks_on_a_mode():
    with jax.enable_x64(True):
        inits = lambda mu2: gaussian_kl.make_inits(mu2, (0.0, 1.0), (0.7, 2.0))
        for mu2 in (0.0, 2.5, 5.0, 7.5, 10.0):
            m, s, kl = gaussian_kl.fit(mu2, "forward", inits(mu2))
            assert abs(m - mu2 / 2) < 1e-3, (mu2, m)
            assert abs(s**2 - (1 + mu2**2 / 4)) < 1e-3, (mu2, s)
            assert kl >= -1e-9
        # Reverse: straddles close modes (mu2 = 2.5), locks onto one far apart (KL -> log 2).
        m, s, kl = gaussian_kl.fit(2.5, "reverse", inits(2.5))
        assert abs(m - 1.25) < 1e-3 and s > 1.3
        m, s, kl = gaussian_kl.fit(10.0, "reverse", inits(10.0))
        assert min(abs(m), abs(m - 10.0)) < 1e-2 and abs(s - 1.0) < 1e-2
        np.testing.assert_allclose(kl, np.log(2.0), atol=1e-3)
    with pytest.raises(ValueError, match="forward' or 'reverse'"):
        gaussian_kl.fit(1.0, "sideways", np.ones((1, 2)))


def test_quadrature_matches_closed_form_kl_between_gaussians():
    with jax.enable_x64(True):
        z, w = gaussian_kl.gauss_hermite(101)
        # With mu2 = 0 the mixture is N(0, 1): KL[N(m, s) || N(0, 1)] in closed form.
        m, s = 0.7, 1.8
        params = {"m": m, "log_s": np.log(s)}
        rev = gaussian_kl.kl_fit_objective(params, 0.0, "reverse", z, w)
        fwd = gaussian_kl.kl_fit_objective(params, 0.0, "forward", z, w)
        np.testing.assert_allclose(rev, np.log(1 / s) + (s**2 + m**2) / 2 - 0.5, rtol=1e-10)
        np.testing.assert_allclose(fwd, np.log(s) + (1 + m**2) / (2 * s**2) - 0.5, rtol=1e-10)
