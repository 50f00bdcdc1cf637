"""simcore: the SimCore pipeline."""
