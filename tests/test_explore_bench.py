"""benchmarks/bench_explore.py end to end at a small size (20,000 particles): JupyterLab, Chromium, the explorer cell,
three lassos and a box drawn with the mouse; every figure printed and in range. (Its real size, 10^6, is for humans:
`python benchmarks/bench_explore.py`.) Skips without chromium (fails in CI)."""
import json, sys
from pathlib import Path

from browser import ROOT, chromium_or_skip

sys.path.insert(0, str(ROOT / 'benchmarks'))


def test_bench_explore_small(tmp_path, capsys):
    chromium_or_skip('the explorer benchmark')
    import bench_explore
    res = bench_explore.main(['-n', '20000', '--work', str(tmp_path), '--lassos', '2'])
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == json.loads(json.dumps(res))
    assert res['n'] == 20000 and 0 < res['cell_to_interactive_s'] < 60 and len(res['lasso_s']) == 2
    assert all(0 < t < 30 for t in res['lasso_s'] + [res['box_s']]) and 0 < res['python_select_s'] < 5
    assert 'explorer cell -> interactive plot (20000 points)' in out and 'box: release -> table + gallery updated' in out
    assert 'console errors' not in out
