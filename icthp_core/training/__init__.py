"""Reward-model training (needs the ``train`` extra): ICT labels and losses, the accelerate engine, ICT and HP stages.

Runnable entry points: ``icthp train-ict`` / ``icthp train-hp`` (or ``accelerate launch -m icthp_cli train-ict``)."""
