"""`python -m prefer ...`, and under torchrun: `torchrun --nproc_per_node N -m prefer <stage> ...`."""

import sys

from prefer.cli import main

sys.exit(main())
