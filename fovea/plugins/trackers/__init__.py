"""Built-in experiment trackers: tensorboard, wandb, mlflow (each an optional extra)."""
