"""The score pipeline (`score.score`: plan -> sink -> local or Ray executor; the engine of `icthp score`) and the
reward server on Ray Serve.

Ray is imported only inside the functions that need it (`pip install icthp[scale]`); importing this package does
not import ray.
"""
