import sys

from clear_lab.cli import main

sys.exit(main())
