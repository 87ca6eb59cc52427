"""SURREAL TFDS builder; importing this package registers the dataset `surreal`."""

from data_builders.surreal.surreal_dataset_builder import Builder

__all__ = ["Builder"]
