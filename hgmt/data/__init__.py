"""The dataset: per-frame records the TFDS builder writes, the demo dataset, finding and opening a
built split (`builds`), shard checks and the grain input pipeline (crop, augmentation,
sharding)."""
