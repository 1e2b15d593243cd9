"""Folds, timm training, TTA, ensembling and a validated Kaggle submission, driven by DVC."""
