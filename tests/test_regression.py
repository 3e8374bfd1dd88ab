"""Behaviour is preserved to the bit: short fixed-seed runs of every training mode (ab initio homogeneous, ab initio
with zdim 2, 3-D classification into 2 classes, fixed poses, refinement) give the same poses, z, maps and losses as
the goldens in `tests/goldens/regression.json` (made with `python tests/regression_runs.py --write`).

The runs execute in a child process under pinned numerics (`regression_runs.PINNED`: torch kernels, MKL and oneDNN at
AVX2, one thread), so that the bits do not depend on the processor the tests run on. Measured when the goldens were
made (main at 06e3582 before the redesign of issue 25, and after it; torch 2.13.0 CPU): the digests are identical run
to run and before/after. About 40 s. A change that alters any bit of the training arithmetic (the order of a sum, a
random draw, a schedule step) fails here: regenerate the goldens only for a change that is meant to change the
numbers, and say so in its commit."""
import json, subprocess, sys
from pathlib import Path
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from regression_runs import GOLDENS, MODES, has_avx2


@pytest.fixture(scope='module')
def digests(tmp_path_factory):
    if not has_avx2(): pytest.skip('the pinned numerics need an AVX2 processor')
    out = tmp_path_factory.mktemp('regression') / 'digests.json'
    r = subprocess.run([sys.executable, str(HERE / 'regression_runs.py'), '--json', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize('mode', list(MODES))
def test_regression_bitwise(digests, mode):
    gold = json.loads(GOLDENS.read_text())[mode]
    assert digests[mode] == gold, f'{mode}: outputs changed\nnow  {digests[mode]}\nwas  {gold}'
