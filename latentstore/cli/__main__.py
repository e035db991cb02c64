"""`python -m latentstore.cli ...` (what torchrun runs for rank-sharded conversion)."""
from . import main

main()
