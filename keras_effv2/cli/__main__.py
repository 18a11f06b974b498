"""``python -m keras_effv2.cli`` is the ``keras-effv2`` console script."""

import sys

from keras_effv2.cli.main import main

sys.exit(main())
