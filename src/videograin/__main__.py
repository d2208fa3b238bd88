"""`python -m videograin`: the same command as `videograin`."""

import sys

from .cli import main

sys.exit(main())
