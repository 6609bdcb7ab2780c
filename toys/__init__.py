"""Small worlds: the teacher-student MLP (and, later, modular compositional tasks)."""
