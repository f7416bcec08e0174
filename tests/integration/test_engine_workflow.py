"""The engine workflow's own shell steps for a CPU target, run here as a runner would.

actionlint checks the workflow's structure, not what its `run:` scripts do;
this runs them (plan, then the engine job's CPU steps, then publish) with
bash as GitHub does, against a pipeline config for the test model. Only the
`uses:` steps (checkout, caches, artifacts) are left out: every step here
shares one work folder, which is where the artifact steps would put the files.
"""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from resnet_triton.build.manifest import Manifest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent.parent
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]  # GitHub's `shell: bash`


def run_steps(job: dict, env: dict, kind: str) -> list[str]:
    """Run the job's `run:` steps whose `if` allows a `kind` target; returns their names."""
    ran = []
    for step in job["steps"]:
        condition = step.get("if")
        if "run" not in step or condition not in (None, f"matrix.kind == '{kind}'"):
            continue
        assert "${{" not in step["run"], f"step {step.get('name')!r} needs GitHub to expand it"
        step_env = {**env, **{k: v for k, v in step.get("env", {}).items() if "${{" not in v}}
        result = subprocess.run(
            [*BASH, step["run"]], cwd=ROOT, env=step_env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{step.get('name')}:\n{result.stdout}\n{result.stderr}"
        ran.append(step.get("name") or step["run"])
    return ran


def model_store(root: Path, checkpoint: Path, digits: Path) -> Path:
    """A model store laid out as build/pipeline.yaml's comments say (a folder here, s3://
    or gs:// in production), holding the test model's checkpoint and images."""
    (root / "inputs").mkdir(parents=True)
    (root / "inputs" / "checkpoint.pt").symlink_to(checkpoint)
    (root / "inputs" / "val").symlink_to(digits / "val")
    (root / "inputs" / "train").symlink_to(digits / "train")
    return root


def pipeline_config(tmp_path: Path) -> Path:
    """The shipped build/pipeline.yaml as it is; only the work folders, the target list
    and the held-out count are the test's."""
    shipped = yaml.safe_load((ROOT / "build" / "pipeline.yaml").read_text())
    assert shipped["checkpoint"] == "${MODEL_STORE_URI}/inputs/checkpoint.pt"
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **shipped,
                "holdout_images": 60,
                "store": str(tmp_path / "store"),
                "work_dir": str(tmp_path / "work"),
                "targets": {"cpu-fp32": shipped["targets"]["cpu-fp32"]},
            }
        )
    )
    return config


def test_cpu_target_through_the_workflow_steps(tmp_path, checkpoint, digits):
    workflow = yaml.safe_load((ROOT / ".github/workflows/engines.yml").read_text())
    store_root = model_store(tmp_path / "model-store", checkpoint, digits)
    config = pipeline_config(tmp_path)
    pipeline = workflow["env"]["PIPELINE"]
    assert "--config build/pipeline.yaml" in pipeline
    assert workflow["env"]["MODEL_STORE_URI"] == "${{ vars.MODEL_STORE_URI }}"
    env = {
        **os.environ,
        "MODEL_STORE_URI": str(store_root),
        "PIPELINE": pipeline.replace("build/pipeline.yaml", str(config)),
        "GITHUB_OUTPUT": str(tmp_path / "output"),
    }
    jobs = workflow["jobs"]

    assert run_steps(jobs["plan"], env, "cpu")[0] == "make setup"
    key, _, matrix = (tmp_path / "output").read_text().strip().partition("=")
    assert key == "matrix" and '"target": "cpu-fp32"' in matrix

    engine_env = {**env, "TARGET": "cpu-fp32", "FORCE": ""}
    assert run_steps(jobs["engine"], engine_env, "cpu") == [
        "Set up",
        "Pull the model store",
        "Build and gate (ONNX Runtime)",
        "Smoke test (local Triton server)",
    ]
    status = yaml.safe_load((tmp_path / "work" / "cpu-fp32" / "status.json").read_text())
    assert status["changed"] and status["smoke"]["passed"]
    assert not (tmp_path / "store" / "cpu").exists()  # nothing published by the engine job

    publish_env = {**env, "MATRIX": matrix}
    assert run_steps(jobs["publish"], publish_env, "cpu") == [
        "make setup",
        "Pull the model store",
        "Publish every target",
        "Push the model store",
    ]
    published = tmp_path / "store" / "cpu" / "classifier" / "1" / "model.onnx"
    assert Manifest.read(published).content_hash == status["content_hash"]
    # Pushed to the store's repositories, where servers read it.
    pushed = store_root / "repositories" / "cpu" / "classifier" / "1" / "model.onnx"
    assert pushed.read_bytes() == published.read_bytes()
