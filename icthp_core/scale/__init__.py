"""Scaling out: sharded batch scoring on one process or a Ray Data pipeline, and a reward server on Ray Serve.

Ray is imported only inside the functions that need it (`pip install icthp[scale]`); importing this package does
not import ray.
"""
