"""Statistical defaults shared by the runner, the tasks and the leaderboard (one place, no literals)."""

from __future__ import annotations

#: bootstrap replicates per record
N_BOOT = 1000
#: confidence-interval method (dermbench.stats.CI_METHODS)
CI_METHOD = "percentile"
#: two-sided level of every interval and test
ALPHA = 0.05
#: the fixed bootstrap seed: resamples depend on (split hash, BOOTSTRAP_SEED), never on a training seed, so
#: records of every model and every training seed of a split are paired
BOOTSTRAP_SEED = 0
#: CI methods every scoring path accepts (validated before any work is done)
CI_METHODS = ("percentile", "bca", "paper")
