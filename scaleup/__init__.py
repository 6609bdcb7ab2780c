"""Scale-up experiments on transformers (to come: see the scale-up issue)."""
