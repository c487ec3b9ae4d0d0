import sys

from proscribe.cli import main

sys.exit(main())
