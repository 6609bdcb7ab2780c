"""The autograder's parts, one concept per module; ``python -m lessons.grade`` is its command line."""
