"""hgmt: multi-task stacked-hourglass human analysis (2D/3D pose, depth, parts) in JAX/Flax."""

__version__ = "0.1.0"
