"""Graded assignments drawn from the lessons: one source file each (``a<N>_<name>.py``).

``spec`` reads a source (its format is documented there), ``build`` writes the instructor's
notebooks and the students' handout, ``sandbox`` is the process a submission runs in while
graded. The instructor's guide is ``docs/instructors.md``.
"""
