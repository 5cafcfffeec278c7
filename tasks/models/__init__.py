"""Model families that are not plain scikit-learn / LightGBM estimators (scikit-learn compatible)."""
