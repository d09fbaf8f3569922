"""Files: how minunet names, writes and opens them, below every stage that touches a user's files.

``specs``   the ``file.h5:/dataset`` and ``volume.zarr:/array`` syntax of inputs and outputs
``atomic``  writes that leave either the old file or the complete new one, never half of one
"""
