"""`resnet-triton rollback`: the replicas of deploy/docker/replicas.yml back to the model
they served before the last `resnet-triton rollout`, the same way (pipeline/rollout.py)."""

from __future__ import annotations

import argparse

from resnet_triton.pipeline import rollout


def get_args_parser() -> argparse.ArgumentParser:
    return rollout.get_args_parser(back=True)


main = rollout.main
