"""Shared pytest fixtures: the cryoDRGN reference data folder and torch threads."""
from pathlib import Path
import os
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CRYODRGN_DATA = (ROOT / '..' / 'shared' / 'external_data' / 'cryodrgn').resolve()

torch.set_num_threads(max(1, min(os.cpu_count() or 1, 2)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long end-to-end or accuracy runs')
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU')


@pytest.fixture(scope='session')
def cryodrgn_data():
    "Path to ../shared/external_data/cryodrgn; skips the test when it is absent."
    if not CRYODRGN_DATA.is_dir():
        pytest.skip(f'cryoDRGN reference data not found at {CRYODRGN_DATA}')
    return CRYODRGN_DATA


@pytest.fixture
def one_thread():
    "One torch thread for the test (tests that start worker processes or share the cores with them): oversubscribed shared cores crawl."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason='needs CUDA')
        for it in items:
            if 'cuda' in it.keywords: it.add_marker(skip)
