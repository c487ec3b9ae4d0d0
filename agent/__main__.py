import sys

from proscribe.agent.cli import main

sys.exit(main())
