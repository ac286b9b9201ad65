import sys

from bpcore.cli import main

sys.exit(main())
