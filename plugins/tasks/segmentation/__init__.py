"""Lesion segmentation with a frozen backbone and a trainable head (DermINO's low-level evaluation).

Protocol: patch maps of the frozen backbone come from the feature store (extracted once, cached fp16); a head
(``linear``: BN -> Dropout2d(0.1) -> 1x1 conv on the last block; ``upernet``: multi-scale pyramid from 4 evenly
spaced blocks -> UperNet decoder) is trained with Adam (lr 1e-3, cosine over 20 epochs, cross-entropy over
lesion/background) on logits bilinearly upsampled to the mask size (224 by default).

Geometry: the features are computed on the model's own preprocessing (e.g. shorter side to 248, centre crop 224),
so each mask goes through the same resize/crop (nearest neighbour) and then to ``size`` x ``size``; pixels outside
the model's crop are not scored. This keeps mask and features aligned for every backbone.

Metrics, per image (bootstrapped over images by the runner, so paired tests between models work):

* ``dice`` / ``jaccard``: lesion (foreground) Dice 2|P∩T|/(|P|+|T|) and Jaccard |P∩T|/|P∪T| by default;
  with ``class_averaged=True`` the per-image mean of the lesion and background scores (NOT the DermINO
  authors' metric, which pools pixels over batches of 64: that is ``metric=dermino``).
  The other variant is always reported too (``mean:dice_class_avg`` etc.), and ``extra['metric_variant']`` says
  which one ``dice`` is.
* ``metric=dermino`` (``--protocol dermino``) puts first the authors' ``dermino_dice`` (Dice averaged over the
  classes present incl. background, pixels pooled per test batch of 64, mean over batches) and ``dermino_jac``
  (micro Σtp/(Σtp+Σfp+Σfn) over both classes); both are bootstrapped over images from the per-image pixel counts
  ``seg_tp/fp/fn/tn`` (plugins/tasks/protocols/dermino.py).
* Empty masks: when truth and prediction are both empty the image scores 1 (a correct "no lesion"); when only
  one is empty it scores 0. Test images with an empty truth mask are counted in ``extra['n_empty_truth']``.

Auditable outputs (in the cell's artifact folder, listed relative to the record's folder): ``pred_masks.npz``
(every predicted test mask, bit-packed; read with :func:`load_predicted_masks`) and ``overlay_*.png`` (image |
truth | prediction) for a few test images spread over the Dice ranking (worst to best).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from dermbench import hookimpl
from dermbench.api import DermbenchError, Preprocess, Sample, Split, TaskInfo, TaskOutput

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

DEFAULTS: dict[str, Any] = {
    "head": "linear",
    "layers": "auto",
    "size": 224,
    "epochs": 20,
    "lr": 1e-3,
    "batch_size": 16,
    "weight_decay": 0.0,
    "decoder_channels": 256,
    "class_averaged": False,
    "metric": "lesion",
    "schedule": "cosine",
    "mask_resize": "nearest",
    "decoder": "vitdet",
    "n_overlays": 4,
    "save_masks": True,
    "train_split": "train",
    "test_split": "test",
}
#: declarative checks applied by the runner before any work (dermbench.api.TaskInfo.option_ranges)
OPTION_RANGES: dict[str, Any] = {"epochs": (1, None), "batch_size": (1, None), "lr": (0, None), "size": (16, None),
                                 "decoder_channels": (0, None), "n_overlays": (0, None),
                                 "decoder": frozenset({"vitdet", "mmseg"}),
                                 "head": frozenset({"linear", "upernet"}),
                                 "metric": frozenset({"lesion", "dermino"}),
                                 "schedule": frozenset({"cosine", "dermino"}),
                                 "mask_resize": frozenset({"nearest", "bilinear"})}

#: named presets (--protocol): the authors' segment_linear/train_segmentor.py uses batch 64, Adam 1e-3,
#: CosineAnnealingLR(T_max=20) stepped per batch, bilinear-resized masks and a metric pooled per test batch of 64;
#: PanDerm's segmentation code is not public, so its preset changes nothing
PROTOCOLS: dict[str, dict[str, Any]] = {
    "dermino": {"metric": "dermino", "batch_size": 64, "schedule": "dermino", "mask_resize": "bilinear"},
    "panderm": {},
}

INFO = TaskInfo(
    name="segmentation",
    description="lesion segmentation, frozen backbone + trained head (head=linear | upernet; Adam 1e-3, cosine, "
    "20 epochs, 224 px); per-image lesion Dice / Jaccard (class_averaged=True: per-image mean with background); "
    "metric=lesion|dermino (dermino: the DermINO authors' Dice incl. background and micro JAC pooled per batch "
    "of 64); schedule=cosine|dermino (dermino: CosineAnnealingLR(T_max=epochs) stepped per batch, cyclic); "
    "mask_resize=nearest|bilinear (bilinear: resized 0/255 mask, lesion where it stays 255, as the authors)",
    requires=frozenset({"masks"}),
    capabilities=frozenset({"patch_tokens"}),
    metrics=("dice", "jaccard"),
    primary_metric="dice",
    defaults=DEFAULTS,
    option_ranges=OPTION_RANGES,
    protocols=PROTOCOLS,
)

#: the UperNet protocol as its own task name, so linear and UperNet results are separate cells (and columns)
INFO_UPERNET = TaskInfo(
    name="segmentation-upernet",
    description="lesion segmentation with a UperNet head on 4 evenly spaced blocks (otherwise as `segmentation`); "
    "decoder=vitdet|mmseg (mmseg: UPerHead on the maps as given, decoder_channels=0 -> the backbone width, "
    "dropout 0: the DermINO authors' setup)",
    requires=INFO.requires,
    capabilities=INFO.capabilities,
    metrics=INFO.metrics,
    primary_metric=INFO.primary_metric,
    defaults={**DEFAULTS, "head": "upernet"},
    option_ranges=OPTION_RANGES,
    # segment_upernet/: mmseg UPerHead on the 4 same-size block maps, D channels, dropout 0; training as linear
    protocols={"dermino": {**PROTOCOLS["dermino"], "decoder": "mmseg", "decoder_channels": 0}, "panderm": {}},
    in_all=False,  # a UperNet decoder trained for 20 epochs is minutes per model even on a GPU-less laptop
)

EMPTY_POLICY = "both masks empty -> 1 (correct 'no lesion'); only one empty -> 0"


# --------------------------------------------------------------------------------------------------
# Metrics


def dice_jaccard(pred: "np.ndarray", true: "np.ndarray",
                 class_averaged: bool = False) -> tuple["np.ndarray", "np.ndarray"]:
    """Per-image Dice and Jaccard of boolean (n, H, W) masks (see the module docstring for empty masks)."""
    import numpy as np

    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape or pred.ndim != 3:
        raise DermbenchError(f"dice_jaccard needs two (n, H, W) masks of one shape, got {pred.shape} and {true.shape}")

    def one(p: "np.ndarray", t: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
        inter = (p & t).sum(axis=(1, 2)).astype(np.float64)
        ps, ts = p.sum(axis=(1, 2)).astype(np.float64), t.sum(axis=(1, 2)).astype(np.float64)
        union = ps + ts - inter
        dice = np.divide(2 * inter, ps + ts, out=np.ones_like(inter), where=(ps + ts) > 0)
        jac = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
        return dice, jac

    d, j = one(pred, true)
    if class_averaged:
        db, jb = one(~pred, ~true)
        d, j = (d + db) / 2, (j + jb) / 2
    return d, j


# --------------------------------------------------------------------------------------------------
# Masks: loading, checks, the model's geometry


def _geometry_ops(pre: Preprocess, size: int, interpolation: str) -> list[Any]:
    """The resize/crop part of ``pre`` (no colour normalisation), then a resize to ``size`` x ``size``."""
    from torchvision import transforms as T

    interp = getattr(T.InterpolationMode, interpolation.upper())
    if pre.resize_mode == "squash":
        ops: list[Any] = [T.Resize((pre.crop, pre.crop), interpolation=interp)]
    elif pre.resize_mode == "shorter":
        ops = [T.Resize(pre.resize or pre.crop, interpolation=interp), T.CenterCrop(pre.crop)]
    else:
        raise DermbenchError(f"preprocess resize_mode {pre.resize_mode!r} unknown (expected 'shorter' or 'squash')")
    if size != pre.crop:
        ops.append(T.Resize((size, size), interpolation=interp))
    return ops


def _image_size(s: Sample) -> tuple[int, int]:
    from PIL import Image

    if callable(s.image):
        return s.load_image().size
    try:
        with Image.open(s.image) as im:  # header only: no decoding
            return im.size
    except FileNotFoundError:
        raise DermbenchError(f"image file missing: {s.image} (sample {s.id})") from None
    except Exception as e:
        raise DermbenchError(f"cannot read image {s.image} (sample {s.id}): {e}") from e


def load_mask_checked(s: Sample) -> "np.ndarray":
    """The sample's (H, W) bool mask; refuses masks whose size differs from the image's, naming both."""
    if s.mask is None:
        raise DermbenchError(f"sample {s.id} has no mask; segmentation needs a lesion mask for every image")
    m = s.load_mask()  # refuses values other than {0,1} / {0,255}
    iw, ih = _image_size(s)
    if m.ndim != 2:
        raise DermbenchError(f"mask {_where(s)} has shape {m.shape}; expected a single-channel (H, W) mask")
    if (m.shape[1], m.shape[0]) != (iw, ih):
        raise DermbenchError(
            f"mask {_where(s)} is {m.shape[1]}x{m.shape[0]} (WxH) but its image {_where(s, image=True)} is {iw}x{ih}; "
            "a mask must have its image's size: re-export it at the image's resolution (nearest neighbour) "
            "or fix the image/mask pairing"
        )
    return m


def _where(s: Sample, image: bool = False) -> str:
    src = s.image if image else s.mask
    return f"{src}" if not callable(src) else f"of sample {s.id}"


def prepare_masks(split: Split, pre: Preprocess, size: int, resize: str = "nearest") -> "np.ndarray":
    """(n, size, size) bool masks aligned with the model's input crop.

    ``resize='bilinear'``: the 0/255 mask is resized bilinearly and a pixel is lesion only where it stays 255
    (the DermINO authors' ToTensor + ``mask == 1`` rule, which thins the boundary)."""
    import numpy as np
    from PIL import Image

    tf = _geometry_ops(pre, size, "bilinear" if resize == "bilinear" else "nearest")
    out = np.zeros((len(split), size, size), dtype=bool)
    for k, s in enumerate(split.samples):
        im = Image.fromarray(load_mask_checked(s).astype(np.uint8) * 255, mode="L")
        for op in tf:
            im = op(im)
        out[k] = np.asarray(im) == 255 if resize == "bilinear" else np.asarray(im) > 127
    return out


def prepare_image(s: Sample, pre: Preprocess, size: int) -> "Image.Image":
    """The sample's RGB image cropped as the model sees it, at ``size`` x ``size`` (for overlays)."""
    im = s.load_image().convert("RGB")
    for op in _geometry_ops(pre, size, "bilinear"):
        im = op(im)
    return im


# --------------------------------------------------------------------------------------------------
# Stored predictions and overlays


def save_predicted_masks(path: Path, ids: Sequence[str], masks: "np.ndarray") -> None:
    """All predicted masks, bit-packed and compressed (a 224 x 224 mask costs well under 1 kB)."""
    import numpy as np

    n, h, w = masks.shape
    packed = np.packbits(masks.reshape(n, h * w), axis=1)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, ids=np.array(list(ids)), shape=np.array([h, w]), bits=packed)
    tmp.replace(path)


def load_predicted_masks(path: str | Path) -> dict[str, "np.ndarray"]:
    """Read ``pred_masks.npz`` back: {image id: (H, W) bool mask}."""
    import numpy as np

    with np.load(path) as z:
        h, w = (int(v) for v in z["shape"])
        bits = np.unpackbits(z["bits"], axis=1, count=h * w).astype(bool)
        return {str(i): bits[k].reshape(h, w) for k, i in enumerate(z["ids"].tolist())}


def _tint(img: "np.ndarray", mask: "np.ndarray", colour: tuple[int, int, int]) -> "np.ndarray":
    """Blend ``colour`` over the mask and draw its boundary solid, so thin errors stay visible."""
    import numpy as np

    out = img.astype(np.float32).copy()
    c = np.array(colour, dtype=np.float32)
    out[mask] = 0.55 * out[mask] + 0.45 * c
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    out[mask & ~inner] = c
    return out.clip(0, 255).astype(np.uint8)


def write_overlay(path: Path, image: "Image.Image", true: "np.ndarray", pred: "np.ndarray", title: str) -> None:
    """One PNG: image | truth (green) | prediction (red), with a caption line."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = np.asarray(image.convert("RGB"))
    h, w = true.shape
    pad = 14
    canvas = Image.new("RGB", (3 * w + 4, h + pad), (255, 255, 255))
    for k, panel in enumerate((img, _tint(img, true, (0, 200, 0)), _tint(img, pred, (230, 0, 0)))):
        canvas.paste(Image.fromarray(panel), (k * (w + 2), pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title, fill=(0, 0, 0))
    canvas.save(path)


def pick_overlays(dice: "np.ndarray", k: int) -> list[int]:
    """Indices of ``k`` test images spread over the Dice ranking, worst first (ties by split order)."""
    import numpy as np

    if k <= 0 or len(dice) == 0:
        return []
    order = np.argsort(dice, kind="stable")
    pos = np.unique(np.round(np.linspace(0, len(order) - 1, min(k, len(order)))).astype(int))
    return [int(order[p]) for p in pos]


# --------------------------------------------------------------------------------------------------
# Layers and training


def resolve_layers(layers: Any, head: str, n_layers: int | None, is_vit: bool) -> list[int]:
    """``auto``: last layer for ``linear``; for ``upernet`` 4 evenly spaced ViT blocks ending at the last
    (12 blocks: 2, 5, 8, 11; 24: 5, 11, 17, 23) or a CNN's last 4 stages. Else a list / comma string of ints."""
    if layers in (None, "auto", ""):
        if head == "linear":
            return [n_layers - 1] if n_layers else [-1]
        if not n_layers:
            raise DermbenchError(
                "cannot choose layers automatically: the backbone does not say how many blocks it has; "
                "pass --task-opt segmentation.layers=I,J,K,L"
            )
        if n_layers < 4:
            raise DermbenchError(f"head=upernet needs 4 layers but the backbone has {n_layers}; use head=linear")
        if is_vit:
            return [(k + 1) * n_layers // 4 - 1 for k in range(4)]
        return list(range(n_layers - 4, n_layers))
    if isinstance(layers, str):
        try:
            return [int(v) for v in layers.replace(" ", "").split(",") if v]
        except ValueError:
            raise DermbenchError(
                f"layers={layers!r}: expected 'auto' or comma-separated block indices, e.g. 2,5,8,11"
            ) from None
    if isinstance(layers, int):
        return [layers]
    return [int(v) for v in layers]


def _batches(perm: Any, bs: int) -> list[Any]:
    """Mini-batches; a trailing batch of one joins the previous one (BatchNorm cannot train on one image)."""
    chunks = [perm[i : i + bs] for i in range(0, len(perm), bs)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        import torch

        chunks[-2] = torch.cat([chunks[-2], chunks[-1]])
        chunks.pop()
    return chunks


def train_head(head: Any, maps: list["np.ndarray"], masks: "np.ndarray", *, epochs: int, lr: float,
               batch_size: int, weight_decay: float, seed: int, device: str = "cpu",
               progress: Any = None, schedule: str = "cosine") -> list[float]:
    """Adam + per-step cosine schedule, pixel cross-entropy at mask resolution; returns mean loss per epoch.

    ``schedule='cosine'``: one cosine over all steps; ``'dermino'``: the authors' CosineAnnealingLR(T_max=epochs)
    stepped once per batch, i.e. a cosine that restarts every 2*epochs steps."""
    import torch
    import torch.nn.functional as F

    n = len(masks)
    size = masks.shape[1:]
    if epochs <= 0:
        return []
    if n < 2:
        raise DermbenchError(f"segmentation needs at least 2 training images, got {n}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = len(_batches(torch.arange(n), batch_size))
    t_max = epochs if schedule == "dermino" else epochs * steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    target_all = torch.from_numpy(masks)
    losses = []
    head.to(device).train()
    for _ in range(epochs):
        tot, cnt = 0.0, 0
        for idx in _batches(torch.randperm(n, generator=g), batch_size):
            ix = idx.numpy()
            feats = [torch.from_numpy(m[ix]).to(device).float() for m in maps]  # m[ix]: this batch's rows only
            logits = F.interpolate(head(feats), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target_all[idx].to(device).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
        losses.append(tot / cnt)
        if progress is not None:
            progress(1)
    return losses


def predict_masks(head: Any, maps: list["np.ndarray"], size: int, batch_size: int = 32,
                  device: str = "cpu") -> "np.ndarray":
    import numpy as np
    import torch
    import torch.nn.functional as F

    head.to(device).eval()
    n = len(maps[0])
    out = np.zeros((n, size, size), dtype=bool)
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            # maps are memory-mapped by the feature store: one batch is read (copied) at a time, never the whole set
            feats = [torch.tensor(m[lo : lo + batch_size]).to(device).float() for m in maps]
            logits = F.interpolate(head(feats), size=(size, size), mode="bilinear", align_corners=False)
            out[lo : lo + batch_size] = (logits.argmax(1) == 1).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# The task


class Segmentation:
    info = INFO

    def __init__(self, head: str = "linear", layers: Any = "auto", size: int = 224, epochs: int = 20,
                 lr: float = 1e-3, batch_size: int = 16, weight_decay: float = 0.0, decoder_channels: int = 256,
                 class_averaged: bool = False, n_overlays: int = 4, save_masks: bool = True,
                 train_split: str = "train", test_split: str = "test", metric: str = "lesion",
                 schedule: str = "cosine", mask_resize: str = "nearest", decoder: str = "vitdet"):
        self.head = str(head).lower()
        if self.head not in ("linear", "upernet"):
            raise DermbenchError(f"segmentation head={head!r} unknown; choose head=linear or head=upernet")
        self.layers = layers
        self.size, self.epochs, self.lr = int(size), int(epochs), float(lr)
        if self.size < 8:
            raise DermbenchError(f"segmentation size={size} is too small; masks are scored at size x size "
                                 "(default 224)")
        self.batch_size, self.weight_decay = int(batch_size), float(weight_decay)
        self.decoder_channels = int(decoder_channels)
        self.class_averaged = _as_bool(class_averaged, "class_averaged")
        for key, val, allowed in (("metric", metric, ("lesion", "dermino")),
                                  ("schedule", schedule, ("cosine", "dermino")),
                                  ("mask_resize", mask_resize, ("nearest", "bilinear"))):
            if str(val).lower() not in allowed:
                raise DermbenchError(f"segmentation {key}={val!r}: choose one of {', '.join(allowed)}")
        self.metric, self.schedule = str(metric).lower(), str(schedule).lower()
        self.mask_resize = str(mask_resize).lower()
        self.decoder = str(decoder).lower()
        if self.decoder not in ("vitdet", "mmseg"):
            raise DermbenchError(f"segmentation decoder={decoder!r}: choose vitdet (default) or mmseg")
        self.save_masks = _as_bool(save_masks, "save_masks")
        self.n_overlays = int(n_overlays)
        self.train_split, self.test_split = train_split, test_split

    def patch_layers(self, backbone: Any) -> list[int]:
        """The layers whose patch maps ``run`` reads (``dermbench run --extract-only`` shards them beforehand)."""
        n_layers = backbone.num_layers() if callable(getattr(backbone, "num_layers", None)) else None
        return resolve_layers(self.layers, self.head, n_layers, is_vit=backbone.info.patch_size is not None)

    def run(self, ctx: Any) -> TaskOutput:
        import time

        import numpy as np
        import torch

        from dermbench_plugins.tasks.segmentation.heads import build_head

        train, test = ctx.split(self.train_split), ctx.split(self.test_split)
        bb = ctx.backbone()
        # the LOADED backbone's geometry: a checkpoint may fix another input size than the registry's entry
        pre: Preprocess = getattr(getattr(bb, "info", None), "preprocess", None) or ctx.model_info.preprocess
        t0 = time.perf_counter()
        ytr = prepare_masks(train, pre, self.size, self.mask_resize)
        yte = prepare_masks(test, pre, self.size, self.mask_resize)
        t_masks = time.perf_counter() - t0

        layers = self.patch_layers(bb)
        t0 = time.perf_counter()
        ftr = ctx.patch_features(train, layers)
        fte = ctx.patch_features(test, layers)
        t_feats = time.perf_counter() - t0
        if self.head == "linear":
            ftr, fte = ftr[-1:], fte[-1:]
        channels = [int(m.shape[1]) for m in ftr]
        sizes = [(int(m.shape[2]), int(m.shape[3])) for m in ftr]

        device = str(getattr(ctx, "device", "cpu") or "cpu")
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # init, dropout and shuffling from the cell seed only
            torch.manual_seed(ctx.seed)
            head = build_head(self.head, channels, sizes, decoder_channels=self.decoder_channels,
                              decoder=self.decoder)
            with ctx.progress(f"train {self.head} head", self.epochs) as adv:
                losses = train_head(head, ftr, ytr, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                    weight_decay=self.weight_decay, seed=ctx.seed, device=device, progress=adv,
                                    schedule=self.schedule)
        pred = predict_masks(head, fte, self.size, device=device)
        head.cpu()
        t_train = time.perf_counter() - t0

        d_fg, j_fg = dice_jaccard(pred, yte)
        d_ca, j_ca = dice_jaccard(pred, yte, class_averaged=True)
        if self.class_averaged:
            dice, jac, other = d_ca, j_ca, "lesion"
        else:
            dice, jac, other = d_fg, j_fg, "class_avg"
        predictions: dict[str, Any] = {
            "ids": test.ids,
            "dice": dice,
            "jaccard": jac,
            "dice_lesion": d_fg,
            "jaccard_lesion": j_fg,
            "dice_class_avg": d_ca,
            "jaccard_class_avg": j_ca,
            "area_true": yte.mean(axis=(1, 2)),
            "area_pred": pred.mean(axis=(1, 2)),
        }
        metrics = ["dice", "jaccard", f"mean:dice_{other}", f"mean:jaccard_{other}"]
        dermino_point = None
        if self.metric == "dermino":  # the authors' batch-pooled metric first (the leaderboard's primary column)
            from dermbench_plugins.tasks.protocols.dermino import SEG_BATCH, dermino_seg_scores, seg_counts

            counts = seg_counts(pred, yte)
            for c, key in enumerate(("seg_tp", "seg_fp", "seg_fn", "seg_tn")):
                predictions[key] = counts[:, c]
            metrics = ["dermino_dice", "dermino_jac", *metrics]
            dermino_point = {**dermino_seg_scores(pred, yte), "batch": SEG_BATCH}

        artifacts = self._write_artifacts(ctx, test, pre, yte, pred, dice)
        extra = {
            "head": self.head,
            "layers": layers,
            "feature_maps": [{"channels": c, "h": h, "w": w} for c, (h, w) in zip(channels, sizes)],
            "pyramid": None if self.decoder == "mmseg" else _pyramid_note(self.head, sizes),
            "decoder": ("BN-Dropout2d(0.1)-1x1conv" if self.head != "upernet" else
                        f"mmseg-style UPerHead ({getattr(head, 'channels', '?')} ch, dropout 0)"
                        if self.decoder == "mmseg" else "smp UPerNetDecoder"),
            "size": self.size,
            "mask_geometry": f"loaded backbone's preprocessing ({pre.resize_mode}, resize={pre.resize}, "
                             f"crop={pre.crop}), {self.mask_resize}, then {self.size}x{self.size}",
            "metric_variant": ("per-image mean of lesion and background scores"
                               if self.class_averaged else "lesion (foreground) only"),
            "metric": self.metric,
            "dermino_metric": dermino_point,
            "schedule": self.schedule,
            "batch_size": self.batch_size,
            "mask_resize": self.mask_resize,
            "empty_mask_policy": EMPTY_POLICY,
            "n_empty_truth": int((yte.sum(axis=(1, 2)) == 0).sum()),
            "n_train": len(train),
            "n_test": len(test),
            "epochs": self.epochs,
            "lr": self.lr,
            "train_loss": [round(v, 5) for v in losses],
            "head_parameters": int(sum(p.numel() for p in head.parameters())),
            "seconds": {"masks": round(t_masks, 3), "features": round(t_feats, 3), "train": round(t_train, 3)},
            "artifacts_relative_to": "the record's folder",
        }
        return TaskOutput(predictions, metrics, test, extra=extra, artifacts=artifacts)

    def _write_artifacts(self, ctx: Any, test: Split, pre: Preprocess, yte: "np.ndarray", pred: "np.ndarray",
                         dice: "np.ndarray") -> list[str]:
        out_dir = Path(ctx.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rel = out_dir.name
        for old in [*out_dir.glob("overlay_*.png"), out_dir / "pred_masks.npz"]:  # a rerun replaces, never mixes
            old.unlink(missing_ok=True)
        arts: list[str] = []
        if self.save_masks:
            save_predicted_masks(out_dir / "pred_masks.npz", test.ids, pred)
            arts.append(f"{rel}/pred_masks.npz")
        samples = test.samples
        for rank, k in enumerate(pick_overlays(dice, self.n_overlays)):
            s = samples[k]
            name = f"overlay_{rank:02d}_{_safe(s.id)}.png"
            write_overlay(out_dir / name, prepare_image(s, pre, self.size), yte[k], pred[k],
                          f"{s.id}  dice {dice[k]:.3f}   image | truth | prediction")
            arts.append(f"{rel}/{name}")
        return arts


def _pyramid_note(head: str, sizes: Sequence[tuple[int, int]]) -> str | None:
    if head != "upernet":
        return None
    return "built: 4x up (D/4), 2x up (D/2), 1x, 2x down (ViT)" if len(set(sizes)) == 1 else "backbone stages (CNN)"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _as_bool(v: Any, name: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in ("true", "1", "yes", "false", "0", "no"):
        return v.lower() in ("true", "1", "yes")
    raise DermbenchError(f"segmentation {name}={v!r}: expected true or false")


@hookimpl
def register_tasks(register):
    register(INFO, Segmentation)
    register(INFO_UPERNET, Segmentation)


def _resolve_metric(name: str):
    """dermino_dice / dermino_jac (the DermINO authors' batch-pooled metric, ``metric=dermino``)."""
    if not name.startswith("dermino_"):
        return None
    from dermbench_plugins.tasks.protocols.dermino import resolve_metric

    return resolve_metric(name)


@hookimpl
def register_metrics(register):
    register(_resolve_metric)
