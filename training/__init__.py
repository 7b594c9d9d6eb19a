"""Models and their training: two-tower retrieval, FAISS index, LightGBM ranker, MLflow registry."""
