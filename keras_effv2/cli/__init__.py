"""The ``keras-effv2`` command line: ``predict``, ``info``, ``convert``, ``train``, ``export``.

One module per subcommand; :func:`keras_effv2.cli.main.main` dispatches.

Example:
    $ keras-effv2 predict photo.jpg --model s --weights imagenet
    $ python -m keras_effv2.cli info
"""
