"""One way to drive a browser in the tests: Playwright (Python package) with Debian's `chromium`, and a JupyterLab
server on 127.0.0.1 for the widget tests.

Playwright cannot download its own browser here, so `launch` passes `executable_path` (Debian's chromium). WebGL
(plotly's scattergl and isosurface) runs on SwiftShader, Chromium's software renderer. `chromium_or_skip` skips when
chromium is missing, except in CI (`CI` set), where `.ci/run` installs it and a missing browser is a failure.
Used by `tests/test_docs.py`, `tests/test_explore_browser.py` and `benchmarks/bench_explore.py`."""
import ast, json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium')
                 if p and Path(p).exists()), None)
ARGS = ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist',
        '--no-first-run', '--no-default-browser-check', '--disable-extensions', '--mute-audio', '--hide-scrollbars',
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1']


def chromium_or_skip(what:str='the browser check'):
    "Chromium's path; skips the test without it (fails in CI, where `.ci/run` installs it), or without Playwright."
    import pytest
    if CHROMIUM is None:
        if os.environ.get('CI'): pytest.fail('chromium is missing in CI (.ci/run installs it with apt-get)')
        pytest.skip(f'chromium not installed (apt-get install -y chromium); {what} is skipped')
    try: import playwright.sync_api  # noqa: F401
    except ImportError:
        if os.environ.get('CI'): pytest.fail('playwright is missing in CI (a dev extra in settings.ini)')
        pytest.skip(f'playwright not installed (pip install -e ".[dev]"); {what} is skipped')
    return CHROMIUM


@contextmanager
def launch(headless:bool=True, extra_args=()):
    "A Playwright Chromium browser (Debian's binary, WebGL on SwiftShader); yields the `Browser`."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=headless, args=ARGS + list(extra_args))
        try: yield b
        finally: b.close()


class ConsoleLog:
    "Console errors, uncaught exceptions and failed requests of a page (external, offline-by-design loads apart)."
    def __init__(self, page, ignore=()):
        self.errors, self.external, self.ignore = [], [], tuple(ignore)
        page.on('console', self._console)
        page.on('pageerror', lambda e: self._add(f'exception: {e}'))
        page.on('requestfailed', lambda r: self._add(f'failed to load {r.url}: {r.failure}', r.url))

    def _add(self, msg, url=''):
        if any(s in msg for s in self.ignore): return
        (self.external if url.startswith(('http:', 'https:')) and not url.startswith(('http://127.0.0.1', 'http://localhost'))
         else self.errors).append(msg[:400])

    def _console(self, m):
        if m.type == 'error': self._add(f'console.error: {m.text}', (m.location or {}).get('url', ''))


def free_port()->int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class LabServer:
    "A JupyterLab server on 127.0.0.1 serving `root`, with a kernel of this interpreter, no news, no update checks."
    def __init__(self, root:Path, work:Path):
        self.root, self.work = Path(root), Path(work)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.runtime = self.work / 'runtime'

    def __enter__(self):
        kdir = self.work / 'jup' / 'kernels' / 'python3'; kdir.mkdir(parents=True, exist_ok=True)
        (kdir / 'kernel.json').write_text(json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
                                                      'display_name': 'Python 3', 'language': 'python'}))
        sdir = self.work / 'lab_settings' / '@jupyterlab' / 'apputils-extension'; sdir.mkdir(parents=True, exist_ok=True)
        (sdir / 'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
        env = {**os.environ, 'JUPYTER_PATH': str(self.work / 'jup'), 'JUPYTER_RUNTIME_DIR': str(self.runtime),
               'JUPYTERLAB_SETTINGS_DIR': str(self.work / 'lab_settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(self.work / 'ws'),
               'JUPYTER_CONFIG_DIR': str(self.work / 'jcfg'), 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1',
               'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
        self.log = open(self.work / 'jupyterlab.log', 'w')
        self.proc = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={self.port}',
                                      f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={self.root}',
                                      '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=None',
                                      '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
                                      '--ServerApp.open_browser=False', '--allow-root', '--MappingKernelManager.cull_idle_timeout=0'],
                                     cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        t = time.time()
        while True:
            try:
                with urllib.request.urlopen(self.api('status'), timeout=2): break
            except Exception:
                if self.proc.poll() is not None or time.time() - t > 90:
                    self.__exit__(); raise RuntimeError(f'JupyterLab did not start: {(self.work / "jupyterlab.log").read_text()[-2000:]}')
                time.sleep(0.3)
        return self

    def api(self, path:str)->str: return f'http://127.0.0.1:{self.port}/api/{path}?token={self.token}'

    def url(self, notebook:str)->str: return f'http://127.0.0.1:{self.port}/lab/tree/{notebook}?token={self.token}&reset'

    def kernel_client(self, timeout:float=60):
        "A client on the kernel of the (only) open notebook session: what Python holds."
        from jupyter_client import BlockingKernelClient
        t = time.time()
        while True:
            with urllib.request.urlopen(self.api('sessions'), timeout=5) as r: sessions = json.load(r)
            if sessions:
                f = self.runtime / f'kernel-{sessions[0]["kernel"]["id"]}.json'
                if f.exists(): break
            if time.time() - t > timeout: raise RuntimeError('no kernel session')
            time.sleep(0.3)
        kc = BlockingKernelClient(); kc.load_connection_file(str(f)); kc.start_channels(); kc.wait_for_ready(timeout=timeout)
        return kc

    def __exit__(self, *a):
        self.proc.terminate()
        try: self.proc.wait(20)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(10)
        self.log.close()


def kernel_eval(kc, expr:str, timeout:float=60):
    "Evaluate a Python expression in the kernel and return its value (sent back as JSON)."
    msg_id = kc.execute('', silent=True, user_expressions={'v': f"__import__('json').dumps({expr})"})
    while True:
        r = kc.get_shell_msg(timeout=timeout)
        if r['parent_header'].get('msg_id') == msg_id: break
    v = r['content']['user_expressions']['v']
    if v['status'] != 'ok': raise RuntimeError(f'{expr}: {v.get("ename")}: {v.get("evalue")}')
    return json.loads(ast.literal_eval(v["data"]["text/plain"]))
