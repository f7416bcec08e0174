"""Export, gate and publish a checkpoint: `python build/build.py ...` is `resnet-triton build ...`.

A thin entry point over the package (the code is in src/resnet_triton/), kept in the
stage's folder the way torchvision's references/ are; `--help` lists every option.
"""

import sys

from resnet_triton import cli

if __name__ == "__main__":
    sys.exit(cli.main(["build", *sys.argv[1:]]))
