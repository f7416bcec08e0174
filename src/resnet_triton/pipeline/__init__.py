"""The engine pipeline: build, gate, smoke-test and publish one target to the model store.

What CI's engine workflow (.github/workflows/engines.yml) runs, step by step,
and what `make pipeline` runs here. Every step reads the pipeline config
(build/pipeline.yaml) and works in <work>/<target>/:

  matrix   the targets as a GitHub Actions matrix (JSON), with their runner labels
  pull     copy the store from `store_uri` (s3://, gs:// or a folder) into `store`,
           if set, and with --target the inputs the config gives as URIs
  build    seed a staging repository from the store, then `resnet-triton build`
           into it: export, accuracy gates, manifest. Skipped (nothing to do in
           the later steps) when the store already holds a model built from the
           same inputs (content hash, manifest.py)
  smoke    serve the staging repository with the real Triton server (here, or in
           the target's container with --server docker), classify held-out
           images through the ensemble: every request must succeed and top-1
           accuracy must reach min_accuracy
  publish  copy the model file and its manifest into the store's repository for
           the target and render its configs; refused unless the smoke test
           passed for this very build. The repository is also kept as the next
           store version, <store>/versions/<repository>/<n> with <n>.json (content
           hash, precision, time): what the chart's model.version names
  push     copy `store` back to `store_uri`, if set
  all      pull, build, smoke, publish, push

String values may name environment variables as ${NAME}: build/pipeline.yaml
reads everything from ${MODEL_STORE_URI}, and an unset variable stops the step
with the field and the variable named.

The store is a folder of Triton model repositories, one per target kind
(<store>/cpu, <store>/gpu; build/README.md). GPU targets share <store>/gpu:
one plan per compute capability, picked by Triton through cc_model_filenames.
"""

from resnet_triton.pipeline.config import PipelineConfig, PipelineError, PipelineTarget
from resnet_triton.pipeline.steps import build_step, matrix, publish_step, smoke_step
from resnet_triton.pipeline.store import (
    Stage,
    published_versions,
    pull_step,
    sync_store,
    versions_dir,
)

__all__ = [
    "PipelineConfig", "PipelineError", "PipelineTarget", "Stage", "build_step", "matrix",
    "publish_step", "published_versions", "pull_step", "smoke_step", "sync_store",
    "versions_dir",
]  # fmt: skip
