"""How fast is dermsynth? Images/s at 224 px, against decoding the same images from PNG in the same process.

The baseline is what a file-based benchmark pays per image just to read it (PNG decode with Pillow),
so the ratio says whether generating on demand is cheaper or dearer than storing the images.

    python benchmarks/synth_speed.py [--n 200] [--size 224] [--kind diagnosis]
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from dermbench_plugins.datasets.dermsynth import generator as synth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--kind", choices=synth.KINDS, default="diagnosis")
    args = ap.parse_args()
    cfg = synth.SynthConfig(kind=args.kind, size=args.size).validate()

    t0 = time.perf_counter()
    plans = [synth.plan(cfg, i) for i in range(args.n)]
    t_plan = time.perf_counter() - t0

    t0 = time.perf_counter()
    images = [synth.render(pl) for pl in plans]
    t_img = time.perf_counter() - t0

    t0 = time.perf_counter()
    for pl in plans:
        synth.lesion_mask(pl)
    t_mask = time.perf_counter() - t0

    blobs = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    t0 = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.convert("RGB").load()
    t_png = time.perf_counter() - t0

    n = args.n
    print(f"dermsynth {args.kind} at {args.size} px, {n} images (single process)")
    print(f"  plan (metadata + caption): {n / t_plan:10.0f} /s")
    print(f"  render image:              {n / t_img:10.1f} images/s  ({1000 * t_img / n:.1f} ms each)")
    print(f"  lesion mask:               {n / t_mask:10.1f} masks/s")
    print(f"  baseline PNG decode:       {n / t_png:10.1f} images/s  ({1000 * t_png / n:.1f} ms each)")
    print(f"  ratio render / PNG decode time: {t_img / t_png:.1f}x")


if __name__ == "__main__":
    main()
