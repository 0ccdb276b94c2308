"""The synthetic geo-tagged world: a procedural city (world.py), a ray-casting renderer
(render.py), query effects (effects.py) and the dataset writer in the VG layout (writer.py)."""
from dist_geo.data.synth.writer import PRESETS, WorldSpec, write_world

__all__ = ["PRESETS", "WorldSpec", "write_world"]
