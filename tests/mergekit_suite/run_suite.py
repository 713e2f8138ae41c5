"""Run mergekit 0.1.5's own test suite with the plugin active and with it disabled.

Why: the plugin patches ``mergekit.config``, ``mergekit.plan`` and ``mergekit.merge`` at import
time, and promises that recipes without its keys behave exactly as stock mergekit. mergekit's
own suite is the best available spec of "stock behaviour", so this script runs it twice in
child processes (plugin active; ``MERGEKIT_TOKENPLUG_DISABLE=1``) and fails if the active run
has any test that does not pass while the baseline run passes it (or fails where the baseline
does not).

The sdist ships ``tests/`` without ``tests/common.py``; ``common.py`` next to this script
supplies it. Usage::

    python tests/mergekit_suite/run_suite.py [--workdir DIR] [--quick|--full] [--baseline disabled|stock|both]
        [--pytest-args ARG ...]

Exit codes: 0 no regression; 1 regression or a broken run; 3 the sdist could not be obtained.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: mergekit's warning filters are then not applied
    tomllib = None

MERGEKIT_VERSION = "0.1.5"
SDIST_NAME = f"mergekit-{MERGEKIT_VERSION}.tar.gz"
CACHE_DIR = Path.home() / ".cache" / "mergekit-tokenplug" / "mergekit-sdist"
HERE = Path(__file__).resolve().parent
EXIT_NO_SDIST = 3

# ``--quick`` subset for iterating locally: everything touching what the plugin patches
# (config schema, planner, vocabulary tasks, run_merge, tokenizer building, chat templates)
# plus the ordinary merges minus the slow VLM/nuslerp ones. The default is the full suite
# (about 3 minutes per run on 2 CPU cores, so CI can afford it twice).
QUICK_SUBSET = [
    "tests/test_tokenizer.py",
    "tests/test_chat_template.py",
    "tests/test_embedding_truncation.py",
    "tests/test_vocabulary_axis.py",
    "tests/test_config_parameters.py",
    "tests/test_merge_dtypes.py",
    "tests/test_modelref.py",
    "tests/test_easy_define.py",
    "tests/test_basic_merges.py",
    "-k",
    "not VLM and not nuslerp",
]

# Run in the child before any test: proves the patches are (not) applied in that process.
CHECK_ACTIVE = (
    "import mergekit.config, mergekit.plan, mergekit.merge\n"
    "from mergekit_tokenplug.seam.activation import is_active\n"
    "assert is_active(), 'plugin is not active in the child process'\n"
)
CHECK_DISABLED = (
    "import mergekit.config, mergekit.plan, mergekit.merge\n"
    "from mergekit_tokenplug.seam.activation import is_active\n"
    "assert not is_active(), 'plugin is still active with MERGEKIT_TOKENPLUG_DISABLE=1'\n"
)
CHECK_STOCK = (
    "import sys, typing\n"
    "import mergekit.config, mergekit.plan, mergekit.merge\n"
    "from mergekit.tokenizer.config import TokenizerConfig\n"
    "ann = mergekit.config.MergeConfiguration.model_fields['tokenizer'].annotation\n"
    "assert ann == typing.Optional[TokenizerConfig], f'schema is patched: {ann}'\n"
    "assert 'mergekit_tokenplug.seam.activation' not in sys.modules, 'plugin was loaded'\n"
)
# Root conftest of the work dir: records, at the end of the real test session, whether the
# patches were in place in the very process that ran mergekit's tests.
STATE_CONFTEST = (
    '"""Written by run_suite.py: reports the plugin state seen inside the pytest process."""\n'
    "import json, os, sys\n\n\n"
    "def pytest_sessionfinish(session, exitstatus):\n"
    "    path = os.environ.get('MERGEKIT_SUITE_STATE_FILE')\n"
    "    if not path:\n"
    "        return\n"
    "    act = sys.modules.get('mergekit_tokenplug.seam.activation')\n"
    "    state = {'mergekit_plan_loaded': 'mergekit.plan' in sys.modules,\n"
    "             'plugin_loaded': act is not None,\n"
    "             'plugin_active': bool(act is not None and act.is_active())}\n"
    "    with open(path, 'w') as fd:\n"
    "        json.dump(state, fd)\n"
)
EXPECTED_STATE = {
    "active": {"mergekit_plan_loaded": True, "plugin_loaded": True, "plugin_active": True},
    "disabled": {"mergekit_plan_loaded": True, "plugin_loaded": True, "plugin_active": False},
    "stock": {"mergekit_plan_loaded": True, "plugin_loaded": False, "plugin_active": False},
}
# sitecustomize runs after the .pth files: removing the finder leaves mergekit untouched.
STOCK_SITECUSTOMIZE = (
    '"""Removes the mergekit-tokenplug import hook: a pristine-mergekit baseline."""\n'
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path\n"
    "                    if type(f).__module__ != 'mergekit_tokenplug_hook']\n"
)


@dataclass
class SuiteResult:
    mode: str
    returncode: int
    seconds: float
    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    state: dict[str, bool] | None = None  # plugin state seen inside the pytest process

    def ids(self, outcome: str) -> set[str]:
        return {tid for tid, out in self.outcomes.items() if out == outcome}

    def counts(self) -> dict[str, int]:
        return {k: len(self.ids(k)) for k in ("passed", "failed", "skipped")}


def obtain_sdist(python: str, cache_dir: Path) -> Path | None:
    """Cached sdist, downloaded with pip on first use (None when pip cannot get it)."""
    target = cache_dir / SDIST_NAME
    if target.is_file() and tarfile.is_tarfile(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"mergekit=={MERGEKIT_VERSION}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not got.is_file():
            print(
                f"pip download failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}",
                file=sys.stderr,
            )
            return None
        os.replace(got, target)  # atomic: a half-downloaded file is never cached
    return target


def extract_tests(sdist: Path, workdir: Path) -> Path:
    """Put the sdist's ``tests/`` (and nothing else: no ``mergekit/`` to shadow the installed
    one) plus our ``common.py`` and a pytest.ini into ``workdir``."""
    prefix = f"mergekit-{MERGEKIT_VERSION}/"
    tests_dir = workdir / "tests"
    if tests_dir.exists():
        shutil.rmtree(tests_dir)
    with tarfile.open(sdist) as tar:
        members = [
            m for m in tar.getmembers() if m.name.startswith(prefix + "tests/") and m.isfile()
        ]
        if not members:
            raise SystemExit(f"{sdist} contains no tests/ directory")
        for m in members:
            rel = Path(m.name[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise SystemExit(f"refusing unsafe path in sdist: {m.name}")
            dest = workdir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        ini = {}
        if tomllib is not None:
            pyproject = tomllib.load(tar.extractfile(prefix + "pyproject.toml"))
            ini = pyproject.get("tool", {}).get("pytest", {}).get("ini_options", {})
    shutil.copyfile(HERE / "common.py", tests_dir / "common.py")
    lines = ["[pytest]", "testpaths = tests"]
    if ini.get("filterwarnings"):
        lines.append("filterwarnings =")
        lines += [f"    {f}" for f in ini["filterwarnings"]]
    (workdir / "pytest.ini").write_text("\n".join(lines) + "\n")
    (workdir / "conftest.py").write_text(STATE_CONFTEST)
    return tests_dir


def child_env(mode: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MERGEKIT_TOKENPLUG_DISABLE", None)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the suite builds its models; never touch the hub
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.pop("PYTEST_ADDOPTS", None)
    if mode == "disabled":
        env["MERGEKIT_TOKENPLUG_DISABLE"] = "1"
    elif mode == "stock":
        site = workdir / "_stock_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(STOCK_SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def verify_mode(python: str, mode: str, env: dict[str, str], workdir: Path) -> None:
    check = {"active": CHECK_ACTIVE, "disabled": CHECK_DISABLED, "stock": CHECK_STOCK}[mode]
    proc = subprocess.run(
        [python, "-c", check], env=env, cwd=workdir, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"[{mode}] plugin state check failed:\n{proc.stderr[-2000:]}")
    print(f"[{mode}] plugin state verified in a child process", flush=True)


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """test id -> passed/failed/skipped, and failure messages."""
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            # a teardown error after a pass shows up as a second entry: failure wins
            outcomes[tid] = "failed"
            messages[tid] = (bad.get("message") or "").strip()[:500]
        elif case.find("skipped") is not None:
            outcomes.setdefault(tid, "skipped")
        else:
            outcomes.setdefault(tid, "passed")
    return outcomes, messages


def run_pytest(python: str, mode: str, workdir: Path, selection: list[str]) -> SuiteResult:
    env = child_env(mode, workdir)
    verify_mode(python, mode, env, workdir)
    xml = workdir / f"junit-{mode}.xml"
    state_file = workdir / f"state-{mode}.json"
    xml.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    env["MERGEKIT_SUITE_STATE_FILE"] = str(state_file)
    cmd = [python, "-m", "pytest", "-c", str(workdir / "pytest.ini"), "--rootdir", str(workdir)]
    cmd += ["-p", "no:cacheprovider", "-q", "-rfE", f"--junitxml={xml}", *selection]
    print(f"[{mode}] {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    with open(workdir / f"pytest-{mode}.log", "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    result = SuiteResult(mode, proc.returncode, seconds)
    if state_file.is_file():
        result.state = json.loads(state_file.read_text())
    if xml.is_file():
        result.outcomes, result.messages = parse_junit(xml)
    print(f"[{mode}] rc={proc.returncode} {seconds:.0f}s {result.counts()}", flush=True)
    return result


def compare(active: SuiteResult, base: SuiteResult) -> list[str]:
    """Tests whose active outcome is worse than the baseline's (the regressions)."""
    regressions = []
    for tid, out in sorted(active.outcomes.items()):
        was = base.outcomes.get(tid, "missing")
        if out == "failed" and was != "failed":
            regressions.append(
                f"{tid}: failed with plugin active, {was} under {base.mode}\n    {active.messages.get(tid, '')}"
            )
        elif was == "passed" and out != "passed":
            regressions.append(f"{tid}: {out} with plugin active, passed under {base.mode}")
    for tid in sorted(set(base.outcomes) - set(active.outcomes)):
        regressions.append(
            f"{tid}: not run with plugin active, {base.outcomes[tid]} under {base.mode}"
        )
    return regressions


def broken(result: SuiteResult) -> str | None:
    """pytest rc 0/1 are normal outcomes; anything else (or no report) means no verdict."""
    if result.returncode not in (0, 1):
        return f"pytest exited {result.returncode} in the {result.mode} run (see pytest-{result.mode}.log)"
    if not result.outcomes:
        return f"the {result.mode} run produced no test results"
    if result.state is None:
        return f"the {result.mode} run did not report the plugin state (conftest not loaded?)"
    expected = EXPECTED_STATE[result.mode]
    # a selection that never imports mergekit.plan cannot show the patches: no verdict then
    if result.state["mergekit_plan_loaded"] and result.state != expected:
        return f"the {result.mode} run saw plugin state {result.state}, expected {expected}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, help="where to extract and run (default: a temp dir)"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter of the venv under test"
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument(
        "--quick", action="store_true", help="run a plugin-focused subset, not the full suite"
    )
    parser.add_argument(
        "--full", action="store_true", help="run the whole suite (the default; kept for clarity)"
    )
    parser.add_argument("--baseline", choices=["disabled", "stock", "both"], default="disabled")
    parser.add_argument("--summary", type=Path, help="write a JSON summary here")
    parser.add_argument(
        "--pytest-args",
        nargs=argparse.REMAINDER,
        default=None,
        help="replace the test selection (everything after this flag goes to pytest)",
    )
    args = parser.parse_args(argv)

    sdist = obtain_sdist(args.python, args.cache_dir)
    if sdist is None:
        print(f"cannot obtain the mergekit {MERGEKIT_VERSION} sdist", file=sys.stderr)
        return EXIT_NO_SDIST

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mergekit-suite-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        extract_tests(sdist, workdir)
        if args.pytest_args:
            selection = list(args.pytest_args)
        elif args.quick and not args.full:
            selection = list(QUICK_SUBSET)
        else:
            selection = ["tests"]
        baselines = ["disabled", "stock"] if args.baseline == "both" else [args.baseline]
        results = [
            run_pytest(args.python, mode, workdir, selection) for mode in ["active", *baselines]
        ]
        active, bases = results[0], results[1:]

        problems = [p for p in map(broken, results) if p]
        regressions = [r for base in bases for r in compare(active, base)]
        for base in bases:
            only_base = sorted(base.ids("failed") - active.ids("failed"))
            for tid in only_base:
                print(f"note: fails under {base.mode} but not with plugin active: {tid}")
        summary = {
            "selection": selection,
            "runs": {
                r.mode: {
                    "seconds": round(r.seconds, 1),
                    "returncode": r.returncode,
                    **r.counts(),
                    "failed_ids": sorted(r.ids("failed")),
                }
                for r in results
            },
            "regressions": regressions,
            "problems": problems,
        }
        if args.summary:
            args.summary.write_text(json.dumps(summary, indent=2))
        print(
            json.dumps(
                {
                    m: {k: v for k, v in s.items() if k != "failed_ids"}
                    for m, s in summary["runs"].items()
                }
            )
        )
        for p in problems:
            print(f"ERROR: {p}")
        for r in regressions:
            print(f"REGRESSION: {r}")
        if problems or regressions:
            return 1
        print("OK: no test fails with the plugin active that passes without it")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
