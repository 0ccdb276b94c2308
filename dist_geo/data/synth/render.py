"""Render a view of the city from (x, y, heading) by vectorised column ray casting.

One ray per image column (a cylindrical projection, like a crop of a street-view panorama)
is intersected with every nearby building box at once (slab test). Each pixel shows the nearest
of its column's `layers` nearest hits whose wall spans its row, so a short building in front
leaves the tower behind it visible above: parallax, occlusion and a skyline come from
the geometry. Walls are textured by (building, face, u = metres along the wall, v = metres above
the ground); the ground by its world position (road, sidewalk, lane marks, park, pavement);
the rest is sky. Lighting (sun direction, ambient, haze, night) is an argument, so the same
place can be seen at other times of day. Images are float32 RGB in [0, 1] until `to_uint8`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dist_geo.data.synth.world import FACE_NORMALS, City

WARM = np.array([1.0, 0.82, 0.5])


@dataclass(frozen=True)
class Lighting:
    sun_azimuth: float = 135.0  # degrees, compass
    sun_elevation: float = 45.0  # degrees
    ambient: float = 0.55
    sun: float = 0.45
    haze: float = 220.0  # metres at which 1/e of a wall's colour remains
    sky_horizon: tuple[float, float, float] = (0.78, 0.85, 0.95)
    sky_top: tuple[float, float, float] = (0.35, 0.55, 0.9)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exposure: float = 1.0
    gamma: float = 1.0
    night: bool = False
    lit_p: float = 0.4  # share of lit windows at night


def sample_lighting(rng: np.random.Generator, kind: str) -> Lighting:
    """Lighting of one image (or panorama): `database` (mild day), `train` (day to dusk),
    `query` (other days: other sun, exposure, colour cast, haze) or `night` (Tokyo-night-like)."""
    if kind == "night":
        glow = rng.uniform(0.05, 0.14)
        return Lighting(
            ambient=rng.uniform(0.15, 0.3), sun=0.0, haze=rng.uniform(120, 250),
            sky_horizon=(glow * 1.1, glow * 0.9, glow * 1.6), sky_top=(0.01, 0.02, 0.07),
            tint=(rng.uniform(0.6, 0.85), rng.uniform(0.75, 0.95), 1.0),
            exposure=rng.uniform(0.8, 1.4), gamma=rng.uniform(0.8, 1.2), night=True,
            lit_p=rng.uniform(0.25, 0.55),
        )
    spread = {"database": 0.3, "train": 1.0, "query": 1.0}[kind]
    warm = rng.uniform(-0.12, 0.12) * spread
    horizon = np.array([0.78, 0.85, 0.95]) + rng.uniform(-0.15, 0.1, 3) * spread
    return Lighting(
        sun_azimuth=rng.uniform(0, 360), sun_elevation=rng.uniform(10, 70),
        ambient=0.55 + rng.uniform(-0.2, 0.15) * spread, sun=0.45 + rng.uniform(-0.3, 0.2) * spread,
        haze=float(np.exp(rng.uniform(np.log(120), np.log(400)))) if spread > 0.5 else 250.0,
        sky_horizon=tuple(np.clip(horizon, 0, 1)), sky_top=(0.35, 0.55, 0.9),
        tint=(1.0 + warm, 1.0, 1.0 - warm),
        exposure=float(np.exp(rng.uniform(-0.35, 0.3) * spread)),
        gamma=float(np.exp(rng.uniform(-0.3, 0.3) * spread)),
    )


def _hash(a: np.ndarray, b: np.ndarray, c: np.ndarray | int) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer triple (window lights, grain)."""
    h = (np.asarray(a).astype(np.uint64) * np.uint64(73856093)) \
        ^ (np.asarray(b).astype(np.uint64) * np.uint64(19349663)) \
        ^ (np.asarray(c).astype(np.uint64) * np.uint64(83492791))
    h ^= h >> np.uint64(13)
    h *= np.uint64(0x5BD1E995)
    h ^= h >> np.uint64(15)
    return (h & np.uint64(0xFFFF)).astype(np.float64) / 65536.0


def _logo_mask(shape: np.ndarray, du: np.ndarray, dv: np.ndarray, r: float | np.ndarray) -> np.ndarray:
    disc = du**2 + dv**2 < r**2
    diamond = np.abs(du) + np.abs(dv) < r * 1.2
    bar = (np.abs(dv) < r * 0.35) & (np.abs(du) < r * 1.4)
    square = (np.abs(du) < r * 0.8) & (np.abs(dv) < r * 0.8)
    return np.choose(shape, [disc, diamond, bar, square])


def _facade(city: City, b: np.ndarray, face: np.ndarray, u: np.ndarray, v: np.ndarray,
            light: Lighting) -> np.ndarray:
    """Colour [n, 3] of wall points: building b, face, u metres along the wall, v metres up."""
    height, style = city.height[b], city.style[b]
    fl = v / city.floor_h[b]
    floor = np.floor(fl)
    fv = fl - floor
    col = u / city.win_dx[b]
    wcol = np.floor(col)
    fu = col - wcol
    upper = (floor >= 1) & (v < height - 1.0)
    window = upper & ((np.abs(fu - 0.5) < city.win_w[b] / 2) | (style == 1)) \
        & (np.abs(fv - 0.5) < city.win_h[b] / 2)
    trim = (upper & (style == 2) & (fu < 0.18)) | (upper & (style == 3) & (floor % 4 == 0)) \
        | (v > height - 0.8) | (floor == 0)
    shop = (floor == 0) & (fv > 0.1) & (fv < 0.65) & (np.abs(fu - 0.5) < 0.4)
    du = u - city.sign_pos[b, face]
    sign = (floor == 0) & (fv > 0.7) & (fv < 0.96) & (np.abs(du) < city.sign_w[b, face] / 2)
    logo = sign & _logo_mask(city.logo[b, face], du, (fv - 0.83) * city.floor_h[b], 0.32)
    wall_len = np.where(face < 2, city.boxes[b, 3] - city.boxes[b, 1], city.boxes[b, 2] - city.boxes[b, 0])
    crown = (style == 3) & (v > height - 9.0)
    crown_logo = crown & _logo_mask(city.logo[b, face], u - wall_len / 2, v - (height - 4.5), 3.2)

    normal = FACE_NORMALS[face]
    az, el = np.radians(light.sun_azimuth), np.radians(light.sun_elevation)
    lambert = np.clip(normal[:, 0] * np.sin(az) + normal[:, 1] * np.cos(az), 0, None) * np.cos(el)
    shade = (light.ambient + light.sun * lambert)[:, None]
    sky = np.array(light.sky_horizon)
    colour = np.where(trim[:, None], city.trim[b], city.colour[b]) * shade
    glass = city.glass[b] * shade + 0.2 * sky
    glow = np.zeros_like(colour)  # emitted light, not shaded
    if light.night:
        lit = _hash(b * 4 + face, wcol, floor) < light.lit_p
        window_light = WARM * (0.5 + 0.5 * _hash(b, wcol, floor + 1000))[:, None]
        glass = np.where(lit[:, None], window_light, glass * 0.3)
        glow = np.where(shop[:, None], WARM * 0.8, glow)
        sign_lit = np.where(logo[:, None], city.logo_colour[b, face], city.sign_colour[b, face])
        glow = np.where(sign[:, None], sign_lit, glow)
        glow = np.where(crown_logo[:, None], city.sign_colour[b, 0], glow)
        colour = colour + 0.6 * np.exp(-v / 3.0)[:, None] * WARM * 0.3  # street lamps
    else:
        colour = np.where(sign[:, None], city.sign_colour[b, face] * shade, colour)
        colour = np.where(logo[:, None], city.logo_colour[b, face] * shade, colour)
        colour = np.where(crown_logo[:, None], city.sign_colour[b, 0] * shade, colour)
    colour = np.where((window | shop)[:, None], glass, colour)
    colour = np.where(glow.any(axis=1, keepdims=True), glow, colour)
    return colour


def _ground(city: City, gx: np.ndarray, gy: np.ndarray, light: Lighting) -> np.ndarray:
    """Colour [..., 3] of ground points: road, sidewalk, lane marks, park grass or pavement."""
    P, w = city.block, city.street
    mx, my = gx % P, gy % P
    vs, hs = mx < w, my < w
    road = (vs & (mx > 3.0) & (mx < w - 3.0)) | (hs & (my > 3.0) & (my < w - 3.0))
    lane = vs & ~hs & (np.abs(mx - w / 2) < 0.12) & (gy % 6.0 < 3.0)
    lane |= hs & ~vs & (np.abs(my - w / 2) < 0.12) & (gx % 6.0 < 3.0)
    bx = np.clip((gx // P).astype(np.int64), 0, city.blocks_x - 1)
    by = np.clip((gy // P).astype(np.int64), 0, city.blocks_y - 1)
    park = city.park[bx, by] & ~(vs | hs)
    grain = _hash(np.floor(gx * 2).astype(np.int64), np.floor(gy * 2).astype(np.int64), 7)[..., None]
    colour = np.where((vs | hs)[..., None], [0.56, 0.55, 0.53], [0.66, 0.64, 0.6])
    colour = np.where(road[..., None], [0.27, 0.27, 0.29], colour)
    colour = np.where(lane[..., None], [0.92, 0.85, 0.45], colour)
    colour = np.where(park[..., None], [0.22, 0.45, 0.16], colour) * (0.92 + 0.16 * grain)
    shade = light.ambient + light.sun * np.sin(np.radians(light.sun_elevation))
    colour = colour * shade
    if light.night:
        # Street lamps every 20 m along both sidewalks of every street.
        lx = np.minimum(np.abs(mx - 1.5), np.abs(mx - (w - 1.5)))
        ly = np.minimum(np.abs(my - 1.5), np.abs(my - (w - 1.5)))
        d2 = np.minimum(lx**2 + (gy % 20.0 - 10.0) ** 2, ly**2 + (gx % 20.0 - 10.0) ** 2)
        colour = colour + (np.exp(-d2 / 10.0) * 0.7)[..., None] * WARM * (0.3 + colour)
    return colour


def _haze(colour: np.ndarray, t: np.ndarray, light: Lighting) -> np.ndarray:
    keep = np.exp(-t / light.haze)[..., None]
    return colour * keep + np.array(light.sky_horizon) * (1.0 - keep)


def render(
    city: City,
    x: float,
    y: float,
    heading: float,
    fov: float,
    width: int,
    height: int,
    light: Lighting,
    cam_h: float = 2.5,
    horizon_shift: float = 0.0,
    layers: int = 3,
    view_dist: float = 180.0,
) -> np.ndarray:
    """RGB float32 [height, width, 3] seen from (x, y) looking at `heading` (compass degrees),
    `fov` degrees across `width` columns, centred on `heading` (`fov=360`: a panorama whose
    column 0 looks at heading - 180)."""
    f = width / np.radians(fov)  # pixels per radian, horizontally and vertically
    angles = np.radians(heading - fov / 2 + (np.arange(width) + 0.5) * fov / width)
    dx, dy = np.sin(angles), np.cos(angles)
    hz = height / 2 + horizon_shift
    rows = np.arange(height) + 0.5

    elevation = np.arctan((hz - rows) / f)
    mix = np.clip(elevation / (np.pi / 4), 0, 1)[:, None]
    sky = np.array(light.sky_horizon) * (1 - mix) + np.array(light.sky_top) * mix
    img = np.repeat(sky[:, None, :], width, axis=1)

    below = rows > hz
    t_ground = cam_h * f / (rows[below] - hz)
    gx, gy = x + t_ground[:, None] * dx, y + t_ground[:, None] * dy
    img[below] = _haze(_ground(city, gx, gy, light), t_ground[:, None], light)

    boxes = city.boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    reach = np.hypot(centre[:, 0] - x, centre[:, 1] - y) - np.hypot(*(boxes[:, 2:] - boxes[:, :2]).T) / 2
    cand = np.flatnonzero((reach < view_dist) | (city.is_landmark & (reach < 3 * view_dist)))
    if len(cand) == 0:
        return img.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_dx = 1.0 / np.where(np.abs(dx) < 1e-9, 1e-9, dx)
        inv_dy = 1.0 / np.where(np.abs(dy) < 1e-9, 1e-9, dy)
    x0, y0, x1, y1 = boxes[cand].T
    tx0, tx1 = (x0 - x) * inv_dx[:, None], (x1 - x) * inv_dx[:, None]
    ty0, ty1 = (y0 - y) * inv_dy[:, None], (y1 - y) * inv_dy[:, None]
    tminx, tminy = np.minimum(tx0, tx1), np.minimum(ty0, ty1)
    t_near = np.maximum(tminx, tminy)
    t_far = np.minimum(np.maximum(tx0, tx1), np.maximum(ty0, ty1))
    t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
    k = min(layers, len(cand))
    order = np.argsort(t, axis=1)[:, :k]
    t_k = np.take_along_axis(t, order, axis=1)
    x_face = np.take_along_axis(tminx > tminy, order, axis=1)

    # Each pixel shows the nearest of its column's hits whose wall spans its row.
    b_k = cand[order]
    with np.errstate(invalid="ignore"):
        top = hz - f * (city.height[b_k] - cam_h) / t_k  # [width, k]; no hit: t=inf -> hz
        bottom = hz + f * cam_h / t_k
    covered = (rows[:, None, None] >= top) & (rows[:, None, None] < bottom)  # [height, width, k]
    rr, c = np.nonzero(covered.any(axis=2))
    layer = covered[rr, c].argmax(axis=1)
    tc, b, xf = t_k[c, layer], b_k[c, layer], x_face[c, layer]
    hx, hy = x + tc * dx[c], y + tc * dy[c]
    face = np.where(xf, np.where(dx[c] > 0, 0, 1), np.where(dy[c] > 0, 2, 3))
    u = np.where(xf, hy - boxes[b, 1], hx - boxes[b, 0])
    v = cam_h + (hz - rows[rr]) * tc / f
    img[rr, c] = _haze(_facade(city, b, face, u, v, light), tc, light)
    return img.astype(np.float32)


def to_uint8(img: np.ndarray, light: Lighting) -> np.ndarray:
    """Camera response: colour cast, exposure and gamma, then 8 bits."""
    out = np.clip(img * np.array(light.tint) * light.exposure, 0, 1) ** (1.0 / light.gamma)
    return np.round(out * 255).astype(np.uint8)
