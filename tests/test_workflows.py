"""The GitHub Actions workflows: valid (actionlint, GitHub's schema) and wired as intended."""

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
PACKAGE = ROOT / "src" / "resnet_triton"


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as true
    return workflow


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    if (
        shutil.which("node") is None
        or not (ROOT / ".ci" / "node_modules" / "@tktco" / "node-actionlint").is_dir()
    ):
        pytest.fail("actionlint is not installed: run `make setup` (needs Node.js)")
    command = ["node", str(ROOT / ".ci" / "actionlint.cjs"), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True)


def schema_check(*files: Path) -> subprocess.CompletedProcess:
    checker = Path(sys.executable).parent / "check-jsonschema"
    command = [str(checker), "--builtin-schema", "vendor.github-workflows", *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True)


def steps_running(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_workflows_pass_actionlint():
    result = actionlint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "actionlint: 2 files, 0 findings" in result.stdout


def test_workflows_match_githubs_schema():
    result = schema_check(*sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validators_catch_a_broken_workflow(tmp_path):
    text = (WORKFLOWS / "engines.yml").read_text()
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("needs: [plan, engine]", "needs: [plan, engines]"))
    result = actionlint(broken)
    assert result.returncode == 1
    assert 'job "publish" needs job "engines" which does not exist' in result.stdout
    broken.write_text(text.replace("  workflow_dispatch:", "  workflow_dispatched:"))
    assert schema_check(broken).returncode == 1


def test_cpu_workflow_runs_lint_and_the_test_suite_on_every_push_and_pr():
    workflow = load("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert workflow["on"]["push"] is None  # every branch, every path
    commands = steps_running(workflow["jobs"]["test"])
    assert "make setup" in commands and "make lint" in commands and ".ci/run" in commands
    steps = workflow["jobs"]["test"]["steps"]
    (cache,) = [step for step in steps if step.get("uses", "").startswith("actions/cache")]
    assert ".venv" in cache["with"]["path"]
    assert "pyproject.toml" in cache["with"]["key"]


def module_file(module: str) -> Path:
    """src/ path of a resnet_triton module ("build.engine") or package ("build")."""
    path = PACKAGE / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def pipeline_imports() -> set[str]:
    """Files of the package that `resnet_triton.pipeline` imports, directly or not."""
    seen, todo = (
        set(),
        ["pipeline"] + [f"pipeline.{p.stem}" for p in (PACKAGE / "pipeline").glob("*.py")],
    )
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if "." in module:  # a submodule's package __init__ runs first
            todo.append(module.rsplit(".", 1)[0])
        for node in ast.parse(module_file(module).read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_triton"):
                base = node.module.removeprefix("resnet_triton").removeprefix(".")
                for alias in node.names:
                    name = f"{base}.{alias.name}".lstrip(".")
                    todo.append(name if module_file(name).is_file() else base)
    return {str(module_file(m).relative_to(ROOT)) for m in seen if m}


def triggered(path: str, patterns: list[str]) -> bool:
    """GitHub's path filter: the last pattern that matches decides; `!` excludes."""
    hit = False
    for pattern in patterns:
        if fnmatch.fnmatch(path, pattern.removeprefix("!")):
            hit = not pattern.startswith("!")
    return hit


def docker_files_copied() -> list[str]:
    """The docker/ files that the GPU images COPY (src/ is covered module by module, and
    README.md is there only as the package's long description)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += [s for s in line.split()[1:-1] if s.startswith("docker/")]
    return sources


def test_engine_workflow_triggers_on_everything_an_engine_is_built_from():
    triggers = load("engines.yml")["on"]
    paths = triggers["push"]["paths"]
    assert triggers["push"]["branches"] == ["main"]
    inputs = ["build/pipeline.yaml", ".env", "Dockerfile", "docker-compose.yml",
              "docker-compose.gpu.yml", "pyproject.toml"]  # fmt: skip
    served = {"src/resnet_triton/serving/triton_models.py"}  # imported by the generated model.py
    inputs += sorted(pipeline_imports() | served)
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # The package's data (the warmup photo), and what the images copy in.
    inputs += [f for f in tracked if f.startswith("src/resnet_triton/assets/")]
    inputs += docker_files_copied()
    assert "src/resnet_triton/assets/warmup.jpg" in inputs and "docker/ngc-venv.sh" in inputs
    for path in inputs:
        assert (ROOT / path).is_file() and triggered(path, paths), path
    for path in ("build/README.md", "README.md", "src/resnet_triton/training/loop.py", "tests/x",
                 "docker/cpu.Dockerfile", "src/resnet_triton/client/classify.py"):  # fmt: skip
        assert not triggered(path, paths), path
    for pattern in paths:  # no filter that matches nothing (a renamed file)
        assert pattern.startswith("!") or any(fnmatch.fnmatch(f, pattern) for f in tracked), pattern
    assert triggers["workflow_dispatch"]["inputs"]["force"]["type"] == "boolean"
    assert len(triggers["schedule"]) == 1


def test_self_hosted_gpu_runners_only_ever_run_mains_code():
    """A pull request's copy of the workflow could delete any `if:`, so there is no
    pull_request trigger at all; a dispatch from another branch stops at `plan`."""
    workflow = load("engines.yml")
    assert set(workflow["on"]) == {"push", "workflow_dispatch", "schedule"}
    jobs = workflow["jobs"]
    assert jobs["plan"]["if"] == "github.ref == 'refs/heads/main'"
    assert jobs["engine"]["needs"] == "plan"  # skipped with it
    assert jobs["publish"]["if"] == "github.ref == 'refs/heads/main'"
    assert workflow["concurrency"] == {"group": "engines-publish", "cancel-in-progress": False}


def test_object_store_credentials_come_from_oidc_before_the_store_is_touched():
    workflow = load("engines.yml")
    assert workflow["env"]["MODEL_STORE_URI"] == "${{ vars.MODEL_STORE_URI }}"
    for name in ("engine", "publish"):
        job = workflow["jobs"][name]
        assert job["permissions"] == {"contents": "read", "id-token": "write"}, name
        uses = [step.get("uses", "").split("@")[0] for step in job["steps"]]
        pull = next(i for i, s in enumerate(job["steps"]) if "$PIPELINE pull" in s.get("run", ""))
        for action in ("aws-actions/configure-aws-credentials", "google-github-actions/auth"):
            assert uses.index(action) < pull, (name, action)
        login = {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
        aws = login["aws-actions/configure-aws-credentials"]
        assert aws["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
        assert aws["if"] == "vars.AWS_ROLE_ARN != ''"
    assert workflow["jobs"]["publish"]["environment"] == "model-store"  # the write role
    assert "permissions" not in workflow["jobs"]["plan"]  # contents: read, no token


def test_engine_jobs_build_smoke_and_publish_in_order():
    workflow = load("engines.yml")
    jobs = workflow["jobs"]
    assert jobs["engine"]["needs"] == "plan"
    assert set(jobs["publish"]["needs"]) == {"plan", "engine"}

    # The matrix is the pipeline config's targets, each on its runner labels.
    assert "$PIPELINE matrix" in steps_running(jobs["plan"])
    assert jobs["engine"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert jobs["engine"]["runs-on"] == "${{ matrix.runs-on }}"

    steps = {step.get("name"): step for step in jobs["engine"]["steps"]}
    gpu_build = steps["Build and gate (TensorRT container of the pinned release)"]
    assert gpu_build["if"] == "matrix.kind == 'gpu'"
    assert "docker compose run" in gpu_build["run"] and " engine " in gpu_build["run"]
    # The engine service is in the GPU override, which compose reads through COMPOSE_FILE.
    assert jobs["engine"]["env"]["COMPOSE_FILE"] == "docker-compose.yml:docker-compose.gpu.yml"
    assert "pipeline --config build/pipeline.yaml build" in gpu_build["run"]
    gpu_smoke = steps["Smoke test (Triton container of the pinned release)"]
    assert "smoke" in gpu_smoke["run"] and "--server docker" in gpu_smoke["run"]
    names = list(steps)
    assert names.index("Pull the model store") < names.index(gpu_build["name"])
    assert names.index(gpu_smoke["name"]) < names.index("Keep the staged build for the publish job")

    # The container resolves build/pipeline.yaml's ${MODEL_STORE_URI} like the runner.
    assert "--env MODEL_STORE_URI engine" in gpu_build["run"]
    commands = steps_running(jobs["publish"])
    assert commands.index("$PIPELINE pull") < commands.index("$PIPELINE publish")
    assert commands.index("$PIPELINE publish") < commands.index("$PIPELINE push")


def test_a_restored_environment_is_not_set_up_again(tmp_path):
    """CI restores .venv from its cache into a fresh checkout, whose files are all newer
    than the stamp: `make setup` must see the content, not the age, and skip."""
    for name in ("Makefile", "pyproject.toml", ".ci/package-lock.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)

    def make(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", *args, "setup"], cwd=tmp_path, capture_output=True,
                              text=True)  # fmt: skip

    (stamp,) = [line.split()[1] for line in make("-n").stdout.splitlines()
                if line.startswith("touch ")]  # fmt: skip
    (tmp_path / stamp).parent.mkdir()
    (tmp_path / stamp).touch()  # what a finished `make setup` leaves
    assert make("-q").returncode == 0
    later = (tmp_path / stamp).stat().st_mtime + 3600
    for name in ("Makefile", "pyproject.toml", ".ci/package-lock.json"):
        os.utime(tmp_path / name, (later, later))  # a fresh checkout
    assert make("-q").returncode == 0
    with open(tmp_path / "pyproject.toml", "a") as f:
        f.write("# a changed dependency\n")
    assert make("-q").returncode == 1
