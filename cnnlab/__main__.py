"""`python -m cnnlab ...`: the CLI, also what torchrun starts (`torchrun ... -m cnnlab train DATA`)."""

import sys

from .cli import main

sys.exit(main())
