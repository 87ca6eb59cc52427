"""The dataset: per-frame records the TFDS builder writes, the demo dataset, shard checks and the
grain input pipeline (crop, augmentation, sharding)."""
