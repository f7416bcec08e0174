"""Triton Model Analyzer's configuration for a GPU host, rendered from the repository.

Model Analyzer searches instance counts and dynamic-batching settings for the
TensorRT classifier and reports the best configurations for throughput under a
p99 budget. Its input tensor, batch limit and Triton image come from what is
published (`<repository>/classifier/config.pbtxt`) and the release pinned in
.env, so nothing here repeats them. Not run on CPU-only machines:

    .venv/bin/python perf/model_analyzer.py      # writes artifacts/model_analyzer/config.yaml
    docker run --gpus all --rm -it --net host -v $PWD:/workspace -w /workspace \\
        nvcr.io/nvidia/tritonserver:<TRITON_RELEASE>-py3-sdk \\
        model-analyzer profile -f artifacts/model_analyzer/config.yaml

Run it after `docker compose run engine` has published model.sm<cc>.plan, put
the winning instance_group / dynamic_batching values in a serving config
(fields of src/resnet_triton/serving/config.py; per target: `serving:` in
build/pipeline.yaml), then `resnet-triton render --serving FILE`: no retraining.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from resnet_triton.serving.repository import read_config
from resnet_triton.spec import Names

ROOT = Path(__file__).parent.parent


def release() -> str:
    return re.search(r"^TRITON_RELEASE=(\S+)$", (ROOT / ".env").read_text(), re.M)[1]


def render(repository: Path) -> dict:
    classifier = read_config(repository / Names().classifier / "config.pbtxt")
    (pixels,) = classifier.input
    return {
        "model_repository": "/workspace/model_repository",
        "output_model_repository_path": "/workspace/artifacts/model_analyzer/output",
        "export_path": "/workspace/artifacts/model_analyzer",
        "override_output_model_repository": True,
        "triton_launch_mode": "docker",
        "triton_docker_image": f"nvcr.io/nvidia/tritonserver:{release()}-py3",
        "run_config_search_mode": "quick",
        "run_config_search_max_instance_count": 4,
        "run_config_search_max_concurrency": 256,
        "run_config_search_max_model_batch_size": classifier.max_batch_size,
        "profile_models": {
            classifier.name: {
                "perf_analyzer_flags": {
                    "shape": f"{pixels.name}:{','.join(str(d) for d in pixels.dims)}"
                }
            }
        },
        "constraints": {"perf_latency_p99": {"max": 50}},
        "objectives": {"perf_throughput": 10, "perf_latency_p99": 5},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/model_analyzer/config.yaml"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(render(args.repository), sort_keys=False))
    print(
        f"written {args.out} (Triton {release()} image; profile with model-analyzer on a GPU host)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
