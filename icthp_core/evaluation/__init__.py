"""Evaluation: preference-accuracy protocols (paper Table 1, PickScore's tie-aware accuracy) and statistics."""
