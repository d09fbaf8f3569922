"""Evaluation: the ISBI 2012 metrics (pixel, Rand, warping error), V_Rand, V_Info, IoU."""
