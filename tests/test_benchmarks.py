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


def test_profile_gpu_small(tmp_path, capsys):
    "benchmarks/profile_gpu.py on the CPU: each variant's whole-epoch rates for both phases, and the profiler tables."
    import json, profile_gpu
    profile_gpu.main(['-n', '64', '-D', '16', '--device', 'cpu', '--out', str(tmp_path), '--variants', 'base', 'batch128',
                      '--profile', '--set', 'dim=16', 'pe_dim=4', 'base_order=0', 'n_levels=2', 'l_start=4', 'l_end=6',
                      't_extent=2', 't_n_grid=3'])
    out = capsys.readouterr().out
    res = json.loads(out[out.rindex('\n{') + 1:])
    assert set(res) == {'base', 'batch128'} and res['batch128']['batch_size_sgd'] == 128
    assert all(r['hps_images_per_s'] > 0 and r['sgd_images_per_s'] > 0 for r in res.values())
    assert '--- SGD epoch' in out and '--- pose-search epoch' in out and 'Self CPU time total' in out
