"""tailrank training: data ingestion, features, the fusion CTR model, evaluation, export."""
