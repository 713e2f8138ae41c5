"""The CI workflow template works in another repository: its steps, run in a scratch
directory outside this checkout with a recipe copied from recipes/ and models from "the
user's source" (a fetch script that copies tiny local models), all pass.

Steps that need the network (``uses:`` actions, the pip installs of the pinned wheel and
torch) are skipped: the plugin is already installed in this interpreter's environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "recipes" / "ci" / "github-actions.yml"
EXPR = re.compile(r"\$\{\{\s*([\w.]+)\s*\}\}")


def resolve(value: str, context: dict[str, str]) -> str:
    return EXPR.sub(lambda m: context[m.group(1)], str(value))


def offline(step: dict) -> bool:
    return "run" in step and not step.get("name", "").startswith("Install")


@pytest.mark.slow
def test_workflow_steps_pass_in_a_scratch_repository(zoo, tmp_path):
    workflow = yaml.safe_load(WORKFLOW.read_text())
    scratch = tmp_path / "user-repo"
    assert REPO not in scratch.parents
    (scratch / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "01-transplant-omp.yaml", scratch / "recipes")
    (scratch / "ci").mkdir()
    (scratch / "ci" / "fetch-models.sh").write_text(
        "set -e\nmkdir -p \"$1/models\"\n"
        f"cp -r '{zoo.sp_tied}' \"$1/models/gemma3-270m\"\n"
        f"cp -r '{zoo.bl_tied}' \"$1/models/smollm2-135m\"\n"
    )
    runner_temp = tmp_path / "runner"
    runner_temp.mkdir()
    github_env = tmp_path / "github_env"
    context = {
        "github.workspace": str(scratch),
        "inputs.recipe": "01-transplant-omp.yaml",
        "inputs.device": "cpu",
    }
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_WORKSPACE": str(scratch),
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_ENV": str(github_env),
    }
    for key, value in workflow["env"].items():
        env[key] = resolve(value, context)
        context[f"env.{key}"] = env[key]
    ran = []
    for job_name in ("validate", "build"):
        job = workflow["jobs"][job_name]
        job_env = {**env, **{k: resolve(v, context) for k, v in job.get("env", {}).items()}}
        for step in job["steps"]:
            if not offline(step):
                continue
            assert "${{" not in step["run"], f"{step['name']}: expressions belong in env"
            github_env.write_text("")
            proc = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", step["run"]],
                cwd=scratch,
                env=job_env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, (step["name"], proc.stdout[-1500:], proc.stderr[-1500:])
            for line in github_env.read_text().splitlines():
                key, _, value = line.partition("=")
                job_env[key] = value
            ran.append(step["name"])
    assert "Fetch the models" in ran and "Verify the output against its manifest" in ran
    assert any(name.startswith("Publish to the Hugging Face Hub") for name in ran)  # off: no-op
    out = runner_temp / "out" / "01-transplant-omp"
    assert (out / "tokenplug_manifest.json").exists() and (scratch / "recipe.schema.json").exists()
