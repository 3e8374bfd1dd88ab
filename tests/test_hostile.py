"""Hostile input and faults (issue 23): no code runs from any file, no silent wrong result, no traceback, nothing lost.

Every case asserts (a) the exit code, (b) that stderr (or the exception's message for API cases) names the offending
file and the field, column, row, option or index, and (c) that no output was written and no existing file changed
(sha256 of every file under the folders involved, before and after; new files only where the command succeeds) and
that no temporary `*.tmp` file is left. Groups follow the issue's ten items, then the cases that already give clear
errors (so they stay clear). One tiny simulated set (32 images, D=16) and one tiny trained run are made per module;
a test that changes a run works on a copy (shutil.copytree)."""
import errno
import hashlib
import os
import pickle
import re
import shlex
import shutil
import subprocess
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from drgnai_nb import io
from drgnai_nb.cli import main
from drgnai_nb.io import DrgnaiInputError
from drgnai_nb.simulate import SimConfig, simulate_to_dir

torch.set_num_threads(1)

N, D = 32, 16  # the tiny set: 32 images of 16 px at 3 Å
TINY = dict(n_imgs_pretrain=32, n_imgs_pose_search=32, epochs_sgd=1, l_start=4, l_end=6, t_extent=2.0, t_n_grid=3,
            hps_search_batch=32, batch_size_hps=16, batch_size_sgd=16, batch_size_known_poses=16, dim=16, pe_dim=4)
SETS = [f'{k}={v}' for k, v in TINY.items()]


# ============================================================== helpers
def sha(p:Path)->str: return hashlib.sha256(Path(p).read_bytes()).hexdigest()

def snapshot(*folders)->dict:
    "{path: sha256} of every file under the folders (hidden files included)."
    out = {}
    for f in folders:
        f = Path(f)
        if f.is_file(): out[str(f)] = sha(f); continue
        if not f.exists(): continue
        for p in sorted(f.rglob('*')):
            if p.is_file(): out[str(p)] = sha(p)
    return out

def tmp_files(*folders)->list:
    return [str(p) for f in folders if Path(f).is_dir() for p in Path(f).rglob('*') if p.name.endswith('.tmp')]

def assert_unchanged(before:dict, *folders, allow_new:bool=False):
    "No file changed or vanished; no new file (unless allow_new); no temporary file anywhere."
    after = snapshot(*folders)
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    gone = sorted(k for k in before if k not in after)
    new = sorted(k for k in after if k not in before)
    assert not changed, f'files changed: {changed}'
    assert not gone, f'files removed: {gone}'
    if not allow_new: assert not new, f'output written by a failing command: {new}'
    left = tmp_files(*folders)
    assert not left, f'temporary files left behind: {left}'

def run_cli(argv, capsys)->tuple:
    "Run `drgnai-nb argv...` in-process: (exit code, stderr). A raised exception (a traceback) comes back as code 'raised'."
    code, out, err = run_cli_full(argv, capsys)
    return code, err

def run_cli_full(argv, capsys)->tuple:
    capsys.readouterr()
    try: code = main([str(a) for a in argv])
    except (Exception, SystemExit):
        out, err = capsys.readouterr()
        return 'raised', out, err + '\n' + traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err

def _check_message(msg:str, needles=(), regex=()):
    for n in needles:
        n = Path(n).name if isinstance(n, Path) else str(n)
        assert n in msg, f'message does not name {n!r}:\n{msg}'
    for r in regex: assert re.search(r, msg, re.I), f'message does not match {r!r}:\n{msg}'

def expect_error(capsys, argv, folders, needles=(), regex=(), codes=(2,))->str:
    "The command returns one of `codes` with a message (no traceback) naming `needles`; nothing under `folders` changes."
    before = snapshot(*folders)
    code, err = run_cli(argv, capsys)
    assert code in codes, f'exit code {code!r} (expected {codes}); stderr:\n{err}'
    assert 'Traceback' not in err, err
    assert 'error' in err.lower(), f'no error message on stderr:\n{err}'
    _check_message(err, needles, regex)
    assert_unchanged(before, *folders)
    return err

def expect_ok(capsys, argv, folders=())->tuple:
    "The command succeeds (exit 0, no traceback); existing files under `folders` are unchanged, new files allowed."
    before = snapshot(*folders)
    code, out, err = run_cli_full(argv, capsys)
    assert code == 0, f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err, err
    assert_unchanged(before, *folders, allow_new=True)
    return out, err

def api_error(fn, *args, needles=(), regex=(), exc=DrgnaiInputError, **kw)->str:
    with pytest.raises(exc) as ei: fn(*args, **kw)
    msg = str(ei.value)
    _check_message(msg, needles, regex)
    return msg

def copy_run(run:Path, dest:Path)->Path:
    shutil.copytree(run, dest)
    return dest

def tiny_train_args(outdir, sim, *extra, zdim=2):
    return ['train', outdir, '--particles', Path(sim) / 'particles.mrcs', '--ctf', Path(sim) / 'ctf.pkl', '--preset', 'cpu',
            '--zdim', zdim, '--no-progress', *extra, '--set', *SETS]

def trusted_load(p): return io.load_checkpoint(p)  # files this test itself wrote, before any payload is planted

def latest_weights(run:Path)->Path:
    return max(run.glob('weights.*.pt'), key=lambda p: int(p.name.split('.')[1]))

def save_cs(path:Path, n:int)->Path:
    a = np.zeros(n, dtype=[('uid', '<u8'), ('blob/idx', '<u4'), ('blob/path', 'S32')])
    a['uid'] = np.arange(n) + 1000; a['blob/idx'] = np.arange(n); a['blob/path'] = b'particles.mrcs'
    with open(path, 'wb') as f: np.save(f, a, allow_pickle=False)
    return path


class Payload:
    "A pickled object whose unpickling calls fn(*args)."
    def __init__(self, fn, args): self.fn, self.args = fn, args
    def __reduce__(self): return (self.fn, self.args)


# ============================================================== fixtures (module scope: made once)
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "Simulated sets: sim (32 images, D 16, 3 Å), sim2 (same N, other images), simn (24 images), simbox (D 20); and a 32x32 one."
    root = tmp_path_factory.mktemp('hostile_data')
    d = {}
    for name, kw in (('sim', {}), ('sim2', dict(seed=1)), ('simn', dict(n_images=24)), ('simbox', dict(D=20))):
        c = dict(n_images=N, D=D, snr=1.0, seed=0, shift_px=1.0); c.update(kw)
        simulate_to_dir(SimConfig(**c), root / name, progress=False)
        d[name] = root / name
    d['root'] = root
    return d

@pytest.fixture(scope='module')
def sim(data): return data['sim']

@pytest.fixture(scope='module')
def run0(data, tmp_path_factory):
    "One tiny ab initio run (zdim 2, dim 16, pe_dim 4, layers 3; epochs 0 and 1) on `sim`, absolute paths."
    out = tmp_path_factory.mktemp('hostile_runs') / 'run0'
    assert main([str(a) for a in tiny_train_args(out, data['sim'])]) == 0
    assert (out / 'weights.1.pt').exists()
    return out

@pytest.fixture
def files(tmp_path, sim):
    "Per-test helper files in tmp_path (made on demand)."
    class F:
        def ind(self, ind, name='ind.pkl'):
            p = tmp_path / name
            with open(p, 'wb') as f: pickle.dump(np.asarray(ind), f, protocol=4)
            return p
        def ctf(self, ctf, name='ctf.pkl'):
            p = tmp_path / name
            with open(p, 'wb') as f: pickle.dump(np.asarray(ctf, np.float32), f, protocol=4)
            return p
        def poses(self, rot, trans=None, name='poses.pkl'):
            p = tmp_path / name
            with open(p, 'wb') as f: pickle.dump((np.asarray(rot, np.float32), np.asarray(trans, np.float32)) if trans is not None else np.asarray(rot, np.float32), f, protocol=4)
            return p
        def stack(self, imgs, name='stack.mrcs', Apix=3.0):
            return io.write_mrc(tmp_path / name, np.asarray(imgs, np.float32), Apix=Apix, is_stack=True)
    return F()

def _sim_arrays(sim):
    rot, trans = io.load_poses(sim / 'poses.pkl')
    return io.read_mrc(sim / 'particles.mrcs')[0], io.load_ctf(sim / 'ctf.pkl'), rot, trans


# ============================================================== 1. checkpoints refuse code
MARKER = 'MARKER'

def _payloads(marker:Path)->dict:
    m = str(marker)
    return {'os.system': Payload(os.system, ('touch ' + shlex.quote(m),)),
            'builtins.eval': Payload(eval, (f'open({m!r}, "w").close()',)),
            'builtins.exec': Payload(exec, (f'open({m!r}, "w").close()',)),
            'subprocess.Popen': Payload(subprocess.Popen, (['touch', m],))}

def _plant(run:Path, obj, field='extra'):
    "Replace every weights.E.pt of `run` by the same checkpoint with one more field holding `obj`."
    for p in run.glob('weights.*.pt'):
        st = trusted_load(p); st[field] = obj
        torch.save(st, p)

def _marker_absent(marker:Path, popen=False):
    if popen: time.sleep(0.3)  # a started child would have touched it by now
    assert not marker.exists(), 'the checkpoint payload ran: MARKER exists'

CKPT_COMMANDS = {
    'analyze': lambda run, t: ['analyze', run, '--no-progress', '--skip-vol', '--ksample', 2, '--pc', 1, '--n-per-pc', 2, '--device', 'cpu'],
    'eval-vol': lambda run, t: ['eval-vol', run, '-z', 0, 0, '-o', t / 'out', '--no-progress', '--device', 'cpu'],
    'traverse': lambda run, t: ['traverse', run, '--pc', 1, '-n', 2, '-o', t / 'out', '--no-progress'],
    'filter': lambda run, t: ['filter', run, '--ind', io.save_ind(t / 'sel.pkl', np.arange(4)), '-o', t / 'out'],
    'train-load': lambda run, t: ['train', run, '--load', 'latest', '--no-progress'],
}

@pytest.mark.parametrize('payload', ['os.system', 'builtins.eval', 'builtins.exec', 'subprocess.Popen'])
@pytest.mark.parametrize('command', list(CKPT_COMMANDS))
def test_checkpoint_payload_cli(run0, tmp_path, capsys, command, payload):
    "A weights.E.pt whose pickle calls code: every command that reads a checkpoint refuses it, names it, and the code never runs."
    marker = tmp_path / MARKER
    run = copy_run(run0, tmp_path / 'run')
    _plant(run, _payloads(marker)[payload])
    argv = CKPT_COMMANDS[command](run, tmp_path)
    before = snapshot(tmp_path)
    code, err = run_cli(argv, capsys)
    _marker_absent(marker, payload == 'subprocess.Popen')
    assert code == 2, f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err, err
    assert re.search(r'weights\.\d+\.pt', err), f'message does not name the weights file:\n{err}'
    assert_unchanged(before, tmp_path)

@pytest.mark.parametrize('payload', ['os.system', 'builtins.eval', 'builtins.exec', 'subprocess.Popen'])
def test_checkpoint_payload_api(run0, tmp_path, payload):
    marker = tmp_path / MARKER
    p = tmp_path / 'weights.1.pt'
    st = trusted_load(run0 / 'weights.1.pt'); st['extra'] = _payloads(marker)[payload]; torch.save(st, p)
    assert hasattr(io, 'load_checkpoint'), 'drgnai_nb.io.load_checkpoint is missing'
    try: api_error(io.load_checkpoint, p, map_location='cpu', needles=('weights.1.pt',), regex=('refus',))
    finally: _marker_absent(marker, payload == 'subprocess.Popen')

def test_checkpoint_real_loads(run0):
    "The real checkpoint still loads (weights_only) with everything the run needs."
    assert hasattr(io, 'load_checkpoint'), 'drgnai_nb.io.load_checkpoint is missing'
    st = io.load_checkpoint(run0 / 'weights.1.pt', map_location='cpu')
    assert isinstance(st, dict) and st['epoch'] == 1 and 'model_state_dict' in st and st['config']['zdim'] == 2

BOMBS = {'bytearray': lambda: Payload(bytearray, (10**12,)), 'torch.FloatTensor': lambda: Payload(torch.FloatTensor, (10**12,)),
         'torch.UntypedStorage': lambda: Payload(torch.UntypedStorage, (10**12,))}

@pytest.mark.parametrize('bomb', list(BOMBS))
def test_checkpoint_memory_bomb(run0, tmp_path, bomb):
    "A few bytes asking for a terabyte: refused with a clear error in well under a second."
    assert hasattr(io, 'load_checkpoint'), 'drgnai_nb.io.load_checkpoint is missing (not running the bomb through torch.load)'
    p = tmp_path / 'weights.1.pt'
    st = trusted_load(run0 / 'weights.1.pt'); st['extra'] = BOMBS[bomb](); torch.save(st, p)
    t0 = time.time()
    api_error(io.load_checkpoint, p, map_location='cpu', needles=('weights.1.pt',))
    assert time.time() - t0 < 1.0, f'took {time.time() - t0:.2f} s'

def _bad_ckpt(kind:str, real:Path, p:Path):
    if kind == 'legacy': torch.save(trusted_load(real), p, _use_new_zipfile_serialization=False)
    elif kind == 'garbage': p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == 'truncated': b = real.read_bytes(); p.write_bytes(b[:len(b) // 2])
    elif kind == 'empty': p.write_bytes(b'')
    elif kind == 'not-a-dict': torch.save([1, 2, 3], p)
    return p

NOT_ZIP = ['legacy', 'garbage', 'truncated', 'empty']

@pytest.mark.parametrize('kind', NOT_ZIP)
def test_checkpoint_not_zip_api(run0, tmp_path, kind):
    assert hasattr(io, 'load_checkpoint'), 'drgnai_nb.io.load_checkpoint is missing'
    p = _bad_ckpt(kind, run0 / 'weights.1.pt', tmp_path / 'weights.1.pt')
    api_error(io.load_checkpoint, p, map_location='cpu', needles=('weights.1.pt',))

@pytest.mark.parametrize('kind', NOT_ZIP + ['not-a-dict'])
def test_checkpoint_not_zip_cli(run0, tmp_path, capsys, kind):
    "analyze / eval-vol of a run whose latest checkpoint is not a readable zip checkpoint: a clear error naming it."
    run = copy_run(run0, tmp_path / 'run')
    _bad_ckpt(kind, run0 / 'weights.1.pt', run / 'weights.1.pt')
    expect_error(capsys, ['eval-vol', run, '-z', 0, 0, '-o', tmp_path / 'out', '--no-progress', '--device', 'cpu'], [tmp_path],
                 needles=('weights.1.pt',))

PKL_BOMBS = {'range': lambda: range(0, 10**12), 'bytearray': lambda: Payload(bytearray, (10**12,)),
             'bytes-int': lambda: Payload(bytes, (10**12,))}

@pytest.mark.parametrize('bomb', list(PKL_BOMBS))
def test_load_pkl_refuses_bombs(tmp_path, bomb):
    p = tmp_path / 'bomb.pkl'
    with open(p, 'wb') as f: pickle.dump(PKL_BOMBS[bomb](), f, protocol=2)
    t0 = time.time()
    api_error(io.load_pkl, p, needles=('bomb.pkl',))
    assert time.time() - t0 < 1.0

@pytest.mark.parametrize('what', ['array', 'empty-array', 'rot-trans'])
def test_load_pkl_protocol2_still_loads(tmp_path, sim, what):
    rot, trans = io.load_poses(sim / 'poses.pkl')
    obj = {'array': np.arange(10, dtype=np.int64), 'empty-array': np.zeros(0, np.float32), 'rot-trans': (rot, trans)}[what]
    p = tmp_path / 'p2.pkl'
    with open(p, 'wb') as f: pickle.dump(obj, f, protocol=2)
    if what == 'rot-trans':
        r, t = io.load_poses(p)
        np.testing.assert_array_equal(r, rot); np.testing.assert_array_equal(t, trans)
    else: np.testing.assert_array_equal(io.load_pkl(p), obj)

def test_pose_pickle_with_code_refused(sim, tmp_path, capsys):
    "A pose pickle calling os.system: refused by backproject, the code never runs (clear today)."
    marker = tmp_path / MARKER
    p = tmp_path / 'evil.pkl'
    with open(p, 'wb') as f: pickle.dump(Payload(os.system, ('touch ' + shlex.quote(str(marker)),)), f)
    expect_error(capsys, ['backproject', sim / 'particles.mrcs', '--poses', p, '-o', tmp_path / 'v.mrc', '--no-progress'],
                 [tmp_path, sim], needles=('evil.pkl',), regex=('refus|forbidden',))
    _marker_absent(marker)


# ============================================================== 2. --load resumes the same run
def _resume_cases(data, run):
    s, s2, sn, sb = data['sim'], data['sim2'], data['simn'], data['simbox']
    cfg = run / 'config.yaml'
    return {
        'particles-other-file': (['--config', cfg, '--particles', s2 / 'particles.mrcs', '--ctf', s2 / 'ctf.pkl'],
                                 ('particles', str(s / 'particles.mrcs'), str(s2 / 'particles.mrcs')), ()),
        'particles-other-N': (['--config', cfg, '--particles', sn / 'particles.mrcs', '--ctf', sn / 'ctf.pkl'],
                              ('particles', str(sn / 'particles.mrcs')), ()),
        'particles-other-box': (['--config', cfg, '--particles', sb / 'particles.mrcs', '--ctf', sb / 'ctf.pkl'],
                                ('particles', str(sb / 'particles.mrcs')), ()),
        'zdim': (['--zdim', 3], ('zdim', '2', '3'), ()),
        'mode': (['--mode', 'refine', '--poses', s / 'poses.pkl'], ('mode', 'abinit', 'refine'), ()),
        'dim': (['--set', 'dim=24'], ('dim', '16', '24'), ()),
        'layers': (['--set', 'layers=2'], ('layers', '3', '2'), ()),
        'pe_dim': (['--set', 'pe_dim=6'], ('pe_dim', '4', '6'), ()),
        'ind': (['--ind', io.save_ind(run.parent / 'half.pkl', np.arange(0, N, 2))], ('32', '16'), ()),
    }

RESUME = ['particles-other-file', 'particles-other-N', 'particles-other-box', 'zdim', 'mode', 'dim', 'layers', 'pe_dim', 'ind']

@pytest.mark.parametrize('case', RESUME)
def test_load_refuses_another_run(data, run0, tmp_path, capsys, case):
    "train RUN --load latest with a changed dataset or model: 2 naming the field and both values; no file of the run changes."
    run = copy_run(run0, tmp_path / 'run')
    extra, needles, regex = _resume_cases(data, run)[case]
    expect_error(capsys, ['train', run, '--load', 'latest', '--no-progress', *extra], [tmp_path, data['root']],
                 needles=needles, regex=regex)

@pytest.mark.parametrize('what', ['N', 'box'])
def test_load_refuses_replaced_stack(data, tmp_path, capsys, what):
    "The run's own particle file replaced in place by one of another N / box: 2 naming both values."
    dd = tmp_path / 'data'
    shutil.copytree(data['sim'], dd)
    run = tmp_path / 'run'
    assert main([str(a) for a in tiny_train_args(run, dd)]) == 0
    other = data['simn' if what == 'N' else 'simbox']
    for f in ('particles.mrcs', 'ctf.pkl', 'poses.pkl'): shutil.copy(other / f, dd / f)
    vals = ('32', '24') if what == 'N' else ('16', '20')
    expect_error(capsys, ['train', run, '--load', 'latest', '--no-progress'], [tmp_path], needles=vals,
                 regex=(r'\bN\b|particles|images|count' if what == 'N' else r'\bD\b|box',))

def test_load_allows_more_epochs(run0, tmp_path, capsys):
    "A deliberate change (more SGD epochs) is allowed and logged."
    run = copy_run(run0, tmp_path / 'run')
    expect_ok(capsys, ['train', run, '--load', 'latest', '--no-progress', '--set', 'epochs_sgd=2'])
    assert (run / 'weights.2.pt').exists(), 'the resumed run did not train the extra epoch'
    log = (run / 'run.log').read_text()
    assert 'epochs_sgd' in log, f'run.log does not record the changed field:\n{log[-1500:]}'

def test_load_unchanged_resumes(run0, tmp_path, capsys):
    "Resuming a finished run with nothing changed: exit 0, the checkpoints stay as they were."
    run = copy_run(run0, tmp_path / 'run')
    before = {k: v for k, v in snapshot(run).items() if 'weights.' in k or 'pose.' in k}
    expect_ok(capsys, ['train', run, '--load', 'latest', '--no-progress'])
    after = snapshot(run)
    assert all(after[k] == v for k, v in before.items())


# ============================================================== 3. paths do not depend on the working directory
@pytest.fixture(scope='module')
def cwd_runs(data, tmp_path_factory):
    "Folder A: data/ (sim) and run/ trained from A with relative paths. Folder B: data/ with sim2 at the same names."
    root = tmp_path_factory.mktemp('hostile_cwd')
    A, B = root / 'A', root / 'B'
    for f, src in ((A, data['sim']), (B, data['sim2'])):
        (f / 'data').mkdir(parents=True)
        for n in ('particles.mrcs', 'ctf.pkl', 'poses.pkl'): shutil.copy(src / n, f / 'data' / n)
    old = os.getcwd()
    os.chdir(A)
    try: code = main([str(a) for a in tiny_train_args('run', 'data')])
    finally: os.chdir(old)
    assert code == 0
    return A, B

@pytest.mark.parametrize('field', ['particles', 'ctf'])
def test_config_paths_absolute(cwd_runs, field):
    A, _ = cwd_runs
    cfg = yaml.safe_load((A / 'run' / 'config.yaml').read_text())
    assert Path(cfg[field]).is_absolute(), f'config.yaml {field}: {cfg[field]!r} is relative to the folder it was typed in'
    assert Path(cfg[field]).resolve() == (A / 'data' / Path(cfg[field]).name).resolve()

def test_analyze_from_other_folder(cwd_runs, tmp_path, capsys, monkeypatch):
    "analyze A/run from B (other images at the same relative names) reads A's images: the fit gains match."
    A, B = cwd_runs
    run = copy_run(A / 'run', tmp_path / 'run')
    args = ['analyze', run, '--no-progress', '--skip-vol', '--ksample', 2, '--pc', 1, '--n-per-pc', 2, '--device', 'cpu']
    monkeypatch.chdir(A); expect_ok(capsys, args + ['-o', tmp_path / 'outA'])
    monkeypatch.chdir(B); expect_ok(capsys, args + ['-o', tmp_path / 'outB'])
    import pandas as pd
    ga = pd.read_csv(tmp_path / 'outA' / 'particles.csv')['fit_gain'].to_numpy()
    gb = pd.read_csv(tmp_path / 'outB' / 'particles.csv')['fit_gain'].to_numpy()
    np.testing.assert_allclose(gb, ga, rtol=1e-5, err_msg='analyze from folder B read other images')

def test_filter_from_other_folder(cwd_runs, tmp_path, capsys, monkeypatch):
    "filter A/run from B writes A's CTF and A's stack into the star."
    A, B = cwd_runs
    sel = io.save_ind(tmp_path / 'sel.pkl', np.arange(8))
    monkeypatch.chdir(B)
    expect_ok(capsys, ['filter', A / 'run', '--ind', sel, '-o', tmp_path / 'out'], [A, B])
    star = tmp_path / 'out' / 'keep.star'
    np.testing.assert_allclose(io.star_to_ctf(star)[:, 2], io.load_ctf(A / 'data' / 'ctf.pkl')[:8, 2], rtol=1e-5)
    stacks, _, _ = io.particle_location_arrays(star)
    assert [Path(s).resolve() for s in stacks] == [(A / 'data' / 'particles.mrcs').resolve()]

def test_eval_vol_from_other_folder(cwd_runs, tmp_path, capsys, monkeypatch):
    A, B = cwd_runs
    args = ['eval-vol', A / 'run', '-z', 0.1, -0.2, '--no-progress', '--device', 'cpu']
    monkeypatch.chdir(A); expect_ok(capsys, args + ['-o', tmp_path / 'a'])
    monkeypatch.chdir(B); expect_ok(capsys, args + ['-o', tmp_path / 'b'])
    np.testing.assert_array_equal(io.read_mrc(tmp_path / 'b' / 'vol_000.mrc')[0], io.read_mrc(tmp_path / 'a' / 'vol_000.mrc')[0])

def test_resume_from_other_folder(cwd_runs, tmp_path, capsys, monkeypatch):
    "train A/run --load latest from B keeps reading A's data (config.yaml still names A's files)."
    A, B = cwd_runs
    run = copy_run(A / 'run', tmp_path / 'run')
    monkeypatch.chdir(B)
    expect_ok(capsys, ['train', run, '--load', 'latest', '--no-progress', '--set', 'epochs_sgd=2'])
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    assert Path(cfg['particles']).is_absolute() and Path(cfg['particles']).resolve() == (A / 'data' / 'particles.mrcs').resolve(), cfg['particles']

def _old_style(run:Path, **fields):
    "Rewrite a run as an old one: relative data paths in every checkpoint's config and in config.yaml."
    for p in run.glob('weights.*.pt'):
        st = trusted_load(p); st['config'].update(fields); torch.save(st, p)
    cfg = yaml.safe_load((run / 'config.yaml').read_text()); cfg.update(fields)
    (run / 'config.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))

@pytest.fixture
def old_run(cwd_runs, tmp_path, monkeypatch):
    "An old-style copy of A/run whose relative paths name RUN/data/... (A's files) and, from the cwd C, C/data/... (B's)."
    A, B = cwd_runs
    run = copy_run(A / 'run', tmp_path / 'runs' / 'run')
    shutil.copytree(A / 'data', run / 'data')
    C = tmp_path / 'C'
    shutil.copytree(B / 'data', C / 'data')
    monkeypatch.chdir(C)
    return run, C

OLD = {'analyze-particles': ('particles', lambda run, t: ['analyze', run, '--no-progress', '--skip-vol', '--ksample', 2, '--pc', 1,
                                                          '--n-per-pc', 2, '--device', 'cpu', '-o', t / 'out']),
       'filter-ctf': ('ctf', lambda run, t: ['filter', run, '--ind', io.save_ind(t / 'sel.pkl', np.arange(4)), '-o', t / 'out']),
       'train-load-particles': ('particles', lambda run, t: ['train', run, '--load', 'latest', '--no-progress', '--set', 'epochs_sgd=2'])}

@pytest.mark.parametrize('case', list(OLD))
def test_old_run_ambiguous_path(old_run, tmp_path, capsys, case):
    "A relative path that resolves to two different files (from the cwd and from the run folder): 2 naming both."
    run, C = old_run
    field, argv = OLD[case]
    name = 'particles.mrcs' if field == 'particles' else 'ctf.pkl'
    _old_style(run, **{field: f'data/{name}'})
    expect_error(capsys, argv(run, tmp_path), [tmp_path], needles=(field, str(run / 'data' / name), str(C / 'data' / name)))

def test_old_run_unambiguous_path(old_run, tmp_path, capsys):
    "An old-style relative path found only beside the run still works."
    run, C = old_run
    _old_style(run, particles='data/particles.mrcs', ctf='data/ctf.pkl')
    shutil.rmtree(C / 'data')
    expect_ok(capsys, ['filter', run, '--ind', io.save_ind(tmp_path / 'sel.pkl', np.arange(4)), '-o', tmp_path / 'out'], [run])
    np.testing.assert_allclose(io.star_to_ctf(tmp_path / 'out' / 'keep.star')[:, 2], io.load_ctf(run / 'data' / 'ctf.pkl')[:4, 2], rtol=1e-5)


# ============================================================== 4. --overwrite is atomic and complete
def _diverge(monkeypatch, how):
    from drgnai_nb import train as T
    if how == 'pretrain-diverges':
        def boom(self): raise T.TrainingDiverged('loss is NaN at pretraining step 0')
        monkeypatch.setattr(T.Trainer, 'pretrain', boom)
    elif how == 'pretrain-input-error':
        def boom(self): raise DrgnaiInputError('particles.mrcs: image 3 cannot be read')
        monkeypatch.setattr(T.Trainer, 'pretrain', boom)
    elif how == 'loss-nan':
        real = T.Trainer.loss
        monkeypatch.setattr(T.Trainer, 'loss', lambda self, *a, **k: real(self, *a, **k) * float('nan'))

@pytest.mark.parametrize('how', ['pretrain-diverges', 'pretrain-input-error', 'loss-nan'])
def test_overwrite_failure_keeps_old_run(run0, sim, tmp_path, capsys, monkeypatch, how):
    "A new run that fails before its first checkpoint under --overwrite leaves every file of the old run as it was."
    run = copy_run(run0, tmp_path / 'run')
    (run / 'analyze.1').mkdir(); (run / 'analyze.1' / 'junk.pkl').write_bytes(b'x')
    before = snapshot(run)
    _diverge(monkeypatch, how)
    code, err = run_cli(tiny_train_args(run, sim, '--overwrite'), capsys)
    assert code in ((2,) if how == 'pretrain-input-error' else (1,)), f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err, err
    assert_unchanged(before, run)

@pytest.fixture(scope='module')
def overwritten(data, tmp_path_factory):
    "An old run of epochs 0..3 with an analyze.3/ folder, replaced by --overwrite with a run of epoch 0 only."
    run = tmp_path_factory.mktemp('hostile_ow') / 'run'
    assert main([str(a) for a in tiny_train_args(run, data['sim'])] + ['epochs_sgd=3']) == 0
    assert (run / 'weights.3.pt').exists()
    (run / 'analyze.3').mkdir(); io.save_ind(run / 'analyze.3' / 'junk.pkl', np.arange(3))
    (run / 'run.log').write_text((run / 'run.log').read_text() + 'OLD RUN MARK\n')
    code = main([str(a) for a in tiny_train_args(run, data['sim'], '--overwrite')] + ['epochs_sgd=0'])
    return run, code

@pytest.mark.parametrize('kind', ['weights', 'pose', 'z', 'reconstruct', 'analyze', 'run.log'])
def test_overwrite_leaves_nothing_of_old_run(overwritten, kind):
    run, code = overwritten
    assert code == 0
    assert (run / 'weights.0.pt').exists()
    if kind == 'run.log': assert 'OLD RUN MARK' not in (run / 'run.log').read_text(); return
    pat = {'weights': 'weights.*.pt', 'pose': 'pose.*.pkl', 'z': 'z.*.pkl', 'reconstruct': 'reconstruct.*.mrc', 'analyze': 'analyze.*'}[kind]
    left = sorted(p.name for p in run.glob(pat) if p.name.split('.')[1] != '0')
    assert not left, f'old run files left after --overwrite: {left}'

@pytest.mark.parametrize('how', ['load-latest', 'overwrite'])
def test_leftover_tmp_files_cleaned(run0, sim, tmp_path, capsys, how):
    "Temporary files a kill -9 leaves in the run folder are removed by the next --load latest or --overwrite."
    run = copy_run(run0, tmp_path / 'run')
    for n in ('.weights.2.pt.4242.deadbeef.tmp', '.pose.2.pkl.4242.deadbeef.tmp', '.config.yaml.4242.cafe0123.tmp'):
        (run / n).write_bytes(b'partial')
    argv = ['train', run, '--load', 'latest', '--no-progress'] if how == 'load-latest' else tiny_train_args(run, sim, '--overwrite')
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert not tmp_files(run), f'temporary files left: {tmp_files(run)}'


# ============================================================== 5. CTF checks
CTF_BAD = {  # name: (column, value in row 5, regex naming the column)
    'dfU<=0': (2, -15000.0, r'dfU|defocus'), 'dfV<=0': (3, 0.0, r'dfV|defocus'), 'Cs<0': (6, -2.7, r'\bCs\b|spherical'),
    'w>1': (7, 5.0, r'amplitude|\bw\b'), 'w<0': (7, -0.1, r'amplitude|\bw\b'), 'box-differs': (0, 18.0, r'\bD\b|box'),
}
ROW = 5

def _bad_ctf(sim, tmp_path, kind):
    ctf = io.load_ctf(sim / 'ctf.pkl').copy()
    col, val, _ = CTF_BAD[kind]
    ctf[ROW, col] = val
    p = tmp_path / 'badctf.pkl'
    with open(p, 'wb') as f: pickle.dump(ctf, f, protocol=4)
    return p

@pytest.mark.parametrize('kind', list(CTF_BAD))
def test_ctf_check_api(sim, tmp_path, kind):
    p = _bad_ctf(sim, tmp_path, kind)
    api_error(io.load_ctf, p, needles=('badctf.pkl',), regex=(CTF_BAD[kind][2], rf'row {ROW}\b'))

def _ctf_cmd(cmd, sim, t, ctf):
    return {'train': tiny_train_args(t / 'run', sim)[:5] + [ctf] + tiny_train_args(t / 'run', sim)[6:],
            'backproject': ['backproject', sim / 'particles.mrcs', '--poses', sim / 'poses.pkl', '--ctf', ctf, '-o', t / 'v.mrc', '--no-progress'],
            'write-star': ['write-star', sim / 'particles.mrcs', '--ctf', ctf, '-o', t / 'o.star']}[cmd]

@pytest.mark.parametrize('kind', list(CTF_BAD))
@pytest.mark.parametrize('cmd', ['train', 'backproject', 'write-star'])
def test_ctf_check_cli(sim, tmp_path, capsys, cmd, kind):
    p = _bad_ctf(sim, tmp_path, kind)
    expect_error(capsys, _ctf_cmd(cmd, sim, tmp_path, p), [tmp_path, sim], needles=('badctf.pkl',),
                 regex=(CTF_BAD[kind][2], rf'row {ROW}\b'))

def _ctf_scaled(sim, tmp_path, Dc, Apix, name):
    ctf = io.load_ctf(sim / 'ctf.pkl').copy(); ctf[:, 0] = Dc; ctf[:, 1] = Apix
    p = tmp_path / name
    with open(p, 'wb') as f: pickle.dump(ctf, f, protocol=4)
    return p

def test_ctf_downsampled_stack_train(sim, tmp_path, capsys):
    "A CTF for box 32 at 1.5 Å with the 16-px stack at 3 Å (the documented downsampled case): accepted, run.log says so."
    p = _ctf_scaled(sim, tmp_path, 32, 1.5, 'ctf32.pkl')
    argv = _ctf_cmd('train', sim, tmp_path, p)
    expect_ok(capsys, argv, [sim])
    log = (tmp_path / 'run' / 'run.log').read_text()
    assert re.search(r'downsampl', log, re.I), f'run.log does not say the CTF is of a downsampled stack:\n{log[:1500]}'
    assert io.mrc_header(latest_weights(tmp_path / 'run').with_name('reconstruct.1.mrc')).Apix == pytest.approx(3.0)

def test_ctf_downsampled_stack_backproject(sim, tmp_path, capsys):
    p = _ctf_scaled(sim, tmp_path, 32, 1.5, 'ctf32.pkl')
    expect_ok(capsys, _ctf_cmd('backproject', sim, tmp_path, p), [sim])
    assert io.mrc_header(tmp_path / 'v.mrc').Apix == pytest.approx(3.0)

@pytest.mark.parametrize('cmd', ['train', 'backproject', 'write-star'])
def test_ctf_pixel_mismatch(sim, tmp_path, capsys, cmd):
    "A CTF of box 20 at 2.5 Å (50 Å) for the 16-px, 3-Å stack (48 Å): neither the stack nor a downsampling of it."
    p = _ctf_scaled(sim, tmp_path, 20, 2.5, 'ctf20.pkl')
    expect_error(capsys, _ctf_cmd(cmd, sim, tmp_path, p), [tmp_path, sim], needles=('ctf20.pkl',),
                 regex=(r'\b20\b|2\.5|\b50\b', r'\b16\b|\b3(\.0+)?\b|\b48\b'))

def _poses_tmax(sim, tmp_path, tmax, name='tpx.pkl'):
    rot, trans = io.load_poses(sim / 'poses.pkl')
    trans = trans.copy(); trans[ROW, 0] = tmax
    p = tmp_path / name
    with open(p, 'wb') as f: pickle.dump((rot, trans), f, protocol=4)
    return p

def _pose_cmd(cmd, sim, t, poses):
    return {'backproject': ['backproject', sim / 'particles.mrcs', '--poses', poses, '--ctf', sim / 'ctf.pkl', '-o', t / 'v.mrc', '--no-progress'],
            'train-fixed': tiny_train_args(t / 'run', sim, '--mode', 'fixed', '--poses', poses),
            'pose-error': ['pose-error', poses, sim / 'poses.pkl', '-D', D],
            'write-star': ['write-star', sim / 'particles.mrcs', '--ctf', sim / 'ctf.pkl', '--poses', poses, '-o', t / 'o.star']}[cmd]

@pytest.mark.parametrize('cmd', ['backproject', 'train-fixed', 'pose-error', 'write-star'])
def test_translations_pixels_below_one(sim, tmp_path, capsys, cmd):
    "max |t| = 0.8: pixels below 1 px, not a box fraction: 2 saying 'pixels'."
    p = _poses_tmax(sim, tmp_path, 0.8)
    expect_error(capsys, _pose_cmd(cmd, sim, tmp_path, p), [tmp_path, sim], needles=('tpx.pkl',), regex=('pixel',))

def test_translations_pixels_below_one_api(sim, tmp_path):
    p = _poses_tmax(sim, tmp_path, 0.8)
    api_error(io.load_poses, p, D=D, needles=('tpx.pkl',), regex=('pixel',))

def test_translations_suspicious_warns_api(sim, tmp_path):
    "max |t| = 0.4 of the box: a warning, not silence."
    p = _poses_tmax(sim, tmp_path, 0.4)
    with pytest.warns(UserWarning) as w: io.load_poses(p, D=D)
    assert any('tpx.pkl' in str(x.message) for x in w), [str(x.message) for x in w]

def test_translations_suspicious_warns_cli(sim, tmp_path, capsys):
    p = _poses_tmax(sim, tmp_path, 0.4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        code, out, err = run_cli_full(_pose_cmd('backproject', sim, tmp_path, p), capsys)
    assert code == 0, err
    said = [str(x.message) for x in w if issubclass(x.category, UserWarning)] + [l for l in (out + err).splitlines() if 'warning' in l.lower()]
    assert any('tpx.pkl' in s or 'translation' in s.lower() for s in said), f'no warning about the translations: {said}'


# ============================================================== 6. indices and selections
def _ind_cmd(cmd, sim, t, ind, run=None):
    return {'train': tiny_train_args(t / 'run', sim, '--ind', ind),
            'backproject': ['backproject', sim / 'particles.mrcs', '--poses', sim / 'poses.pkl', '--ctf', sim / 'ctf.pkl', '-o', t / 'v.mrc',
                            '--ind', ind, '--no-progress'],
            'write-star': ['write-star', sim / 'particles.mrcs', '--ctf', sim / 'ctf.pkl', '-o', t / 'o.star', '--ind', ind],
            'filter-cs': ['filter-cs', save_cs(t / 'orig.cs', N), '--ind', ind, '-o', t / 'o.cs'],
            'downsample': ['downsample', sim / 'particles.mrcs', '-D', 8, '-o', t / 'd.mrcs', '--ind', ind, '--no-progress'],
            'pose-error': ['pose-error', sim / 'poses.pkl', sim / 'poses.pkl', '-D', D, '--ind', ind]}[cmd]

IND_CMDS = ['train', 'backproject', 'write-star', 'filter-cs', 'downsample', 'pose-error']

@pytest.mark.parametrize('cmd', IND_CMDS)
def test_duplicate_indices(sim, tmp_path, capsys, files, cmd):
    ind = files.ind(np.array([0, 3, 7, 7, 9, 11, 12, 14, 20, 21]), 'dup.pkl')
    expect_error(capsys, _ind_cmd(cmd, sim, tmp_path, ind), [tmp_path, sim], needles=('dup.pkl',), regex=('duplicate', r'\b7\b'))

@pytest.mark.parametrize('cmd', IND_CMDS)
def test_empty_selection(sim, tmp_path, capsys, files, cmd):
    ind = files.ind(np.array([], int), 'empty.pkl')
    expect_error(capsys, _ind_cmd(cmd, sim, tmp_path, ind), [tmp_path, sim], needles=('empty.pkl',), regex=('empty|no particle',))

def test_duplicate_indices_filter(run0, tmp_path, capsys, files):
    "filter RUN --ind with a duplicate original index."
    ind = files.ind(np.array([0, 3, 7, 7]), 'dup.pkl')
    expect_error(capsys, ['filter', run0, '--ind', ind, '-o', tmp_path / 'out'], [tmp_path, run0], needles=('dup.pkl',),
                 regex=('duplicate', r'\b7\b'))

@pytest.mark.parametrize('cmd', ['train', 'backproject'])
def test_one_image_stack(sim, tmp_path, capsys, files, cmd):
    imgs, ctf, rot, trans = _sim_arrays(sim)
    st = files.stack(imgs[:1], 'one.mrcs'); c = files.ctf(ctf[:1], 'one_ctf.pkl'); p = files.poses(rot[:1], trans[:1], 'one_poses.pkl')
    argv = (['train', tmp_path / 'run', '--particles', st, '--ctf', c, '--preset', 'cpu', '--no-progress', '--set', *SETS] if cmd == 'train'
            else ['backproject', st, '--poses', p, '--ctf', c, '-o', tmp_path / 'v.mrc', '--no-progress'])
    expect_error(capsys, argv, [tmp_path], needles=('one.mrcs',), regex=(r'\b1\b|one|single',))


# ============================================================== 7. numbers on the command line
def _num_cases(sim, run, t):
    bp = ['backproject', sim / 'particles.mrcs', '--poses', sim / 'poses.pkl', '--ctf', sim / 'ctf.pkl', '-o', t / 'v.mrc', '--no-progress']
    ds = ['downsample', sim / 'particles.mrcs', '-o', t / 'd.mrcs', '--no-progress']
    simu = ['simulate', t / 's', '--no-progress']
    return {
        'simulate -b -5': (simu + ['-n', 4, '-D', 16, '-b', -5], r'-b\b|--batch-size'),
        'simulate -b 0': (simu + ['-n', 4, '-D', 16, '-b', 0], r'-b\b|--batch-size'),
        'simulate -n 0': (simu + ['-n', 0, '-D', 16], r'-n\b|--n-images'),
        'simulate -n -1': (simu + ['-n', -1, '-D', 16], r'-n\b|--n-images'),
        'simulate -D 0': (simu + ['-n', 4, '-D', 0], r'-D\b|\bD\b'),
        'simulate -D 15': (simu + ['-n', 4, '-D', 15], r'-D\b|\bD\b'),
        'downsample -b -5': (ds + ['-D', 8, '-b', -5], r'-b\b|--batch-size'),
        'downsample -b 0': (ds + ['-D', 8, '-b', 0], r'-b\b|--batch-size'),
        'downsample -D 0': (ds + ['-D', 0], r'-D\b'),
        'downsample -D 15': (ds + ['-D', 15], r'-D\b'),
        'downsample -D 32': (ds + ['-D', 32], r'-D\b'),
        'backproject -b 0': (bp + ['-b', 0], r'-b\b|--batch-size'),
        'backproject -b -5': (bp + ['-b', -5], r'-b\b|--batch-size'),
        'backproject --pad 0': (bp + ['--pad', 0], r'--pad'),
        'backproject --reg 0': (bp + ['--reg', 0], r'--reg'),
        'analyze --ksample 0': (['analyze', run, '--ksample', 0, '--no-progress'], r'--ksample'),
        'analyze --n-per-pc 0': (['analyze', run, '--n-per-pc', 0, '--no-progress'], r'--n-per-pc'),
        'traverse --pc 0': (['traverse', run, '--pc', 0, '-o', t / 'tr', '--no-progress'], r'--pc'),
        'traverse -n 0': (['traverse', run, '--pc', 1, '-n', 0, '-o', t / 'tr', '--no-progress'], r'-n\b'),
        'pose-error --inlier-frac 0': (['pose-error', sim / 'poses.pkl', sim / 'poses.pkl', '-D', D, '--inlier-frac', 0], r'--inlier-frac'),
    }

NUM_CASES = ['simulate -b -5', 'simulate -b 0', 'simulate -n 0', 'simulate -n -1', 'simulate -D 0', 'simulate -D 15',
             'downsample -b -5', 'downsample -b 0', 'downsample -D 0', 'downsample -D 15', 'downsample -D 32',
             'backproject -b 0', 'backproject -b -5', 'backproject --pad 0', 'backproject --reg 0',
             'analyze --ksample 0', 'analyze --n-per-pc 0', 'traverse --pc 0', 'traverse -n 0', 'pose-error --inlier-frac 0']

@pytest.mark.parametrize('case', NUM_CASES)
def test_command_line_numbers(sim, run0, tmp_path, capsys, case):
    run = copy_run(run0, tmp_path / 'run')
    argv, rx = _num_cases(sim, run, tmp_path)[case]
    expect_error(capsys, argv, [tmp_path, sim], regex=(rx,))


# ============================================================== 8. OS errors
def _os_cases(sim, run, t, blocked):
    sel = io.save_ind(t / 'sel.pkl', np.arange(4))
    return {
        'downsample': ['downsample', sim / 'particles.mrcs', '-D', 8, '-o', blocked / 'd.mrcs', '--no-progress'],
        'backproject': ['backproject', sim / 'particles.mrcs', '--poses', sim / 'poses.pkl', '-o', blocked / 'v.mrc', '--no-progress'],
        'write-star': ['write-star', sim / 'particles.mrcs', '--ctf', sim / 'ctf.pkl', '-o', blocked / 'o.star'],
        'filter-cs': ['filter-cs', save_cs(t / 'orig.cs', N), '--ind', sel, '-o', blocked / 'o.cs'],
        'simulate': ['simulate', blocked / 's', '-n', 4, '-D', 16, '--no-progress'],
        'train': tiny_train_args(blocked / 'run', sim),
        'eval-vol': ['eval-vol', run, '-z', 0, 0, '-o', blocked / 'v', '--no-progress', '--device', 'cpu'],
        'traverse': ['traverse', run, '--pc', 1, '-n', 2, '-o', blocked / 't', '--no-progress'],
        'filter': ['filter', run, '--ind', sel, '-o', blocked / 'f'],
        'parse': ['parse', sim / 'particles.star', '--poses', blocked / 'p.pkl'],
        'fsc': ['fsc', sim / 'vol.mrc', sim / 'vol.mrc', '-o', blocked / 'f.txt'],
        'analyze': ['analyze', run, '--no-progress', '--skip-vol', '--ksample', 2, '--pc', 1, '--device', 'cpu', '-o', blocked / 'a'],
    }

OS_CMDS = ['downsample', 'backproject', 'write-star', 'filter-cs', 'simulate', 'train', 'eval-vol', 'traverse', 'filter', 'parse', 'fsc', 'analyze']

@pytest.mark.parametrize('cmd', OS_CMDS)
def test_output_under_a_file(sim, run0, tmp_path, capsys, cmd):
    "An output path below a regular file (file.txt/out): a clear message naming it, nothing partial."
    run = copy_run(run0, tmp_path / 'run')
    (tmp_path / 'file.txt').write_text('not a folder\n')
    argv = _os_cases(sim, run, tmp_path, tmp_path / 'file.txt')[cmd]
    expect_error(capsys, argv, [tmp_path, sim], needles=('file.txt',), codes=(1, 2))

def test_output_in_read_only_folder(sim, tmp_path, capsys):
    if os.geteuid() == 0: pytest.skip('running as root: chmod 0o555 does not stop writes (file.txt/out cases cover it)')
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o555)
    try: expect_error(capsys, ['downsample', sim / 'particles.mrcs', '-D', 8, '-o', ro / 'd.mrcs', '--no-progress'], [tmp_path, sim],
                      needles=('d.mrcs',), codes=(1, 2))
    finally: ro.chmod(0o755)

def _enospc_after(monkeypatch, n_ok:int):
    "os.replace fails with ENOSPC after `n_ok` successful calls (a disk that fills up while outputs are written)."
    real, calls = os.replace, [0]
    def rep(a, b, *k, **kw):
        calls[0] += 1
        if calls[0] > n_ok: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(b))
        return real(a, b, *k, **kw)
    monkeypatch.setattr(os, 'replace', rep)

ENOSPC = {'downsample-first': 0, 'backproject-first': 0, 'backproject-second': 1, 'write-star-first': 0, 'simulate-second': 1}

@pytest.mark.parametrize('case', list(ENOSPC))
def test_disk_full(sim, run0, tmp_path, capsys, monkeypatch, case):
    "The disk fills while outputs are written: a clear message (no traceback), nothing partial, no temporary file."
    cmd = case.rsplit('-', 1)[0]
    argv = _os_cases(sim, run0, tmp_path, tmp_path / 'out')[cmd]
    before = snapshot(tmp_path, sim)
    _enospc_after(monkeypatch, ENOSPC[case])
    code, err = run_cli(argv, capsys)
    monkeypatch.undo()
    assert code in (1, 2), f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err, err
    _check_message(err, regex=(r'space|ENOSPC|errno 28',))
    assert_unchanged(before, tmp_path, sim)


# ============================================================== 9. no traceback for user mistakes
def test_config_yaml_syntax_error(sim, tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('lr: 0.001\nzdim: [1, 2\nepochs_sgd: 3\n')
    expect_error(capsys, tiny_train_args(tmp_path / 'run', sim, '--config', bad), [tmp_path, sim], needles=('bad.yaml',), regex=(r'line \d+',))

def test_config_yaml_not_a_mapping(sim, tmp_path, capsys):
    bad = tmp_path / 'list.yaml'
    bad.write_text('- 1\n- 2\n')
    expect_error(capsys, tiny_train_args(tmp_path / 'run', sim, '--config', bad), [tmp_path, sim], needles=('list.yaml',), regex=('mapping',))

def test_config_yaml_unknown_field(sim, tmp_path, capsys):
    bad = tmp_path / 'unk.yaml'
    bad.write_text('lr: 0.001\nnonsense_field: 3\n')
    expect_error(capsys, tiny_train_args(tmp_path / 'run', sim, '--config', bad), [tmp_path, sim], needles=('unk.yaml', 'nonsense_field'))

def test_run_config_corrupted(run0, tmp_path, capsys):
    run = copy_run(run0, tmp_path / 'run')
    (run / 'config.yaml').write_text('particles: /x/particles.mrcs\nzdim: [2\nlr: 0.001\n')
    expect_error(capsys, ['train', run, '--load', 'latest', '--no-progress'], [tmp_path], needles=('config.yaml',), regex=(r'line \d+',))

def test_diverged_run_without_checkpoint(sim, tmp_path, capsys, monkeypatch):
    "NaN from the first step: exit 1, the message says NaN/diverged and does not advise --load latest (there is no checkpoint)."
    _diverge(monkeypatch, 'loss-nan')
    code, err = run_cli(tiny_train_args(tmp_path / 'run', sim), capsys)
    assert code == 1, f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err and re.search('nan|diverged', err, re.I), err
    assert '--load' not in err, f'advises --load although no checkpoint exists:\n{err}'
    assert not list((tmp_path / 'run').glob('weights.*.pt')) and not tmp_files(tmp_path)

def test_diverged_run_after_checkpoint(sim, tmp_path, capsys, monkeypatch):
    "NaN after epoch 0 was saved: exit 1, NaN/diverged, the last good checkpoint stays."
    from drgnai_nb import train as T
    real = T.Trainer.loss
    monkeypatch.setattr(T.Trainer, 'loss', lambda self, *a, **k: real(self, *a, **k) * (float('nan') if self.epoch >= 1 else 1.0))
    code, err = run_cli(tiny_train_args(tmp_path / 'run', sim), capsys)
    assert code == 1, f'exit code {code!r}; stderr:\n{err}'
    assert 'Traceback' not in err and re.search('nan|diverged', err, re.I), err
    assert (tmp_path / 'run' / 'weights.0.pt').exists() and not tmp_files(tmp_path)

@pytest.mark.parametrize('kind', ['all-zero'])
def test_backproject_fsc_undefined(sim, tmp_path, capsys, files, kind):
    """Half maps whose FSC is undefined (blank images: no power in any shell): 2, no map written. (Two images give one per
    half map: an FSC that is defined, if meaningless; one image is refused as too few, in group 6.)"""
    imgs, ctf, rot, trans = _sim_arrays(sim)
    st, c, p = files.stack(np.zeros_like(imgs), 's.mrcs'), sim / 'ctf.pkl', sim / 'poses.pkl'
    expect_error(capsys, ['backproject', st, '--poses', p, '--ctf', c, '-o', tmp_path / 'v.mrc', '--no-progress'], [tmp_path, sim],
                 needles=('s.mrcs',), regex=('FSC|half',))


# ============================================================== 10. star files naming stacks
@pytest.fixture
def two_job_star(sim, tmp_path):
    "S/two.star: rows 0..15 name jobA/particles.mrcs, rows 16..31 jobB/particles.mrcs; neither exists; S/particles.mrcs does."
    S = tmp_path / 'S'; S.mkdir()
    shutil.copy(sim / 'particles.mrcs', S / 'particles.mrcs')
    _, ctf, rot, trans = _sim_arrays(sim)
    names = [f'{i + 1:06d}@jobA/particles.mrcs' for i in range(16)] + [f'{i + 1:06d}@jobB/particles.mrcs' for i in range(16)]
    star = io.write_star(S / 'two.star', names, ctf, rot, trans)
    one = io.write_star(S / 'one.star', [f'{i + 1:06d}@jobA/particles.mrcs' for i in range(N)], ctf, rot, trans)
    return star, one

STAR_CMDS = {
    'backproject': lambda s, t, sim: ['backproject', s, '--poses', s, '--ctf', s, '-o', t / 'v.mrc', '--no-progress'],
    'downsample': lambda s, t, sim: ['downsample', s, '-D', 8, '-o', t / 'd.mrcs', '--no-progress'],
    'write-star': lambda s, t, sim: ['write-star', s, '--ctf', s, '-o', t / 'o.star'],
    'train': lambda s, t, sim: ['train', t / 'run', '--particles', s, '--ctf', sim / 'ctf.pkl', '--preset', 'cpu', '--no-progress', '--set', *SETS],
}

@pytest.mark.parametrize('cmd', list(STAR_CMDS))
def test_star_two_stacks_one_file(two_job_star, sim, tmp_path, capsys, cmd):
    star, _ = two_job_star
    expect_error(capsys, STAR_CMDS[cmd](star, tmp_path, sim), [tmp_path, sim], needles=('jobA/particles.mrcs', 'jobB/particles.mrcs'))

def test_star_two_stacks_one_file_api(two_job_star):
    star, _ = two_job_star
    api_error(io.particle_location_arrays, star, needles=('two.star', 'jobA/particles.mrcs', 'jobB/particles.mrcs'))

def test_star_one_stack_fallback_still_works(two_job_star, sim, tmp_path, capsys):
    "One stack name found by its file name beside the star: still read (the cryoDRGN fallback)."
    _, one = two_job_star
    expect_ok(capsys, STAR_CMDS['backproject'](one, tmp_path, sim), [sim])
    assert (tmp_path / 'v.mrc').exists()


# ============================================================== cases that already give clear errors (keep them clear)
def _clear_cases(sim, run, t, f):
    imgs, ctf, rot, trans = _sim_arrays(sim)
    parts, poses, ctfp = sim / 'particles.mrcs', sim / 'poses.pkl', sim / 'ctf.pkl'
    bp = lambda p=parts, po=poses, c=ctfp, *x: ['backproject', p, '--poses', po, '--ctf', c, '-o', t / 'v.mrc', '--no-progress', *x]
    def garbage(name, text=None):
        p = t / name
        if text is None: p.write_bytes(np.random.default_rng(1).bytes(2000))
        else: p.write_text(text)
        return p
    def rot_bad():
        r = rot.copy(); r[4] *= 2; return f.poses(r, trans, 'notrot.pkl')
    def nan_poses():
        tt = trans.copy(); tt[3, 1] = np.nan; return f.poses(rot, tt, 'nanposes.pkl')
    def truncated():
        b = parts.read_bytes(); p = t / 'trunc.mrcs'; p.write_bytes(b[:len(b) - 700]); return p
    def ctf_D0():
        c = ctf.copy(); c[6, 0] = 0; return f.ctf(c, 'ctfD0.pkl')
    def no_image_name():
        return garbage('noname.star', 'data_particles\n\nloop_\n_rlnDefocusU\n_rlnDefocusV\n10000 10000\n11000 11000\n')
    return {
        'backproject missing particles': (lambda: bp(t / 'none.mrcs'), ('none.mrcs',), ()),
        'backproject missing poses': (lambda: bp(parts, t / 'none.pkl'), ('none.pkl',), ()),
        'backproject unknown extension': (lambda: bp(garbage('p.xyz', 'x')), ('.xyz',), ()),
        'backproject poses count': (lambda: bp(parts, f.poses(rot[:20], trans[:20], 'p20.pkl')), ('p20.pkl', '20', '32'), ()),
        'backproject ctf count': (lambda: bp(parts, poses, f.ctf(ctf[:20], 'c20.pkl')), ('c20.pkl', '20', '32'), ()),
        'write-star ctf count': (lambda: ['write-star', parts, '--ctf', f.ctf(ctf[:20], 'c20.pkl'), '-o', t / 'x.star'], ('c20.pkl', '20'), ()),
        'backproject not a rotation': (lambda: bp(parts, rot_bad()), ('notrot.pkl', 'row 4'), ('rotation',)),
        'backproject translations in pixels': (lambda: bp(parts, f.poses(rot, trans * D * 4, 'tpix.pkl')), ('tpix.pkl',), ('pixel',)),
        'backproject index out of range': (lambda: bp(parts, poses, ctfp, '--ind', f.ind([0, 99], 'oor.pkl')), ('oor.pkl', '99'), ()),
        'backproject odd box': (lambda: bp(f.stack(np.zeros((N, 15, 15)), 'odd.mrcs')), ('odd.mrcs', '15'), ('even|odd',)),
        'backproject garbage pose pickle': (lambda: bp(parts, garbage('junk.pkl')), ('junk.pkl',), ()),
        'backproject garbage star': (lambda: bp(garbage('junk.star', 'this is not\x00 a star file {{{\n')), ('junk.star',), ()),
        'backproject garbage cs': (lambda: bp(garbage('junk.cs')), ('junk.cs',), ()),
        'backproject truncated mrc': (lambda: bp(truncated()), ('trunc.mrcs',), ('truncated',)),
        'backproject ctf wrong shape': (lambda: bp(parts, poses, f.ctf(ctf[:, :8], 'c8.pkl')), ('c8.pkl', '9'), ()),
        'backproject NaN translation': (lambda: bp(parts, nan_poses()), ('nanposes.pkl', 'row 3'), ('finite',)),
        'backproject ctf D 0': (lambda: bp(parts, poses, ctf_D0()), ('ctfD0.pkl', 'row 6'), (r'column 0|\bD\b',)),
        'backproject star without image names': (lambda: bp(no_image_name()), ('noname.star', 'rlnImageName'), ()),
        'downsample over its input': (lambda: ['downsample', parts, '-D', 8, '-o', parts, '--no-progress'], ('particles.mrcs',), ('overwrite',)),
        'downsample bigger box': (lambda: ['downsample', parts, '-D', 32, '-o', t / 'd.mrcs', '--no-progress'], ('-D',), ()),
        'write-star not .star': (lambda: ['write-star', parts, '--ctf', ctfp, '-o', t / 'x.txt'], ('x.txt', '.star'), ()),
        'fsc missing volume': (lambda: ['fsc', sim / 'vol.mrc', t / 'missing.mrc'], ('missing.mrc',), ()),
        'parse unknown extension': (lambda: ['parse', garbage('meta.txt', 'x\n'), '--poses', t / 'p.pkl'], ('meta.txt',), ()),
        'parse nothing to write': (lambda: ['parse', sim / 'particles.star'], ('--poses',), ()),
        'pose-error count': (lambda: ['pose-error', f.poses(rot[:20], trans[:20], 'p20.pkl'), poses, '-D', D], ('p20.pkl', '20', '32'), ()),
        'pose-error no box': (lambda: ['pose-error', poses, poses], ('-D',), ()),
        'simulate existing dataset': (lambda: ['simulate', sim, '-n', 4, '-D', 16, '--no-progress'], ('--overwrite',), ()),
        'train unknown --set field': (lambda: tiny_train_args(t / 'r', sim) + ['nonsense=1'], ('nonsense',), ()),
        'train bad --mode': (lambda: tiny_train_args(t / 'r', sim, '--mode', 'sideways'), ('--mode', 'sideways'), ()),
        'train missing particles': (lambda: ['train', t / 'r', '--particles', t / 'none.mrcs', '--no-progress'], ('none.mrcs',), ()),
        'train fixed without poses': (lambda: tiny_train_args(t / 'r', sim, '--mode', 'fixed'), ('poses',), ()),
        'train existing run': (lambda: tiny_train_args(run, sim), ('--overwrite',), ()),
        'train --load latest no run': (lambda: tiny_train_args(t / 'empty', sim, '--load', 'latest'), ('latest', 'empty'), ()),
        'train --load missing file': (lambda: ['train', run, '--load', t / 'missing.pt', '--no-progress'], ('missing.pt',), ()),
        'traverse index out of range': (lambda: ['traverse', run, '--direct', 0, 999, '-o', t / 'tr', '--no-progress'], ('999',), ()),
        'eval-vol wrong z count': (lambda: ['eval-vol', run, '-z', 0.0, '-o', t / 'ev', '--no-progress', '--device', 'cpu'], ('zdim',), ()),
        'eval-vol missing zfile': (lambda: ['eval-vol', run, '--zfile', t / 'nz.txt', '-o', t / 'ev', '--no-progress'], ('nz.txt',), ()),
        'filter bad --clusters': (lambda: ['filter', run, '--clusters', 'a,b', '-o', t / 'f'], ('--clusters',), ()),
        'filter index not in run': (lambda: ['filter', run, '--ind', f.ind([0, 500], 'big.pkl'), '-o', t / 'f'], ('500',), ()),
        'analyze missing --ref': (lambda: ['analyze', run, '--ref', t / 'noref.mrc', '--no-progress'], ('--ref', 'noref.mrc'), ()),
        'analyze missing --truth': (lambda: ['analyze', run, '--truth', t / 'nosim', '--no-progress'], ('--truth', 'nosim'), ()),
        'analyze not a run': (lambda: ['analyze', t / 'norun', '--no-progress'], ('norun',), ()),
        'analyze missing epoch': (lambda: ['analyze', run, '--epoch', 7, '--no-progress'], ('weights.7.pt',), ()),
        'backproject float indices': (lambda: bp(parts, poses, ctfp, '--ind', f.ind(np.array([0.5, 1.0]), 'fl.pkl')), ('fl.pkl',), ('integer',)),
    }

CLEAR = ['backproject missing particles', 'backproject missing poses', 'backproject unknown extension', 'backproject poses count',
         'backproject ctf count', 'write-star ctf count', 'backproject not a rotation', 'backproject translations in pixels',
         'backproject index out of range', 'backproject odd box', 'backproject garbage pose pickle', 'backproject garbage star',
         'backproject garbage cs', 'backproject truncated mrc', 'backproject ctf wrong shape', 'backproject NaN translation',
         'backproject ctf D 0', 'backproject star without image names', 'downsample over its input', 'downsample bigger box',
         'write-star not .star', 'fsc missing volume', 'parse unknown extension', 'parse nothing to write', 'pose-error count',
         'pose-error no box', 'simulate existing dataset', 'train unknown --set field', 'train bad --mode', 'train missing particles',
         'train fixed without poses', 'train existing run', 'train --load latest no run', 'train --load missing file',
         'traverse index out of range', 'eval-vol wrong z count', 'eval-vol missing zfile', 'filter bad --clusters',
         'filter index not in run', 'analyze missing --ref', 'analyze missing --truth', 'analyze not a run', 'analyze missing epoch',
         'backproject float indices']

@pytest.mark.parametrize('case', CLEAR)
def test_clear_errors_stay_clear(sim, run0, tmp_path, capsys, files, case):
    run = copy_run(run0, tmp_path / 'run')
    build, needles, regex = _clear_cases(sim, run, tmp_path, files)[case]
    argv = build()
    expect_error(capsys, argv, [tmp_path, sim], needles=needles, regex=regex)


# ============================================================== further hostile input found while writing this suite
def _wrong_kind_cases(sim, run, t):
    "A pose pickle ((rot, trans) tuple) given where an index array, a CTF table or z values are expected."
    P = t / 'poses_as.pkl'
    shutil.copy(sim / 'poses.pkl', P)
    bp = ['backproject', sim / 'particles.mrcs', '--poses', sim / 'poses.pkl', '-o', t / 'v.mrc', '--no-progress']
    return {
        'backproject --ind': bp + ['--ind', P],
        'write-star --ind': ['write-star', sim / 'particles.mrcs', '--ctf', sim / 'ctf.pkl', '-o', t / 'o.star', '--ind', P],
        'downsample --ind': ['downsample', sim / 'particles.mrcs', '-D', 8, '-o', t / 'd.mrcs', '--ind', P, '--no-progress'],
        'pose-error --ind': ['pose-error', sim / 'poses.pkl', sim / 'poses.pkl', '-D', D, '--ind', P],
        'filter --ind': ['filter', run, '--ind', P, '-o', t / 'f'],
        'train --ind': tiny_train_args(t / 'r', sim, '--ind', P),
        'backproject --ctf': bp + ['--ctf', P],
        'train --ctf': tiny_train_args(t / 'r', sim)[:5] + [P] + tiny_train_args(t / 'r', sim)[6:],
        'eval-vol --zfile': ['eval-vol', run, '--zfile', P, '-o', t / 'ev', '--no-progress', '--device', 'cpu'],
    }

WRONG_KIND = ['backproject --ind', 'write-star --ind', 'downsample --ind', 'pose-error --ind', 'filter --ind', 'train --ind',
              'backproject --ctf', 'train --ctf', 'eval-vol --zfile']

@pytest.mark.parametrize('case', WRONG_KIND)
def test_wrong_kind_of_pickle(sim, run0, tmp_path, capsys, case):
    "A (rot, trans) pose pickle passed as indices / CTF / z: a clear error naming the file (no numpy ValueError traceback)."
    run = copy_run(run0, tmp_path / 'run')
    argv = _wrong_kind_cases(sim, run, tmp_path)[case]
    expect_error(capsys, argv, [tmp_path, sim], needles=('poses_as.pkl',))

@pytest.mark.parametrize('case', ['--shift-px 40', '--snr nan', '--Apix nan'])
def test_simulate_bad_numbers(tmp_path, capsys, case):
    "simulate with a shift beyond the box, or NaN numbers: 2 naming the option before anything is written."
    opt, val = case.split()
    expect_error(capsys, ['simulate', tmp_path / 's', '-n', 4, '-D', 16, '--no-progress', opt, val], [tmp_path], regex=(re.escape(opt),))
    assert not (tmp_path / 's').exists() or not any((tmp_path / 's').iterdir())

@pytest.mark.parametrize('case', ['checkpoint_every=0', 'Apix=-3'])
def test_train_bad_config_fields(sim, tmp_path, capsys, case):
    "Config fields checked before training: 2 naming the field, no run folder content (no checkpoint, no pose file)."
    field = case.split('=')[0]
    expect_error(capsys, tiny_train_args(tmp_path / 'run', sim) + [case], [tmp_path, sim], needles=(field,))
