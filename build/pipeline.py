"""One step of the engine pipeline (CI's engine job).

`python build/pipeline.py ...` is `resnet-triton pipeline ...`.

A thin entry point over the package (the code is in src/resnet_triton/), kept in the
stage's folder the way torchvision's references/ are; `--help` lists every option.
"""

import sys

from resnet_triton import cli

if __name__ == "__main__":
    sys.exit(cli.main(["pipeline", *sys.argv[1:]]))
