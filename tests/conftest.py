"""Shared pytest fixtures (helpers that tests import are in :mod:`helpers`)."""
import pytest

from helpers import register_tiny_clip


@pytest.fixture(scope='session')
def tiny_clip_name(tmp_path_factory) -> str:
    """Name of a tiny open_clip model config registered in this process."""
    return register_tiny_clip(str(tmp_path_factory.mktemp('open_clip_config')))
