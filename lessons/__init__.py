"""Lessons and graded assignments.

The lessons themselves (``01_teacher_student.py``, ...) are jupytext sources whose names
start with a digit, so they are notebooks, not importable modules. What is importable:
``lessons.assignments`` (assignment sources, checks, the notebook generator) and
``lessons.grade`` (the autograder, ``python -m lessons.grade SUBMISSION.ipynb``).
"""
