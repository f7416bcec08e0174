import sys

from resnet_triton.cli import main

sys.exit(main())
