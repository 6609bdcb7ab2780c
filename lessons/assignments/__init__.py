"""Graded assignments drawn from the lessons.

Sources (instructor versions, jupytext percent format): ``a1_masks.py``,
``a2_masked_adamw.py``, ``a3_updates.py``, ``a4_principal_weights.py``. ``build`` writes the
student notebooks, ``checks`` holds the visible checks (ARENA style) and the questions,
``hidden`` the hidden checks, ``sandbox`` the process a submission runs in while graded.
"""
