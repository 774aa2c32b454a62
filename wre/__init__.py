"""wre: wre."""
