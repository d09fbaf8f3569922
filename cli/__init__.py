"""The ``minunet`` command line (installed as ``minunet.cli``)."""
