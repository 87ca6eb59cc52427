"""Test setup: 4 virtual CPU devices for pmap tests and a persistent XLA compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
REAL_INFO = SHARED / "surreal_samples" / "01_01_c0001_info.mat"


def pytest_configure(config):
    import jax

    cache = pathlib.Path(os.environ.get("HGMT_JAX_CACHE", "~/.cache/hgmt/jax")).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def real_info_path():
    if not REAL_INFO.exists():
        pytest.skip(f"real SURREAL sample not found at {REAL_INFO} (../shared is absent)")
    return str(REAL_INFO)
