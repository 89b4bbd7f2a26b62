"""``site_mean:<metric>``: the mean over sites of a metric computed within each site.

The DermINO paper reports its federated results per dataset (each dataset is a site); the mean of those
per-site numbers is the single figure that corresponds to them, whereas dermbench's default pools all test
samples. Bootstrapped like any metric: a replicate's weights are split by site, the base metric is evaluated on
each site's part (so the per-site resamples are exactly the pooled replicate's), and the site values are
averaged. Needs ``predictions['site']`` (one site name per sample).
"""

from __future__ import annotations

from typing import Any

PREFIX = "site_mean:"


def resolve_metric(name: str) -> Any:
    if not name.startswith(PREFIX) or len(name) <= len(PREFIX):
        return None
    import numpy as np

    from dermbench import api

    base = api.get_metric(name[len(PREFIX):])

    def parts(p: Any) -> list[tuple[Any, Any]]:
        key = ("site_parts", base.name)
        if key not in p.cache:
            if "site" not in p.raw:
                raise api.DermbenchError(
                    f"metric {name!r} needs predictions['site'] (one site per sample); the task must record it")
            sites = np.asarray([str(s) for s in p.raw["site"]])
            if sites.shape != (p.n,):
                raise api.DermbenchError(f"predictions['site'] has {sites.size} entries but there are {p.n} ids")
            out = []
            for s in sorted(set(sites.tolist())):
                idx = np.flatnonzero(sites == s)
                sub = {k: ([v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx])
                       for k, v in p.raw.items() if k in ("ids", *base.needs) or k == "scores"}
                out.append((idx, api.Prepared(sub)))
            p.cache[key] = out
        return p.cache[key]

    def weighted(p: Any, W: Any) -> tuple[Any, None]:
        W = np.atleast_2d(W)
        vals = [base.weighted(ps, W[:, idx])[0] for idx, ps in parts(p)]
        return np.mean(np.stack(vals, axis=0), axis=0), None

    def jack(p: Any) -> tuple[Any, None]:
        full = [float(base.weighted(ps, np.ones((1, len(idx)), dtype=np.int64))[0][0]) for idx, ps in parts(p)]
        out = np.empty(p.n)
        for k, (idx, ps) in enumerate(parts(p)):
            jk = base.jackknife(ps)[0]
            others = sum(full) - full[k]
            out[idx] = (others + jk) / len(full)
        return out, None

    return api.Metric(
        name, (*base.needs, "site"), weighted, jack, higher_is_better=base.higher_is_better,
        description=f"mean over sites of {base.name} computed within each site (the DermINO paper reports its "
        "federated results per dataset); resampled over samples, each site's part scored on its own",
        reference=f"mean_s {base.reference or base.name} on site s",
    )
