"""The accuracy study: grouped k-fold cross-validation of ESNet against baselines (being moved here)."""
