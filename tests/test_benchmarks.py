"""The benchmark scripts run end to end on tiny data and print figures in range (their real sizes are for humans)."""
import re, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))


@pytest.mark.parametrize('kind', ['discrete', 'continuous'])
def test_bench_variability_small(kind, tmp_path, capsys):
    import bench_variability
    bench_variability.main(['-n', '240', '-D', '32', '--radii', '4', '--iters', '4', '--threads', '1',
                            '--kind', kind, '--data', str(tmp_path / 'sim')])
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.startswith('band limit')]
    assert len(rows) == 1, out
    vals = [float(v) for v in re.findall(r'(?:ARI of \d-means|\|rho\| of PC1) (-?[0-9.]+)', rows[0])]
    assert len(vals) == 2 and all(-1 <= v <= 1 for v in vals), rows[0]  # linear and spectral
