"""`resnet-triton <command>`: one entry point for every stage of the pipeline."""

from __future__ import annotations

import importlib
import sys

from resnet_triton.errors import UserError

# command -> (module with get_args_parser() and main(args), one-line help)
COMMANDS = {
    "train": ("resnet_triton.training", "fine-tune a ResNet on an ImageFolder dataset"),
    "distill": ("resnet_triton.training.distill", "train a smaller student from a teacher"),
    "prune": ("resnet_triton.training.prune", "cut channels from a model, then recover it"),
    "calibrate": ("resnet_triton.training.calibrate", "open-set rejection's threshold"),
    "build": ("resnet_triton.build.command", "export ONNX, gate it, publish to the repository"),
    "render": ("resnet_triton.serving.render", "write the repository configs from a spec"),
    "serve": ("resnet_triton.serving.serve", "run the local Triton server on the repository"),
    "fence": ("resnet_triton.serving.fence", "write the proxy's keys and limits (container start)"),
    "classify": ("resnet_triton.client.classify", "classify image files through the ensemble"),
    "explain": ("resnet_triton.explain", "Grad-CAM overlays of a checkpoint on image files"),
    "predict": ("resnet_triton.predict", "every class's probability, offline (checkpoint/ONNX)"),
    "ui": ("resnet_triton.client.ui", "a web page to try the served model, with Grad-CAM"),
    "pipeline": (
        "resnet_triton.pipeline.command",
        "build, gate, smoke-test and publish one target to the model store (CI's engine job)",
    ),
    "rollout": (
        "resnet_triton.pipeline.rollout",
        "a store version onto the running replicas, one at a time, smoke-tested",
    ),
    "rollback": ("resnet_triton.pipeline.rollback", "the replicas back to the previous model"),
    "compare": ("resnet_triton.pipeline.compare", "two store versions on captured traffic"),
    "demo": ("resnet_triton.demo", "the whole pipeline on scikit-learn's digits"),
}


def usage() -> str:
    lines = ["usage: resnet-triton <command> [options]   (<command> --help for its options)", ""]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    args = module.get_args_parser().parse_args(rest)
    try:
        return module.main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
