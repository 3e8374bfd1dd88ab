"""README.md is generated from nbs/index.ipynb, has exactly the two set-up commands, and .ci/run runs its test command."""
import re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sh_blocks(text):
    return [b.strip() for b in re.findall(r'```sh\n(.*?)```', text, re.S)]


def test_readme_in_sync():
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_two_setup_commands_and_ci():
    text = (ROOT / 'README.md').read_text()
    setup = [b for b in _sh_blocks(text) if b.startswith('pip install')]
    assert len(setup) == 2, setup
    demo, tests = setup
    assert 'drgnai-nb demo' in demo and 'torch==2.13.0' in demo
    assert 'torch==2.13.0' in tests and '.[dev]' in tests
    test_cmd = tests.split('&&', 2)[-1].strip()  # what follows the two installs
    ci = (ROOT / '.ci' / 'run').read_text()
    assert test_cmd in ci, f'.ci/run must run the README test command: {test_cmd}'
