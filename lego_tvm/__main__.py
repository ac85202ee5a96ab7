"""``python -m lego_tvm ...``: the same as the ``lego-tvm`` command."""
from .cli import main

main()
