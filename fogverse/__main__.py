import sys

from fogverse.cli import main

sys.exit(main())
