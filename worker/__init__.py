"""wre: worker."""
