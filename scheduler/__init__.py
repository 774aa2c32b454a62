"""wre: scheduler."""
