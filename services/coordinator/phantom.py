"""Synthetic contrast-enhanced T1 head with one extra-axial meningioma, for the built-in demo.

The head is analytic: an ellipsoidal scalp, a skull (dark tables around a fatty diploe) with a
thicker cranial floor, CSF, a folded grey/white cortex with sulci, deep grey nuclei, ventricles,
the falx and the enhancing superior sagittal sinus, all perturbed by smooth random fields. The
tumour is a dome attached to the inner skull surface; its size, lobulation, enhancement texture,
necrotic or cystic core, margin, peritumoral oedema, dural tail and invasion follow a
:class:`TumourSpec`. Slices are thick (5 mm), so the tumour's outline is rendered on three
sub-slices per slice and averaged (partial volume), and a mask holds the voxels that are at least
half tumour. A smooth multiplicative bias field and Rician noise finish the image.

Everything is vectorised numpy. Random fields are Gaussian-smoothed lattice noise evaluated as
separable tensor products, so the same field can be sampled on any grid of its region cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Tissue labels of :attr:`Phantom.labels` (the demo does not write them; tests use them).
BACKGROUND, SCALP, BONE, DIPLOE, SOFT_TISSUE, CSF, GREY, WHITE, SINUS = range(9)
TUMOUR, EDEMA, DURAL_TAIL = 9, 10, 11

# Signal of each head label on contrast-enhanced T1 at intensity scale 1: white matter 900,
# grey matter 700, fat bright, cortical bone and CSF dark, the enhancing sinus bright.
_TISSUE_SIGNAL = np.array([0, 1450, 70, 700, 760, 230, 700, 900, 1500], dtype=np.float32)
ENHANCING_TUMOUR = 1900.0  # avidly enhancing meningioma, about twice white matter
_SUB_SLICES = 3  # sub-slices per slice for the tumour outline's through-plane partial volume

Axes = tuple[np.ndarray, np.ndarray, np.ndarray]  # 1-D physical coordinates (z, y, x), mm


@dataclass(frozen=True)
class Scanner:
    """One hospital's acquisition: grid geometry, axis directions and intensity calibration."""

    spacing_xy: float  # mm, in-plane
    matrix: int  # in-plane voxels per side
    n_slices: int
    slice_mm: float
    flip_xy: bool  # True stores x and y towards right and anterior (direction -1, -1, 1)
    intensity_scale: float
    noise_fraction: float  # Rician noise sigma as a fraction of the white-matter signal


@dataclass(frozen=True)
class TumourSpec:
    """What the tumour looks like: image-scale size, location and the Table 1 findings."""

    diameter_mm: float  # maximal diameter in the image
    skull_base: bool
    irregular: bool
    heterogeneous: bool
    necrosis: bool
    dural_tail: bool
    indistinct: bool
    edema: bool
    invasion: bool
    aggressiveness: float  # latent, ~N(0, 1) in low grade, shifted up in high grade


@dataclass(frozen=True)
class Phantom:
    """A rendered patient: arrays in (z, y, x) order plus the SimpleITK geometry."""

    image: np.ndarray  # int16
    mask: np.ndarray  # uint8, reader 1
    mask_reader2: np.ndarray | None  # uint8, a second reader, when asked for
    labels: np.ndarray  # uint8 tissue labels (module constants)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major


class SmoothField:
    """Gaussian random field of zero mean and about unit variance over a box.

    White noise on a lattice convolved with a Gaussian of width ``sigma`` per axis; sampling it
    on a grid is a product of small per-axis weight matrices, so any grid of the box (the whole
    volume, a tumour box, sub-slices) sees the same field.
    """

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
                 sigma: tuple[float, ...], step: tuple[float, ...] | None = None) -> None:
        self.sigma = np.asarray(sigma, dtype=float)
        steps = self.sigma if step is None else np.asarray(step, dtype=float)
        self.nodes = []
        norm = 1.0
        for a, b, s, h in zip(lo, hi, self.sigma, steps, strict=True):
            pad = math.ceil(3 * s / h)  # lattice aligned on ``lo``, padded by 3 sigma
            nodes = a + h * np.arange(-pad, math.ceil((b - a) / h) + pad + 1)
            self.nodes.append(nodes)
            norm *= math.sqrt(float(np.exp(-(((nodes - nodes[len(nodes) // 2]) / s) ** 2)).sum()))
        self.values = rng.standard_normal([len(n) for n in self.nodes]).astype(np.float32) / norm

    def __call__(self, *axes: np.ndarray) -> np.ndarray:
        """The field on the grid spanned by 1-D coordinate arrays, one per axis."""
        out = self.values
        for coords, nodes, s in zip(axes, self.nodes, self.sigma, strict=True):
            w = np.exp(-0.5 * ((np.asarray(coords)[:, None] - nodes[None, :]) / s) ** 2)
            out = np.tensordot(out, w.astype(np.float32), axes=([0], [1]))
        return out


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _mesh(axes: Axes) -> Axes:
    """Broadcastable (z, y, x) views of 1-D axes."""
    z, y, x = axes
    return z[:, None, None], y[None, :, None], x[None, None, :]


@dataclass
class _Head:
    """Per-patient head geometry in physical mm (LPS: x left, y posterior, z superior)."""

    a: float  # outer semi-axes: left-right, antero-posterior, superior
    b: float
    c: float
    x0: float  # head centre offset in the axial plane
    y0: float
    yaw: float  # radians
    scalp: float  # mm
    skull: float  # mean skull thickness, mm
    floor0: float  # height of the cranial floor relative to the centre, mm (negative)
    csf: float  # subarachnoid CSF thickness, mm
    atrophy: float  # 0..1.2, age-related widening of CSF spaces
    thickness: SmoothField  # skull thickness variation
    gyri: SmoothField  # cortical thickness (gyral folding)
    sulci: SmoothField  # zero crossings are sulci
    texture: SmoothField  # +-3.5 % tissue texture

    def frame(self, axes: Axes) -> Axes:
        """Head-frame coordinates (Z, Y, X), broadcastable, of scanner axes."""
        z, y, x = _mesh(axes)
        cs, sn = math.cos(self.yaw), math.sin(self.yaw)
        dx, dy = x - self.x0, y - self.y0
        return z, -sn * dx + cs * dy, cs * dx + sn * dy

    def floor(self, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Cranial floor height: anterior fossa highest, posterior fossa deep (y > 0 is
        posterior), rising laterally."""
        return (self.floor0 + 8.0 * (X / self.a) ** 2 - 8.0 * (Y / self.b)
                - 25.0 * np.maximum(Y / self.b, 0.0) ** 2)

    def floor_normal(self, Y: float, X: float) -> np.ndarray:
        """Unit normal (Z, Y, X) of the cranial floor, pointing up into the cavity."""
        d_y = -8.0 / self.b - 50.0 * max(Y / self.b, 0.0) / self.b
        d_x = 16.0 * X / self.a**2
        n = np.array([1.0, -d_y, -d_x])
        return n / np.linalg.norm(n)

    def geometry(self, axes: Axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth below the scalp surface, signed distance into the cranial cavity and local
        bone thickness on the grid of ``axes``."""
        Z, Y, X = self.frame(axes)
        Zs = np.where(Z < 0, 0.55 * Z, Z)  # the head continues downwards (face, neck)
        r = np.sqrt((X / self.a) ** 2 + (Y / self.b) ** 2 + (Zs / self.c) ** 2)
        depth = np.sqrt(X**2 + Y**2 + Zs**2) * (1.0 / np.maximum(r, 1e-6) - 1.0)
        thick = self.skull + 1.1 * self.thickness(*axes)
        lateral = depth - self.scalp - thick
        floor = Z - self.floor(Y, X)
        s_cav = np.minimum(lateral, floor)
        bone = np.where(floor < lateral, 1.6 * thick, thick)  # the skull base is thicker
        return depth.astype(np.float32), s_cav.astype(np.float32), bone.astype(np.float32)

    def inner_surface(self, azimuth: float, elevation: float) -> np.ndarray:
        """Head-frame point (Z, Y, X) on the inner skull surface in a convexity direction."""
        u = np.array([math.sin(elevation), math.cos(elevation) * math.sin(azimuth),
                      math.cos(elevation) * math.cos(azimuth)])
        r_u = math.sqrt((u[2] / self.a) ** 2 + (u[1] / self.b) ** 2 + (u[0] / self.c) ** 2)
        p = u * (1.0 / r_u - self.scalp - self.skull)
        for _ in range(3):  # settle on the local bone thickness
            point = tuple(np.array([v]) for v in self.to_scanner(p))
            thick = self.skull + 1.1 * float(self.thickness(*point).ravel()[0])
            p = u * (1.0 / r_u - self.scalp - thick)
        return p

    def to_scanner(self, p: np.ndarray) -> np.ndarray:
        """Scanner coordinates (z, y, x) of a head-frame point (Z, Y, X)."""
        return self.rotate_to_scanner(p) + np.array([0.0, self.y0, self.x0])

    def rotate_to_scanner(self, v: np.ndarray) -> np.ndarray:
        """A head-frame vector (Z, Y, X) in scanner axes (z, y, x)."""
        cs, sn = math.cos(self.yaw), math.sin(self.yaw)
        return np.array([v[0], sn * v[2] + cs * v[1], cs * v[2] - sn * v[1]])


def _make_head(rng: np.random.Generator, age: float, lo: np.ndarray, hi: np.ndarray) -> _Head:
    """Draw one patient's head: size, pose, layer thicknesses and its random fields."""
    s = rng.uniform(0.95, 1.03)
    atrophy = float(np.clip((age - 40.0) / 40.0, 0.0, 1.2))
    return _Head(
        a=62.0 * s, b=75.0 * s, c=68.0 * s,
        x0=rng.normal(0, 1.5), y0=rng.normal(0, 1.5), yaw=math.radians(rng.normal(0, 4.0)),
        scalp=rng.uniform(4.5, 6.5), skull=rng.uniform(5.5, 7.5),
        floor0=-34.0 * s + rng.normal(0, 2.0),
        csf=1.0 + 1.6 * atrophy + rng.uniform(0.0, 0.6), atrophy=atrophy,
        thickness=SmoothField(rng, lo, hi, (15.0, 15.0, 15.0)),
        gyri=SmoothField(rng, lo, hi, (5.0, 4.0, 4.0)),
        sulci=SmoothField(rng, lo, hi, (5.0, 3.5, 3.5)),
        texture=SmoothField(rng, lo, hi, (5.0, 3.0, 3.0)),
    )


def _head_labels(head: _Head, axes: Axes) -> np.ndarray:
    """Tissue labels of the head on the grid of ``axes``."""
    depth, s_cav, bone = head.geometry(axes)
    Z, Y, X = head.frame(axes)
    labels = np.full(s_cav.shape, SOFT_TISSUE, dtype=np.uint8)
    labels[s_cav > -bone] = BONE
    labels[(s_cav > -0.7 * bone) & (s_cav < -0.3 * bone)] = DIPLOE
    labels[depth < head.scalp] = SCALP
    labels[depth < 0] = BACKGROUND
    labels[s_cav > 0] = CSF
    db = s_cav - head.csf  # depth into the brain
    cortex = 2.0 + 4.0 * _sigmoid(2.0 * head.gyri(*axes))
    brain = db > 0
    labels[brain & (db >= cortex)] = WHITE
    labels[brain & (db < cortex)] = GREY
    sulcus = brain & (db < cortex) & (np.abs(head.sulci(*axes)) < 0.06 + 0.05 * head.atrophy)
    labels[sulcus] = CSF
    ax = np.abs(X)
    deep = ((ax - 17.0) / 8.0) ** 2 + ((Y - 2.0) / 14.0) ** 2 + ((Z - 4.0) / 10.0) ** 2 < 1
    labels[brain & deep] = GREY
    vw = 3.5 + 2.5 * head.atrophy
    ventricle = ((ax - 2.0 - vw) / vw) ** 2 + (Y / 24.0) ** 2 + ((Z - 12.0) / 8.0) ** 2 < 1
    fissure = (ax < 1.0) & ((Z > 12.0) | (np.abs(Y) > 35.0))
    labels[brain & (ventricle | fissure)] = CSF
    labels[(s_cav > 0) & (s_cav < 5.0) & (ax < 0.7 * (5.0 - s_cav)) & (Z > 10.0)] = SINUS
    return labels


@dataclass
class _Tumour:
    """Placement, shape and texture of one tumour, in scanner coordinates (z, y, x) mm."""

    centre: np.ndarray
    base: np.ndarray  # attachment point on the inner skull surface
    normal: np.ndarray  # unit, pointing into the cranial cavity
    radius: float
    lobulation: float
    lobes: SmoothField
    brain_invasion: float
    fingers: SmoothField  # brain-side infiltration and margin irregularity
    bone_invasion_mm: float
    edge_mm: float  # boundary blur
    core_reach: float  # mm from the centre that the enhancing tumour can reach
    reach: float  # the same for tumour, oedema and dural tail
    hetero: float
    coarse: SmoothField
    mottle: float
    fine: SmoothField
    enhancement: float
    necrosis_radius: float  # fraction of the radius; 0 = none
    core: SmoothField  # irregularity of the necrotic or cystic core
    necrosis_signal: float
    edema_mm: float  # 0 = none
    edema_field: SmoothField
    edema_drop: float  # relative T1 signal loss of oedematous brain
    tail_dirs: np.ndarray  # (k, 3) unit tangents; none = no dural tail
    tail_len: float
    tail_mm: float


def _place_tumour(rng: np.random.Generator, head: _Head, spec: TumourSpec) -> _Tumour:
    """Choose the attachment site and draw the tumour's shape and texture parameters."""
    g = float(_sigmoid(1.5 * spec.aggressiveness))  # 0..1, the latent's effect
    radius = spec.diameter_mm / 2.0
    if spec.skull_base:
        while True:
            X, Y = rng.uniform(-0.45, 0.45) * head.a, rng.uniform(-0.6, 0.45) * head.b
            if (X / head.a) ** 2 + (Y / head.b) ** 2 < 0.2:
                break
        base_h = np.array([head.floor(np.array(Y), np.array(X)), Y, X], dtype=float)
        normal_h = head.floor_normal(Y, X)
    else:
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = math.asin(rng.uniform(math.sin(math.radians(-5)), math.sin(math.radians(62))))
        base_h = head.inner_surface(azimuth, elevation)
        grad = -np.array([base_h[0] / head.c**2, base_h[1] / head.b**2, base_h[2] / head.a**2])
        normal_h = grad / np.linalg.norm(grad)
    base = head.to_scanner(base_h)
    normal = head.rotate_to_scanner(normal_h)
    depth_in = max(rng.uniform(0.25, 0.55) * radius, 2.0)  # part of the sphere cut by the skull
    centre = base + normal * (radius - depth_in)
    tangent = np.cross(normal, rng.standard_normal(3))
    tangent /= np.linalg.norm(tangent)
    tails = [tangent, -tangent] if rng.random() < 0.4 else [tangent]

    lobulation = (rng.uniform(0.13, 0.2) + 0.1 * g) if spec.irregular \
        else rng.uniform(0.02, 0.05) + 0.04 * g
    brain_invasion = rng.uniform(0.15, 0.3) if spec.invasion else 0.0
    edge_mm = rng.uniform(0.7, 1.1) + 0.6 * g if spec.indistinct else rng.uniform(0.2, 0.4)
    edema_mm = (rng.uniform(2.5, 6.0) + 6.0 * g) if spec.edema else 0.0
    tail_len = radius * rng.uniform(0.6, 1.1) + 4.0
    core_reach = radius * _max_local(lobulation, brain_invasion) + 4.0 * edge_mm + 2.0
    reach = max(core_reach + 1.5 * edema_mm + 5.0, 1.8 * radius + tail_len + 3.0)
    lo, hi = centre - reach - 5.0, centre + reach + 5.0  # fields used on the oedema box
    lo_c, hi_c = centre - core_reach - 5.0, centre + core_reach + 5.0  # on the tumour box

    lobe_scale = radius * rng.uniform(0.35, 0.55) * (1.15 - 0.3 * g)
    texture_scale = max(1.2, rng.uniform(2.2, 3.6) - 1.2 * g)
    # texture is sampled at slice centres: its z width includes the 5 mm slice profile
    z_blur = 1.5
    return _Tumour(
        centre=centre, base=base, normal=normal, radius=radius,
        lobulation=lobulation,
        lobes=SmoothField(rng, lo, hi, (max(lobe_scale, 2.5),) + (lobe_scale,) * 2),
        brain_invasion=brain_invasion,
        fingers=SmoothField(rng, lo, hi, (2.5, 1.5, 1.5)),
        bone_invasion_mm=rng.uniform(2.5, 5.0) if spec.invasion else 0.0,
        edge_mm=edge_mm, core_reach=core_reach, reach=reach,
        hetero=(rng.uniform(0.1, 0.16) + 0.1 * g) if spec.heterogeneous
        else rng.uniform(0.025, 0.05) + 0.04 * g,
        coarse=SmoothField(rng, lo_c, hi_c, (math.hypot(texture_scale, z_blur),)
                           + (texture_scale,) * 2),
        mottle=rng.uniform(0.015, 0.03) + 0.05 * g,
        fine=SmoothField(rng, lo_c, hi_c, (2.0, 0.9, 0.9)),
        enhancement=ENHANCING_TUMOUR * rng.uniform(0.9, 1.1),
        necrosis_radius=(rng.uniform(0.3, 0.45) + 0.15 * g) if spec.necrosis else 0.0,
        core=SmoothField(rng, lo_c, hi_c, (4.0, 3.0, 3.0)),
        necrosis_signal=rng.choice([300.0, 620.0]) * rng.uniform(0.9, 1.1),
        edema_mm=edema_mm,
        edema_field=SmoothField(rng, lo, hi, (6.0, 4.0, 4.0)),
        edema_drop=rng.uniform(0.22, 0.3) + 0.08 * g,
        tail_dirs=np.array(tails) if spec.dural_tail else np.zeros((0, 3)),
        tail_len=tail_len, tail_mm=rng.uniform(1.2, 2.0),
    )


def _max_local(lobulation: float, brain_invasion: float) -> float:
    """Upper bound of the local radius factor (lobes and fingers are clipped at 2 sigma)."""
    return 1.0 + 2.0 * (lobulation + brain_invasion)


def _box(centre: np.ndarray, reach: float, axes: Axes) -> tuple[slice, slice, slice]:
    """Index ranges of the voxels within ``reach`` mm of ``centre`` along each axis."""
    out = []
    for axis, c in zip(axes, centre, strict=True):
        idx = np.nonzero(np.abs(axis - c) <= reach)[0]
        out.append(slice(int(idx.min()), int(idx.max()) + 1))
    return out[0], out[1], out[2]


def _envelope(t: _Tumour, head: _Head, axes: Axes
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised radius (1 = the drawn boundary), local radius, where tumour may grow (the
    cavity, plus bone if invasive) and the signed cavity distance, on the grid of ``axes``."""
    dz, dy, dx = (m - c for m, c in zip(_mesh(axes), t.centre, strict=True))
    dist = np.sqrt(dz**2 + dy**2 + dx**2)
    local = np.clip(t.lobes(*axes), -2.0, 2.0) * t.lobulation
    if t.brain_invasion:
        inward = np.clip((dz * t.normal[0] + dy * t.normal[1] + dx * t.normal[2])
                         / np.maximum(dist, 1e-6), 0.0, 1.0)
        local += t.brain_invasion * inward * np.minimum(np.abs(t.fingers(*axes)), 2.0)
    r_local = t.radius * np.maximum(1.0 + local, 0.4)
    _, s_cav, bone = head.geometry(axes)
    allowed = s_cav > -np.minimum(t.bone_invasion_mm, 0.8 * bone)
    return dist / r_local, r_local, allowed, s_cav


def _outline(t: _Tumour, head: _Head, axes: Axes, reader2: np.ndarray | None
             ) -> tuple[np.ndarray, ...]:
    """On sub-slices (``axes[0]`` holds ``_SUB_SLICES`` per slice), averaged per slice: tumour
    weight, necrotic-core weight, reader-1 inside fraction and, given the second reader's
    boundary offset per slice (mm), reader-2 inside fraction."""
    rho, r_local, allowed, _ = _envelope(t, head, axes)
    edge = t.edge_mm * (1.0 + 0.5 * np.abs(t.fingers(*axes)))
    weight = _sigmoid((1.0 - rho) * r_local / edge) * allowed
    necrotic = np.zeros_like(weight)
    if t.necrosis_radius:
        core = t.necrosis_radius * (1.0 + 0.3 * t.core(*axes))
        necrotic = weight * _sigmoid((core - rho) * t.radius / 0.8)
    shape = (-1, _SUB_SLICES, *rho.shape[1:])
    out = [weight, necrotic, (rho < 1.0) & allowed]
    if reader2 is not None:
        moved = rho.reshape(shape) < 1.0 + reader2[:, None] / r_local.reshape(shape)
        out.append(moved & allowed.reshape(shape))
    return tuple(v.reshape(shape).mean(axis=1, dtype=np.float32) for v in out)


def _dural_tail(t: _Tumour, s_cav: np.ndarray, axes: Axes) -> np.ndarray:
    """Weight of a thin enhancing dural strip running along the inner skull surface away from
    the tumour base, thinning to nothing over ``tail_len``."""
    rel = [m - c for m, c in zip(_mesh(axes), t.base, strict=True)]
    along = np.max([sum(d * r for d, r in zip(v, rel, strict=True)) for v in t.tail_dirs], axis=0)
    normal = sum(n * r for n, r in zip(t.normal, rel, strict=True))
    tang = np.sqrt(np.maximum(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 - normal**2, 0.0))
    thick = t.tail_mm * (1.0 - np.clip((tang - 0.8 * t.radius) / t.tail_len, 0.0, 1.0))
    soft = 0.8 + 2.5 * abs(t.normal[0])  # an axial-lying sheet is smeared over the slice
    sheet = np.clip((thick - s_cav) / soft + 0.5, 0.0, 1.0) * (s_cav > -0.3) * (thick > 0)
    return (sheet * (along > 0.75 * tang)).astype(np.float32)


def _reader2_offset(rng: np.random.Generator, t: _Tumour, axes: Axes) -> np.ndarray:
    """The second reader's boundary displacement in mm, per slice: smooth in-plane and drawn
    independently per slice, plus a per-slice and a per-patient offset."""
    z, y, x = axes
    amp = float(np.clip(0.085 * t.radius, 0.45, 1.8))
    lo = np.array([z.min(), y.min(), x.min()])
    hi = np.array([z.max(), y.max(), x.max()])
    step = float(abs(z[1] - z[0])) if len(z) > 1 else 5.0
    field = SmoothField(rng, lo, hi, (0.3 * step, 4.0, 4.0), step=(step, 2.5, 2.5))
    per_slice = rng.normal(0.0, 0.35, size=(len(z), 1, 1))
    return amp * (field(*axes) + per_slice + rng.normal(0.0, 0.2))


def render(scanner: Scanner, spec: TumourSpec, age: float, rng: np.random.Generator,
           reader2_rng: np.random.Generator | None = None) -> Phantom:
    """Render one patient; given ``reader2_rng``, also a second reader's mask."""
    n, nz = scanner.matrix, scanner.n_slices
    sign = -1.0 if scanner.flip_xy else 1.0
    half = (n - 1) / 2.0 * scanner.spacing_xy
    xy = sign * (np.arange(n) * scanner.spacing_xy - half)
    head_lo, head_hi = np.array([-90.0, -half, -half]), np.array([80.0, half, half])
    head = _make_head(rng, age, head_lo, head_hi)
    t = _place_tumour(rng, head, spec)

    # a slab of slices centred on the tumour, kept inside the head
    zc = float(np.clip(t.centre[0], -15.0, 20.0))
    z0 = zc - (nz - 1) / 2.0 * scanner.slice_mm + rng.uniform(-0.5, 0.5) * scanner.slice_mm
    z = z0 + np.arange(nz) * scanner.slice_mm
    labels = _head_labels(head, (z, xy, xy))
    signal = _TISSUE_SIGNAL[labels] * (1.0 + 0.035 * head.texture(z, xy, xy))

    # oedema and dural tail, at slice centres, in the box they can reach
    box = _box(t.centre, t.reach, (z, xy, xy))
    axes = (z[box[0]], xy[box[1]], xy[box[2]])
    sig, lab = signal[box], labels[box]  # views: edits land in signal and labels
    rho, r_local, _, s_cav = _envelope(t, head, axes)
    brain = (lab == GREY) | (lab == WHITE)
    if t.edema_mm:
        extent = t.edema_mm * (1.0 + 0.5 * t.edema_field(*axes))
        w_edema = _sigmoid((extent - (rho - 1.0) * r_local) / 1.5) * brain
        sig *= 1.0 - t.edema_drop * w_edema
        lab[(w_edema > 0.5) & brain] = EDEMA
    if len(t.tail_dirs):
        tail = _dural_tail(t, s_cav, axes) * (rho > 1.0)
        sig += (0.8 * t.enhancement - sig) * tail
        lab[tail >= 0.5] = DURAL_TAIL

    # the tumour itself, its outline on sub-slices, in its smaller box
    core = _box(t.centre, t.core_reach, (z, xy, xy))
    axes = (z[core[0]], xy[core[1]], xy[core[2]])
    offsets = ((np.arange(_SUB_SLICES) + 0.5) / _SUB_SLICES - 0.5) * scanner.slice_mm
    sub_axes = ((axes[0][:, None] + offsets[None, :]).ravel(), axes[1], axes[2])
    offset2 = None if reader2_rng is None else _reader2_offset(reader2_rng, t, axes)
    weight, necrotic, inside, *inside2 = _outline(t, head, sub_axes, offset2)
    texture = 1.0 + t.hetero * t.coarse(*axes) + t.mottle * t.fine(*axes)
    enhancing = t.enhancement * np.maximum(texture, 0.3)
    sig, lab = signal[core], labels[core]
    sig[:] = sig * (1.0 - weight) + enhancing * (weight - necrotic) \
        + t.necrosis_signal * (1.0 + 0.3 * (texture - 1.0)) * necrotic
    lab[inside >= 0.5] = TUMOUR
    mask = np.zeros(labels.shape, dtype=np.uint8)
    mask[core] = inside >= 0.5
    mask2 = None
    if inside2:
        mask2 = np.zeros(labels.shape, dtype=np.uint8)
        mask2[core] = inside2[0] >= 0.5

    image = _acquire(rng, scanner, signal, (z, xy, xy), head_lo, head_hi)
    return Phantom(image=image, mask=mask, mask_reader2=mask2, labels=labels,
                   spacing=(scanner.spacing_xy, scanner.spacing_xy, scanner.slice_mm),
                   origin=(float(xy[0]), float(xy[0]), float(z[0])),
                   direction=(sign, 0.0, 0.0, 0.0, sign, 0.0, 0.0, 0.0, 1.0))


def _acquire(rng: np.random.Generator, scanner: Scanner, signal: np.ndarray, axes: Axes,
             lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """A smooth multiplicative bias field (max/min 1.35-1.75 over the head, i.e. about
    +-15-28 %), the scanner's intensity scale and Rician noise; int16."""
    log_bias = SmoothField(rng, lo, hi, (70.0, 60.0, 60.0), step=(45.0, 40.0, 40.0))(*axes)
    head = signal > 0
    inside = log_bias[head]
    span = max(float(inside.max() - inside.min()), 1e-6)
    log_bias = (log_bias - float(inside.mean())) * (rng.uniform(0.3, 0.56) / span)
    clean = signal * np.exp(log_bias) * scanner.intensity_scale
    sigma = scanner.noise_fraction * _TISSUE_SIGNAL[WHITE] * scanner.intensity_scale
    real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    return np.rint(np.sqrt(real * real + imag * imag)).astype(np.int16)
