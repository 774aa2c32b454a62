"""`python -m wre` is the `wre` command."""

from wre.cli import main

main()
