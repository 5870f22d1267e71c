"""Procedural limb radiographs with optional lytic lesions, deterministic by seed.

The image is formed like a projection radiograph: each structure adds its line integral of
attenuation ``A`` (soft-tissue cylinder with a fat layer, bones as tubes of cortex around
medulla/cancellous bone with band-pass trabecular texture), then a heel-effect gradient, quantum
noise whose spread grows with ``exp(A / 2)`` and a gain/gamma window turn ``A`` into a display
value in ``[0, 1]`` with bone bright. Lesions cut attenuation inside the bone and add a sclerotic
rim; their mask and boxes come from the same analytic shape at full resolution.

The anatomy, the lesions and the noise use three independent random streams derived from the seed,
so ``make_phantom(s, lesion=True)`` and ``make_phantom(s, lesion=False)`` show the same limb. Not the
same pixels away from the lesion: the exposure window is set from the attenuation with the lesion cut
in, so its grey levels shift a little (over 200 seeds at 128 px: most pairs differ, by up to 0.077,
the lesion image darker in 97 %, on average by 0.002; too small to be a shortcut for a classifier).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REGIONS = ("lower_limb", "upper_limb")
VIEWS = ("frontal", "lateral", "oblique")
MAX_RENDER = 1024  # attenuation is rendered at most this many pixels a side, then upsampled
_NAMES = {"lower_limb": ("femur", "tibia", "fibula"), "upper_limb": ("humerus", "ulna", "radius")}
_FLEX = {"frontal": (0.0, 8.0), "oblique": (5.0, 25.0), "lateral": (15.0, 55.0)}  # joint, degrees


@dataclass
class Bone:
    """One long bone, in target-image pixels: the joint end and the shaft direction from it."""

    name: str
    end: tuple[float, float]  # (x, y) of the articular end
    d: tuple[float, float]  # unit vector from the end into the shaft
    r0: float  # shaft half-width
    flare: float  # metaphyseal widening, fraction of r0
    flare_len: float  # length scale of the flare
    cap: float  # length of the rounded epiphysis beyond the end
    cort: float  # cortical fraction of the shaft radius
    physis: float  # distance of a growth plate from the end (0: closed)


@dataclass
class Lesion:
    """A lytic lesion: perturbed ellipse centred at ``c`` with semi-axes ``a`` (along) and ``b``."""

    bone: int
    c: tuple[float, float]
    a: float
    b: float
    angle: float  # radians, orientation of the ``a`` axis
    harm: tuple[tuple[float, float], ...]  # (amplitude, phase) of boundary harmonics 2, 3, 4
    depth: float  # fraction of bone attenuation removed in the core
    rim: float  # extra attenuation of the sclerotic rim, fraction of local bone attenuation
    rim_w: float  # rim half-width, in units of ``b``


def _frame(bone: Bone, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (``t``, into the shaft) and across (``v``) the bone axis."""
    dx, dy = bone.d
    x, y = X - bone.end[0], Y - bone.end[1]
    return x * dx + y * dy, y * dx - x * dy


def _radius(bone: Bone, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer half-width ``R(t)`` (0 outside the bone) and metaphyseal weight (1 at the end)."""
    tt = np.maximum(t, 0.0)
    meta = np.exp(-((tt / bone.flare_len) ** 2))
    r_end = bone.r0 * (1.0 + bone.flare)
    cap = np.clip(-t / bone.cap, 0.0, 1.0)
    shape = np.sqrt(np.maximum(1.0 - cap * cap * np.sqrt(cap), 0.0))
    return np.where(t >= 0, bone.r0 * (1.0 + bone.flare * meta), r_end * shape), meta


def _chord(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Path length through a cylinder of radius ``r`` at lateral offset ``v``."""
    return 2.0 * np.sqrt(np.maximum(r * r - v * v, 0.0))


def _bone_attenuation(bone: Bone, X: np.ndarray, Y: np.ndarray, tex: np.ndarray,
                      mu: float) -> tuple[np.ndarray, np.ndarray]:
    """Line integral through one bone; returns ``(A, inside)``, both ``(h, w)``."""
    t, v = _frame(bone, X, Y)
    R, meta = _radius(bone, t)
    cf = bone.cort - (bone.cort - 0.05) * np.exp(-((np.maximum(t, 0) / (1.6 * bone.flare_len)) ** 2))
    outer, inner = _chord(R, v), _chord(R * (1.0 - cf), v)
    dens = (0.3 + 0.12 * meta) * (bone.r0 / np.maximum(R, 1e-3)) ** 0.5 * (1.0 + (0.05 + 0.08 * meta) * tex)
    if bone.physis > 0:  # open growth plate: a thin, wavy, less dense line across the metaphysis
        wave = bone.physis + 0.08 * bone.r0 * np.sin(v / (0.35 * bone.r0))
        dens = dens * (1.0 - 0.6 * np.exp(-(((t - wave) / (0.05 * bone.r0)) ** 2)))
    return (mu / bone.r0) * (outer - inner + dens * inner), np.abs(v) < R


def _lesion_rho(les: Lesion, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Normalised radius of the lesion shape: < 1 inside the lytic core boundary."""
    ca, sa = math.cos(les.angle), math.sin(les.angle)
    x, y = X - les.c[0], Y - les.c[1]
    p, q = (x * ca + y * sa) / les.a, (y * ca - x * sa) / les.b
    phi = np.arctan2(q, p)
    pert = 1.0 + sum(amp * np.cos(k * phi + ph) for k, (amp, ph) in enumerate(les.harm, start=2))
    return np.sqrt(p * p + q * q) / pert


def _lesion_window(les: Lesion, X: np.ndarray, Y: np.ndarray) -> tuple[slice, slice]:
    """Rows/columns of the grid ``(Y, X)`` that can hold the lesion (with rim)."""
    ext = max(les.a, les.b) * (1.0 + 0.6 + 3 * les.rim_w) + 2.0
    cols = np.nonzero(np.abs(X[0] - les.c[0]) <= ext)[0]
    rows = np.nonzero(np.abs(Y[:, 0] - les.c[1]) <= ext)[0]
    if cols.size == 0 or rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _apply_lesion(les: Lesion, A: np.ndarray, X: np.ndarray, Y: np.ndarray, tex: np.ndarray) -> None:
    """Carve the lesion into one bone's attenuation ``A`` (in place)."""
    rs, cs = _lesion_window(les, X, Y)
    rho = _lesion_rho(les, X[:, cs], Y[rs])
    core = np.clip((1.0 - les.rim_w - rho) / 0.2, 0.0, 1.0)
    core = core * core * (3 - 2 * core)
    rim = np.exp(-(((rho - 1.0) / les.rim_w) ** 2))
    sub = A[rs, cs]
    sub *= 1.0 - les.depth * core * (1.0 + 0.2 * tex[rs, cs]) + les.rim * rim


def lesion_mask(les: Lesion, bone: Bone, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Exact lesion mask on the grid ``(Y (h, 1), X (1, w))``: shape with rim, inside the bone."""
    t, v = _frame(bone, X, Y)
    R, _ = _radius(bone, t)
    return (_lesion_rho(les, X, Y) < 1.0 + 1.5 * les.rim_w) & (np.abs(v) < R)


def _texture(rng: np.random.Generator, shape: tuple[int, int], px: float, d: tuple[float, float]) -> np.ndarray:
    """Band-pass noise streaked along direction ``d``, unit std, ``(h, w)``.

    ``px`` is render pixels per 256-scale unit; the trabecular period is a few units.
    """
    h, w = shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None] * px
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :] * px
    along, across = fx * d[0] + fy * d[1], fy * d[0] - fx * d[1]
    r = np.sqrt((2.5 * along) ** 2 + across**2)
    filt = np.exp(-0.5 * ((r - 0.28) / 0.1) ** 2) + 0.3 * np.exp(-0.5 * (r / 0.04) ** 2)
    re, im = rng.standard_normal((2, *filt.shape), dtype=np.float32)
    spec = (re + 1j * im) * filt
    tex = np.fft.irfft2(spec, s=(h, w)).astype(np.float32)
    return tex / (tex.std() + 1e-8)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Very low-frequency noise, ``(h, w)``: a coarse random grid spread by Gaussian weights."""
    g = rng.standard_normal((cells, cells), dtype=np.float32)

    def weights(n: int) -> np.ndarray:
        x = np.linspace(0.0, cells - 1.0, n, dtype=np.float32)[:, None] - np.arange(cells, dtype=np.float32)
        k = np.exp(-0.5 * (x / 0.7) ** 2)
        return k / k.sum(axis=1, keepdims=True)

    return weights(shape[0]) @ g @ weights(shape[1]).T


def _rot(d: tuple[float, float], deg: float) -> tuple[float, float]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (d[0] * c - d[1] * s, d[0] * s + d[1] * c)


def _sample_anatomy(rng: np.random.Generator, H: int, W: int, region: str, view: str) -> tuple[list[Bone], dict]:
    """Random bones and soft-tissue envelope, in target pixels."""
    s = min(H, W) / 256.0
    big, mid, small = _NAMES[region]
    r0 = rng.uniform(20, 32) if region == "lower_limb" else rng.uniform(13, 22)
    r0 *= s
    ang = rng.uniform(-20, 20) + (180.0 if rng.random() < 0.5 else 0.0)
    d = _rot((0.0, 1.0), ang)  # pointing down (shaft below the end) before the flip
    end = (W * rng.uniform(0.38, 0.62), H * rng.uniform(0.35, 0.65))
    young = rng.random() < 0.35

    def bone(name: str, e: tuple[float, float], dd: tuple[float, float], rr: float) -> Bone:
        flare = rng.uniform(0.45, 0.95)
        return Bone(name, e, dd, rr, flare, rr * rng.uniform(1.5, 2.6), rr * (1 + flare) * rng.uniform(0.35, 0.6),
                    rng.uniform(0.2, 0.33), rr * rng.uniform(0.5, 1.0) if young else 0.0)

    layout = rng.choice(["joint", "parallel", "single"], p=[0.45, 0.35, 0.2])
    bones = []
    if layout == "joint":  # big bone across the joint (femur/humerus), the shaft bone below it
        main = bone(mid, end, d, r0)
        gap = rng.uniform(3, 8) * s + main.cap
        e2 = (end[0] - d[0] * gap, end[1] - d[1] * gap)
        flex = rng.uniform(*_FLEX[view]) * (1 if rng.random() < 0.5 else -1)
        other = bone(big, e2, _rot((-d[0], -d[1]), flex), r0 * rng.uniform(1.05, 1.25))
        other.end = (e2[0] + other.d[0] * other.cap, e2[1] + other.d[1] * other.cap)
        bones = [main, other]
    else:
        main = bone(big if layout == "single" else mid, end, d, r0)
        bones = [main]
        if layout == "parallel":
            side = 1 if rng.random() < 0.5 else -1
            rc = r0 * rng.uniform(0.35, 0.55)
            spread = rng.uniform(0.95, 1.3) if view == "frontal" else rng.uniform(0.4, 1.0)  # overlap off-frontal
            off = (r0 * (1 + 0.5 * main.flare) + rc) * spread
            along = main.flare_len * rng.uniform(0.2, 1.2)
            n = (-d[1] * side, d[0] * side)
            e2 = (end[0] + d[0] * along + n[0] * off, end[1] + d[1] * along + n[1] * off)
            comp = bone(small, e2, _rot(d, rng.uniform(-4, 4)), rc)
            comp.flare *= 0.6
            bones.append(comp)
    soft = {"S": r0 * rng.uniform(2.0, 3.0), "mu": rng.uniform(0.55, 0.85), "off": r0 * rng.uniform(-0.6, 0.6),
            "fat": rng.uniform(0.08, 0.2),
            "wave": rng.uniform(0.02, 0.08), "period": rng.uniform(150, 300) * s, "phase": rng.uniform(0, 2 * math.pi)}
    if layout == "parallel":
        soft["off"] = float(np.dot(np.subtract(bones[1].end, end), (-d[1], d[0]))) * 0.45
    return bones, soft


def _sample_lesions(rng: np.random.Generator, bones: list[Bone], H: int, W: int) -> list[Lesion]:
    """One (sometimes two) lesions in the medulla/metaphysis, fully inside the image."""
    out: list[Lesion] = []
    want = 2 if rng.random() < 0.12 else 1
    for _ in range(200):
        if len(out) == want:
            break
        bi = 0 if rng.random() < 0.85 or len(bones) == 1 else 1
        bone = bones[bi]
        t_c = bone.flare_len * (rng.uniform(0.0, 1.8) if rng.random() < 0.8 else rng.uniform(1.8, 4.0))
        R, _ = _radius(bone, np.array(t_c))
        r_in = float(R) * (1 - max(0.06, bone.cort * (1 - math.exp(-((t_c / (1.6 * bone.flare_len)) ** 2)))))
        b = max(r_in * rng.uniform(0.3, 0.65), 4.0 * min(H, W) / 256.0)
        a = b * rng.uniform(1.0, 2.0)
        if t_c - a < -0.3 * bone.cap:
            continue
        v_c = rng.uniform(-1, 1) * max(0.9 * r_in - b, 0.0)
        c = (bone.end[0] + bone.d[0] * t_c - bone.d[1] * v_c, bone.end[1] + bone.d[1] * t_c + bone.d[0] * v_c)
        m = a * 1.3 + 2
        if not (m <= c[0] <= W - m and m <= c[1] <= H - m):
            continue
        if any(math.dist(c, o.c) < (a + o.a) * 1.2 for o in out):
            continue
        angle = math.atan2(bone.d[1], bone.d[0]) + math.radians(rng.uniform(-12, 12))
        harm = tuple((rng.uniform(0.0, 0.08), rng.uniform(0, 2 * math.pi)) for _ in range(3))
        rim_w = min(rng.uniform(1.2, 2.2) * min(H, W) / 256.0 / b, 0.25)
        out.append(Lesion(bi, c, a, b, angle, harm, rng.uniform(0.35, 0.75), rng.uniform(0.15, 0.5), rim_w))
    return out


def _blur121(a: np.ndarray) -> np.ndarray:
    """Separable ``[1, 2, 1] / 4`` blur with edge replication, ``(h, w)`` -> ``(h, w)``."""
    p = np.pad(a, 1, mode="edge")
    a = (p[:-2] + 2 * p[1:-1] + p[2:]) * 0.25
    return (a[:, :-2] + 2 * a[:, 1:-1] + a[:, 2:]) * 0.25


def components(mask: np.ndarray) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` (end-exclusive) of the 4-connected components of ``mask``.

    Args:
        mask: ``(H, W)`` bool or integer array, nonzero = foreground.

    Returns:
        One box per component, sorted by ``(y0, x0)`` (ties in labelling order: first pixel in
        raster order).
    """
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(mask) != 0)  # the default structure is 4-connected
    boxes = [[sx.start, sy.start, sx.stop, sy.stop] for sy, sx in ndimage.find_objects(labels)]
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def _resize(a: np.ndarray, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    if a.shape == shape:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=shape, mode=mode, **kw)[0, 0].numpy()


def make_phantom(seed: int, *, size: tuple[int, int] = (256, 256), lesion: bool, region: str = "lower_limb",
                 view: str = "frontal") -> dict[str, Any]:
    """One synthetic limb radiograph.

    Args:
        seed: any int; the same arguments always give identical arrays.
        size: ``(H, W)`` of the output.
        lesion: draw one (sometimes two) lytic lesions; the limb is the same as with ``False``.
        region: ``"lower_limb"`` (femur/tibia/fibula) or ``"upper_limb"`` (humerus/ulna/radius).
        view: ``"frontal"``, ``"lateral"`` or ``"oblique"`` (sets joint flexion, bone overlap).

    Returns:
        dict with ``image`` float32 ``(H, W)`` in ``[0, 1]`` (bone bright); ``mask`` uint8 ``(H, W)``
        (1 = lesion, with its rim); ``boxes`` list of ``[x0, y0, x1, y1]`` ints, end-exclusive, one
        per mask component; ``bone_mask`` uint8 ``(H, W)``; ``label`` (``"tumor"``/``"normal"``);
        ``region``, ``view``, ``bone`` (bone(s) holding lesions, ``;``-joined, ``""`` for normals),
        ``bones`` (names drawn), ``seed`` and ``lesions`` (shape parameters, dicts).

    Examples:
        >>> out = make_phantom(0, lesion=True)
        >>> out["image"].shape, out["image"].dtype, len(out["boxes"]) >= 1
        ((256, 256), dtype('float32'), True)
    """
    if region not in _NAMES:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if view not in _FLEX:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    H, W = int(size[0]), int(size[1])
    if min(H, W) < 2:
        raise ValueError(f"size must be at least 2 px a side, got {tuple(size)}")
    streams = np.random.SeedSequence([int(seed) & (2**63 - 1), 0x5EED]).spawn(3)
    r_anat, r_les, r_noise = (np.random.default_rng(s) for s in streams)
    bones, soft = _sample_anatomy(r_anat, H, W, region, view)
    lesions = _sample_lesions(r_les, bones, H, W) if lesion else []
    s = min(H, W) / 256.0
    k = min(1.0, MAX_RENDER / max(H, W))
    h, w = max(int(round(H * k)), 8), max(int(round(W * k)), 8)
    X = ((np.arange(w, dtype=np.float32) + 0.5) * (W / w) - 0.5)[None, :]
    Y = ((np.arange(h, dtype=np.float32) + 0.5) * (H / h) - 0.5)[:, None]
    mu = 0.9  # peak cortical attenuation is about mu * 1.3

    # soft tissue: muscle cylinder with a fat layer around the main bone's axis (and the joint bone's)
    def envelope(b: Bone) -> np.ndarray:
        t, v = _frame(b, X, Y)
        S = soft["S"] * (1.0 + soft["wave"] * np.sin(2 * math.pi * t / soft["period"] + soft["phase"]))
        inner = _chord(S * (1 - soft["fat"]), v - soft["off"])
        return (inner + 0.65 * (_chord(S, v - soft["off"]) - inner)) * (soft["mu"] / (2 * soft["S"]))

    A = envelope(bones[0])
    if len(bones) == 2 and bones[1].name in (_NAMES[region][0],):  # across a joint: blend two envelopes
        t0, _ = _frame(bones[0], X, Y)
        t1, _ = _frame(bones[1], X, Y)
        wgt = 1.0 / (1.0 + np.exp(np.clip(-(t0 - t1) / (0.3 * soft["S"]), -30, 30)))
        A = wgt * A + (1 - wgt) * envelope(bones[1])
    A *= 1.0 + 0.06 * _smooth_noise(r_anat, (h, w))
    inside = np.zeros((h, w), dtype=bool)
    for i, b in enumerate(bones):
        tex = _texture(r_anat, (h, w), w / W * s, b.d)
        Ab, ins = _bone_attenuation(b, X, Y, tex, mu)
        for les in lesions:
            if les.bone == i:
                _apply_lesion(les, Ab, X, Y, tex)
        A += Ab
        inside |= ins
    A = _blur121(A.astype(np.float32))
    a_ref = float(np.quantile(A[:: max(h // 128, 1), :: max(w // 128, 1)], 0.995)) * r_anat.uniform(0.95, 1.15)
    A = _resize(A, (H, W))

    # exposure: heel-effect gradient, quantum noise, gain/gamma window
    g = r_anat.uniform(0, 2 * math.pi)
    heel = r_anat.uniform(0.04, 0.14) * a_ref
    hx = (heel * math.cos(g) * (np.arange(W, dtype=np.float32) / W - 0.5))[None, :]
    hy = (heel * math.sin(g) * (np.arange(H, dtype=np.float32) / H - 0.5))[:, None]
    sigma = r_anat.uniform(0.006, 0.016) * a_ref
    noise = r_noise.standard_normal((H, W), dtype=np.float32)
    noise *= np.exp(A * (0.5 / a_ref)) * sigma
    floor = r_anat.uniform(0.0, 0.07)
    gain = (1.0 - floor) * r_anat.uniform(0.9, 1.1) / a_ref
    A += noise
    A += hx
    A += hy
    A *= gain
    A += floor
    np.clip(A, 0.0, 1.0, out=A)
    gamma = r_anat.uniform(0.75, 1.3)
    img = np.power(A, gamma, out=A).astype(np.float32, copy=False)

    mask = np.zeros((H, W), dtype=np.uint8)
    Xf, Yf = np.arange(W, dtype=np.float32)[None, :], np.arange(H, dtype=np.float32)[:, None]
    for les in lesions:
        rs, cs = _lesion_window(les, Xf, Yf)
        mask[rs, cs] |= lesion_mask(les, bones[les.bone], Xf[:, cs], Yf[rs]).astype(np.uint8)
    bone_mask = _resize(inside.astype(np.uint8), (H, W), mode="nearest")
    return {
        "image": img, "mask": mask, "boxes": components(mask) if lesions else [], "bone_mask": bone_mask,
        "label": "tumor" if lesions else "normal", "region": region, "view": view,
        "bone": ";".join(dict.fromkeys(bones[les.bone].name for les in lesions)),
        "bones": [b.name for b in bones], "seed": int(seed),
        "lesions": [{"bone": bones[x.bone].name, "center": x.c, "axes": (x.a, x.b), "angle": x.angle,
                     "depth": x.depth, "rim": x.rim} for x in lesions],
    }
