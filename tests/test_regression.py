"""Behaviour is preserved to the bit: short fixed-seed runs of every training mode (ab initio homogeneous, ab initio
with zdim 2, 3-D classification into 2 classes, fixed poses, refinement) give the same poses, z, maps and losses as
the goldens in `tests/goldens/regression.json` (made with `python tests/regression_runs.py --write`).

Measured when the goldens were made (main at 06e3582, torch 2.13.0 CPU): the digests are identical run to run and
with 1 or 2 torch threads, so the comparison is exact (sha256 of the arrays' bytes, losses as floats). The runs pin one
thread (`TrainConfig.num_threads=1`, device 'cpu'); about 20 s in all. A change that alters any bit of the training
arithmetic (the order of a sum, a random draw, a schedule step) fails here: regenerate the goldens only for a change
that is meant to change the numbers, and say so in its commit."""
import json, sys
from pathlib import Path
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from regression_runs import GOLDENS, MODES, run_all


@pytest.fixture(scope='module')
def digests():
    n = torch.get_num_threads()
    try: yield run_all(threads=1)
    finally: torch.set_num_threads(n)


@pytest.mark.parametrize('mode', list(MODES))
def test_regression_bitwise(digests, mode):
    gold = json.loads(GOLDENS.read_text())[mode]
    assert digests[mode] == gold, f'{mode}: outputs changed\nnow  {digests[mode]}\nwas  {gold}'
