"""The README's "Writing a method" example, installed through its entry point and run.

The package and the entry point are read from the README's code blocks, so the documented
example is the tested one. It is installed the way an installer lays it out (a package
directory plus a ``.dist-info`` with ``entry_points.txt`` on the path), then used through the
real commands: ``mergekit-tokenplug methods``, ``plan`` and the stock ``mergekit-yaml``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from helpers import tensors

README = Path(__file__).parent.parent / "README.md"
BIN = Path(sys.executable).parent
EMB = "model.embed_tokens.weight"


def readme_example() -> tuple[str, str, dict[str, str]]:
    """(package name, module source, entry points) from the README section."""
    section = README.read_text(encoding="utf-8").split("### Writing a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    package = re.match(r"# (\w+)/__init__\.py", code).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    assert '[project.entry-points."mergekit_tokenplug.methods"]' in toml
    eps = dict(re.findall(r'^(\w+) = "([\w.:]+)"$', toml, re.M))
    return package, code, eps


def install(site: Path) -> dict[str, str]:
    package, code, eps = readme_example()
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(code, encoding="utf-8")
    dist = site / f"{package}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in eps.items())
    (dist / "entry_points.txt").write_text(f"[mergekit_tokenplug.methods]\n{lines}")
    return {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}


def test_readme_method_is_listed_planned_and_run(zoo, tmp_path):
    env = install(tmp_path / "site")
    run = dict(capture_output=True, text=True, env=env, timeout=300)

    listing = subprocess.run([str(BIN / "mergekit-tokenplug"), "methods", "--json"], **run)
    methods = {m["name"]: m for m in json.loads(listing.stdout)}
    assert methods["first_piece"]["needs"] == ["base_tokenizer"]
    assert [p["name"] for p in methods["first_piece"]["params"]] == ["scale"]

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "passthrough", "dtype": "float32", "models": [{"model": str(zoo.sp_untied)}],
        "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "first_piece", "scale": 0.5}},
    }))  # fmt: skip
    planned = subprocess.run([str(BIN / "mergekit-tokenplug"), "plan", str(recipe), "--json"], **run)
    assert planned.returncode == 0, planned.stderr[-2000:]
    (plan,) = json.loads(planned.stdout)  # one entry per recipe document
    (model,) = plan["models"]
    dim = tensors(zoo.sp_untied)[EMB].shape[1]
    # the method's own cost function: flops = targets * d, per vocabulary matrix
    assert model["by_method"] == {"first_piece": model["estimated"]} and model["estimated"] > 0
    assert all(w["flops"] == model["estimated"] * dim for w in plan["weights"])

    out = tmp_path / "out"
    proc = subprocess.run([str(BIN / "mergekit-yaml"), str(recipe), str(out), "--quiet"], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "tokenplug_manifest.json").read_text())
    assert {m["method"] for m in manifest["report"]["matrices"]} == {"first_piece"}
    # every estimated row is some base row halved (its first piece) or the mean row
    base, new = tensors(zoo.sp_untied)[EMB], tensors(out)[EMB]
    n_est = manifest["report"]["matrices"][0]["estimated"]
    copied = (new[:, None] == base[None]).all(dim=-1).any(dim=1)
    halved = (new[:, None] == 0.5 * base[None]).all(dim=-1).any(dim=1) & ~copied
    mean = torch.isclose(new, base.mean(dim=0), atol=1e-6).all(dim=1)
    assert int(halved.sum()) > n_est // 2
    assert int((halved | mean)[~copied].sum()) >= n_est
