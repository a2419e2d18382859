"""Hyperparameter search over fine-tuning runs (`tailor tune`): a layer above the recipes, as the
apps are; each trial is an ordinary fine-tuning run folder."""
