"""Data: image decoding, input lists (folders, prompts files), output writers with resume, batched loading, and
the preference data sets (triplets, pairs) used by training and evaluation."""
