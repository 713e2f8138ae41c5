"""Multi-process sharding through ``accelerate launch`` (gloo, 2 CPU processes, tiny models)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(nproc: int) -> list[str]:
    """accelerate's torchrun launcher (``--multi_gpu`` also works without GPUs), own port."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "--main_process_port",
        str(free_port()),
    ]


def launch(
    nproc: int, args: list[str], env_extra: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    if nproc == 1:
        cmd = [str(BIN / "mergekit-tokenplug"), *args]
    else:
        cmd = [*accelerate_launch(nproc), "-m", "mergekit_tokenplug", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


@pytest.mark.parametrize("method,params", [("omp", ["--k", "8"]), ("hewitt", ["--seed", "4"])])
def test_two_processes_write_the_same_bytes_as_one(zoo, tmp_path, method, params):
    env = {"MERGEKIT_TOKENPLUG_SHARD_CHUNK": "8"}  # 31 rows -> 4 chunks spread over 2 ranks
    outs = []
    for nproc in (1, 2):
        out = tmp_path / f"out{nproc}"
        proc = launch(
            nproc,
            [
                "transplant",
                str(zoo.sp_untied),
                str(zoo.bl_untied),
                str(out),
                "--method",
                method,
                *params,
                "-q",
            ],
            env,
            tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_more_processes_than_chunks(zoo, tmp_path):
    out = tmp_path / "out"
    proc = launch(
        2,
        ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--k", "4", "-q"],
        {"MERGEKIT_TOKENPLUG_SHARD_CHUNK": "4096"},
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_a_dying_process_fails_the_run_and_leaves_no_output(zoo, tmp_path):
    """A third-party method (entry point) that kills rank 1 mid-estimation."""
    site = tmp_path / "site"
    (site / "dying_method").mkdir(parents=True)
    (site / "dying_method" / "__init__.py").write_text(
        textwrap.dedent("""
        import os
        import torch
        from mergekit_tokenplug.methods.base import MethodParams, MethodSpec

        def estimate(problem, params):
            if os.environ.get("RANK") == "1":
                os._exit(17)
            return problem.base.mean(dim=0).expand(problem.n_targets, -1).clone()

        SPEC = MethodSpec(name="dying", params=MethodParams, estimate=estimate, summary="dies on rank 1")
    """)
    )
    dist = site / "dying_method-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dying-method\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mergekit_tokenplug.methods]\ndying = dying_method:SPEC\n"
    )
    out = tmp_path / "out"
    env = {
        "PYTHONPATH": str(site),
        "MERGEKIT_TOKENPLUG_SHARD_CHUNK": "8",
        "MERGEKIT_TOKENPLUG_DIST_TIMEOUT_MIN": "2",
    }
    proc = launch(
        2,
        ["transplant", str(zoo.sp_untied), str(zoo.bl_untied), str(out), "--method", "dying", "-q"],
        env,
        tmp_path,
    )
    assert proc.returncode != 0
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")], (
        "partial output left behind"
    )


def test_processes_really_form_a_group(tmp_path):
    """Guards the launcher/accelerate set-up the other tests rely on: two ranks, one group.

    Each rank writes its own file (the ranks share one stdout pipe, whose lines can interleave)
    and the ranks all-gather their indices, so a group that never formed cannot pass.
    """
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path
            import torch
            import torch.distributed as dist
            from mergekit_tokenplug.compute.distributed import rank_and_world
            rank, world = rank_and_world()
            gathered = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
            dist.all_gather(gathered, torch.tensor([rank]))
            seen = ",".join(str(int(t)) for t in gathered)
            Path(sys.argv[1], f"rank{rank}.txt").write_text(f"{rank} {world} {seen}")
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*accelerate_launch(2), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert seen == ["0 2 0,1", "1 2 0,1"]


def test_mergekit_yaml_recipe_under_accelerate(zoo, tmp_path):
    """The documented recipe route: accelerate launch ... -m mergekit.scripts.run_yaml."""
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "passthrough", "models": [{"model": str(zoo.sp_untied)}],
                                      "tokenizer": {"source": str(zoo.bl_untied), "approximation": {"method": "omp", "k": 8}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MERGEKIT_TOKENPLUG_SHARD_CHUNK": "8"}
    single = subprocess.run([str(BIN / "mergekit-yaml"), str(recipe), str(tmp_path / "one"), "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([*accelerate_launch(2), "-m", "mergekit.scripts.run_yaml", str(recipe), str(tmp_path / "two"), "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == (tmp_path / "two" / "model.safetensors").read_bytes()
