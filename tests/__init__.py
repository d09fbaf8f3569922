"""The tests of minunet: a package, so that test modules share helpers as ``tests.*``."""
