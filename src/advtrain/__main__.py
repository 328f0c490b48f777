import sys

from advtrain.cli import main

sys.exit(main())
